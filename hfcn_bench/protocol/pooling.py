"""k-fold pooling: one report over the out-of-fold predictions of every fold, and the timings
of the folds added up.

Each fold's model has its own threshold (chosen on that fold's training side), so the pooled
scores are ``prob - threshold_fold`` with decision ``>= 0``: this reproduces every fold's
decisions exactly and ranks across folds by the distance from each fold's operating point.
The same rule averages k fold models on new data (:func:`ensemble`): the decision
``mean(p_i) >= mean(t_i)`` is ``mean(p_i - t_i) >= 0``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..data.rois import Sample
from ..data.splits import case_labels
from .predictions import Predictions
from .scoring import calibration, level_name, roc_points, score_predictions

__all__ = ["FoldResult", "pool_folds", "pool_timings", "fold_boot", "mean_sd", "ensemble", "kfold_protocol"]


@dataclass
class FoldResult:
    """One fold's out-of-fold predictions, its ROI-level threshold, its training samples and
    its own report (whose ``threshold`` is at the report's scoring level)."""

    fold: int
    test: Predictions
    roi_threshold: float
    train_samples: list[Sample]
    report: dict


def fold_boot(n_boot: int) -> int:
    """Bootstrap resamples for a per-fold report: a fifth of the pooled ones. Per-fold
    intervals are secondary to the pooled ones, and k-fold scoring should not cost k times
    the pooled bootstrap."""
    return max(1, n_boot // 5) if n_boot > 1 else n_boot


def mean_sd(values) -> dict:
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    if v.size == 0:
        return {"mean": None, "sd": None, "n": 0}
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size)}


def pool_timings(per_fold: list[dict]) -> dict:
    """One report's ``timings`` from its folds': every stage's seconds (``*_s``: training,
    prediction, a comparator's detector and segmenter) summed, ``ms_per_roi`` averaged, the rest
    (threads, device) as the first fold has them. ``total_s`` is the caller's wall clock."""
    out = {}
    for key in dict.fromkeys(k for t in per_fold for k in t):
        values = [t[key] for t in per_fold if key in t]
        if key.endswith("_s"):
            out[key] = float(sum(values))
        elif key == "ms_per_roi":
            out[key] = float(sum(values) / len(values))
        else:
            out[key] = values[0]
    return out


def kfold_protocol(k: int, threshold_rule: str, threshold_source: str, aggregate: str | None) -> str:
    level = "ROI" if aggregate is None else f"case ({aggregate})"
    return (
        f"{k}-fold case-level CV, pooled out-of-fold, each fold's threshold by {threshold_rule} on its "
        f"{threshold_source} predictions, scored per {level}"
    )


def pool_folds(
    folds: Sequence[FoldResult], *, seed: int, threshold_rule: str, aggregate: str | None = None, n_boot: int = 1000
) -> dict:
    """Score the pooled out-of-fold predictions of a cross-validation (see the module
    docstring). ``folds`` in the result holds each fold's own report (raw probabilities),
    ``fold_summary`` the mean and standard deviation of AUC and F1 over folds; calibration is
    judged on the raw pooled probabilities."""
    pooled_p, raw_p, pooled_y, pooled_ids, y_train_all, train_cases = [], [], [], [], [], {}
    fold_reports = []
    for f in folds:
        test = f.test.labelled()
        p, y, ids = test.at_level(aggregate)
        pooled_p.append(p - f.report["threshold"])
        raw_p.append(p)
        pooled_y.append(y)
        pooled_ids.append(ids)
        y_train_all.extend(s.label for s in f.train_samples)
        train_cases.update({f"{f.fold}/{c}": v for c, v in case_labels(f.train_samples).items()})
        rep = {k: v for k, v in f.report.items() if k != "roc"}
        rep["fold"] = f.fold
        fold_reports.append(rep)
    p, raw = np.concatenate(pooled_p), np.concatenate(raw_p)
    y, ids = np.concatenate(pooled_y), np.concatenate(pooled_ids)
    # Scored as ROI-level rows: the per-case aggregation already happened inside each fold.
    pooled = Predictions(p, y, ids, [])
    source = folds[0].report.get("threshold_source", "validation") if folds else "validation"
    source = source.split(" (")[0]
    report = score_predictions(
        pooled,
        0.0,
        y_train=list(train_cases.values()) if aggregate else y_train_all,
        seed=seed,
        n_boot=n_boot,
        threshold_source=source,
        threshold_rule=threshold_rule,
    )
    report["calibration"] = calibration(y, raw)
    report.update(
        {
            "kind": "kfold",
            "k": len(folds),
            "level": level_name(aggregate),
            "scores": "prob - fold threshold (decision >= 0)",
            "roc": roc_points(y, p),
            "folds": fold_reports,
            "fold_summary": {
                name: mean_sd([r["auc"] if name == "auc" else r["metrics"]["f1"] for r in fold_reports])
                for name in ("auc", "f1")
            },
            "skipped": [m for r in fold_reports for m in r.get("skipped", [])],
            "protocol": kfold_protocol(len(folds), threshold_rule, source, aggregate),
        }
    )
    return report


def ensemble(per_fold: Sequence[Predictions], thresholds: Sequence[float]) -> tuple[Predictions, float]:
    """k fold models on the same samples: the mean probability and the mean threshold (the
    decision ``mean(p_i) >= mean(t_i)``, i.e. the mean margin ``>= 0``). All predictions must
    cover the same samples in the same order."""
    if not per_fold:
        raise ValueError("no fold predictions to average")
    first = per_fold[0]
    for other in per_fold[1:]:
        if other.keys != first.keys:
            raise ValueError("fold predictions cover different samples")
    prob = np.mean([p.prob for p in per_fold], axis=0)
    extra = {
        k: np.mean([p.extra[k] for p in per_fold], axis=0) for k in first.extra if all(k in p.extra for p in per_fold)
    }
    skipped = list(dict.fromkeys(m for p in per_fold for m in p.skipped))
    return (
        Predictions(prob, first.labels, first.case_ids, list(first.samples), extra, skipped),
        float(np.mean(thresholds)),
    )
