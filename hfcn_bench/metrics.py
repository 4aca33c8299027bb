"""Evaluation statistics for binary thyroid-nodule classification, malignant (1) = positive.

The paper (Song et al., IEEE Access 2020, eqs. 9-12) reports accuracy, precision, recall and F1
only. On DDTI, where ~82% of images are malignant under the usual TI-RADS rule, those four
numbers flatter any classifier: "always malignant" already scores F1 ~0.90. This module
therefore also gives what an honest report needs beside them:

- threshold-free ranking metrics: ROC AUC (Mann-Whitney), PR-AUC (average precision) and
  sensitivity at a fixed specificity;
- :func:`choose_threshold`, to pick the operating point on *training/validation* predictions
  (never on the test set);
- :func:`majority_baseline`, the trivial classifier every F1 must be compared with;
- :func:`bootstrap_ci`, percentile confidence intervals that resample *cases* (patients), not
  ROIs, because images of one case are correlated;
- :func:`aggregate_by_case`, for per-case evaluation;
- :func:`evaluate`, which bundles all of the above into one JSON-serialisable dict.

Conventions
-----------
- ``prob`` is the score for the malignant class (softmax P(malignant)); any real-valued score
  works for the ranking metrics. A sample is predicted positive when ``prob >= threshold``,
  the same convention as the thresholds returned by :func:`roc_curve` (and scikit-learn).
- Ratios whose denominator is zero (e.g. precision when nothing is predicted positive) are
  reported as 0.0, like scikit-learn's ``zero_division=0``; :func:`binary_metrics` lists the
  names of such metrics under ``"zero_division"`` so a 0.0 is never mistaken for a measurement.
- Metrics that cannot be defined at all on the data (ROC AUC with a single class present,
  average precision without positives) raise :class:`UndefinedMetricError`, a ``ValueError``.
  :func:`bootstrap_ci` skips resamples where that happens.

Pure numpy; nothing here prints.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .errors import UndefinedMetricError

__all__ = [
    "UndefinedMetricError",
    "binary_metrics",
    "roc_curve",
    "roc_auc",
    "pr_curve",
    "average_precision",
    "sensitivity_at_specificity",
    "choose_threshold",
    "majority_baseline",
    "bootstrap_ci",
    "aggregate_by_case",
    "evaluate",
    "delong_test",
    "paired_auc_difference",
    "seed_pooled_auc",
]


# --------------------------------------------------------------------------------------------
# input checking and the shared threshold sweep
# --------------------------------------------------------------------------------------------


def _check_labels(y_true: Any, name: str = "y_true") -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {y.shape}")
    if y.size == 0:
        raise ValueError(f"{name} is empty")
    if y.dtype == bool:
        return y.astype(np.int64)
    if not np.issubdtype(y.dtype, np.number):
        raise ValueError(f"{name} must hold 0 (benign) / 1 (malignant), got dtype {y.dtype}")
    bad = ~np.isin(y, (0, 1))
    if bad.any():
        raise ValueError(
            f"{name} must hold only 0 (benign) and 1 (malignant); found {y[bad][0]!r} "
            f"at index {int(np.flatnonzero(bad)[0])}"
        )
    return y.astype(np.int64)


def _check_binary(y_true: Any, prob: Any) -> tuple[np.ndarray, np.ndarray]:
    y = _check_labels(y_true)
    s = np.asarray(prob, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"prob must be 1-D (the malignant-class score), got shape {s.shape}")
    if s.shape != y.shape:
        raise ValueError(f"y_true and prob differ in length: {y.shape[0]} vs {s.shape[0]}")
    if not np.isfinite(s).all():
        raise ValueError(f"prob holds a non-finite value at index {int(np.flatnonzero(~np.isfinite(s))[0])}")
    return y, s


def _sweep(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative (fps, tps) when predicting ``s >= t`` for every distinct score ``t``, highest
    first. Tied scores form one operating point: a threshold cannot split them."""
    # A stable sort keeps the result independent of the input order of tied scores.
    order = np.argsort(-s, kind="stable")
    s_sorted = s[order]
    y_sorted = y[order]
    # Last index of each run of equal scores: the operating point after taking the whole run.
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), s_sorted.size - 1]
    tps = np.cumsum(y_sorted)[last]
    fps = (last + 1) - tps
    return fps, tps, s_sorted[last]


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else 0.0


# --------------------------------------------------------------------------------------------
# metrics at a threshold
# --------------------------------------------------------------------------------------------


def binary_metrics(y_true: Any, prob: Any, threshold: float = 0.5) -> dict[str, Any]:
    """Confusion-matrix metrics at one operating point, malignant (1) = positive.

    A sample is predicted malignant when ``prob >= threshold``. With TP, FP, FN, TN the
    confusion counts, the paper's definitions (Song et al. 2020) are:

    - accuracy  = (TP + TN) / (TP + FP + FN + TN)          (eq. 9)
    - precision = TP / (TP + FP)                            (eq. 10)
    - recall    = TP / (TP + FN), i.e. sensitivity          (eq. 11)
    - F1        = 2 · precision · recall / (precision + recall) = 2TP / (2TP + FP + FN)  (eq. 12)

    plus specificity = TN / (TN + FP), which the paper does not report but which a medical
    reader needs beside sensitivity.

    Zero denominators: precision (nothing predicted malignant), recall/sensitivity (no
    malignant sample), specificity (no benign sample) and F1 (neither predicted nor true
    positives) are then reported as 0.0, as scikit-learn does with ``zero_division=0``; their
    names are listed under ``"zero_division"``.

    Returns a dict of plain Python numbers: ``accuracy, precision, recall, sensitivity, f1,
    specificity, tn, fp, fn, tp, confusion_matrix`` ([[tn, fp], [fn, tp]], rows = truth, as
    scikit-learn), ``support`` (number of samples), ``n_positive, n_negative, threshold,
    zero_division``.
    """
    y, s = _check_binary(y_true, prob)
    threshold = float(threshold)
    if math.isnan(threshold):
        raise ValueError("threshold is NaN")
    pred = s >= threshold
    tp = int(np.count_nonzero(pred & (y == 1)))
    fp = int(np.count_nonzero(pred & (y == 0)))
    fn = int(np.count_nonzero(~pred & (y == 1)))
    tn = int(y.size - tp - fp - fn)
    zero_division = [
        name
        for name, den in (
            ("precision", tp + fp),
            ("recall", tp + fn),
            ("specificity", tn + fp),
            ("f1", 2 * tp + fp + fn),
        )
        if den == 0
    ]
    recall = _ratio(tp, tp + fn)
    return {
        "accuracy": _ratio(tp + tn, y.size),
        "precision": _ratio(tp, tp + fp),
        "recall": recall,
        "sensitivity": recall,
        # 2TP/(2TP+FP+FN) equals the harmonic mean wherever that is defined, and stays defined
        # (as 0) when precision alone is undefined but recall is 0.
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "specificity": _ratio(tn, tn + fp),
        "tn": tn,
        "fp": fp,
        "fn": fn,
        "tp": tp,
        "confusion_matrix": [[tn, fp], [fn, tp]],
        "support": int(y.size),
        "n_positive": tp + fn,
        "n_negative": tn + fp,
        "threshold": threshold,
        "zero_division": zero_division,
    }


# --------------------------------------------------------------------------------------------
# threshold-free metrics
# --------------------------------------------------------------------------------------------


def _require_both_classes(y: np.ndarray, what: str) -> None:
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        only = "malignant" if n_pos else "benign"
        raise UndefinedMetricError(f"{what} is undefined: only {only} samples are present")


def roc_curve(y_true: Any, prob: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve: ``(fpr, tpr, thresholds)`` with one point per distinct score.

    ``thresholds`` decrease; point ``i`` predicts malignant when ``prob >= thresholds[i]``.
    The first point is ``thresholds[0] = inf`` (nothing predicted malignant, fpr = tpr = 0),
    matching ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``. No collinear points
    are dropped, so every threshold a caller might choose is present.

    Raises :class:`UndefinedMetricError` unless both classes are present.
    """
    y, s = _check_binary(y_true, prob)
    _require_both_classes(y, "the ROC curve")
    fps, tps, thr = _sweep(y, s)
    fpr = np.r_[0.0, fps / fps[-1]]
    tpr = np.r_[0.0, tps / tps[-1]]
    return fpr, tpr, np.r_[np.inf, thr]


def _average_ranks(s: np.ndarray) -> np.ndarray:
    """1-based ranks of ``s`` with ties given the mean of the ranks they span."""
    order = np.argsort(s, kind="stable")
    s_sorted = s[order]
    starts = np.r_[0, np.flatnonzero(np.diff(s_sorted)) + 1]
    ends = np.r_[starts[1:], s.size]
    # A tie group occupying sorted positions start..end-1 holds ranks start+1..end.
    group_rank = (starts + 1 + ends) / 2.0
    ranks = np.empty(s.size, dtype=np.float64)
    ranks[order] = np.repeat(group_rank, ends - starts)
    return ranks


def roc_auc(y_true: Any, prob: Any) -> float:
    """Area under the ROC curve, computed as the Mann-Whitney U statistic.

    AUC = P(score of a random malignant sample > score of a random benign one), with ties
    counted 1/2: ``(R_pos - n_pos (n_pos + 1) / 2) / (n_pos · n_neg)`` where ``R_pos`` is the
    sum of the (tie-averaged) ranks of the malignant samples. This equals the trapezoidal area
    under :func:`roc_curve` and ``sklearn.metrics.roc_auc_score``. A constant score gives
    exactly 0.5.

    Raises :class:`UndefinedMetricError` unless both classes are present.
    """
    y, s = _check_binary(y_true, prob)
    _require_both_classes(y, "ROC AUC")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    rank_sum = float(_average_ranks(s)[y == 1].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def pr_curve(y_true: Any, prob: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision-recall curve: ``(precision, recall, thresholds)``.

    Same layout as ``sklearn.metrics.precision_recall_curve``: ``thresholds`` increase, one per
    distinct score; ``precision[i], recall[i]`` belong to predicting malignant when
    ``prob >= thresholds[i]``; a final point ``precision = 1, recall = 0`` (no threshold) closes
    the curve. Precision at a point with nothing predicted positive cannot occur (every listed
    threshold predicts at least one sample positive).

    Raises :class:`UndefinedMetricError` when no malignant sample is present (recall is 0/0).
    """
    y, s = _check_binary(y_true, prob)
    if not y.any():
        raise UndefinedMetricError("the precision-recall curve is undefined: no malignant samples")
    fps, tps, thr = _sweep(y, s)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], thr[::-1].copy()


def average_precision(y_true: Any, prob: Any) -> float:
    """Average precision (PR-AUC): ``AP = sum_n (R_n - R_{n-1}) · P_n`` over the thresholds.

    Step-wise, without interpolation (trapezoids over a PR curve are optimistic), as
    ``sklearn.metrics.average_precision_score``. Tied scores form one step. A constant score
    gives the prevalence of malignant samples, which is the baseline PR-AUC to compare with.

    Raises :class:`UndefinedMetricError` when no malignant sample is present.
    """
    y, s = _check_binary(y_true, prob)
    if not y.any():
        raise UndefinedMetricError("average precision is undefined: no malignant samples")
    fps, tps, _ = _sweep(y, s)
    precision = tps / (tps + fps)
    recall_steps = np.diff(np.r_[0, tps]) / tps[-1]
    return float(np.sum(recall_steps * precision))


def sensitivity_at_specificity(y_true: Any, prob: Any, specificity: float = 0.9) -> float:
    """Highest sensitivity over the ROC points whose specificity is at least ``specificity``.

    Read off the empirical (step-wise) ROC curve without interpolation, so the value is
    attained by an actual threshold on these data. The threshold is implicitly picked on the
    data being scored, so this describes the curve; it is not a deployed operating point
    (use :func:`choose_threshold` on validation data for that).

    Raises :class:`UndefinedMetricError` unless both classes are present.
    """
    specificity = float(specificity)
    if not 0.0 <= specificity <= 1.0:
        raise ValueError(f"specificity must lie in [0, 1], got {specificity}")
    fpr, tpr, _ = roc_curve(y_true, prob)
    # The first ROC point (fpr = 0) always qualifies, so the max is never over an empty set.
    return float(tpr[(1.0 - fpr) >= specificity - 1e-12].max())


# --------------------------------------------------------------------------------------------
# choosing an operating point, and the baseline every F1 needs
# --------------------------------------------------------------------------------------------


def choose_threshold(y_true: Any, prob: Any, rule: str = "youden", fixed: float = 0.5) -> float:
    """Pick a decision threshold from **training or validation** predictions.

    Pass train/val labels and scores here, then apply the returned threshold to the test set
    with :func:`binary_metrics` / :func:`evaluate`. Choosing it on the test set would make the
    test metrics optimistic (one of the medical-imaging anti-patterns this project avoids).

    Rules:

    - ``"youden"``: maximise Youden's J = sensitivity + specificity - 1 = tpr - fpr.
    - ``"f1"``: maximise F1 (paper eq. 12).
    - ``"fixed"``: return ``fixed`` (0.5 is the softmax argmax rule the paper uses).

    For the data-driven rules the returned threshold lies half-way between the chosen score and
    the next lower distinct score: it reproduces the optimum on these data under
    ``prob >= threshold`` while leaving the widest margin to both neighbours, instead of sitting
    on a training score where an unseen sample a hair lower flips. When the optimum is to call
    every sample malignant the lowest score itself is returned. Ties in the criterion go to the
    higher threshold (fewer false positives).

    Raises :class:`UndefinedMetricError` when the rule cannot be evaluated (``"youden"`` needs
    both classes, ``"f1"`` needs a malignant sample).
    """
    if rule == "fixed":
        fixed = float(fixed)
        if not math.isfinite(fixed):
            raise ValueError(f"fixed threshold must be finite, got {fixed}")
        return fixed
    if rule not in ("youden", "f1"):
        raise ValueError(f"rule must be 'youden', 'f1' or 'fixed', got {rule!r}")
    y, s = _check_binary(y_true, prob)
    n_pos = int(y.sum())
    if rule == "youden":
        _require_both_classes(y, "Youden's J")
        fps, tps, thr = _sweep(y, s)
        score = tps / n_pos - fps / (y.size - n_pos)
    else:
        if n_pos == 0:
            raise UndefinedMetricError("F1 is undefined for threshold choice: no malignant samples")
        fps, tps, thr = _sweep(y, s)
        score = 2 * tps / (2 * tps + fps + (n_pos - tps))
    # argmax returns the first maximiser; thresholds are in decreasing order, so ties go to
    # the higher threshold.
    best = int(np.argmax(score))
    if best + 1 < thr.size:
        return float((thr[best] + thr[best + 1]) / 2.0)
    return float(thr[best])


def majority_baseline(y_train: Any, y_test: Any) -> dict[str, Any]:
    """The classifier that always predicts the training set's majority class, scored on
    ``y_test``.

    Any reported accuracy or F1 should be read against this: on DDTI (~82% malignant under the
    TI-RADS rule) "always malignant" scores F1 ~0.90 with no skill at all. A tie in the
    training labels goes to malignant, the clinically conservative call.

    Returns :func:`binary_metrics` of the constant prediction (sensitivity/recall and
    specificity ``None`` where ``y_test`` leaves them undefined, as in :func:`evaluate`) plus ``majority_class``,
    ``train_positive_rate``, ``auc`` (a constant score ranks nothing: 0.5, or ``None`` when
    ``y_test`` holds one class and AUC is undefined) and ``pr_auc`` (the test prevalence of
    malignant samples, the average precision of a constant score; ``None`` without malignant
    test samples).
    """
    y_tr = _check_labels(y_train, "y_train")
    y_te = _check_labels(y_test, "y_test")
    train_rate = float(y_tr.mean())
    majority = 1 if train_rate >= 0.5 else 0
    constant = np.full(y_te.size, float(majority))
    out = _undefined_rates_as_none(binary_metrics(y_te, constant, threshold=0.5))
    n_pos = int(y_te.sum())
    out["majority_class"] = majority
    out["train_positive_rate"] = train_rate
    out["auc"] = 0.5 if 0 < n_pos < y_te.size else None
    out["pr_auc"] = n_pos / y_te.size if n_pos else None
    return out


# --------------------------------------------------------------------------------------------
# per-case statistics
# --------------------------------------------------------------------------------------------


def _case_codes(case_ids: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.asarray(case_ids)
    if ids.ndim != 1 or ids.size != n:
        raise ValueError(f"case_ids must be 1-D with one entry per sample ({n}), got shape {ids.shape}")
    uniq, codes = np.unique(ids, return_inverse=True)
    return uniq, codes.reshape(-1)


def aggregate_by_case(
    case_ids: Any, prob: Any, y_true: Any, how: str = "mean"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Collapse ROI-level predictions to one prediction per case.

    ``how="mean"`` averages a case's scores (a consensus over its images); ``"max"`` takes the
    most suspicious image (a case is malignant if any image looks malignant). Returns
    ``(case_ids, prob, y_true)`` with one entry per case, cases in sorted order.

    A case's label must be the same on all its ROIs (DDTI labels cases, not images); a case
    with mixed labels raises ``ValueError`` naming it, since silently picking one would hide a
    data bug.
    """
    if how not in ("mean", "max"):
        raise ValueError(f"how must be 'mean' or 'max', got {how!r}")
    y, s = _check_binary(y_true, prob)
    uniq, codes = _case_codes(case_ids, y.size)
    k = uniq.size
    counts = np.bincount(codes, minlength=k)
    n_pos = np.bincount(codes, weights=y, minlength=k)
    mixed = (n_pos > 0) & (n_pos < counts)
    if mixed.any():
        raise ValueError(f"case {uniq[mixed][0]!r} has ROIs with different labels")
    if how == "mean":
        agg = np.bincount(codes, weights=s, minlength=k) / counts
    else:
        agg = np.full(k, -np.inf)
        np.maximum.at(agg, codes, s)
    return uniq, agg, (n_pos > 0).astype(np.int64)


def _case_resamples(codes: np.ndarray, n_cases: int, n_boot: int, seed: int):
    """Yield index arrays, each a bootstrap resample of whole cases (all ROIs of a drawn case
    come along, once per draw)."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_cases, size=(n_boot, n_cases))
    # One bincount over row-offset codes counts the draws of every case in every resample.
    offsets = (np.arange(n_boot) * n_cases)[:, None]
    case_counts = np.bincount((draws + offsets).ravel(), minlength=n_boot * n_cases)
    case_counts = case_counts.reshape(n_boot, n_cases)
    roi_counts = case_counts[:, codes]
    sample_index = np.arange(codes.size)
    for b in range(n_boot):
        yield np.repeat(sample_index, roi_counts[b])


def _bootstrap(
    y: np.ndarray,
    s: np.ndarray,
    codes: np.ndarray,
    n_cases: int,
    metric_fns: dict[str, Callable[[np.ndarray, np.ndarray], float]],
    n_boot: int,
    alpha: float,
    seed: int,
) -> dict[str, tuple[float, float, float, int]]:
    """Percentile CIs for several metrics over the *same* case resamples, so intervals in one
    report are computed from one set of draws. Returns ``name -> (point, low, high, n_valid)``."""
    values: dict[str, list[float]] = {name: [] for name in metric_fns}
    for idx in _case_resamples(codes, n_cases, n_boot, seed):
        yb, sb = y[idx], s[idx]
        for name, fn in metric_fns.items():
            try:
                v = float(fn(yb, sb))
            except UndefinedMetricError:
                continue
            if math.isfinite(v):
                values[name].append(v)
    out = {}
    for name, fn in metric_fns.items():
        point = float(fn(y, s))
        vals = values[name]
        if not vals:
            raise UndefinedMetricError(
                f"{name}: undefined on all {n_boot} case resamples (too few cases of one class?)"
            )
        low, high = np.quantile(np.asarray(vals), [alpha / 2.0, 1.0 - alpha / 2.0])
        out[name] = (point, float(low), float(high), len(vals))
    return out


def _check_boot_args(n_boot: int, alpha: float) -> None:
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")


def bootstrap_ci(
    y_true: Any,
    prob: Any,
    case_ids: Any,
    metric_fn: Callable[[np.ndarray, np.ndarray], float],
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Percentile-bootstrap confidence interval that resamples **cases**, not ROIs.

    Each resample draws ``n_cases`` cases with replacement and takes all ROIs of every drawn
    case (as often as it was drawn). Images of one patient are correlated; resampling them
    independently would pretend there is more independent evidence than there is and give
    intervals that are too narrow. Pass ``case_ids = arange(n)`` only when every sample really
    is its own case.

    ``metric_fn(y_true, prob) -> float`` is evaluated on each resample, e.g. :func:`roc_auc` or
    ``lambda y, p: binary_metrics(y, p, t)["f1"]``. Resamples where it raises
    :class:`UndefinedMetricError` or returns a non-finite value (typically: only one class was
    drawn) are skipped, so the interval is conditional on the metric being defined.

    Returns ``(point, low, high)``: the metric on the full data and the ``alpha/2`` and
    ``1 - alpha/2`` quantiles of the resampled values. Deterministic for a given ``seed``.
    Raises :class:`UndefinedMetricError` if the metric is undefined on the full data or on
    every resample.
    """
    _check_boot_args(n_boot, alpha)
    y, s = _check_binary(y_true, prob)
    uniq, codes = _case_codes(case_ids, y.size)
    res = _bootstrap(y, s, codes, uniq.size, {"metric": metric_fn}, int(n_boot), float(alpha), seed)
    point, low, high, _ = res["metric"]
    return point, low, high


# --------------------------------------------------------------------------------------------
# one report
# --------------------------------------------------------------------------------------------


def _undefined_rates_as_none(m: dict[str, Any]) -> dict[str, Any]:
    """``m`` (:func:`binary_metrics`) with the rates the *data* leaves undefined set to
    ``None``: sensitivity (= recall) without a malignant sample, specificity without a benign
    one. A report then says "undefined" (as for ROC-AUC) instead of a 0.0 that reads as a
    model's failure. (Precision and F1 keep scikit-learn's 0.0: they are undefined by the
    model's predictions, not by the data.)"""
    if m["n_positive"] == 0:
        m["recall"] = m["sensitivity"] = None
    if m["n_negative"] == 0:
        m["specificity"] = None
    return m


def _or_none(fn: Callable[[], float]) -> float | None:
    try:
        return float(fn())
    except UndefinedMetricError:
        return None


def evaluate(
    y_true: Any,
    prob: Any,
    case_ids: Any,
    threshold: float,
    n_boot: int = 1000,
    seed: int = 0,
    *,
    alpha: float = 0.05,
    y_train: Sequence[int] | np.ndarray | None = None,
) -> dict[str, Any]:
    """Everything a test-set report needs, as plain JSON-serialisable Python values.

    ``threshold`` must have been chosen without the test set (see :func:`choose_threshold`);
    there is deliberately no default. ``case_ids`` identify the patient/case of each sample and
    drive the bootstrap. When ``y_train`` is given the :func:`majority_baseline` is included.

    Keys:

    - ``metrics``: :func:`binary_metrics` at ``threshold`` (accuracy, precision, recall, F1 -
      paper eqs. 9-12 - plus specificity and the confusion counts), with sensitivity/recall
      ``None`` when no sample is malignant and specificity ``None`` when none is benign;
    - ``auc`` (ROC, Mann-Whitney), ``pr_auc`` (average precision), ``sens_at_spec``
      (``{"specificity": 0.9, "sensitivity": ...}``); each ``None`` when undefined on the data;
    - ``ci``: for ``accuracy``, ``f1`` and ``auc``, ``{"point", "low", "high", "n_valid"}`` from
      one shared set of ``n_boot`` case resamples (``n_valid`` counts the resamples where the
      metric was defined); an entry is ``None`` when the metric is undefined;
    - ``ci_level``, ``n_boot``, ``seed``, ``resampling`` (``"case"``), ``n_samples``,
      ``n_cases``, ``threshold``;
    - ``majority_baseline`` when ``y_train`` is given.
    """
    _check_boot_args(n_boot, alpha)
    y, s = _check_binary(y_true, prob)
    uniq, codes = _case_codes(case_ids, y.size)
    threshold = float(threshold)
    spec_target = 0.9

    def acc(yb, sb):
        return binary_metrics(yb, sb, threshold)["accuracy"]

    def f1(yb, sb):
        return binary_metrics(yb, sb, threshold)["f1"]

    fns: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {"accuracy": acc, "f1": f1}
    both_classes = 0 < int(y.sum()) < y.size
    if both_classes:
        fns["auc"] = roc_auc
    ci: dict[str, dict[str, float | int] | None] = {"accuracy": None, "f1": None, "auc": None}
    for name, (point, low, high, n_valid) in _bootstrap(
        y, s, codes, uniq.size, fns, int(n_boot), float(alpha), seed
    ).items():
        ci[name] = {"point": point, "low": low, "high": high, "n_valid": n_valid}

    report: dict[str, Any] = {
        "threshold": threshold,
        "n_samples": int(y.size),
        "n_cases": int(uniq.size),
        "metrics": _undefined_rates_as_none(binary_metrics(y, s, threshold)),
        "auc": _or_none(lambda: roc_auc(y, s)),
        "pr_auc": _or_none(lambda: average_precision(y, s)),
        "sens_at_spec": {
            "specificity": spec_target,
            "sensitivity": _or_none(lambda: sensitivity_at_specificity(y, s, spec_target)),
        },
        "ci": ci,
        "ci_level": 1.0 - float(alpha),
        "n_boot": int(n_boot),
        "seed": int(seed),
        "resampling": "case",
    }
    if y_train is not None:
        report["majority_baseline"] = majority_baseline(y_train, y)
    return report


# --------------------------------------------------------------------------------------------
# comparing two models on the same samples
# --------------------------------------------------------------------------------------------


def delong_test(y_true: Any, prob_a: Any, prob_b: Any) -> dict[str, float]:
    """DeLong's test for two correlated ROC AUCs (two models scored on the same samples).

    DeLong, DeLong & Clarke-Pearson, Biometrics 44:837-845 (1988), in the fast midrank form of
    Sun & Xu, IEEE Signal Processing Letters 21:1389-1393 (2014): each AUC's structural
    components over the positive and the negative samples give the covariance of the two AUCs;
    ``z = (AUC_a - AUC_b) / sqrt(var_a + var_b - 2 cov)``, two-sided p from the normal.
    Samples are treated as independent (an ROI-level test); the case bootstrap of
    :func:`paired_auc_difference` respects the grouping by case.

    Returns ``{"auc_a", "auc_b", "diff", "se", "z", "p"}`` (``z``/``p`` are NaN when the
    difference has no variance, e.g. identical scores)."""
    y, a = _check_binary(y_true, prob_a)
    _, b = _check_binary(y_true, prob_b)
    _require_both_classes(y, "DeLong's test")
    pos, neg = y == 1, y == 0
    m, n = int(pos.sum()), int(neg.sum())
    aucs, v10, v01 = [], [], []
    for s in (a, b):
        tx, ty = _average_ranks(s[pos]), _average_ranks(s[neg])
        tz = _average_ranks(np.concatenate([s[pos], s[neg]]))
        auc = (tz[:m].sum() - m * (m + 1) / 2.0) / (m * n)
        aucs.append(auc)
        v10.append((tz[:m] - tx) / n)  # structural components over the positives
        v01.append(1.0 - (tz[m:] - ty) / m)  # ... and over the negatives
    s10 = np.cov(np.vstack(v10)) if m > 1 else np.zeros((2, 2))
    s01 = np.cov(np.vstack(v01)) if n > 1 else np.zeros((2, 2))
    cov = s10 / m + s01 / n
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    diff = float(aucs[0] - aucs[1])
    if var <= 1e-15:
        return {
            "auc_a": float(aucs[0]),
            "auc_b": float(aucs[1]),
            "diff": diff,
            "se": 0.0,
            "z": float("nan"),
            "p": float("nan"),
        }
    se = math.sqrt(var)
    z = diff / se
    p = math.erfc(abs(z) / math.sqrt(2.0))
    return {"auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "diff": diff, "se": se, "z": float(z), "p": float(p)}


def paired_auc_difference(
    y_true: Any, prob_a: Any, prob_b: Any, case_ids: Any, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
) -> dict[str, float]:
    """``AUC_a - AUC_b`` of two models on the same samples with a paired percentile interval:
    every bootstrap resample draws *cases* and scores both models on the same draw, so the
    interval reflects the difference, not two independent uncertainties. Resamples with one
    class only are skipped. Returns ``{"diff", "low", "high", "n_valid"}``."""
    _check_boot_args(n_boot, alpha)
    y, a = _check_binary(y_true, prob_a)
    _, b = _check_binary(y_true, prob_b)
    uniq, codes = _case_codes(case_ids, y.size)
    point = roc_auc(y, a) - roc_auc(y, b)
    vals = []
    for idx in _case_resamples(codes, uniq.size, int(n_boot), seed):
        yb = y[idx]
        if 0 < int(yb.sum()) < yb.size:
            vals.append(roc_auc(yb, a[idx]) - roc_auc(yb, b[idx]))
    if not vals:
        raise UndefinedMetricError("the AUC difference is undefined on every resample")
    low, high = np.quantile(np.asarray(vals), [alpha / 2.0, 1.0 - alpha / 2.0])
    return {"diff": float(point), "low": float(low), "high": float(high), "n_valid": len(vals)}


def seed_pooled_auc(
    y_true: Any, runs: Sequence[Any], case_ids: Any, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
) -> dict[str, Any]:
    """ROC-AUC (or a paired AUC difference) of one model trained under several seeds, with an
    interval that holds both sources of noise: which cases were sampled, and how training went.

    ``runs`` holds one entry per training seed, each scored on the same samples ``y_true``:
    an array of scores (the AUC), or a pair ``(scores_a, scores_b)`` of two models trained with
    that seed (the paired difference ``AUC_a - AUC_b``). Every seed is bootstrapped over the
    *same* case resamples (within-seed case bootstrap, as :func:`paired_auc_difference`); the
    resampled values of all seeds are pooled into one distribution, whose ``alpha/2`` and
    ``1 - alpha/2`` quantiles are the interval. With one seed it is the plain case bootstrap;
    with several, a seed whose value sits apart widens it.

    Returns ``{"per_seed", "mean", "sd" (over seeds, ddof 1; None for one seed), "min", "max",
    "low", "high", "n_seeds", "n_valid"}``."""
    _check_boot_args(n_boot, alpha)
    y = _check_labels(y_true)
    pairs = []
    for r in runs:
        if isinstance(r, (tuple, list)) and len(r) == 2:
            pairs.append((_check_binary(y, r[0])[1], _check_binary(y, r[1])[1]))
        else:
            pairs.append((_check_binary(y, r)[1], None))
    if not pairs:
        raise ValueError("seed_pooled_auc needs at least one run")

    def value(idx, a, b):
        yb = y[idx]
        return roc_auc(yb, a[idx]) - (roc_auc(yb, b[idx]) if b is not None else 0.0)

    full = np.arange(y.size)
    per_seed = [float(value(full, a, b)) for a, b in pairs]
    uniq, codes = _case_codes(case_ids, y.size)
    pooled = []
    for idx in _case_resamples(codes, uniq.size, int(n_boot), seed):
        if 0 < int(y[idx].sum()) < idx.size:
            pooled.extend(value(idx, a, b) for a, b in pairs)
    if not pooled:
        raise UndefinedMetricError("the AUC is undefined on every resample")
    low, high = np.quantile(np.asarray(pooled), [alpha / 2.0, 1.0 - alpha / 2.0])
    return {
        "per_seed": per_seed,
        "mean": float(np.mean(per_seed)),
        "sd": float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else None,
        "min": float(min(per_seed)),
        "max": float(max(per_seed)),
        "low": float(low),
        "high": float(high),
        "n_seeds": len(per_seed),
        "n_valid": len(pooled),
    }
