"""Scoring held-out predictions: the threshold chosen on the training side, the test report
with case-bootstrap intervals, the majority baseline and calibration.

The protocol, chosen against the medical-imaging anti-patterns of DESIGN.md:

- the decision threshold comes from predictions on the *training side* (validation cases
  carved out of the training cases, or out-of-fold training scores), never from the test set
  (:func:`threshold_from_predictions`);
- every test report carries 95 % intervals from resampling *cases* (``metrics.evaluate``), the
  majority-class baseline (on DDTI "always malignant" already scores F1 ~0.9) and
  calibration (Brier score and a reliability table);
- ROI- or case-level scoring (``aggregate`` = ``None``, ``"mean"``, ``"max"``).

Everything takes plain arguments (a seed, a threshold rule), never a model's configuration.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .. import metrics as M
from ..errors import HfcnError
from .predictions import Predictions

__all__ = [
    "THRESHOLD_RULES",
    "AGGREGATES",
    "threshold_from_predictions",
    "score_predictions",
    "calibration",
    "roc_points",
    "protocol_line",
    "overlap_note",
    "level_name",
]

THRESHOLD_RULES = ("youden", "f1", "fixed")
AGGREGATES = (None, "mean", "max")


def check_aggregate(aggregate) -> None:
    if aggregate not in AGGREGATES:
        raise HfcnError(f"aggregate must be None, 'mean' or 'max', got {aggregate!r}")


def threshold_from_predictions(
    pred: Predictions, rule: str, aggregate: str | None = None, source: str = "validation"
) -> tuple[float, str]:
    """``(threshold, source)`` chosen with ``rule`` on training-side predictions ``pred``, at
    ROI or case level. A one-class set cannot place a data-driven threshold: the softmax argmax
    rule (0.5) is used and the source says so."""
    if rule not in THRESHOLD_RULES:
        raise HfcnError(f"threshold rule must be one of {', '.join(THRESHOLD_RULES)}, got {rule!r}")
    check_aggregate(aggregate)
    p, y, _ = pred.labelled().at_level(aggregate)
    if y.size == 0:
        return 0.5, f"{source} (no predictions: fixed 0.5)"
    try:
        return float(M.choose_threshold(y, p, rule=rule)), source
    except M.UndefinedMetricError:
        return 0.5, f"{source} (one class only: fixed 0.5)"


def level_name(aggregate: str | None) -> str:
    return "roi" if aggregate is None else f"case-{aggregate}"


def roc_points(y, p, max_points: int = 400) -> dict | None:
    """The ROC curve thinned to at most ``max_points`` points (for reports and figures)."""
    try:
        fpr, tpr, _ = M.roc_curve(y, p)
    except M.UndefinedMetricError:
        return None
    if fpr.size > max_points:
        keep = np.unique(np.linspace(0, fpr.size - 1, max_points).round().astype(int))
        fpr, tpr = fpr[keep], tpr[keep]
    return {"fpr": [float(v) for v in fpr], "tpr": [float(v) for v in tpr]}


def calibration(y, p, bins: int = 10) -> dict | None:
    """Brier score ``mean((p - y)^2)`` and a reliability table over ``bins`` equal-width bins of
    the predicted probability: per bin its range, count, mean prediction and observed
    malignant fraction. ``None`` when ``p`` is not a probability (outside [0, 1])."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    if y.size == 0 or p.min() < 0.0 or p.max() > 1.0:
        return None
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, bins - 1)
    table = []
    for b in range(bins):
        m = idx == b
        n = int(m.sum())
        table.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "n": n,
                "mean_prob": float(p[m].mean()) if n else None,
                "observed": float(y[m].mean()) if n else None,
            }
        )
    ece = sum(r["n"] * abs(r["mean_prob"] - r["observed"]) for r in table if r["n"]) / y.size
    return {"brier": float(np.mean((p - y) ** 2)), "ece": float(ece), "bins": table, "n": int(y.size)}


def protocol_line(split: str, threshold_rule: str, threshold_source: str, aggregate: str | None) -> str:
    """One line saying how a report was made (the ``protocol`` field every report carries)."""
    level = "ROI" if aggregate is None else f"case ({aggregate})"
    return f"{split}, threshold by {threshold_rule} on {threshold_source} predictions, scored per {level}"


def overlap_note(report: dict) -> str | None:
    """For an external report scored although some of its images are training images of the run
    (``eval --allow-overlap``): one sentence with how many, which every place that shows the
    result carries; ``None`` when there are none. Reads ``overlap_count``, or counts the
    ``overlap`` list of a report written before the count was recorded."""
    c = report.get("overlap_count")
    if not isinstance(c, dict):
        n = len(report.get("overlap") or [])
        c = {"images": n, "of": None} if n else None
    if not c or not c.get("images"):
        return None
    how = f" ({c['same_bytes']} same bytes, {c['near_duplicates']} near-duplicates)" if "same_bytes" in c else ""
    of = f" of {c['of']}" if c.get("of") else ""
    return (
        f"{c['images']}{of} external images are training images of the run{how}, scored with --allow-overlap: "
        "not an external validation"
    )


def _flatten(report: dict) -> dict:
    """Copy the headline numbers into ``report["metrics"]`` (``auc``, ``pr_auc`` and ``ci`` as
    ``{name: [low, high]}``) so a report table can read one flat dict per model; the full
    intervals stay in ``report["ci"]``."""
    m = report["metrics"]
    m["auc"] = report.get("auc")
    m["pr_auc"] = report.get("pr_auc")
    m["ci"] = {k: (None if v is None else [v["low"], v["high"]]) for k, v in (report.get("ci") or {}).items()}
    return report


def score_predictions(
    test: Predictions,
    threshold: float,
    *,
    y_train: Sequence[int],
    seed: int,
    n_boot: int = 1000,
    aggregate: str | None = None,
    train_case_labels: dict[str, int] | None = None,
    threshold_source: str = "validation",
    threshold_rule: str = "youden",
    split: str = "case-level split",
    probabilities: np.ndarray | None = None,
) -> dict:
    """The test report of ``test`` at ``threshold`` (chosen without the test side).

    ``y_train`` (ROI labels of the training side) feeds the majority baseline; with
    ``aggregate`` the baseline uses ``train_case_labels`` (one label per training case).
    ``probabilities`` are the raw P(malignant) to judge calibration on when ``test.prob`` holds
    other scores (pooled k-fold margins); by default ``test.prob`` itself.
    Returns ``metrics.evaluate``'s dict plus ``level``, ``threshold_source``,
    ``threshold_rule``, ``protocol``, ``roc`` points and ``calibration``; ``metrics`` also
    carries ``auc``, ``pr_auc`` and ``ci`` (``{name: [low, high]}``).
    """
    check_aggregate(aggregate)
    test = test.labelled()
    p, y, ids = test.at_level(aggregate)
    if y.size == 0:
        raise HfcnError("no test predictions to score")
    y_tr = list(train_case_labels.values()) if (aggregate and train_case_labels) else list(y_train)
    report = M.evaluate(y, p, ids, float(threshold), n_boot=n_boot, seed=seed, y_train=y_tr or None)
    report["level"] = level_name(aggregate)
    report["threshold_source"] = threshold_source
    report["threshold_rule"] = threshold_rule
    report["roc"] = roc_points(y, p)
    if probabilities is None:
        report["calibration"] = calibration(y, p)
    else:
        raw = Predictions(np.asarray(probabilities, dtype=np.float64), test.labels, test.case_ids, [])
        rp, ry, _ = raw.at_level(aggregate)
        report["calibration"] = calibration(ry, rp)
    report["protocol"] = protocol_line(split, threshold_rule, threshold_source, aggregate)
    return _flatten(report)
