"""Shared plumbing of the comparator systems: configuration overrides, sklearn import,
out-of-fold threshold scores on the training side, and the test report.

Every system scores its test cases exactly as :func:`hfcn_bench.train.train_and_evaluate`
does (``train.score_predictions`` over a :class:`train.Predictions`), so a comparator's
report and an HFCN report can sit in one table. The decision threshold comes from the
training side only: out-of-fold predictions of a case-grouped k-fold on the training cases
for the feature-based heads (a forest or an SVM scores its own training samples near
perfectly, so in-sample scores would put the threshold in the wrong place), or the
validation cases carved out of the training side for the trained networks.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Callable, Sequence

import numpy as np

from ..data.report import DataWarning
from ..data.rois import Sample
from ..errors import HfcnError

Progress = Callable[[str, int, int, dict], None]


def sklearn():
    """The ``sklearn`` package, or a clear error: it is an optional dependency."""
    try:
        import sklearn as sk  # noqa: F401  (lazy: the rest of hfcn_bench runs without it)
    except ImportError:
        raise HfcnError("this comparator system needs scikit-learn, which is not installed",
                        hint="pip install scikit-learn") from None
    return sk


def make_config(cls, config: Any, seed: int):
    """``config`` as an instance of the dataclass ``cls``: ``None`` (defaults), a dict of
    overrides or an instance; ``seed`` fills the config's seed unless the caller set one."""
    if config is None:
        cfg = cls(seed=seed)
    elif isinstance(config, cls):
        cfg = config
    elif isinstance(config, dict):
        known = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(config) - known)
        if bad:
            raise HfcnError(f"unknown {cls.__name__} option(s) {bad}; known: {sorted(known)}")
        cfg = cls(**{"seed": seed, **config})
    else:
        raise HfcnError(f"config must be None, a dict or a {cls.__name__}, got {type(config).__name__}")
    cfg.validate()
    return cfg


def both_classes(samples: Sequence[Sample], what: str) -> None:
    labels = {s.label for s in samples}
    if labels != {0, 1}:
        raise HfcnError(f"the {what} side holds only class(es) {sorted(labels)}; a classifier needs benign and "
                        "malignant samples", hint="use a stratified case-level split (data.split_train_test)")


def warn_skip(sample: Sample, exc: Exception, skipped: list[str]) -> None:
    """An unreadable frame skips its ROI with a warning (as ``train`` does), not the run."""
    msg = f"{sample.image_path}: ROI {sample.key} could not be loaded ({type(exc).__name__}: {exc}); skipped"
    warnings.warn(msg, DataWarning, stacklevel=3)
    skipped.append(msg)


def loadable_rois(samples: Sequence[Sample], image_size: int, seed: int, skipped: list[str], augment: bool = False):
    """The samples as a RoiDataset (ImageNet normalisation, as the CNN trunks expect) and the
    indices of the ROIs that load; an unreadable frame skips its ROI with a warning, not the run."""
    from ..data.dataset import RoiDataset

    ds = RoiDataset(list(samples), size=image_size, normalize="imagenet", augment=augment, seed=seed)
    keep = []
    for i, s in enumerate(ds.samples):
        try:
            ds.roi_array(i)
        except Exception as exc:  # noqa: BLE001 - a bad frame skips its ROI, not the run
            warn_skip(s, exc, skipped)
        else:
            keep.append(i)
    return ds, keep


def group_folds(y: np.ndarray, groups: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Case-grouped stratified folds over the training side (no case on both sides of a fold).

    ``k`` shrinks to the number of cases of the rarer class; fewer than 2 gives no folds."""
    sk_ms = __import__("sklearn.model_selection", fromlist=["StratifiedGroupKFold"])
    per_class = [len(set(groups[y == c])) for c in (0, 1)]
    k = min(int(k), *per_class)
    if k < 2:
        return []
    cv = sk_ms.StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=int(seed))
    return [(tr, te) for tr, te in cv.split(np.zeros(len(y)), y, groups)]


def oof_scores(fit_predict: Callable[[np.ndarray, np.ndarray], np.ndarray], y: np.ndarray,
               groups: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Out-of-fold P(malignant) on the training side: ``fit_predict(train_idx, test_idx)`` per
    case-grouped fold. Returns ``(scores, mask of scored rows, source label)``; a fold whose
    training part has one class only leaves its rows unscored."""
    out = np.full(len(y), np.nan)
    folds = group_folds(y, groups, k, seed)
    for tr, te in folds:
        if len(set(y[tr].tolist())) < 2:
            continue
        out[te] = fit_predict(tr, te)
    mask = ~np.isnan(out)
    return out, mask, f"training out-of-fold ({len(folds)}-fold by case)"


def score(test_samples: Sequence[Sample], test_prob: np.ndarray, thr_samples: Sequence[Sample],
          thr_prob: np.ndarray, train_samples: Sequence[Sample], *, seed: int, n_boot: int,
          threshold_rule: str, threshold_source: str) -> dict:
    """The test report in :func:`train.train_and_evaluate`'s shape (via
    ``train.score_predictions``), threshold from ``thr_prob`` (never the test side)."""
    from ..train import Predictions, TrainConfig, score_predictions

    def preds(samples, prob):
        prob = np.asarray(prob, dtype=np.float64)
        return Predictions(prob=prob, labels=np.asarray([s.label for s in samples], dtype=np.int64),
                           case_ids=np.asarray([s.case_id for s in samples]), keys=[s.key for s in samples],
                           samples=list(samples), global_prob=prob, crop_prob=np.full(prob.shape, np.nan))

    cfg = TrainConfig(seed=int(seed), threshold_rule=threshold_rule)
    test = preds(test_samples, test_prob)
    report = score_predictions(test, preds(thr_samples, thr_prob), [s.label for s in train_samples], cfg,
                               n_boot=n_boot, threshold_source=threshold_source)
    # The raw test predictions travel with the report (under PRED, stripped before a report
    # is returned to a user) so that k-fold runs can pool them like train.pool_folds does.
    report[PRED] = test
    return report


PRED = "_predictions"


def strip_predictions(report: dict) -> dict:
    """``report`` (and its ``variants``) without the raw predictions, as users get it."""
    out = {k: v for k, v in report.items() if k != PRED}
    if isinstance(out.get("variants"), dict):
        out["variants"] = {name: strip_predictions(v) for name, v in out["variants"].items()}
    return out
