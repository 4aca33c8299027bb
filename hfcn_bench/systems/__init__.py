"""Comparator systems from the literature, run on the same case-level splits as HFCN.

Each system trains on a split's training cases and scores its test cases with
:func:`hfcn_bench.metrics.evaluate`, at a threshold chosen on the training side only, and
returns a report in the shape of :func:`hfcn_bench.train.train_and_evaluate`'s: ``metrics``
(flat, with ``auc``, ``pr_auc`` and ``ci`` as ``{name: [low, high]}``), ``ci``, ``roc``,
``majority_baseline``, ``protocol``, ``timings``; plus ``system`` (name, paper),
``system_config`` and ``limitations`` (what could not be done as published).

Typical use::

    from hfcn_bench.data import load_dataset, split_train_test
    from hfcn_bench.systems import SYSTEMS, evaluate_system

    ds = load_dataset("path/to/ddti/raw", label_rule="tirads")
    split = split_train_test(ds, test_fraction=0.25, seed=0)
    report = evaluate_system("shape_rf", ds, split, config={"n_estimators": 500})
    report["auc"], report["metrics"]["f1"], report["majority_baseline"]

    cv = cross_validate_system("mccnn_cascade", ds, k=5, config="quick")  # HFCN's folds, pooled alike
    cv["auc"], cv["variants"]["annotated_roi"]["auc"], cv["detection"]["ap50"]

``config`` is ``None`` (the system's defaults), ``"quick"`` (a CPU-minutes setting), a dict of
overrides of the system's config dataclass, or an instance of it. scikit-learn is needed by
the feature-based systems and imported only when one runs.
"""

from __future__ import annotations

import functools
import time

import numpy as np
from dataclasses import dataclass
from typing import Any, Callable

from ..data.collection import LoadedDataset
from ..data.splits import Split
from ..errors import HfcnError
from . import _common as C
from . import mccnn, shape_rf, transfer, two_stage

__all__ = ["SYSTEMS", "SystemSpec", "evaluate_system", "cross_validate_system", "available_systems"]


@dataclass(frozen=True)
class SystemSpec:
    """One comparator: ``run(train_samples, test_samples, cfg, n_boot=, progress=)`` returns
    the report; ``config_cls`` its configuration dataclass; ``quick`` the overrides of the
    ``"quick"`` setting."""

    name: str
    paper: str
    description: str
    config_cls: type
    run: Callable[..., dict]
    quick: Callable[[], dict]


SYSTEMS: dict[str, SystemSpec] = {
    "shape_rf": SystemSpec(
        "shape_rf", "Abdelrazik et al. 2025, arXiv 2511.11937 (baseline; PAPERS.md section 4)",
        "Random Forest on morphological and echogenicity features of the nodule outline",
        shape_rf.ShapeRFConfig, shape_rf.run, shape_rf._quick),
    **{
        f"transfer_{head}": SystemSpec(
            f"transfer_{head}", "transfer-learning master's project (PAPERS.md section 3)",
            f"{what} on globally pooled CNN features (VGG-16 / ResNet-50 / EfficientNet-B0, frozen or fine-tuned)",
            transfer.TransferConfig, functools.partial(transfer.run, head=head), transfer._quick)
        for head, what in (("svm", "SVM (RBF)"), ("rf", "Random Forest"),
                           ("softmax", "softmax (multinomial logistic) head"))
    },
    "mccnn_spp": SystemSpec(
        "mccnn_spp", "Song et al., IEEE JBHI 2019, MC-CNN stage 2 (PAPERS.md section 2)",
        "AlexNet-style trunk + spatial pyramid module (1x1/3x3/5x5 levels, 1/3 channels each) on annotated boxes",
        mccnn.MCCNNConfig, mccnn.run, mccnn._quick),
    "mccnn_cascade": SystemSpec(
        "mccnn_cascade", "Song et al., IEEE JBHI 2019, MC-CNN stages 1 + 2 (PAPERS.md section 2)",
        "SSD-style nodule detector on the whole frame -> the pyramid network on the detected box "
        "(variant annotated_roi: on the annotated box)",
        mccnn.MCCNNCascadeConfig, mccnn.run_cascade, mccnn._quick_cascade),
    "two_stage": SystemSpec(
        "two_stage", "Abdelrazik et al. 2025, arXiv 2511.11937 (PAPERS.md section 4)",
        "U-Net segmentation of the frame -> ROI from the predicted mask -> ResNet-18 (variants: annotated_roi, "
        "shape_rf_predicted)",
        two_stage.TwoStageConfig, two_stage.run, two_stage._quick),
}


def available_systems() -> tuple[str, ...]:
    return tuple(sorted(SYSTEMS))


def _spec(name: str) -> SystemSpec:
    if name not in SYSTEMS:
        raise HfcnError(f"unknown system {name!r}; known systems: {', '.join(available_systems())}")
    return SYSTEMS[name]


def _resolve(name: str, config: Any, seed: int):
    spec = _spec(name)
    if isinstance(config, str):
        if config != "quick":
            raise HfcnError(f"config must be None, 'quick', a dict or a {spec.config_cls.__name__}, got {config!r}")
        config = spec.quick()
    return spec, C.make_config(spec.config_cls, config, seed)


def _run_split(spec: SystemSpec, cfg, dataset: LoadedDataset, split: Split, n_boot: int, progress) -> dict:
    """One split, raw: the report still carries its test predictions (``C.PRED``)."""
    if not isinstance(dataset, LoadedDataset):
        raise HfcnError(f"dataset must be a LoadedDataset (data.load_dataset), got {type(dataset).__name__}")
    train_samples, test_samples = split.select(dataset)
    if not test_samples:
        raise HfcnError("the split has no test samples")
    C.both_classes(train_samples, "training")
    t0 = time.perf_counter()
    report = spec.run(train_samples, test_samples, cfg, n_boot=n_boot, progress=progress)
    report["timings"]["total_s"] = time.perf_counter() - t0
    report["train_samples"] = train_samples
    return report


def _describe(spec: SystemSpec, report: dict, dataset: LoadedDataset, kind: str) -> dict:
    report.update({"kind": kind, "system": {"name": spec.name, "paper": spec.paper, "description": spec.description},
                   "data": dataset.describe()})
    return report


def evaluate_system(name: str, dataset: LoadedDataset, split: Split, config: Any = None, n_boot: int = 1000,
                    seed: int = 0, progress: Callable[[str, int, int, dict], None] | None = None) -> dict:
    """Train comparator ``name`` on ``split``'s training cases and score its test cases.

    ``seed`` seeds the system (model initialisation, forests, folds, bootstrap) unless
    ``config`` sets its own. ``progress(kind, done, total, info)`` as in ``hfcn_bench.train``.
    A system that scores more than one way (e.g. detected and annotated ROIs) returns the
    others under ``variants`` (name -> report of the same shape, plus ``description``).
    Raises :class:`HfcnError` for an unknown name, a bad config, or data the system cannot use.
    """
    spec, cfg = _resolve(name, config, seed)
    report = _run_split(spec, cfg, dataset, split, n_boot, progress)
    report.pop("train_samples")
    return C.strip_predictions(_describe(spec, report, dataset, split.method))


def cross_validate_system(name: str, dataset: LoadedDataset, k: int, config: Any = None, n_boot: int = 1000,
                          seed: int = 0, progress: Callable[[str, int, int, dict], None] | None = None) -> dict:
    """Case-level stratified k-fold CV of comparator ``name`` (the folds of ``data.kfold``, the
    same as ``train.cross_validate`` uses for HFCN with the same seed), pooled as
    :func:`hfcn_bench.train.pool_folds` pools HFCN's: out-of-fold scores minus each fold's
    threshold, one bootstrap over all test ROIs. Variants are pooled the same way; numeric
    ``detection``/``segmentation``/``pairing`` summaries are pooled by :func:`_pool_summary`. ``progress`` also gets ``("fold", i, k, {...})`` after each fold."""
    from ..data.splits import kfold
    from ..train import FoldResult, TrainConfig, _fold_boot, pool_folds, pool_timings

    spec, cfg = _resolve(name, config, seed)
    if int(k) < 2:
        raise HfcnError(f"k must be >= 2, got {k}")
    splits = kfold(dataset, k=int(k), seed=seed)
    t0 = time.perf_counter()
    raws = []
    for split in splits:
        raw = _run_split(spec, cfg, dataset, split, _fold_boot(n_boot), progress)
        raws.append(raw)
        if progress is not None:
            progress("fold", split.fold + 1, len(splits), {"fold": split.fold, "auc": raw["auc"],
                                                          "f1": raw["metrics"]["f1"]})
    pool_cfg = TrainConfig(seed=int(cfg.seed), threshold_rule=cfg.threshold_rule)

    def pooled(reports: list[dict]) -> dict:
        folds = [FoldResult(i, r[C.PRED], r["threshold"], raws[i]["train_samples"],
                            {k: v for k, v in C.strip_predictions(r).items() if k != "train_samples"})
                 for i, r in enumerate(reports)]
        rep = pool_folds(folds, pool_cfg, n_boot=n_boot)
        src = reports[0].get("threshold_source", "training-side")
        rep["protocol"] = rep["protocol"].replace("on its validation cases", f"on its {src} predictions")
        return rep

    report = pooled(raws)
    first = raws[0]
    names = list((first.get("variants") or {}))
    if names:
        report["variants"] = {}
        for v in names:
            rep = pooled([r["variants"][v] for r in raws])
            rep["description"] = first["variants"][v].get("description", v)
            report["variants"][v] = rep
    for key in ("detection", "segmentation", "pairing"):
        if isinstance(first.get(key), dict):
            report[key] = _pool_summary([r[key] for r in raws])
    report["timings"] = pool_timings([r["timings"] for r in raws])
    report["timings"]["total_s"] = time.perf_counter() - t0
    for key in ("limitations", "system_config"):
        report[key] = first[key]
    return C.strip_predictions(_describe(spec, report, dataset, "kfold"))


def _pool_summary(per_fold: list[dict]) -> dict:
    """Counts (ints) summed over folds, rates and scores (floats) averaged weighted by each
    fold's ``frames`` (or ``nodules``), plus the per-fold values."""
    weight_key = "frames" if "frames" in per_fold[0] else "nodules"
    w = np.asarray([float(d.get(weight_key, 1)) for d in per_fold])
    out: dict = {"per_fold": per_fold}
    for key, val in per_fold[0].items():
        vals = [d.get(key) for d in per_fold]
        if all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
            out[key] = int(sum(vals))
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) and v == v for v in vals):
            out[key] = float(np.dot(w, vals) / w.sum())
    return out
