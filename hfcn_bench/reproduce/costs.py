"""What each architecture of Table 5 costs, measured at its cells' own settings.

Table 5 sets accuracy beside cost, so the cost must be that of the models the cells trained:
the cell's backbone, input size, batch and thread count (from the grid's preset and options),
not ``compare``'s quick settings. Per backbone, every architecture of the table is measured side
by side in one call of :func:`~hfcn_bench.bench.model_cost.compare_model_costs` (same weights,
interleaved rounds, fused-vs-naive parity checked before timing): a training step, an inference
forward and the peak memory of a training step, each also as a ratio to Global.

The measurement takes a minute or two on a CPU, so it is kept in ``OUT/costs.json`` beside the
settings and the machine it ran on, and measured again only when those change (another preset,
thread count, device, CPU or torch) or a new architecture joins.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..atomic import write_json_atomic

__all__ = ["cost_settings", "measure_costs", "load_or_measure_costs", "COST_REPEATS"]

COST_REPEATS = 3  # timed training steps per architecture (after one warm-up step)


def cost_settings(backbone: str, crops: list[str], opts) -> dict:
    """The settings a backbone's cost measurement depends on (its cache key)."""
    import torch

    from ..bench.report import _cpu_model
    from ..systems import get_system

    cfg = get_system("hfcn").configure(opts.preset, {"backbone": backbone}, seed=opts.seed)
    return {
        "backbone": backbone,
        "crops": sorted(crops),
        "preset": opts.preset,
        "batch": int(cfg.batch_size),
        "size": int(cfg.image_size),
        "threads": int(opts.threads),
        "device": str(opts.device),
        "repeats": COST_REPEATS,
        "cpu": _cpu_model(),
        "torch": torch.__version__,
    }


def measure_costs(backbone: str, crops: list[str], opts) -> dict:
    """``{crop: row}`` for ``backbone``: per-image training-step and per-ROI inference seconds,
    peak training memory, and each one's ratio to Global (``crop = none``, always measured)."""
    from ..bench.model_cost import compare_model_costs
    from ..systems import get_system
    from .grid import Config, config_overrides

    modes = ["none"] + [c for c in ("rfc", "bfc", "image") if c in crops]
    # The cell's own model configuration (weights included: the ImageNet trunk's cost is the
    # trunk's), at the grid's alpha 0.6 and w 0.5.
    cfg = get_system("hfcn").configure(
        opts.preset, config_overrides(Config(backbone, "bfc", 0.6, 0.5, ("5",))), seed=opts.seed
    )
    rows = compare_model_costs(
        modes,
        backbone=backbone,
        alpha=0.6,
        batch=cfg.batch_size,
        size=cfg.image_size,
        threads=opts.threads,
        repeats=COST_REPEATS,
        warmup=1,
        inference=True,
        op_repeats=5,
        device=opts.device,
        seed=opts.seed,
        base=cfg.model_config(),
        memory=True,
    )
    out = {}
    for r in rows:
        b = r["batch"]
        out[r["crop"]] = {
            "train_step_s": r["train_median_s"],
            "train_step_iqr_s": r["train_iqr_s"],
            "train_per_image_s": r["train_median_s"] / b,
            "infer_per_roi_s": r["infer_median_s"] / b,
            "peak_mib": r.get("train_peak_mib"),
            "peak_how": r.get("peak_memory_how"),
            "train_ratio": r.get("train_ratio"),
            "infer_ratio": r.get("infer_ratio"),
            "memory_ratio": r.get("memory_ratio"),
            "backbone_passes": r["backbone_passes"],
            "batch": b,
            "size": r["size"],
            "threads": r["threads"],
            "device": r["device"],
            "parity_max_abs_diff": r.get("parity_max_abs_diff"),
        }
    return out


def load_or_measure_costs(out: Path, wanted: dict[str, list[str]], opts, measure: bool = True) -> dict:
    """``{backbone: {"settings": ..., "rows": {crop: row}}}`` for the backbones of ``wanted``
    (backbone -> crops of Table 5), from ``OUT/costs.json`` when its settings match, else
    measured now (and saved) unless ``measure`` is false."""
    path = Path(out) / "costs.json"
    try:
        cached = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        cached = {}  # a damaged cache is measured again
    result, changed = {}, False
    for backbone, crops in sorted(wanted.items()):
        settings = cost_settings(backbone, crops, opts)
        old = cached.get(backbone)
        if isinstance(old, dict) and old.get("settings") == settings and isinstance(old.get("rows"), dict):
            result[backbone] = old
        elif measure:
            result[backbone] = {"settings": settings, "rows": measure_costs(backbone, crops, opts)}
            changed = True
    if changed:
        write_json_atomic(path, {**cached, **result})
    return result
