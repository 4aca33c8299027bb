"""PNG figures for benchmark reports: ROC curves, speed bars, the op's roofline, the α sweep
(paper Table 3).

Figures are drawn on a bare :class:`matplotlib.figure.Figure` with an Agg canvas instead of
through ``pyplot``: pyplot keeps global figure state and a process-wide backend, and calling
``matplotlib.use("Agg")`` from a library would switch the backend of whoever imported us (a
notebook, a GUI). A Figure with its own Agg canvas renders headless, needs no display and
leaves the caller's matplotlib configuration untouched.

Every function writes its PNG atomically (a temporary file in the target directory, then
``os.replace``), so a crash mid-write never leaves a truncated image where a report expects
one, and returns the path written.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..atomic import atomic_write

__all__ = [
    "plot_roc_curves",
    "plot_speed_bars",
    "plot_roofline",
    "plot_alpha_sweep",
    "plot_forest",
    "plot_reliability",
    "plot_prediction",
    "prediction_figure",
    "figure_rgb",
    "plot_alpha_curve",
    "plot_differences",
    "plot_accuracy_cost",
    "plot_pair",
]

_DPI = 120


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save_atomic(fig: Figure, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    return atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=_DPI, metadata=metadata))


def _as_1d(values: Any, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{what} must be a non-empty 1-D sequence, got shape {arr.shape}")
    return arr


def plot_roc_curves(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float], float | None]],
    path: str | os.PathLike,
    title: str = "ROC curves (malignant = positive)",
) -> Path:
    """One ROC curve per model on shared axes, with the chance diagonal.

    ``curves`` maps a model name to ``(fpr, tpr, auc)``, e.g. ``(*roc_curve(y, p)[:2],
    roc_auc(y, p))`` from :mod:`hfcn_bench.metrics`; ``auc`` may be ``None`` to leave it out of
    the legend. Points are joined by straight lines, the trapezoidal reading whose area is the
    Mann-Whitney AUC.
    """
    if not curves:
        raise ValueError("curves is empty: nothing to plot")
    fig = _new_figure(5.5, 5.0)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="chance (AUC 0.5)")
    for name, entry in curves.items():
        if len(entry) != 3:
            raise ValueError(f"curve {name!r}: expected (fpr, tpr, auc), got {len(entry)} items")
        fpr = _as_1d(entry[0], f"curve {name!r} fpr")
        tpr = _as_1d(entry[1], f"curve {name!r} tpr")
        if fpr.shape != tpr.shape:
            raise ValueError(f"curve {name!r}: fpr and tpr differ in length ({fpr.size} vs {tpr.size})")
        auc = entry[2]
        label = name if auc is None else f"{name} (AUC {float(auc):.3f})"
        ax.plot(fpr, tpr, linewidth=1.8, label=label)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate (1 − specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    return _save_atomic(fig, path)


def _time_unit(seconds: float) -> tuple[str, float]:
    # Pick the unit that keeps the largest bar between 1 and 1000 so tick labels stay short.
    for unit, scale in (("s", 1.0), ("ms", 1e3), ("µs", 1e6)):
        if seconds * scale >= 1.0:
            return unit, scale
    return "ns", 1e9


def plot_speed_bars(
    rows: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    title: str = "Speed",
) -> Path:
    """Horizontal bars of median time per row, with the interquartile range as error bars.

    Each row needs ``name``, ``median_s`` and ``iqr_s`` (seconds). When a row also holds the
    quartiles ``q1_s`` and ``q3_s`` the error bar spans them exactly; otherwise it is drawn
    ±``iqr_s``/2 around the median, which shows the IQR's width but not its skew. The time unit
    (s, ms, µs, ns) follows the slowest median. Rows are drawn top to bottom in the given order.
    """
    if not rows:
        raise ValueError("rows is empty: nothing to plot")
    names, medians, lower, upper = [], [], [], []
    for i, row in enumerate(rows):
        missing = [k for k in ("name", "median_s", "iqr_s") if k not in row]
        if missing:
            raise ValueError(f"row {i} lacks {', '.join(missing)}")
        median, iqr = float(row["median_s"]), float(row["iqr_s"])
        if not (math.isfinite(median) and math.isfinite(iqr)) or median < 0 or iqr < 0:
            raise ValueError(f"row {i} ({row['name']!r}): median_s and iqr_s must be finite and >= 0")
        if "q1_s" in row and "q3_s" in row:
            lo, hi = median - float(row["q1_s"]), float(row["q3_s"]) - median
            if lo < 0 or hi < 0:
                raise ValueError(f"row {i} ({row['name']!r}): need q1_s <= median_s <= q3_s")
        else:
            lo = hi = iqr / 2.0
        names.append(str(row["name"]))
        medians.append(median)
        lower.append(lo)
        upper.append(hi)

    unit, scale = _time_unit(max(medians))
    med = np.asarray(medians) * scale
    err = np.asarray([lower, upper]) * scale
    fig = _new_figure(7.0, 1.2 + 0.45 * len(rows))
    ax = fig.add_subplot()
    pos = np.arange(len(rows))
    ax.barh(pos, med, xerr=err, capsize=4, color="tab:blue", alpha=0.8, ecolor="0.2")
    ax.set_yticks(pos, names)
    ax.invert_yaxis()
    for y, (m, hi) in enumerate(zip(med, err[1])):
        ax.annotate(
            f"{m:.3g} {unit}",
            xy=(m + hi, y),
            xytext=(4, 0),
            textcoords="offset points",
            va="center",
            fontsize="small",
        )
    # Room on the right for the value labels.
    ax.set_xlim(0, float(np.max(med + err[1])) * 1.25 or 1.0)
    ax.set_xlabel(f"median time ({unit}); error bar = interquartile range")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return _save_atomic(fig, path)


_DIRECTION_SHORT = {"forward": "fwd", "backward": "bwd", "forward+backward": "fwd+bwd"}


def plot_roofline(
    rows: Sequence[Mapping[str, Any]],
    copy_rows: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    peak_gbps: float | None = None,
    peak_how: str = "",
    title: str = "crop + resize: achieved bandwidth against the machine's",
) -> Path:
    """The op's roofline: achieved GB/s (``gbps``: the bytes a direction must move over its
    median) of every method, direction and thread count, one panel per shape, against the
    ceiling of the machine's copy bandwidth at each thread count (``copy_rows``: ``threads``,
    ``gbps``, from :func:`hfcn_bench.bench.op_speed.measure_copy_bandwidth`) and, when given,
    the device's peak (a GPU's datasheet bandwidth). A method at its floor sits near the copy
    line; log scale, so that the naive path and the peers fit beside it. ``rows`` are
    ``measure_op_speed``'s; rows without GB/s (not timed, image multi-crop) are left out."""
    pts = [r for r in rows if r.get("gbps") and r.get("threads") and r.get("direction") in _DIRECTION_SHORT]
    if not pts:
        raise ValueError("no row has a GB/s figure: nothing to plot")
    copy = {int(c["threads"]): float(c["gbps"]) for c in copy_rows if c.get("gbps")}
    shapes = list(dict.fromkeys(r["shape"] for r in pts))
    methods = list(dict.fromkeys(r["method"] for r in pts))
    groups = [
        (d, t)
        for d in _DIRECTION_SHORT
        for t in sorted({r["threads"] for r in pts})
        if any(r["direction"] == d and r["threads"] == t for r in pts)
    ]
    gbps = {(r["shape"], r["method"], r["direction"], r["threads"]): float(r["gbps"]) for r in pts}
    fig = _new_figure(max(7.5, len(shapes) * (1.2 + 0.75 * len(groups))), 5.0)
    axes = np.atleast_1d(fig.subplots(1, len(shapes), sharey=True))
    markers = "osD^v<>Xp*"
    width = 0.7  # of a group, shared by its methods' points
    for ax, shape in zip(axes, shapes):
        for g, (_, threads) in enumerate(groups):
            if threads in copy:
                ax.hlines(copy[threads], g - 0.45, g + 0.45, colors="0.25", linestyles="--", linewidth=1.4)
        for m, method in enumerate(methods):
            xs, ys = [], []
            for g, (direction, threads) in enumerate(groups):
                value = gbps.get((shape, method, direction, threads))
                if value is not None:
                    xs.append(g - width / 2 + width * (m + 0.5) / len(methods))
                    ys.append(value)
            if xs:
                ax.plot(xs, ys, markers[m % len(markers)], color=f"C{m}", markersize=7, label=method)
        if peak_gbps:
            ax.axhline(float(peak_gbps), color="tab:red", linewidth=1.4)
        ax.set_xticks(range(len(groups)), [f"{_DIRECTION_SHORT[d]}\n{t} thr" for d, t in groups], fontsize=8)
        ax.set_xlim(-0.6, len(groups) - 0.4)
        ax.set_yscale("log")
        ax.set_title(shape, fontsize=9)
        ax.grid(axis="y", alpha=0.3, which="both")
    axes[0].set_ylabel("achieved GB/s (bytes the direction must move / median)")
    axes[0].plot([], [], "--", color="0.25", label="copy bandwidth (STREAM-like), same threads")
    if peak_gbps:
        axes[0].plot([], [], "-", color="tab:red", label=f"device peak {float(peak_gbps):.0f} GB/s {peak_how}".strip())
    # Below the panels: inside, it would hide the points of whichever group it sat on.
    fig.legend(*axes[0].get_legend_handles_labels(), fontsize=7, loc="outside lower center", ncols=3)
    fig.suptitle(title, fontsize=10)
    return _save_atomic(fig, path)


def plot_alpha_sweep(
    alphas: Sequence[float],
    values: Mapping[str, Sequence[float]],
    path: str | os.PathLike,
    title: str = "Crop size α (BFC)",
    ci: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
) -> Path:
    """Metrics against the crop ratio α, one line per metric (the paper's Table 3 layout;
    α = 1.0 is the global branch alone).

    ``values`` maps a metric name to one value per α. ``ci`` optionally maps some of those
    names to ``(lows, highs)``, drawn as a shaded band, e.g. case-bootstrap intervals from
    :func:`hfcn_bench.metrics.bootstrap_ci`. NaN values leave a gap.
    """
    x = _as_1d(alphas, "alphas")
    if not values:
        raise ValueError("values is empty: nothing to plot")
    ci = ci or {}
    unknown = set(ci) - set(values)
    if unknown:
        raise ValueError(f"ci names metrics not in values: {sorted(unknown)}")
    order = np.argsort(x, kind="stable")
    fig = _new_figure(6.0, 4.0)
    ax = fig.add_subplot()
    for name, ys in values.items():
        y = _as_1d(ys, f"values[{name!r}]")
        if y.size != x.size:
            raise ValueError(f"values[{name!r}] has {y.size} entries for {x.size} alphas")
        (line,) = ax.plot(x[order], y[order], marker="o", label=name)
        if name in ci:
            lows, highs = (_as_1d(b, f"ci[{name!r}]") for b in ci[name])
            if lows.size != x.size or highs.size != x.size:
                raise ValueError(f"ci[{name!r}] needs one low and one high per alpha")
            ax.fill_between(x[order], lows[order], highs[order], color=line.get_color(), alpha=0.15)
    ax.set_xlabel("α (crop side / feature-map side)")
    ax.set_ylabel("value")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _save_atomic(fig, path)


def plot_forest(
    rows: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    baseline: Mapping[str, Any] | None = None,
    title: str = "Models ranked by ROC-AUC (95% case-bootstrap intervals)",
    panels: Sequence[tuple[str, str]] = (("auc", "ROC-AUC"), ("f1", "F1 (malignant positive)")),
) -> Path:
    """A forest plot: one line per model, one panel per ``(key, label)`` of ``panels`` (ROC-AUC
    and F1 by default), each point with its interval (``{key}_ci`` = [low, high], optional);
    rows top to bottom in the given order. ``baseline`` (``auc``, ``f1``) draws the
    majority-class baseline as dotted lines; AUC 0.5 (chance) is drawn on AUC panels."""
    if not rows:
        raise ValueError("rows is empty: nothing to plot")
    fig = _new_figure(4.5 * len(panels), 1.3 + 0.42 * len(rows))
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True))
    pos = np.arange(len(rows))
    for ax, (key, label) in zip(axes, panels):
        for y, row in zip(pos, rows):
            v = row.get(key)
            if v is None:
                continue
            ci = row.get(f"{key}_ci")
            if ci:
                ax.plot([ci[0], ci[1]], [y, y], color="0.35", linewidth=1.6)
            ax.plot(
                [v],
                [y],
                "o",
                color="tab:blue" if not str(row.get("name", "")).startswith("HFCN") else "tab:red",
                markersize=6,
            )
        base_key = key.removeprefix("internal_")
        if base_key == "auc":
            ax.axvline(0.5, linestyle="--", color="0.6", linewidth=1, label="chance")
        if (
            baseline
            and baseline.get(base_key) is not None
            and not (base_key == "auc" and baseline[base_key] == 0.5)
            and not key.startswith("internal_")
        ):
            ax.axvline(
                float(baseline[base_key]), linestyle=":", color="tab:green", linewidth=1.4, label="majority baseline"
            )
        ax.set_xlabel(label)
        ax.grid(axis="x", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize="small")
    axes[0].set_yticks(pos, [str(r["name"]) for r in rows])
    axes[0].invert_yaxis()
    fig.suptitle(title)
    return _save_atomic(fig, path)


def plot_reliability(
    calibration: Mapping[str, Any], path: str | os.PathLike, title: str = "Reliability (calibration) diagram"
) -> Path:
    """Observed malignant fraction against the mean predicted probability per bin (the
    diagonal is perfect calibration), with each bin's count as a bar; the Brier score and the
    expected calibration error in the title. ``calibration`` is ``protocol.calibration``'s."""
    bins = [b for b in calibration.get("bins", []) if b.get("n")]
    if not bins:
        raise ValueError("calibration has no filled bin: nothing to plot")
    fig = _new_figure(5.6, 5.2)
    ax, hist = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="perfect calibration")
    ax.plot([b["mean_prob"] for b in bins], [b["observed"] for b in bins], "o-", color="tab:red", label="model")
    ax.set_ylabel("observed malignant fraction")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left")
    ax.set_title(
        f"{title}\nBrier {calibration['brier']:.3f}, ECE {calibration['ece']:.3f}, n = {calibration['n']}", fontsize=10
    )
    all_bins = calibration["bins"]
    hist.bar(
        [(b["low"] + b["high"]) / 2 for b in all_bins],
        [b["n"] for b in all_bins],
        width=[(b["high"] - b["low"]) * 0.9 for b in all_bins],
        color="0.6",
    )
    hist.set_xlabel("predicted P(malignant)")
    hist.set_ylabel("ROIs")
    return _save_atomic(fig, path)


def plot_prediction(pred, title: str, path: str | os.PathLike, source: str | None = None) -> Path:
    """One ROI's prediction (a ``runs.Prediction``) as a PNG: see :func:`prediction_figure`.
    ``source`` (what the picture was made from) is kept in the PNG's ``Source`` text field."""
    return _save_atomic(prediction_figure(pred, title), path, None if source is None else {"Source": source})


def prediction_figure(pred, title: str, roi: np.ndarray | None = None) -> Figure:
    """One ROI's prediction (a ``runs.Prediction``) as a figure: for HFCN its crop windows,
    each with its P(malignant), beside a Grad-CAM overlay of the fused probability; for a
    system with a Grad-CAM (the CNN comparators) the ROI beside its overlay; for the others
    the ROI with the call. ``roi`` (RGB array) is the ROI to show when the prediction has no
    explanation (default: cut from the sample's image file)."""
    info = pred.explain
    call = pred.call
    if not info:
        if roi is None:
            from ..data.rois import crop_roi, open_rgb

            roi = np.asarray(crop_roi(open_rgb(pred.sample.image_path), pred.roi_box or pred.sample.bbox, size=256))
        fig = _new_figure(4.6, 4.8)
        ax = fig.subplots(1, 1)
        ax.imshow(np.asarray(roi))
        ax.set_axis_off()
        fig.suptitle(f"{title}\nP = {pred.prob:.3f} -> {call} at threshold {pred.threshold:.3f}", fontsize=10)
        return fig
    img = np.asarray(info["roi"])
    fig = _new_figure(8.4, 4.6)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.imshow(img)
    if "boxes" in info:
        _draw_crop_windows(ax1, info, img.shape[0])
    else:
        ax1.set_title("ROI as classified", fontsize=9)
    ax1.set_axis_off()
    ax2.imshow(img)
    if info.get("cam") is not None:
        ax2.imshow(_upsampled(info["cam"], img.shape[:2]), cmap="jet", alpha=0.45, vmin=0, vmax=1)
    ax2.set_title(info.get("cam_of") or "Grad-CAM of the fused P(malignant)", fontsize=9)
    ax2.set_axis_off()
    parts = [f"P = {pred.prob:.3f}"]
    if info.get("global_prob") is not None:
        parts.append(f"global {info['global_prob']:.3f}")
    if info.get("crop_prob") is not None:
        parts.append(f"crops {info['crop_prob']:.3f} (ω = {info['branch_weight']:g})")
    fig.suptitle(f"{title}\n{', '.join(parts)} -> {call} at threshold {pred.threshold:.3f}", fontsize=10)
    return fig


def plot_pair(
    image_a: str | os.PathLike,
    image_b: str | os.PathLike,
    path: str | os.PathLike,
    titles: tuple[str, str],
    caption: str,
    width: int = 160,
) -> Path:
    """Two images side by side, each as a thumbnail at most ``width`` pixels wide (the figure is
    sized for them), under ``titles`` and below ``caption``: for judging a near-duplicate match
    by eye without keeping full frames around."""
    from PIL import Image

    from ..data.rois import open_rgb

    thumbs = []
    for image in (image_a, image_b):
        im = open_rgb(image)
        im.thumbnail((width, width * 4), Image.Resampling.LANCZOS)
        thumbs.append(np.asarray(im))
    h = max(t.shape[0] for t in thumbs)
    fig = _new_figure((2 * width + 40) / _DPI, (h + 70) / _DPI)
    for ax, t, title in zip(fig.subplots(1, 2), thumbs, titles):
        ax.imshow(t, interpolation="nearest")
        ax.set_title(title, fontsize=6)
        ax.set_axis_off()
    fig.suptitle(caption, fontsize=6)
    return _save_atomic(fig, path)


def figure_rgb(fig: Figure) -> np.ndarray:
    """A figure rendered to an RGB ``uint8`` array [H, W, 3] (for the app's image outputs)."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def _upsampled(cam, size: tuple[int, int]) -> np.ndarray:
    """A Grad-CAM map bilinearly resized to the displayed ROI (the map is a few cells wide)."""
    import torch

    t = torch.from_numpy(np.asarray(cam, dtype=np.float32))[None, None]
    return torch.nn.functional.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)[0, 0].numpy()


def _draw_crop_windows(ax, info: dict, display: int) -> None:
    """HFCN's crop windows on the displayed ROI, each outlined and labelled in the colour of
    its own P(malignant)."""
    from matplotlib import colormaps
    from matplotlib.patches import Rectangle

    fh, fw = info["feature_hw"]
    # Windows are in feature-map pixels (image pixels for crop="image"); each map pixel covers
    # display/map pixels of the ROI.
    if info["crop"] == "image":
        sy = sx = display / info["image_size"]
    else:
        sy, sx = display / fh, display / fw
    cmap = colormaps["RdYlGn_r"]
    n = len(info["boxes"])
    for k, ((t, left, h, w), p) in enumerate(zip(info["boxes"], info["crop_probs"])):
        inset = 1.5 * (k + 1)  # overlapping windows stay distinguishable
        ax.add_patch(
            Rectangle(
                (left * sx + inset, t * sy + inset),
                w * sx - 2 * inset,
                h * sy - 2 * inset,
                fill=False,
                edgecolor=cmap(p),
                linewidth=2,
            )
        )
        cx, cy = (left + w / 2) * sx, (t + h / 2) * sy
        # Label each window towards its own corner (the centre window in the middle).
        if n == 5 and info["crop"] in ("bfc", "image") and k < 4:
            cx = (left * sx + 12) if k in (0, 2) else ((left + w) * sx - 12)
            cy = (t * sy + 14) if k in (0, 1) else ((t + h) * sy - 14)
        ax.text(
            cx,
            cy,
            f"{p:.2f}",
            color="white",
            fontsize=9,
            ha="center",
            va="center",
            bbox=dict(boxstyle="round,pad=0.2", fc=cmap(p), ec="none", alpha=0.85),
        )
    ax.set_title("crop windows: P(malignant) per crop" if n else "global branch only", fontsize=9)


def plot_alpha_curve(
    rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, title: str = "Choice of alpha (paper Table 3)"
) -> Path:
    """ROC-AUC against alpha with its 95 % interval as a band, accuracy and F1 beside it, and
    the paper's accuracy/F1 (``paper_accuracy``/``paper_f1`` in %) where given. ``rows``: one
    per alpha with ``alpha``, ``auc``, ``auc_ci``, ``accuracy``, ``f1``."""
    rows = sorted(rows, key=lambda r: r["alpha"])
    a = _as_1d([r["alpha"] for r in rows], "alpha")
    fig = _new_figure(6.4, 4.2)
    ax = fig.subplots(1, 1)
    auc = np.asarray([np.nan if r.get("auc") is None else r["auc"] for r in rows])
    lo = np.asarray([np.nan if not r.get("auc_ci") else r["auc_ci"][0] for r in rows])
    hi = np.asarray([np.nan if not r.get("auc_ci") else r["auc_ci"][1] for r in rows])
    ax.fill_between(a, lo, hi, color="tab:red", alpha=0.18, label="ROC-AUC 95% CI")
    ax.plot(a, auc, "o-", color="tab:red", label="ROC-AUC")
    ax.plot(a, [r.get("accuracy") for r in rows], "s--", color="tab:blue", label="accuracy")
    ax.plot(a, [r.get("f1") for r in rows], "^--", color="tab:green", label="F1")
    if any(r.get("paper_accuracy") for r in rows):
        ax.plot(
            a,
            [None if r.get("paper_accuracy") is None else r["paper_accuracy"] / 100 for r in rows],
            "s:",
            color="tab:blue",
            alpha=0.5,
            label="paper accuracy",
        )
        ax.plot(
            a,
            [None if r.get("paper_f1") is None else r["paper_f1"] / 100 for r in rows],
            "^:",
            color="tab:green",
            alpha=0.5,
            label="paper F1",
        )
    ax.axhline(0.5, linestyle="--", color="0.6", linewidth=1)
    ax.set_xlabel("alpha (window side / map side; 1.0 = Global)")
    ax.set_ylabel("value")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower left")
    return _save_atomic(fig, path)


def plot_differences(
    rows: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    title: str = "Paired ROC-AUC differences (95% paired case-bootstrap CI)",
) -> Path:
    """A forest plot of paired AUC differences: one line per ``backbone: comparison`` with
    ``diff``, ``low``, ``high`` and the DeLong p-value in the label; 0 (no difference) drawn."""
    if not rows:
        raise ValueError("rows is empty: nothing to plot")
    fig = _new_figure(7.5, 1.2 + 0.45 * len(rows))
    ax = fig.subplots(1, 1)
    pos = np.arange(len(rows))
    for y, r in zip(pos, rows):
        ax.plot([r["low"], r["high"]], [y, y], color="0.35", linewidth=1.6)
        ax.plot([r["diff"]], [y], "o", color="tab:red" if r["diff"] > 0 else "tab:blue", markersize=6)
    ax.axvline(0.0, linestyle="--", color="0.6", linewidth=1)
    p = [r.get("delong_p") for r in rows]
    ax.set_yticks(
        pos,
        [
            f"{r['backbone']}: {r['comparison']} (DeLong p {'—' if v is None or v != v else f'{v:.3f}'})"
            for r, v in zip(rows, p)
        ],
    )
    ax.invert_yaxis()
    ax.set_xlabel("ROC-AUC difference")
    ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title, fontsize=10)  # over the whole figure: the long labels leave the axes narrow
    return _save_atomic(fig, path)


def plot_accuracy_cost(
    rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, title: str = "Accuracy against training cost (Table 5)"
) -> Path:
    """The frontier of Table 5: ROC-AUC with its 95% interval (``auc``, ``auc_ci``) against the
    training cost per image (``cost.train_per_image_s``, log axis); one point per architecture
    (labelled), one colour per backbone."""
    if not rows:
        raise ValueError("rows is empty: nothing to plot")
    fig = _new_figure(6.8, 4.4)
    ax = fig.subplots(1, 1)
    backbones = sorted({r["backbone"] for r in rows})
    colours = {b: f"C{i}" for i, b in enumerate(backbones)}
    for r in rows:
        x, y = r["cost"]["train_per_image_s"], r["auc"]
        ci = r.get("auc_ci") or (y, y)
        ax.errorbar(
            [x], [y], yerr=[[y - ci[0]], [ci[1] - y]], fmt="o", color=colours[r["backbone"]], capsize=3, markersize=6
        )
        ax.annotate(
            r["architecture"].replace("Global + ", "+ "), (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8
        )
    for b in backbones:
        ax.plot([], [], "o", color=colours[b], label=b)
    ax.set_xscale("log")
    ax.set_xlabel("training cost per image (s, log scale; measured at the cells' settings)")
    ax.set_ylabel("ROC-AUC (95% case-bootstrap CI)")
    ax.axhline(0.5, linestyle=":", color="0.6", linewidth=1)
    ax.grid(alpha=0.3, which="both")
    ax.legend(title="backbone", fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save_atomic(fig, path)
