"""Train any registered system on a case-level split or k folds, score its held-out cases, and
write the run folder: the one code path behind ``hfcn-bench train``, ``compare``'s metrics
and every ``reproduce`` cell.

Per split: the system is fitted on the training cases (it carves its validation part out of
them), predicts the test cases, and every output (the main one and its variants) is scored at
the threshold chosen on the training side (:meth:`Fitted.threshold`). One split gives its
report; k folds are pooled out of fold (:func:`protocol.pool_folds`). The report carries the
metrics with case-bootstrap intervals, the majority baseline, calibration, ROC points,
localisation quality (a cascade's detector or segmenter), the auxiliary descriptor heads'
AUCs (held-out cases, pooled over folds), timings, the system's limitations, its
configuration and the data's provenance.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_write, write_json_atomic
from ..data.collection import LoadedDataset
from ..data.splits import SPLIT_DESCRIPTIONS, Split, case_labels, write_manifest
from ..errors import HfcnError
from ..protocol import (
    FoldResult,
    Predictions,
    fold_boot,
    mark_finished,
    pool_folds,
    pool_timings,
    read_fitted,
    remove_stray_temps,
    score_predictions,
    verify_files,
    write_fitted,
    write_header,
)
from ..protocol.checks import check_n_boot, check_seed
from ..protocol.descriptors import descriptor_report
from ..protocol.runfolder import clear_run, fit_dir
from ..systems import get_system
from ..systems.base import Fitted, Output, System, config_from_dict, config_to_dict

__all__ = [
    "train_run",
    "fit_split",
    "load_fitted",
    "score_split",
    "assemble_report",
    "write_predictions_csv",
    "check_trainable",
    "pool_summary",
]

Progress = Callable[[str, int, int, dict], None]


def check_trainable(dataset: LoadedDataset) -> None:
    """Refuse data a classifier cannot be trained or scored on, before anything is written."""
    if not isinstance(dataset, LoadedDataset):
        raise HfcnError(f"dataset must be a LoadedDataset (data.load_dataset), got {type(dataset).__name__}")
    counts = dataset.class_counts()
    missing = [name for name, n in counts.items() if n == 0]
    if missing:
        raise HfcnError(
            f"{dataset.root}: no {' or '.join(missing)} ROI under the {dataset.label_rule!r} rule; "
            "training needs both classes",
            hint="check the labels with `hfcn-bench data check`",
        )


def _record(system: System, fitted: Fitted) -> dict:
    return {
        "system": system.name,
        "config": config_to_dict(fitted.config),
        "threshold_rule": fitted.config.threshold_rule,
        "threshold_predictions": {k: v.to_json() for k, v in fitted.threshold_predictions.items()},
        "threshold_source": dict(fitted.threshold_source),
        "training": fitted.training,
        "timings": fitted.timings,
        "skipped": list(fitted.skipped),
        "val_cases": list(fitted.val_cases),
        "variants": dict(system.variants),
    }


def fit_split(
    system: System,
    cfg,
    train_samples: Sequence,
    out_dir: Path | None = None,
    progress: Progress | None = None,
    resume: bool = False,
    keep_last: bool = True,
) -> Fitted:
    """Fit ``system`` on one split's training cases; with ``out_dir`` its models go there with
    ``fitted.json`` (thresholds' predictions, training summary, sha256 of every model file)."""
    fitted = system.fit(
        list(train_samples), cfg, out_dir=out_dir, progress=progress, resume=resume, keep_last=keep_last
    )
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        write_fitted(out_dir, _record(system, fitted), system.save(fitted, Path(out_dir)))
    return fitted


def load_fitted(system: System, directory: Path, checkpoint: str = "best", device: str = "cpu") -> tuple[Fitted, dict]:
    """A fitted system back from its folder (files checked against their recorded sha256)."""
    rec = read_fitted(directory)
    if rec.get("system") != system.name:
        raise HfcnError(f"{directory}: holds a {rec.get('system')!r} model, not {system.name!r}")
    if checkpoint not in ("best", "last"):
        raise HfcnError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")
    if checkpoint == "last" and not system.has_epochs:
        raise HfcnError(
            f"--checkpoint last: {system.name} keeps no per-epoch checkpoints", hint="use --checkpoint best"
        )
    if checkpoint == "last" and not any(Path(f).name == "last.pt" for f in rec.get("files", {})):
        raise HfcnError(f"{directory}: the run did not keep last.pt", hint="use --checkpoint best")
    cfg = config_from_dict(system.config_cls, rec["config"])
    verify_files(directory, rec.get("files", {}), only=system.needed_files(rec, checkpoint))
    models = system.load(cfg, Path(directory), rec, checkpoint, device)
    thr = {k: Predictions.from_json(v) for k, v in rec["threshold_predictions"].items()}
    fitted = Fitted(
        system.name,
        cfg,
        models,
        thr,
        dict(rec["threshold_source"]),
        rec.get("training", {}),
        rec.get("timings", {}),
        list(rec.get("skipped", [])),
        list(rec.get("val_cases", [])),
    )
    return fitted, rec


def score_split(
    system: System,
    fitted: Fitted,
    output: Output,
    train_samples: Sequence,
    fold: int | None,
    *,
    n_boot: int,
    aggregate: str | None,
    kfold: bool,
    method: str | None = None,
) -> dict[str, FoldResult]:
    """Each output's test report at its training-side threshold, as :class:`FoldResult`s.
    ``method``: the split's (``given``: the report says it is the dataset's own split)."""
    tr = list(train_samples)
    out = {}
    for name, pred in output.predictions.items():
        thr, source = fitted.threshold(name, aggregate)
        roi_thr = thr if aggregate is None else fitted.threshold(name, None)[0]
        split = SPLIT_DESCRIPTIONS["given"] if method == "given" else "case-level split"
        rep = score_predictions(
            pred,
            thr,
            y_train=[s.label for s in tr],
            seed=fitted.config.seed,
            n_boot=fold_boot(n_boot) if kfold else n_boot,
            aggregate=aggregate,
            train_case_labels=case_labels(tr),
            threshold_source=source,
            threshold_rule=fitted.config.threshold_rule,
            split=split,
        )
        rep["skipped"] = (list(fitted.skipped) if name == "main" else []) + list(pred.skipped)
        if name != "main":
            rep["description"] = system.variants.get(name, name)
        out[name] = FoldResult(0 if fold is None else fold, pred, roi_thr, tr, rep)
    return out


def pool_summary(per_fold: list[dict], same_frames: bool = False) -> dict:
    """Localisation summaries over folds: counts (ints) summed, rates and scores (floats)
    averaged weighted by each fold's ``frames`` (or ``nodules``), a name (str) kept when every
    fold gives the same one (e.g. which segmenter), plus the per-fold values.
    ``same_frames``: the summaries are of several models on the *same* frames (an external
    set scored by each fold model), so counts are averaged, not summed."""
    weight_key = "frames" if "frames" in per_fold[0] else "nodules"
    w = np.asarray([float(d.get(weight_key, 1)) for d in per_fold])
    out: dict = {"per_fold": per_fold}
    for key in per_fold[0]:
        vals = [d.get(key) for d in per_fold]
        if all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
            out[key] = float(np.mean(vals)) if same_frames else int(sum(vals))
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) and v == v for v in vals):
            out[key] = float(np.dot(w, vals) / w.sum()) if w.sum() > 0 else float("nan")
        elif all(isinstance(v, str) for v in vals) and len(set(vals)) == 1:
            out[key] = vals[0]
    return out


def _timings(system: System, fitted: Fitted, output: Output) -> dict:
    n = max(len(output.predictions.get("main", [])), 1)
    t = dict(fitted.timings)
    t.setdefault("device", "cpu")
    t.update(
        {
            "predict_s": output.seconds,
            "ms_per_roi": 1e3 * output.seconds / n,
            "threads": system.threads(fitted.config) or torch.get_num_threads(),
        }
    )
    return t


def assemble_report(
    system: System,
    cfg,
    folds: dict[str, list[FoldResult]],
    summaries: list[dict],
    timings: list[dict],
    trainings: list[dict],
    *,
    kind: str,
    n_boot: int,
    aggregate: str | None,
) -> dict:
    """One report from the per-split results (pooled when there are several folds)."""

    def one(results: list[FoldResult]) -> dict:
        if kind == "kfold":
            for f, tr in zip(results, trainings):
                f.report.setdefault("training", tr)
            for f, tm in zip(results, timings):
                f.report.setdefault("timings", tm)
            return pool_folds(
                results, seed=cfg.seed, threshold_rule=cfg.threshold_rule, aggregate=aggregate, n_boot=n_boot
            )
        return dict(results[0].report)

    report = one(folds["main"])
    desc = descriptor_report([f.test for f in folds["main"]], n_boot=n_boot, seed=cfg.seed)
    if desc is not None:
        report["descriptors"] = desc
    variants = {}
    for name in folds:
        if name == "main":
            continue
        rep = one(folds[name])
        rep["description"] = system.variants.get(name, name)
        variants[name] = rep
    if variants:
        report["variants"] = variants
    keys = dict.fromkeys(k for s in summaries for k in s)
    for key in keys:
        per = [s[key] for s in summaries if key in s]
        report[key] = pool_summary(per) if kind == "kfold" else per[0]
    report["timings"] = pool_timings(timings) if kind == "kfold" else timings[0]
    if kind != "kfold":
        report["training"] = trainings[0]
    report["split"] = {"method": kind, "description": SPLIT_DESCRIPTIONS.get(kind, kind)}
    report.update(
        {
            "kind": kind,
            "system": {"name": system.name, "paper": system.paper, "description": system.description},
            "config": config_to_dict(cfg),
            "system_config": config_to_dict(cfg),
            "limitations": system.limitations(cfg),
        }
    )
    return report


_CSV_COLUMNS = [
    "output",
    "fold",
    "key",
    "case_id",
    "frame",
    "region",
    "image",
    "label",
    "prob",
    "global_prob",
    "crop_prob",
    "threshold",
    "pred",
]


def _csv_rows(folds: dict[str, list[FoldResult]], kfold: bool) -> list[dict]:
    rows = []
    for name, results in folds.items():
        for f in results:
            pred = f.test
            for i, s in enumerate(pred.samples):
                ex = {k: v[i] for k, v in pred.extra.items() if v.ndim == 1}
                rows.append(
                    {
                        "output": name,
                        "fold": f.fold if kfold else "",
                        "key": s.key,
                        "case_id": s.case_id,
                        "frame": s.frame,
                        "region": s.region,
                        "image": str(s.image_path),
                        "label": int(pred.labels[i]),
                        "prob": f"{pred.prob[i]:.6f}",
                        "global_prob": "" if "global_prob" not in ex else f"{ex['global_prob']:.6f}",
                        "crop_prob": ""
                        if "crop_prob" not in ex or np.isnan(ex["crop_prob"])
                        else f"{ex['crop_prob']:.6f}",
                        "threshold": f"{f.roi_threshold:.6f}",
                        "pred": int(pred.prob[i] >= f.roi_threshold),
                    }
                )
    return rows


def write_predictions_csv(path, folds: dict[str, list[FoldResult]], kfold: bool) -> list[dict]:
    """Per-ROI rows of every output and fold (decision at each fold's ROI-level threshold)."""
    rows = _csv_rows(folds, kfold)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=_CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    data = buf.getvalue().encode("utf-8")
    atomic_write(path, lambda fh: fh.write(data))
    return rows


def train_run(
    system: str | System,
    config,
    dataset: LoadedDataset,
    splits: Sequence[Split],
    out_dir: str | Path | None = None,
    *,
    n_boot: int = 1000,
    aggregate: str | None = None,
    progress: Progress | None = None,
    resume: bool = False,
    keep_last: bool = True,
    header: dict | None = None,
    predictions_out: dict | None = None,
) -> dict:
    """Fit and score ``system`` (a registered name or a :class:`System`) on ``splits`` (one
    case-level split, the folds of ``data.kfold``, or the dataset's own split,
    ``data.given_split``) and return the report.

    ``config``: the system's config instance (``system.configure(preset, overrides)``). With
    ``out_dir`` the run folder is written (see :mod:`hfcn_bench.protocol.runfolder`); a stray
    temporary file of an earlier killed write is removed first, and ``resume`` continues
    interrupted training from the checkpoints. ``header``: extra fields for ``config.json``
    (e.g. the preset name). ``progress`` also gets ``("fold", i, k, {...})`` after each fold.
    ``predictions_out``: a dict filled with the main output's test predictions over all splits
    (``keys``, ``scores`` = probability minus its fold's threshold, ``labels``, ``cases``), for
    paired comparisons of two runs on the same splits.
    """
    spec = system if isinstance(system, System) else get_system(system)
    if not isinstance(config, spec.config_cls):
        raise HfcnError(f"config for {spec.name} must be a {spec.config_cls.__name__}, got {type(config).__name__}")
    check_trainable(dataset)
    check_n_boot(n_boot, "n_boot")
    check_seed(int(config.seed), "seed")
    splits = list(splits)
    if not splits:
        raise HfcnError("no split to train on")
    kind = splits[0].method
    kfold = kind == "kfold"
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        remove_stray_temps(out)
        if not resume:  # a fresh run: nothing of an earlier one (records, pictures) may pass as its own
            clear_run(out)
        write_manifest(out / "split.json", dataset, splits)
        split_info = {
            "method": kind,
            "description": SPLIT_DESCRIPTIONS.get(kind, kind),
            "seed": splits[0].seed,
            "params": dict(splits[0].params),
        }
        write_header(
            out,
            {
                "system": spec.name,
                "config": config_to_dict(config),
                "data": dataset.describe(),
                "split": split_info,
                "protocol": {"n_boot": int(n_boot), "aggregate": aggregate, "seed": int(config.seed)},
                **(header or {}),
            },
        )
    t0 = time.perf_counter()
    folds: dict[str, list[FoldResult]] = {}
    summaries, timings, trainings = [], [], []
    for split in splits:
        train_samples, test_samples = split.select(dataset)
        if not test_samples:
            raise HfcnError(f"split {split.fold if kfold else ''} has no test samples".replace("  ", " "))
        labels = {s.label for s in train_samples}
        if labels != {0, 1}:
            raise HfcnError(
                f"the training side of a split holds only class(es) {sorted(labels)}",
                hint="use a stratified case-level split (data.split_train_test / data.kfold)",
            )
        fd = fit_dir(out, split.fold if kfold else None) if out is not None else None
        fitted = fit_split(spec, config, train_samples, fd, progress, resume, keep_last)
        output = spec.predict(fitted, test_samples, progress=progress)
        for name, res in score_split(
            spec,
            fitted,
            output,
            train_samples,
            split.fold,
            n_boot=n_boot,
            aggregate=aggregate,
            kfold=kfold,
            method=split.method,
        ).items():
            folds.setdefault(name, []).append(res)
        summaries.append(output.summaries)
        timings.append(_timings(spec, fitted, output))
        trainings.append(fitted.training)
        if progress is not None and kfold:
            rep = folds["main"][-1].report
            progress(
                "fold", split.fold + 1, len(splits), {"fold": split.fold, "auc": rep["auc"], "f1": rep["metrics"]["f1"]}
            )
    report = assemble_report(
        spec, config, folds, summaries, timings, trainings, kind=kind, n_boot=n_boot, aggregate=aggregate
    )
    report["timings"]["total_s"] = time.perf_counter() - t0
    report["data"] = dataset.describe()
    if predictions_out is not None:
        main = folds["main"]
        predictions_out.update(
            {
                "keys": [s.key for f in main for s in f.test.samples],
                "scores": np.concatenate([f.test.prob - f.roi_threshold for f in main]),
                "labels": np.concatenate([f.test.labels for f in main]),
                "cases": np.concatenate([f.test.case_ids for f in main]),
            }
        )
    if out is not None:
        write_predictions_csv(out / "predictions.csv", folds, kfold)
        write_json_atomic(out / "metrics.json", report)
        mark_finished(out)
    return report
