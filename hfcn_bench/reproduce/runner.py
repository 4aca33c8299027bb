"""The driver of ``hfcn-bench reproduce``: build the grid, skip what is done, estimate the cost,
run the rest on an engine, then write the report.

``OUT/grid.json`` records what the grid is (data fingerprint, label rule, preset, folds,
seed); a later run into the same folder must match it, so cached cells are never mixed
with another protocol's. ``OUT/cells/<key>/`` are the run folders; ``OUT/report.md``,
``report.json`` and the figures are rewritten at the end of every run from whatever cells are
finished.

A run holds the folder's lock (:mod:`.lock`) while it works. Before anything runs, every cell
is checked against its own record (:mod:`.record`): a damaged one is named in a warning and
recomputed, and a finished one written by an older version (machine paths, no record) is
converted in place. ``--report-only`` does the same checks and conversion but runs nothing; it
reports damaged cells instead of failing on them, and while another run holds the lock it only
reads (the cells are that run's to convert).
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import write_json_atomic
from ..errors import HfcnError
from ..protocol.checks import check_folds, check_n_boot, check_seed
from ..protocol.portable import DATA_PLACEHOLDER
from .cells import cell_spec
from .engines import DEFAULT_RETRIES, ENGINES, interrupts_deferred, run_local, run_ray
from .grid import build_cells, build_configs
from .lock import GridBusy, grid_lock
from .record import GridWarning, check_cell, seal_cell

__all__ = [
    "ReproduceOptions",
    "plan",
    "estimate_costs",
    "measure_data_cost",
    "pipeline_seconds",
    "reproduce",
    "PRESETS",
]

PRESETS = ("paper", "cpu", "quick", "smoke", "pretrained")


@dataclass
class ReproduceOptions:
    table: str = "all"
    data: str | None = None
    folds: int = 5
    backbones: tuple[str, ...] | None = None
    alphas: tuple[float, ...] | None = None
    preset: str = "cpu"
    workers: int | None = None
    threads: int = 1
    engine: str = "ray"
    address: str | None = None
    device: str = "cpu"
    out: str = "reports/reproduce"
    seed: int = 0
    n_boot: int = 1000
    label_rule: str = "tirads"
    dry_run: bool = False
    report_only: bool = False
    gpus_per_cell: float | None = None
    seeds: tuple[int, ...] = ()  # extra training seeds (same folds); the grid's own seed is always run
    seed_architectures: tuple[str, ...] | None = None  # crops the extra seeds repeat (None: all)
    retries: int = DEFAULT_RETRIES  # resubmissions of a cell lost with its Ray worker or node
    extra: dict = field(default_factory=dict)

    def check(self) -> None:
        if self.preset not in PRESETS:
            raise HfcnError(f"--preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        if self.engine not in ENGINES:
            raise HfcnError(f"--engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.folds < 2:
            raise HfcnError(f"--folds must be at least 2, got {self.folds}")
        if self.threads < 1 or (self.workers is not None and self.workers < 1):
            raise HfcnError("--threads and --workers must be at least 1")
        check_n_boot(self.n_boot)
        check_seed(self.seed)
        for s in self.seeds:
            check_seed(s, "--seeds")
        if self.gpus_per_cell is not None and not self.gpus_per_cell > 0:
            raise HfcnError(f"--gpus-per-cell {self.gpus_per_cell}: a cell's share of a GPU must be above 0")
        if self.retries < 0:
            raise HfcnError(f"--retries must be 0 or more, got {self.retries}")
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise HfcnError(f"--device must be cpu or cuda, got {self.device!r}")
        if self.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise HfcnError("--device cuda asked for, but no CUDA GPU is available", hint="use --device cpu")
        if self.preset == "pretrained":
            # the recipe for ImageNet trunks (issue 22): a row without one would be trained with
            # a pooled head and a slow trunk that starts from random weights
            from ..models.backbones import IMAGENET_WEIGHTS

            rows = {c.backbone for c in build_configs(self.table, self.backbones, self.alphas)}
            other = sorted(rows - set(IMAGENET_WEIGHTS))
            if other:
                raise HfcnError(
                    f"--preset pretrained is the recipe for ImageNet trunks; these rows have none: {', '.join(other)}",
                    hint=f"--backbones from {', '.join(IMAGENET_WEIGHTS)} (the EfficientNet rows), or another preset",
                )
        out = Path(self.out)
        if out.exists() and not out.is_dir():
            raise HfcnError(f"--out {out} is a file, not a folder")


def load_trainable(path: Path, label_rule: str):
    """A dataset every cell (or recipe step) can train on, loaded once by the driver; its data
    warnings are the cells' to give (``data check`` lists them)."""
    from ..data import load_dataset
    from ..data.report import DataWarning
    from ..runs import check_trainable

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        ds = load_dataset(path, label_rule=label_rule)
    check_trainable(ds)
    return ds


def _dataset(opts: ReproduceOptions):
    from ..data import ensure_synthetic

    path = Path(opts.data).expanduser().resolve() if opts.data else ensure_synthetic().resolve()
    return path, load_trainable(path, opts.label_rule)


def _grid_record(opts: ReproduceOptions, ds) -> dict:
    return {
        "format": "hfcn-bench/reproduce-grid",
        "version": 1,
        "data_fingerprint": ds.fingerprint,
        # The data is known by its fingerprint; where it lay on this machine is not recorded.
        "data": DATA_PLACEHOLDER,
        "label_rule": ds.label_rule,
        "preset": opts.preset,
        "folds": int(opts.folds),
        "seed": int(opts.seed),
        "n_boot": int(opts.n_boot),
        # what the folds keep together: cases linked by identical bytes or near-duplicate images
        "links": [list(g) for g in ds.links()],
        "near_duplicate_links": None if ds.near_duplicates is None else len(ds.near_duplicates["links"]),
    }


def check_record(path: Path, record: dict, keys: tuple[str, ...], what: str, flag: str) -> None:
    """Refuse to add results to a folder whose protocol record (``path``) differs from
    ``record`` in one of ``keys``: cached results of two protocols must never mix."""
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        raise HfcnError(f"{path} is damaged", hint=f"remove it (the runs stay) or choose another {flag}") from None
    for key in keys:
        if old.get(key) != record[key]:
            raise HfcnError(
                f"{path.parent} holds {what} with {key} = {old.get(key)!r}, not {record[key]!r}",
                hint=f"choose another {flag} for another protocol",
            )


def _check_grid(out: Path, record: dict) -> None:
    check_record(
        out / "grid.json", record, ("data_fingerprint", "label_rule", "preset", "folds", "seed"), "a grid", "--out"
    )
    path = out / "grid.json"
    if not path.is_file():
        return
    old = json.loads(path.read_text(encoding="utf-8"))
    # Linked cases share a fold; other links, other folds: the cells done would not pool.
    if "links" not in old:
        if record.get("near_duplicate_links"):
            raise HfcnError(
                f"{out} holds a grid made before cases were linked by near-duplicate images; this data links "
                f"{record['near_duplicate_links']} case pair(s) by near-duplicates now, so its folds differ",
                hint="choose another --out (the finished cells there keep their old folds)",
            )
    elif old["links"] != record["links"]:
        raise HfcnError(
            f"{out} holds a grid whose folds kept other cases together ({len(old['links'])} linked group(s), "
            f"now {len(record['links'])})",
            hint="choose another --out for another protocol",
        )


def plan(opts: ReproduceOptions) -> tuple[list, Path, object]:
    """``(cells, data path, dataset)`` of the options (nothing run)."""
    configs = build_configs(opts.table, opts.backbones, opts.alphas)
    cells = build_cells(configs, opts.folds, opts.seeds, opts.seed, opts.seed_architectures)
    path, ds = _dataset(opts)
    return cells, path, ds


def measure_data_cost(
    samples, size: int, threads: int = 1, n: int = 16, seed: int = 0, letterbox: bool = False
) -> dict[str, float]:
    """Host seconds per ROI of a cell's input pipeline, which no accelerator takes over: reading
    and resizing a ROI from its frame (once per cell), and turning a cached ROI into a training
    tensor (flip, shift, contrast, normalisation: every epoch) or an evaluation tensor. One
    untimed ROI first (first-call costs), then ``n`` ROIs; ROIs that fail to load are left out
    of the timing (a cell warns of them)."""
    from ..data.dataset import RoiDataset
    from ..engine import torch_threads

    samples = list(samples)
    with torch_threads(threads):
        kw = {"size": size, "letterbox": letterbox, "normalize": "imagenet", "seed": seed}
        aug, plain = RoiDataset(samples, augment=True, **kw), RoiDataset(samples, augment=False, **kw)
        picked, decode = [], 0.0
        for i in range(len(samples)):
            if len(picked) == n + 1:
                break
            t = time.perf_counter()
            try:
                arr = aug.roi_array(i)
            except Exception:  # noqa: BLE001 - see the docstring
                continue
            if picked:
                decode += time.perf_counter() - t
            plain._cache[i] = arr  # decoded once, as a cell does
            picked.append(i)
        if len(picked) < 2:
            raise HfcnError("too few ROIs could be loaded to time the input pipeline")
        first = picked.pop(0)  # untimed: it warms up the augmenting and the plain path too
        aug[first], plain[first]  # noqa: B018
        t = time.perf_counter()
        for i in picked:
            aug[i]
        augment = (time.perf_counter() - t) / len(picked)
        t = time.perf_counter()
        for i in picked:
            plain[i]
        tensor = (time.perf_counter() - t) / len(picked)
    return {"decode_s": decode / len(picked), "augment_s": augment, "tensor_s": tensor}


def pipeline_seconds(
    dc: dict[str, float], n_rois: float, fit_rois: float, epochs: int, augment: bool, validation: bool
) -> tuple[float, float]:
    """``(cell seconds, of which per epoch)`` of the input pipeline for per-ROI costs ``dc``: all
    ``n_rois`` decoded once; the ``fit_rois`` training ROIs augmented every epoch (or made one
    tensor once, without augmentation); validation and test ROIs made tensors once. Without a
    validation set the threshold is chosen on the training ROIs, loaded afresh (decoded and made
    tensors a second time)."""
    per_epoch = fit_rois * dc["augment_s"] if augment else 0.0
    total = n_rois * dc["decode_s"] + epochs * per_epoch + (n_rois - fit_rois) * dc["tensor_s"]
    if not augment:
        total += fit_rois * dc["tensor_s"]
    if not validation:
        total += fit_rois * (dc["decode_s"] + dc["tensor_s"])
    return total, per_epoch


def estimate_costs(cells, ds, opts: ReproduceOptions, steps: int = 2) -> dict[str, dict]:
    """Seconds per cell from a short measured training step of each distinct model (one
    warm-up step, then the median of ``steps``), scaled by the cell's epochs and batches;
    prediction (validation every epoch, the test fold once) is counted as a third of a
    training step per batch. To that is added the cell's host-side input pipeline, measured
    per ROI (:func:`measure_data_cost`): every ROI decoded once, the training ROIs augmented
    every epoch, the validation and test ROIs made tensors once. On CPU it is a few per cent
    of a cell; on a GPU it is the floor under the cell's time."""
    from ..bench.model_cost import measure_train_step
    from ..systems import get_system
    from .grid import config_overrides

    system = get_system("hfcn")
    n = len(ds)
    cache: dict[tuple, float] = {}
    data_cache: dict[tuple, dict] = {}
    out = {}
    for cell in cells:
        cfg = system.configure(opts.preset, config_overrides(cell.config), seed=opts.seed)
        key = (cfg.backbone, cfg.crop, cfg.alpha, cfg.image_size, cfg.batch_size)
        if key not in cache:
            row = measure_train_step(
                cfg.model_config(),
                batch=cfg.batch_size,
                size=cfg.image_size,
                threads=opts.threads,
                repeats=steps,
                warmup=1,
                inference=False,
                device=opts.device,
                seed=opts.seed,
            )
            cache[key] = row["train_median_s"]
        dkey = (cfg.image_size, cfg.letterbox)
        if dkey not in data_cache:
            data_cache[dkey] = measure_data_cost(
                ds.samples, cfg.image_size, opts.threads, seed=opts.seed, letterbox=cfg.letterbox
            )
        step, dc = cache[key], data_cache[dkey]
        train_rois = n * (cell.k - 1) / cell.k
        fit_rois = train_rois * (1 - cfg.val_fraction)
        batches = max(1, round(fit_rois / cfg.batch_size))
        val_batches = train_rois * cfg.val_fraction / cfg.batch_size
        test_batches = n / cell.k / cfg.batch_size
        compute = cfg.epochs * (batches + val_batches / 3) * step + test_batches * step / 3
        data, per_epoch = pipeline_seconds(dc, n, fit_rois, cfg.epochs, cfg.augment, cfg.val_fraction > 0)
        out[cell.key] = {
            "step_s": step,
            "batches_per_epoch": batches,
            "epochs": cfg.epochs,
            "data_s": data,
            "data_epoch_s": per_epoch,
            "compute_s": compute,
            "estimate_s": compute + data,
        }
    return out


def _scan_cells(specs: list[dict], path: Path, convert: bool) -> dict[str, object]:
    """Every cell's state (:func:`.record.check_cell`); damaged cells are named in a warning,
    and with ``convert`` a finished cell of an older version (absolute paths, no record) is made
    portable and sealed in place."""
    states = {}
    for s in specs:
        state = check_cell(s["out"])
        if state.status == "damaged":
            warnings.warn(
                GridWarning(
                    f"{Path(s['out']) / state.file}: {state.what}; cell {s['key']} is damaged: left out of the "
                    "report, recomputed by the next run"
                ),
                stacklevel=3,
            )
        elif state.status == "done" and not state.recorded and convert:
            seal_cell(s["out"], s["key"], str(path))
            state = check_cell(s["out"])
        states[s["key"]] = state
    return states


def reproduce(opts: ReproduceOptions, console=None, progress: Callable | None = None) -> dict:
    """Run (or, with ``dry_run``, only plan and cost) the grid; returns the report dict."""
    from . import report as R

    opts.check()
    cells, path, ds = plan(opts)
    # one error naming the case count, not one error row per cell
    check_folds(opts.folds, ds)
    out = Path(opts.out)
    record = _grid_record(opts, ds)
    _check_grid(out, record)
    workers = opts.workers or max(1, (os.cpu_count() or 1) // opts.threads)
    # Absolute: a cell's worker may run in another folder (a Ray node); no record keeps it.
    specs = [
        cell_spec(
            c,
            out.resolve(),
            data=str(path),
            label_rule=opts.label_rule,
            preset=opts.preset,
            seed=opts.seed,
            threads=opts.threads,
            device=opts.device,
            n_boot=opts.n_boot,
        )
        for c in cells
    ]
    if opts.dry_run:
        todo = [s for s in specs if check_cell(s["out"]).status != "done"]
        costs = estimate_costs(cells, ds, opts)
        total = sum(c["estimate_s"] for c in costs.values())
        left = sum(costs[s["key"]]["estimate_s"] for s in todo)
        return {
            "dry_run": True,
            "cells": [{"key": s["key"], "done": s not in todo, **costs[s["key"]]} for s in specs],
            "total_s": total,
            "remaining_s": left,
            "workers": workers,
            "threads": opts.threads,
            "remaining_wall_s": left / workers,
            "preset": opts.preset,
            "data": DATA_PLACEHOLDER,
        }
    with ExitStack() as stack:
        try:
            stack.enter_context(grid_lock(out))
            held = True
        except GridBusy as busy:
            if not opts.report_only:
                raise
            # Another run owns the folder: report what is finished, touch no cell.
            warnings.warn(GridWarning(f"{busy}; --report-only reads the cells without converting any"), stacklevel=2)
            held = False
        return _run_grid(opts, cells, specs, out, path, record, workers, held, progress, R)


def _run_grid(opts, cells, specs, out, path, record, workers, held, progress, R) -> dict:
    if held:
        write_json_atomic(out / "grid.json", record)
    # Build the extension once here: workers then load it from the cache instead of racing to
    # compile it.
    from .. import ops

    ops.load_extension()
    states = _scan_cells(specs, path, convert=held)
    todo = [s for s in specs if states[s["key"]].status != "done"]
    results: dict[str, dict] = {}
    t0 = time.perf_counter()

    def on_event(event, spec, res):
        if res is not None:
            results[spec["key"]] = res
        if progress is not None:
            progress(event, spec, res)

    for s in specs:
        if s not in todo:
            results[s["key"]] = {"key": s["key"], "status": "cached", "wall_s": 0.0}
            if progress is not None:
                progress("cached", s, results[s["key"]])
    gpus = (
        opts.gpus_per_cell
        if opts.gpus_per_cell is not None
        else (1.0 / workers if opts.device.startswith("cuda") else 0.0)
    )
    interrupted = False
    info = {"engine": opts.engine, "workers": workers}
    if opts.report_only:  # the report of the finished cells (another process may run the rest)
        info = {"engine": "none (--report-only)", "workers": 0}
        for s in todo:
            if states[s["key"]].status == "damaged":
                results[s["key"]] = {"key": s["key"], "status": "damaged", "problem": states[s["key"]].problem}
        todo = []
    try:
        if todo:
            if opts.engine == "local":
                info = run_local(todo, on_event)
            else:
                info = run_ray(
                    todo,
                    on_event,
                    workers=workers,
                    threads=opts.threads,
                    address=opts.address,
                    gpus_per_cell=gpus,
                    retries=opts.retries,
                )
    except KeyboardInterrupt:
        interrupted = True
    wall = time.perf_counter() - t0
    with interrupts_deferred():  # a Ctrl-C now waits until the report of the finished cells is out
        report = R.build_report(
            out,
            cells,
            results,
            opts,
            {**info, "wall_s": wall, "interrupted": interrupted, "threads": opts.threads, "gpus_per_cell": gpus},
        )
        R.write_report(report, out)
    if interrupted:
        raise KeyboardInterrupt
    return report
