"""``hfcn-bench compare``: the three sections of the report (op speed, model cost, paper
metrics), run in order; the report is handed to ``on_section`` after each one so the caller can
write it, which keeps partial results when a later section fails."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .. import ops
from ..errors import HfcnError
from ..protocol.checks import check_n_boot, check_seed
from . import op_speed
from .rank import localisation
from .report import PAPER_TABLE4, environment

__all__ = [
    "CompareOptions",
    "PRESETS",
    "run_compare",
    "check_options",
    "model_cost_checks",
    "SECTIONS",
    "hfcn_config",
    "quick_system_config",
]

SECTIONS = ("speed", "model", "metrics")


@dataclass
class CompareOptions:
    data: str | None = None  # None: the embedded synthetic phantoms
    preset: str = "quick"
    folds: int = 0  # 0: one 3:1 case-level train/test split (the paper's protocol)
    device: str = "cpu"
    threads: tuple[int, ...] = (1, 2)
    only: tuple[str, ...] = SECTIONS
    backbones: tuple[str, ...] = ("paper",)
    crops: tuple[str, ...] = ("none", "rfc", "bfc", "image")
    alphas: tuple[float, ...] = ()
    systems: tuple[str, ...] = ()  # comparator systems (hfcn_bench.systems), scored on the same split
    label_rule: str = "tirads"
    seed: int = 0
    n_boot: int = 1000
    extra: dict = field(default_factory=dict)


# Per preset: how long each section measures. "quick" fits the 5-minute budget on 2 CPU cores
# (first JIT compile included); "paper" uses the paper's batch/size/training settings.
PRESETS = {
    "quick": {
        "op_min_run_time": 0.25,
        "op_shapes": (op_speed.PAPER_SHAPE, op_speed.LARGE_SHAPE),
        "image_multicrop": True,
        "model_modes": ("none", "rfc", "bfc", "bfc-naive", "image"),
        # Half the paper's 224 px keeps the five variants (image = 6 backbone passes) inside
        # the budget; --preset paper measures at 224.
        "model_batch": 16,
        "model_size": 112,
        "model_repeats": 4,
        "train_preset": "quick",
    },
    "paper": {
        "op_min_run_time": 0.5,
        "op_shapes": (op_speed.PAPER_SHAPE, op_speed.LARGE_SHAPE),
        "image_multicrop": True,
        "model_modes": ("none", "rfc", "bfc", "bfc-naive", "image"),
        "model_batch": 16,
        "model_size": 224,
        "model_repeats": 10,
        "train_preset": "paper",
    },
    # Seconds, not minutes: tiny shapes and one training epoch, to check an install or a change
    # of the harness itself (the tests use it). Its figures measure nothing of interest.
    "smoke": {
        "op_min_run_time": 0.01,
        "op_shapes": (op_speed.OpShape(batch=2, channels=4, height=8, width=8, alpha=0.6, out=8),),
        "image_multicrop": False,
        "copy_bytes": 4 * 2**20,
        "model_modes": ("none", "bfc", "bfc-naive", "image"),
        "model_batch": 2,
        "model_size": 32,
        "model_repeats": 1,
        "train_preset": "smoke",
        # each comparator's own smoke setting
        "system_preset": "smoke",
    },
}


def model_cost_checks(rows: Sequence[dict], device: str = "cpu") -> list[dict]:
    """The targets on measured rows: the fused bfc training step <= 1.3x none on the CPU (the
    model issue) and <= 1.1x on CUDA (issue 14); image-level multi-crop >= 3x none."""
    by = {r["mode"]: r for r in rows}
    checks = []
    bfc_limit = 1.1 if str(device).startswith("cuda") else 1.3
    for mode, limit, le in (("bfc", bfc_limit, True), ("image", 3.0, False)):
        r = by.get(mode)
        value = r.get("train_ratio") if r else None
        checks.append(
            {
                "check": f"{mode} training step / none ({'<=' if le else '>='} {limit})",
                "value": value,
                "limit": limit,
                "passed": None if value is None else (value <= limit if le else value >= limit),
            }
        )
    naive = by.get("bfc-naive")
    if naive and "ratio_vs_bfc" in naive:
        checks.append(
            {
                "check": "bfc naive step / bfc fused step (reported; Amdahl prediction "
                f"{naive.get('amdahl_predicted_ratio_vs_bfc', float('nan')):.3f})",
                "value": naive["ratio_vs_bfc"],
                "limit": None,
                "passed": None,
            }
        )
    return checks


def _speed_section(opts: CompareOptions, preset: dict, progress) -> dict:
    shapes = preset["op_shapes"]
    if str(opts.device).startswith("cuda") and op_speed.GPU_SHAPE not in shapes and preset is not PRESETS["smoke"]:
        shapes = (*shapes, op_speed.GPU_SHAPE)  # the bandwidth target's batch
    if progress:
        progress("copy bandwidth (STREAM-like)")
    # The roofline's ceiling, in the same run as the op's rows (smoke: a small array, seconds).
    copy = op_speed.measure_copy_bandwidth(
        threads=opts.threads,
        device=opts.device,
        min_run_time=preset["op_min_run_time"],
        nbytes=preset.get("copy_bytes"),
    )
    rows = op_speed.measure_op_speed(
        shapes=shapes,
        threads=opts.threads,
        device=opts.device,
        min_run_time=preset["op_min_run_time"],
        image_multicrop_shapes=(shapes[0],) if preset["image_multicrop"] else (),
        seed=opts.seed,
        progress=progress,
    )
    op_speed.add_copy_bandwidth(rows, copy)
    return {"rows": rows, "copy": copy, "checks": op_speed.op_speed_checks(rows, shapes[0], copy_rows=copy)}


def _model_section(opts: CompareOptions, preset: dict, progress) -> dict:
    from .model_cost import compare_model_costs

    # One thread count (the largest asked for): the ratios between variants are what this
    # section reports, and a training step is the slowest thing compare times.
    t = max(opts.threads)
    if progress:
        progress(f"model cost: {', '.join(preset['model_modes'])} at {t} thread(s)")
    rows = compare_model_costs(
        preset["model_modes"],
        batch=preset["model_batch"],
        size=preset["model_size"],
        threads=t,
        repeats=preset["model_repeats"],
        device=opts.device,
        seed=opts.seed,
    )
    checks = [{**c, "check": f"{c['check']} [{t} thread{'s' * (t > 1)}]"} for c in model_cost_checks(rows, opts.device)]
    return {"rows": rows, "checks": checks}


def _ci(v) -> str | None:
    if not v or v[0] is None:
        return None
    return f"{v[0]:.3f}-{v[1]:.3f}"


def hfcn_config(preset: dict, backbone: str, crop: str, alpha: float | None, device: str, seed: int):
    """The HFCN config of one metrics row: the preset's training preset plus its overrides."""
    from ..systems import get_system

    return get_system("hfcn").configure(
        preset["train_preset"],
        {
            "backbone": backbone,
            "crop": crop,
            "device": device,
            **preset.get("train_overrides", {}),
            **({"alpha": alpha} if alpha is not None else {}),
        },
        seed=seed,
    )


def quick_system_config(name: str, preset: dict, seed: int):
    """A comparator's config under a compare preset: its own quick (or smoke) setting."""
    from ..systems import get_system

    return get_system(name).configure(preset.get("system_preset", "quick"), seed=seed)


# Table 5's paired comparisons (a - b), per backbone, when both rows were trained
PAIRS = (("bfc", "image"), ("rfc", "image"), ("image", "none"))
_ARCH = {"none": "Global", "rfc": "RFC (alpha {a})", "bfc": "BFC (alpha {a})", "image": "Image"}


def _cost_ratios(model_cost: dict | None) -> dict[str, float]:
    """crop mode -> training-step ratio to ``none`` from the model section of the same run (the
    most threads it measured, as training runs)."""
    rows = (model_cost or {}).get("rows") or []
    if not rows:
        return {}
    most = max(r.get("threads") or 0 for r in rows)
    return {r["mode"]: r["train_ratio"] for r in rows if (r.get("threads") or 0) == most and r.get("train_ratio")}


def _paired_rows(preds: dict, alphas: dict, n_boot: int, seed: int) -> list[dict]:
    """The paired AUC differences of Table 5 on one split (same ROIs): paired case bootstrap
    and DeLong's test."""
    from .. import metrics as M

    out = []
    for backbone in dict.fromkeys(b for b, _ in preds):
        for a, b in PAIRS:
            pa, pb = preds.get((backbone, a)), preds.get((backbone, b))
            if pa is None or pb is None:
                continue
            ib = {k: i for i, k in enumerate(pb["keys"])}
            sel_a = [i for i, k in enumerate(pa["keys"]) if k in ib]
            sel_b = [ib[pa["keys"][i]] for i in sel_a]
            name = " - ".join(_ARCH[c].format(a=alphas.get((backbone, c))) for c in (a, b))
            row = {"backbone": backbone, "comparison": name, "n_rois": len(sel_a)}
            try:
                y = pa["labels"][sel_a]
                boot = M.paired_auc_difference(
                    y, pa["scores"][sel_a], pb["scores"][sel_b], pa["cases"][sel_a], n_boot=n_boot, seed=seed
                )
                dl = M.delong_test(y, pa["scores"][sel_a], pb["scores"][sel_b])
            except M.UndefinedMetricError as exc:
                row["error"] = str(exc)
            else:
                row.update({"diff": boot["diff"], "ci": _ci([boot["low"], boot["high"]]), "delong_p": dl["p"]})
            out.append(row)
    return out


def _metrics_section(
    opts: CompareOptions, preset: dict, progress, data_info: dict, model_cost: dict | None = None
) -> dict:
    from ..data import ensure_synthetic, kfold, load_dataset, split_train_test
    from ..runs import train_run

    path = opts.data or str(ensure_synthetic())
    ds = load_dataset(path, label_rule=opts.label_rule, warn=False)
    if not ds.samples:
        raise HfcnError(
            f"{path}: no usable labelled ROI under the {opts.label_rule!r} label rule",
            hint="run `hfcn-bench data check PATH` to see what the reader found",
        )
    data_info.update(
        {
            "source": "synthetic phantoms (embedded default)" if opts.data is None else "user data",
            "path": str(path),
            "label_rule": opts.label_rule,
            "fingerprint": ds.fingerprint,
            "rois": len(ds.samples),
            "class_counts": ds.class_counts(),
        }
    )
    rows, curves, baselines = [], {}, []
    preds, alphas = {}, {}
    costs = _cost_ratios(model_cost)
    # The same split (or the same k folds) for every row: HFCN's and the comparators'.
    splits = (
        kfold(ds, k=opts.folds, seed=opts.seed)
        if opts.folds and opts.folds > 1
        else [split_train_test(ds, test_fraction=0.25, seed=opts.seed)]
    )
    combos = [(b, c, None) for b in opts.backbones for c in opts.crops]
    combos += [(b, "bfc", a) for b in opts.backbones for a in opts.alphas]
    for backbone, crop, alpha in combos:
        config = hfcn_config(preset, backbone, crop, alpha, opts.device, opts.seed)
        label = f"{backbone} {crop}" + (f" a{alpha}" if alpha is not None else "")
        if progress:
            progress(f"metrics: training {label}")
        start = time.perf_counter()
        out = {}
        res = train_run("hfcn", config, ds, splits, n_boot=opts.n_boot, predictions_out=out)
        elapsed = time.perf_counter() - start
        if alpha is None:
            preds[(backbone, crop)], alphas[(backbone, crop)] = out, config.alpha
        m = res["metrics"]
        paper = PAPER_TABLE4.get((crop, backbone)) if alpha is None else None
        rows.append(
            {
                "system": "HFCN",
                "backbone": backbone,
                "crop": crop,
                "alpha": config.alpha if crop != "none" else None,
                **_metric_cells(res, elapsed),
                "train_cost": costs.get(crop) if backbone == "paper" else None,
                "paper": "/".join(f"{v:.1f}" for v in paper) if paper else None,
            }
        )
        if res.get("roc") and alpha is None:
            curves[label] = (res["roc"]["fpr"], res["roc"]["tpr"], m.get("auc"))
        if res.get("majority_baseline") and not baselines:
            baselines.append({"protocol": res.get("protocol"), **res["majority_baseline"]})
    for name in opts.systems:
        if name == "hfcn":
            continue  # HFCN's rows are the backbones x crops above
        if progress:
            progress(f"metrics: comparator {name}")
        start = time.perf_counter()
        try:
            res = train_run(name, quick_system_config(name, preset, opts.seed), ds, splits, n_boot=opts.n_boot)
        except Exception as exc:  # noqa: BLE001 - one failing comparator must not lose the other rows
            hint = getattr(exc, "hint", None)
            msg = f"{type(exc).__name__}: {exc}" + (f" (hint: {hint})" if hint else "")
            warnings.warn(f"comparator {name} failed: {msg}", RuntimeWarning, stacklevel=2)
            rows.append({"system": name, "error": msg})
            continue
        rows.append(
            {
                "system": name,
                "backbone": None,
                "crop": None,
                "alpha": None,
                **_metric_cells(res, time.perf_counter() - start),
                "localisation": localisation(res),
                "limitations": "; ".join(res.get("limitations", [])),
            }
        )
        if res.get("roc"):
            curves[name] = (res["roc"]["fpr"], res["roc"]["tpr"], res["metrics"].get("auc"))
        for vname, var in (res.get("variants") or {}).items():
            rows.append(
                {
                    "system": f"{name}/{vname}",
                    "backbone": None,
                    "crop": None,
                    "alpha": None,
                    **_metric_cells(var, 0.0),
                    "train_s": None,
                    "localisation": var.get("description"),
                }
            )
    return {
        "rows": rows,
        "baseline": baselines,
        "roc": curves,
        "paired": _paired_rows(preds, alphas, opts.n_boot, opts.seed),
    }


def _metric_cells(res: dict, elapsed: float) -> dict:
    m = res["metrics"]
    return {
        "accuracy": m.get("accuracy"),
        "precision": m.get("precision"),
        "recall": m.get("recall"),
        "f1": m.get("f1"),
        "f1_ci": _ci(m.get("ci", {}).get("f1")),
        "auc": m.get("auc"),
        "auc_ci": _ci(m.get("ci", {}).get("auc")),
        "specificity": m.get("specificity"),
        "threshold": m.get("threshold"),
        "train_s": elapsed,
        "protocol": res.get("protocol"),
    }


def check_options(opts: CompareOptions) -> None:
    """Every option error, before anything is measured or written."""
    if opts.preset not in PRESETS:
        raise HfcnError(f"unknown preset {opts.preset!r}; known: {', '.join(PRESETS)}")
    unknown = set(opts.only) - set(SECTIONS)
    if unknown:
        raise HfcnError(f"unknown section(s) {sorted(unknown)}; known: {', '.join(SECTIONS)}")
    if opts.folds == 1 or opts.folds < 0:
        raise HfcnError(f"--folds must be at least 2 (or 0 for one 3:1 split), got {opts.folds}")
    if not opts.threads or min(opts.threads) < 1:
        raise HfcnError(f"threads must be positive integers, got {opts.threads!r}")
    check_n_boot(opts.n_boot)
    check_seed(opts.seed)
    if opts.device.startswith("cuda") and not torch.cuda.is_available():
        raise HfcnError("--device cuda asked for, but no CUDA GPU is available", hint="use --device cpu")
    from ..models import available_backbones

    for b in opts.backbones:
        if b not in available_backbones():
            raise HfcnError(f"unknown backbone {b!r}; known: {', '.join(available_backbones())}")
    from ..models import CROP_MODES

    for c in opts.crops:
        if c not in CROP_MODES:
            raise HfcnError(f"unknown crop mode {c!r}; known: {', '.join(CROP_MODES)}")
    for a in opts.alphas:
        if not 0 < a <= 1:
            raise HfcnError(f"alpha must be in (0, 1], got {a}")
    from ..systems import resolve_names

    opts.systems = tuple(resolve_names(opts.systems))


def run_compare(
    opts: CompareOptions,
    progress: Callable[[str], None] | None = None,
    on_section: Callable[[dict], None] | None = None,
) -> dict:
    """Run the selected sections; errors of one section are recorded in ``report["errors"]``
    and the next sections still run. Raises only for bad options."""
    check_options(opts)
    preset = PRESETS[opts.preset]
    backend = ops.backend()
    report = {
        "environment": environment(backend, opts.device, opts.threads),
        "options": {k: v for k, v in vars(opts).items()},
        "seeds": {"global": opts.seed},
        "data": {},
        "notes": [
            "Timings on shared machines are noisy: compare ratios measured in one run.",
            "CPU peak memory is the growth of the resident set, sampled while the method runs once "
            "(after malloc_trim); CUDA peak memory is torch.cuda.max_memory_allocated.",
            "roi_align and grid_sample clamp at the map border, crop_resize (= F.interpolate on the crop) "
            "at the crop border: they are parity-checked on the crop interior, where the conventions agree.",
            "Paper columns quote Song et al., IEEE Access 8:64064-64074 (2020), Table 4, measured on the "
            "authors' mixed public + private data: an anchor, not a number to expect here.",
        ],
        "errors": [],
    }
    if "speed" in opts.only:
        report["notes"].append(
            "Op floors: forward = a copy of the output's bytes; backward = a copy of the output gradient plus "
            "writing the input gradient; forward+backward = both. 'x floor' is a row's median over the floor's "
            "(same shape, direction, threads). GB/s: the bytes a direction must move (input + output) over its "
            "median, beside a STREAM-like copy (read + write bytes) measured in the same run (roofline.png)."
        )
    if opts.device.startswith("cuda") and "speed" in opts.only:
        peak, how = op_speed.peak_bandwidth(opts.device)
        report["notes"].append(
            "Device peak " + (f"{peak:.0f} GB/s ({how})." if peak else f"unknown ({how}); set HFCN_PEAK_GBPS.")
        )
    if "metrics" in opts.only and "model" in opts.only:
        report["notes"].append(
            f"'train step / Global' in the metrics table: the paper CNN's training-step ratio to Global "
            f"from the model-cost section of this run (batch {preset['model_batch']}, {preset['model_size']} px, "
            f"{max(opts.threads)} thread(s)), set beside the row it costs; the metrics rows themselves train at "
            f"the '{preset['train_preset']}' preset's settings."
        )
    if backend == "reference":
        report["notes"].append(
            f"The C++ extension is not in use ({ops.extension_error()}): 'fused' rows run the reference."
        )
    for section in SECTIONS:
        if section not in opts.only:
            continue
        try:
            if section == "speed":
                report["op_speed"] = _speed_section(opts, preset, progress)
            elif section == "model":
                report["model_cost"] = _model_section(opts, preset, progress)
            else:
                report["metrics"] = _metrics_section(opts, preset, progress, report["data"], report.get("model_cost"))
        except KeyboardInterrupt:
            report["errors"].append(f"{section}: interrupted")
            if on_section:
                on_section(report)
            raise
        except Exception as exc:  # one failing section must not lose the others
            hint = getattr(exc, "hint", None)
            report["errors"].append(f"{section}: {type(exc).__name__}: {exc}" + (f" (hint: {hint})" if hint else ""))
        if on_section:
            on_section(report)
    return report
