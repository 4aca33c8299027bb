"""PNG figures for benchmark reports: ROC curves, speed bars, the α sweep (paper Table 3).

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

__all__ = ["plot_roc_curves", "plot_speed_bars", "plot_alpha_sweep", "plot_forest"]

_DPI = 120


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save_atomic(fig: Figure, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=_DPI))


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
) -> Path:
    """A forest plot: one line per model, ROC-AUC and F1 side by side, each point with its
    interval (``auc_ci`` / ``f1_ci`` = [low, high], optional); rows top to bottom in the given
    order. ``baseline`` (``auc``, ``f1``) draws the majority-class baseline as dashed lines;
    AUC 0.5 (chance) is always drawn."""
    if not rows:
        raise ValueError("rows is empty: nothing to plot")
    fig = _new_figure(9.0, 1.3 + 0.42 * len(rows))
    axes = fig.subplots(1, 2, sharey=True)
    pos = np.arange(len(rows))
    for ax, key, label in ((axes[0], "auc", "ROC-AUC"), (axes[1], "f1", "F1 (malignant positive)")):
        for y, row in zip(pos, rows):
            v = row.get(key)
            if v is None:
                continue
            ci = row.get(f"{key}_ci")
            if ci:
                ax.plot([ci[0], ci[1]], [y, y], color="0.35", linewidth=1.6)
            ax.plot([v], [y], "o", color="tab:blue" if not str(row.get("name", "")).startswith("HFCN")
                    else "tab:red", markersize=6)
        if key == "auc":
            ax.axvline(0.5, linestyle="--", color="0.6", linewidth=1, label="chance")
        if baseline and baseline.get(key) is not None and not (key == "auc" and baseline[key] == 0.5):
            ax.axvline(float(baseline[key]), linestyle=":", color="tab:green", linewidth=1.4,
                       label="majority baseline")
        ax.set_xlabel(label)
        ax.grid(axis="x", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize="small")
    axes[0].set_yticks(pos, [str(r["name"]) for r in rows])
    axes[0].invert_yaxis()
    fig.suptitle(title)
    return _save_atomic(fig, path)
