"""Running one cell: a pure function of (configuration, fold, data path) -> a run folder.

:func:`run_cell` takes and returns plain dicts, so the local engine calls it in-process and
the Ray engine ships it to a worker unchanged: both give identical cells. A finished cell
whose files check out against its record (:mod:`.record`) is returned as ``cached`` without
loading anything; an interrupted one resumes from its checkpoints; a damaged one is recomputed
(from its model files when they are intact); a failing one writes ``error.json`` and its
traceback to ``cell.log`` and returns an error row, so the grid goes on. A cell that finishes
is sealed: its files rewritten without machine paths, then its record written.
"""

from __future__ import annotations

import json
import time
import traceback
import warnings
from pathlib import Path

from ..atomic import write_json_atomic
from ..protocol.portable import portable_root_text
from .record import check_cell, discard_damaged, seal_cell

__all__ = ["cell_done", "cell_seconds", "run_cell", "cell_spec", "cell_log"]


def cell_done(cell_dir: str | Path) -> bool:
    """Whether a cell finished and its files check out (:func:`.record.check_cell`)."""
    return check_cell(cell_dir).status == "done"


def cell_log(key: str) -> str:
    """A cell's log, as reports name it: relative to the grid folder (no machine path)."""
    return f"cells/{key}/cell.log"


def cell_seconds(metrics: dict) -> tuple[float | None, bool]:
    """A finished cell's own time in seconds, and whether it was resumed.

    A cell run in one go reports its run's ``total_s``. A resumed one's ``total_s`` covers only
    its last run, so the epochs earlier runs trained (``history[:resumed_from]``, each with its
    seconds) are added. What the killed runs spent outside their finished epochs (start-up,
    a partly trained epoch) is lost with them and not counted."""
    timings = metrics.get("timings") or {}
    total = timings.get("total_s")
    train = ((metrics.get("folds") or [{}])[0]).get("training") or {}
    before = train.get("resumed_from")
    if before is None or total is None:
        return total, False
    earlier = (train.get("history") or [])[: int(before)]
    return float(total) + sum(float(h.get("seconds") or 0.0) for h in earlier), True


def cell_spec(
    cell,
    out_dir: Path,
    *,
    data: str,
    label_rule: str,
    preset: str,
    seed: int,
    threads: int,
    device: str,
    n_boot: int,
    overrides: dict | None = None,
) -> dict:
    """Everything a worker needs to run ``cell`` (plain JSON values)."""
    from .grid import config_overrides

    # ``seed`` is the grid's: it draws the folds. ``train_seed`` draws the weights, the batch
    # order, the augmentation and the validation cases: the grid's seed too, unless the cell is a
    # repeat under another training seed (same folds).
    train_seed = int(seed) if cell.seed is None else int(cell.seed)
    return {
        "key": cell.key,
        "config_key": cell.config.key,
        "fold": cell.fold,
        "k": cell.k,
        "data": str(data),
        "label_rule": label_rule,
        "preset": preset,
        "seed": int(seed),
        "train_seed": train_seed,
        "threads": int(threads),
        "device": device,
        "n_boot": int(n_boot),
        "overrides": {**config_overrides(cell.config), **(overrides or {})},
        "out": str(Path(out_dir) / "cells" / cell.key),
    }


def _host(device: str) -> dict:
    """Where the cell (its last run) ran, for its ``config.json``: a grid's cells may come from
    several machines (cluster nodes, or a grid resumed elsewhere), and their times with them."""
    import os
    import platform

    import torch

    from ..bench.report import _cpu_model

    gpu = None
    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index
        gpu = torch.cuda.get_device_name(torch.cuda.current_device() if index is None else index)
    return {
        "node": platform.node(),
        "cpu": _cpu_model(),
        # the instruction set torch's CPU kernels were dispatched for: machines sold under one CPU
        # name differ here (AVX2 or AVX-512), and so do their floating-point results
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "gpu": gpu,
        "torch": torch.__version__,
    }


def _log(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text.rstrip("\n") + "\n")


def run_cell(spec: dict) -> dict:
    """Run (or skip, or resume) one cell; returns ``{"key", "status", "wall_s", "auc", ...}``
    with status ``done``, ``cached`` or ``error`` (``error`` then names the log). ``spec["where"]``
    (optional): where this attempt runs, for the log (an engine's worker or node)."""
    out = Path(spec["out"])
    state = check_cell(out)
    if state.status == "done":
        m = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
        return {
            "key": spec["key"],
            "status": "cached",
            "wall_s": 0.0,
            "auc": m.get("auc"),
            "cell_s": cell_seconds(m)[0],
        }
    out.mkdir(parents=True, exist_ok=True)
    log = out / "cell.log"
    t0 = time.perf_counter()
    try:
        if state.status == "damaged":
            removed = discard_damaged(out)
            _log(log, f"{time.strftime('%Y-%m-%d %H:%M:%S')} damaged ({state.problem}): recomputing; removed {removed}")
        import torch

        from ..data import kfold, load_dataset
        from ..data.report import DataWarning
        from ..runs import train_run
        from ..systems import get_system

        torch.set_num_threads(int(spec["threads"]))
        # Always resume: a cell killed mid-training continues from last.pt, one killed after its
        # training finished (best.pt final, last.pt already dropped) only predicts and scores,
        # and one with no checkpoint starts afresh.
        resume = any(out.glob("**/*.pt"))
        _log(
            log,
            f"{time.strftime('%Y-%m-%d %H:%M:%S')} cell {spec['key']} ({'resume' if resume else 'start'})"
            f"{' on ' + spec['where'] if spec.get('where') else ''}, {spec['threads']} thread(s), "
            f"device {spec['device']}",
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DataWarning)
            ds = load_dataset(spec["data"], label_rule=spec["label_rule"])
        splits = kfold(ds, k=int(spec["k"]), seed=int(spec["seed"]))
        system = get_system("hfcn")
        cfg = system.configure(
            spec["preset"],
            {**spec["overrides"], "threads": int(spec["threads"]), "device": spec["device"]},
            seed=int(spec.get("train_seed", spec["seed"])),
        )

        def progress(kind, done, total, info):
            if kind == "epoch":
                _log(
                    log,
                    f"epoch {done}/{total} loss {info.get('train_loss', 0):.4f} val_auc {info.get('val_auc')} "
                    f"{info.get('seconds', 0):.1f} s",
                )

        # keep_last=False: last.pt only serves a resume; a finished cell keeps best.pt alone.
        report = train_run(
            system,
            cfg,
            ds,
            [splits[int(spec["fold"])]],
            out_dir=out,
            n_boot=int(spec["n_boot"]),
            progress=progress,
            resume=True,
            keep_last=False,
            header={
                "preset": spec["preset"],
                "host": _host(spec["device"]),
                "cell": {
                    **{k: spec[k] for k in ("key", "config_key", "fold", "k")},
                    "train_seed": int(spec.get("train_seed", spec["seed"])),
                },
            },
        )
        seal_cell(out, spec["key"], spec["data"])
        wall = time.perf_counter() - t0
        _log(log, f"finished in {wall:.1f} s: test ROC-AUC {report.get('auc')}")
        (out / "error.json").unlink(missing_ok=True)
        return {
            "key": spec["key"],
            "status": "done",
            "wall_s": wall,
            "auc": report.get("auc"),
            "cell_s": cell_seconds(report)[0],
        }
    except KeyboardInterrupt:
        _log(log, "interrupted; the next run resumes this cell from its checkpoints")
        raise
    except Exception as exc:  # noqa: BLE001 - one failing cell becomes an error row, the grid goes on
        wall = time.perf_counter() - t0
        tb = traceback.format_exc()
        _log(log, tb)
        # The message lands in the grid's records: no machine path of the data or the grid.
        grid = str(Path(spec["out"]).parent.parent)
        msg = portable_root_text(f"{type(exc).__name__}: {exc}", spec["data"]).replace(grid + "/", "")
        write_json_atomic(out / "error.json", {"key": spec["key"], "error": msg, "log": cell_log(spec["key"])})
        return {"key": spec["key"], "status": "error", "wall_s": wall, "error": msg, "log": cell_log(spec["key"])}
