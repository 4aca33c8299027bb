"""Shared plumbing of the comparator systems: the sklearn import, both-classes checks, loading
ROIs with a warning per unreadable frame, out-of-fold threshold scores on the training side,
and scikit-learn models stored without pickle (skops).

The decision threshold comes from the training side only: out-of-fold predictions of a
case-grouped k-fold on the training cases for the feature-based heads (a forest or an SVM
scores its own training samples near perfectly, so in-sample scores would put the threshold
in the wrong place), or the validation cases carved out of the training side for the trained
networks.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..checkpoint import check_zip_integrity
from ..data.report import DataWarning
from ..data.rois import Sample
from ..errors import HfcnError

Progress = Callable[[str, int, int, dict], None]

# The only types a stored scikit-learn model may hold beyond what skops trusts by default: the
# decision trees of a Random Forest. Anything else in a file (a tampered one) is refused.
SKOPS_TRUSTED = ("sklearn.tree._tree.Tree",)


def sklearn():
    """The ``sklearn`` package, or a clear error: it is an optional dependency."""
    try:
        import sklearn as sk  # noqa: F401  (lazy: the rest of hfcn_bench runs without it)
    except ImportError:
        raise HfcnError(
            "this comparator system needs scikit-learn, which is not installed", hint="pip install scikit-learn"
        ) from None
    return sk


def both_classes(samples: Sequence[Sample], what: str) -> None:
    labels = {s.label for s in samples}
    if labels != {0, 1}:
        raise HfcnError(
            f"the {what} side holds only class(es) {sorted(labels)}; a classifier needs benign and malignant samples",
            hint="use a stratified case-level split (data.split_train_test)",
        )


def warn_skip(sample: Sample, exc: Exception, skipped: list[str]) -> None:
    """An unreadable frame skips its ROI with a warning (as ``train`` does), not the run."""
    msg = f"{sample.image_path}: ROI {sample.key} could not be loaded ({type(exc).__name__}: {exc}); skipped"
    warnings.warn(msg, DataWarning, stacklevel=3)
    skipped.append(msg)


def loadable_rois(
    samples: Sequence[Sample],
    image_size: int,
    seed: int,
    skipped: list[str],
    augment: bool = False,
    letterbox: bool = False,
    progress: Callable[[str, int, int, dict], None] | None = None,
    what: str = "ROIs",
    policy: str = "basic",
    context: str = "0",
):
    """The samples as a RoiDataset (ImageNet normalisation, as the CNN trunks expect) and the
    indices of the ROIs that load; an unreadable frame skips its ROI with a warning, not the run.
    ``progress("load", done, total, {"what": what})`` follows the decoding. ``policy`` and
    ``context``: the augmentation policy and the ROI context (:class:`RoiDataset`)."""
    from ..data.dataset import RoiDataset

    ds = RoiDataset(
        list(samples),
        size=image_size,
        letterbox=letterbox,
        normalize="imagenet",
        augment=augment,
        seed=seed,
        policy=policy,
        context=context,
    )
    keep = []
    n = len(ds.samples)
    for i, s in enumerate(ds.samples):
        try:
            ds.roi_array(i)
        except Exception as exc:  # noqa: BLE001 - a bad frame skips its ROI, not the run
            warn_skip(s, exc, skipped)
        else:
            keep.append(i)
        if progress is not None:
            progress("load", i + 1, n, {"what": what})
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


def oof_scores(
    fit_predict: Callable[[np.ndarray, np.ndarray], np.ndarray], y: np.ndarray, groups: np.ndarray, k: int, seed: int
) -> tuple[np.ndarray, np.ndarray, str]:
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


def save_sklearn(model, path: Path) -> str:
    """Store a fitted scikit-learn model with skops (no pickle); return the file name."""
    import skops.io as sio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from ..atomic import atomic_write

    data = sio.dumps(model)
    atomic_write(path, lambda fh: fh.write(data))
    return path.name


def load_sklearn(path: Path):
    """Load a model written by :func:`save_sklearn`, executing no code from the file: skops
    rebuilds only scikit-learn/numpy types it trusts plus :data:`SKOPS_TRUSTED`; any other type
    in the file is refused with its name."""
    import skops.io as sio

    path = Path(path)
    check_zip_integrity(path, what="skops model file", hint="retrain the run (hfcn-bench train --force)")
    try:
        untrusted = [t for t in sio.get_untrusted_types(file=path) if t not in SKOPS_TRUSTED]
    except Exception as exc:  # noqa: BLE001 - a damaged schema: refused, never guessed at
        raise HfcnError(
            f"{path}: not a readable skops model file ({type(exc).__name__}: {str(exc)[:200]})",
            hint="retrain the run (hfcn-bench train --force)",
        ) from None
    if untrusted:
        raise HfcnError(
            f"{path}: refused to load: the file holds types hfcn-bench does not trust ({', '.join(untrusted[:5])})",
            hint="only models written by hfcn-bench load; a tampered model file could run code",
        )
    try:
        return sio.load(path, trusted=list(SKOPS_TRUSTED))
    except Exception as exc:  # noqa: BLE001
        raise HfcnError(
            f"{path}: not a readable skops model file ({type(exc).__name__}: {str(exc)[:200]})",
            hint="retrain the run (hfcn-bench train --force)",
        ) from None
