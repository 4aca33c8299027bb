"""Scoring a finished run from its saved models: on its own held-out cases (re-evaluation) or
on another labelled dataset (external validation), for any system.

- **Internal** (the data the run was trained on, checked by its fingerprint): every split's
  fitted system is loaded (its model files checked against their sha256), predicts that
  split's test cases, and is scored exactly as training scored it: the same report.
- **External** (any other dataset, DDTI or folder format): the run's fitted models predict
  every labelled ROI of the new set. A k-fold run is applied as the mean of its k fold
  models' P(malignant), with the mean of their thresholds: the decision
  ``mean(p_i) >= mean(t_i)`` is the one the pooled CV scores used (mean margin >= 0). The
  threshold is the run's own, chosen on its training side; it is never re-tuned on the
  external set. The report states the training and external prevalences side by side, scores
  the majority baseline on the external set and judges calibration (Brier score, reliability).
  Images of the external set that are byte-identical to the run's training images, or
  near-duplicates of them (re-encoded, resized, cropped, a pane of a dual-view frame, a
  brightness change: :mod:`hfcn_bench.data.neardup`), are refused (they would not be
  external), unless ``allow_overlap``; the report then carries the overlap.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..data.report import DataWarning
from ..data.splits import verify_manifest
from ..errors import HfcnError
from ..protocol import ensemble, read_run, score_predictions
from ..protocol.checks import check_n_boot
from ..protocol.descriptors import descriptor_report
from ..protocol.portable import recorded_root
from ..protocol.runfolder import RunFolder
from ..systems import get_system
from ..systems.base import config_to_dict
from .training import assemble_report, load_fitted, pool_summary, score_split

__all__ = ["evaluate_run", "load_run_data", "overlap_with_training", "near_duplicates_of_training", "fitted_models"]

Progress = Callable[[str, int, int, dict], None]


def load_run_data(run: RunFolder, data: str | Path | None = None, classes=None):
    """The dataset a run names (or ``data``), loaded with the run's label rule and options.

    A folder dataset's class mapping: ``classes`` when given; else the run's recorded one for
    the run's own data, and for ``data`` when every folder it maps is there (another folder
    dataset with the default benign/ and malignant/ names is read without it). Cases are linked
    by near-duplicate images as the run's split was (its own data) or not at all (other data:
    no split is built from it)."""
    from ..data import load_dataset
    from ..data.folder import has_class_folders

    root = data if data is not None else recorded_root(run.manifest.data)
    if not root:
        # A portable run folder (a reproduce cell) records no machine path: the user names the data.
        raise HfcnError(f"{run.path}: the manifest names no data folder", hint="pass --data DIR")
    recorded = run.manifest.data.get("options") or {}
    opts = {k: v for k, v in recorded.items() if k in ("margin", "empty_outline", "truncated")}
    own = data is None or Path(data).expanduser().resolve() == Path(str(run.manifest.data.get("root"))).resolve()
    opts["link_near_duplicates"] = own and run.manifest.near_duplicates is not None
    if classes is None and recorded.get("classes"):
        mapped = recorded["classes"]
        if own or all(has_class_folders(root, {k: v}) for k, v in mapped.items()):
            classes = mapped
    if classes is not None:
        opts["classes"] = classes
    with warnings.catch_warnings():
        # The warts were reported when the run was trained (or by `data check`); the
        # fingerprint and overlap checks below are what matter now.
        warnings.simplefilter("ignore", DataWarning)
        label_rule = run.manifest.label_rule if run.manifest.label_rule != "folder" else "tirads"
        return load_dataset(root, label_rule=label_rule, **opts)


def overlap_with_training(run: RunFolder, dataset) -> list[str]:
    """Files of ``dataset`` whose bytes are training images of the run (by sha1), each as
    ``"file (training case C)"``."""
    train = run.manifest.training_images()
    if not train:
        return []
    out = []
    for s in dataset.samples:
        sha = dataset.files.get(dataset.file_key(s.image_path))
        if sha in train:
            try:
                shown = Path(s.image_path).relative_to(dataset.root).as_posix()
            except ValueError:
                shown = Path(s.image_path).name
            entry = f"{shown} (training case {train[sha]})"
            if entry not in out:
                out.append(entry)
    return out


def near_duplicates_of_training(run: RunFolder, dataset, threshold: float | None = None) -> list[str]:
    """Images of ``dataset`` that are near-duplicates of the run's training images (the
    training cases of every split, read from the run's own data folder), each as ``"file
    (near-duplicate of training image T: kind, score S)"``. When the training images cannot be
    read any more, a :class:`DataWarning` says so and nothing is checked beyond the bytes."""
    from ..data.neardup import DEFAULT_THRESHOLD, find_overlap, hash_images

    train_cases = {c for s in run.manifest.splits for c in s.train}
    try:
        train_ds = load_run_data(run)
    except HfcnError as exc:
        warnings.warn(
            f"{run.path}: its training images could not be read ({exc}); the external set is checked for "
            "byte-identical training images only, not for near-duplicates",
            DataWarning,
            stacklevel=2,
        )
        return []
    train_paths = sorted({str(s.image_path) for s in train_ds.samples if s.case_id in train_cases})
    ext_paths = sorted({str(s.image_path) for s in dataset.samples})
    if not train_paths or not ext_paths:
        return []
    ia = hash_images(train_paths, root=train_ds.root)
    ib = hash_images(ext_paths, root=dataset.root)
    found: dict[str, str] = {}
    for m in find_overlap(ia, ib, threshold=DEFAULT_THRESHOLD if threshold is None else threshold):
        if m.b not in found:
            found[m.b] = f"{m.b} (near-duplicate of training image {m.a}: {m.kind}, score {m.score:.3f})"
    return [found[k] for k in sorted(found)]


def fitted_models(run: RunFolder, checkpoint: str = "best", device: str = "cpu", fold: int | None = None):
    """``[(fold, Fitted)]`` of a finished run (one entry, or one per fold)."""
    if not run.finished:
        raise HfcnError(
            run.progress_note() or f"{run.path} did not finish",
            hint=f"resume it: hfcn-bench train --resume --out {run.path}",
        )
    system = get_system(run.system)
    folds = run.folds
    if fold is not None:
        if not run.is_kfold:
            raise HfcnError(f"{run.path} is a single-split run: --fold does not apply")
        if fold not in folds:
            raise HfcnError(f"{run.path} has folds {folds[0]}..{folds[-1]}, not {fold}")
        folds = [fold]
    return [(f, load_fitted(system, run.fit_dir(f), checkpoint, device)[0]) for f in folds]


def _retune_last(system, fitted, train_samples) -> None:
    """``--checkpoint last``: the stored thresholds belong to the best weights; choose them
    again, by the same rule, on the validation cases the run recorded (never the test side)."""
    val = [s for s in train_samples if s.case_id in set(fitted.val_cases)]
    if not val:
        return
    out = system.predict(fitted, val)
    for name, pred in out.predictions.items():
        if fitted.threshold_source.get(name) == "validation":
            fitted.threshold_predictions[name] = pred


def evaluate_run(
    run_dir: str | Path,
    data: str | Path | None = None,
    *,
    checkpoint: str = "best",
    aggregate: str | None = "run",
    n_boot: int | None = None,
    device: str = "cpu",
    allow_overlap: bool = False,
    progress: Progress | None = None,
    classes=None,
) -> dict:
    """Score a run folder from its saved models (see the module docstring).

    ``data``: the dataset folder (default: the one in the manifest). Same fingerprint as the
    run's data: internal re-evaluation; any other: external validation. ``aggregate``: None
    (per ROI), "mean" or "max" (per case), "run" (the run's own). ``classes``: a folder
    dataset's class mapping (default: the run's, see :func:`load_run_data`). Returns the report, with
    ``external`` True/False, ``run`` and ``checkpoint``.
    """
    run = read_run(run_dir)
    system = get_system(run.system)
    protocol = run.header.get("protocol", {})
    if aggregate == "run":
        aggregate = protocol.get("aggregate")
    n_boot = check_n_boot(protocol.get("n_boot", 1000) if n_boot is None else n_boot, "n_boot")
    models = fitted_models(run, checkpoint, device)
    ds = load_run_data(run, data, classes)
    if data is None or ds.fingerprint == run.manifest.fingerprint:
        verify_manifest(run.manifest, ds)
        report = _internal(run, system, models, ds, checkpoint, aggregate, n_boot, progress)
    else:
        report = _external(run, system, models, ds, aggregate, n_boot, allow_overlap, progress)
    report.update({"run": str(run.path), "checkpoint": checkpoint})
    return report


def _internal(run, system, models, ds, checkpoint, aggregate, n_boot, progress) -> dict:
    kfold = run.is_kfold
    folds, summaries, timings, trainings = {}, [], [], []
    for split, (fold, fitted) in zip(run.manifest.splits, models):
        train_samples, test_samples = split.select(ds)
        if checkpoint == "last":
            _retune_last(system, fitted, train_samples)
        out = system.predict(fitted, test_samples, progress=progress)
        for name, res in score_split(
            system,
            fitted,
            out,
            train_samples,
            fold,
            n_boot=n_boot,
            aggregate=aggregate,
            kfold=kfold,
            method=split.method,
        ).items():
            folds.setdefault(name, []).append(res)
        summaries.append(out.summaries)
        timings.append({**fitted.timings, "predict_s": out.seconds})
        trainings.append(fitted.training)
    cfg = models[0][1].config
    report = assemble_report(
        system, cfg, folds, summaries, timings, trainings, kind=run.manifest.method, n_boot=n_boot, aggregate=aggregate
    )
    report["data"] = ds.describe()
    report["external"] = False
    return report


def _external(run, system, models, ds, aggregate, n_boot, allow_overlap, progress) -> dict:
    overlap = overlap_with_training(run, ds)
    same = {o.split(" (")[0] for o in overlap}
    near = [o for o in near_duplicates_of_training(run, ds) if o.split(" (")[0] not in same]
    if (overlap or near) and not allow_overlap:
        both = overlap + near
        shown = "; ".join(both[:8]) + (f" and {len(both) - 8} more" if len(both) > 8 else "")
        raise HfcnError(
            f"{len(both)} image(s) of {ds.root} are training images of {run.path} ({len(overlap)} with the "
            f"same bytes, {len(near)} near-duplicates): {shown}",
            hint="an external set must not contain training images; --allow-overlap scores it anyway",
        )
    overlap = overlap + near
    samples = [s for s in ds.samples if s.label is not None]
    if not samples:
        raise HfcnError(f"{ds.root}: no labelled ROI to score")
    per_output: dict[str, list] = {}
    summaries = []
    for _fold, fitted in models:
        out = system.predict(fitted, samples, progress=progress)
        summaries.append(out.summaries)
        for name, pred in out.predictions.items():
            per_output.setdefault(name, []).append((fitted, pred))
    y_train, train_cases = run.manifest.training_labels()
    cfg = models[0][1].config
    reports = {}
    for name, items in per_output.items():
        preds = [p for _, p in items]
        keys = preds[0].keys
        if any(p.keys != keys for p in preds[1:]):
            # A fold model skipped an ROI the others scored (an unreadable image): average
            # over the ROIs every model scored.
            common = set.intersection(*(set(p.keys) for p in preds))
            preds = [p.take([i for i, k in enumerate(p.keys) if k in common]) for p in preds]
        thr_at = [f.threshold(name, aggregate) for f, _ in items]
        ens, thr = ensemble(preds, [t for t, _ in thr_at])
        source = thr_at[0][1]
        rep = score_predictions(
            ens,
            thr,
            y_train=y_train,
            seed=cfg.seed,
            n_boot=n_boot,
            aggregate=aggregate,
            train_case_labels=train_cases,
            threshold_source=f"the run's {source}",
            threshold_rule=cfg.threshold_rule,
            split="external set (no re-tuning)",
        )
        rep["skipped"] = list(ens.skipped)
        if name != "main":
            rep["description"] = system.variants.get(name, name)
        desc = descriptor_report([ens], n_boot=n_boot, seed=cfg.seed)
        if desc is not None:
            rep["descriptors"] = desc
        rep["predictions"] = [
            {
                "key": s.key,
                "image": str(s.image_path),
                "label": int(ens.labels[i]),
                "prob": float(ens.prob[i]),
                "pred": int(ens.prob[i] >= thr),
            }
            for i, s in enumerate(ens.samples)
        ]
        reports[name] = rep
    report = reports.pop("main")
    if reports:
        report["variants"] = reports
    for key in dict.fromkeys(k for s in summaries for k in s):
        per = [s[key] for s in summaries if key in s]
        report[key] = pool_summary(per, same_frames=True) if len(per) > 1 else per[0]
    ext_y = np.asarray([s.label for s in samples])
    report.update(
        {
            "external": True,
            "kind": "external",
            "system": {"name": system.name, "paper": system.paper, "description": system.description},
            "config": config_to_dict(cfg),
            "limitations": system.limitations(cfg),
            "models": len(models),
            "ensemble": (
                f"mean P(malignant) of the {len(models)} fold models, decision at the mean of their "
                "thresholds (each chosen on its fold's training side)"
            )
            if len(models) > 1
            else "the run's model at its own threshold (chosen on its training side)",
            "prevalence": {
                "training": float(np.mean(y_train)) if y_train else None,
                "external": float(ext_y.mean()),
                "training_rois": len(y_train),
                "external_rois": int(ext_y.size),
            },
            "overlap": overlap,
            # how many of the set's images are training images (--allow-overlap): every place
            # that shows this result (the report, rank, the model card) carries the count
            "overlap_count": {
                "images": len(overlap),
                "same_bytes": len(overlap) - len(near),
                "near_duplicates": len(near),
                "of": len({str(s.image_path) for s in samples}),
            },
            "data": ds.describe(),
            "training_data": run.header.get("data"),
        }
    )
    return report
