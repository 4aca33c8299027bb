"""P(malignant) from a finished run for new inputs: DDTI case XMLs, image files, or an image
with a nodule box, for any system.

A case XML is read by the DDTI reader itself (``load_ddti(..., only=[xml])``) with the run's
own options, so one XML gives the same ROIs in prediction as in training: the same outline
de-duplication, truncation salvage, geometry checks and empty-outline policy; warts the
reader reports for it come back as notes. An image without a box is one whole-image ROI; a
box (``x0, y0, x1, y1``, frame pixels, exclusive ends) makes it that nodule's ROI.

A k-fold run predicts with the mean of its fold models (decision at the mean of their
thresholds; see :mod:`.evaluation`), or with one fold's model (``fold``).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.ddti import layout_of_xml, load_ddti
from ..data.report import DataWarning
from ..data.rois import MIN_ROI_SIDE, Sample, UnreadableImage, open_image
from ..errors import HfcnError
from ..protocol import ensemble, read_run
from ..systems import get_system
from .evaluation import fitted_models

__all__ = [
    "IMAGE_SUFFIXES",
    "Prediction",
    "read_inputs",
    "image_sample",
    "parse_box",
    "predict_samples",
    "predict_inputs",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


# A box coordinate as a person types it: digits with an optional sign and decimal part. No
# exponents, underscores ("1_50" is not 150), infinities or NaN; at most 12 characters, which
# is more than any image side needs.
_COORD = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
_MAX_COORD_CHARS = 12


def _shown(text: str, limit: int = 60) -> str:
    """A box text for a message, cut short when it is long."""
    text = str(text)
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"


def parse_box(text: str, size: tuple[int, int] | None = None) -> tuple[int, int, int, int]:
    """``"x0,y0,x1,y1"`` as an integer box; with the image ``size`` (width, height) the box
    must lie inside it and have sides of at least ``MIN_ROI_SIDE`` pixels. Each coordinate is a
    plain decimal number (see ``_COORD``); anything else is an :class:`HfcnError`."""
    parts = [p for p in re.split(r"[,\s]+", str(text).strip()) if p]
    if len(parts) != 4:
        raise HfcnError(f"box {_shown(text)}: expected four numbers x0,y0,x1,y1, got {len(parts)}")
    for p in parts:
        if len(p) > _MAX_COORD_CHARS or not _COORD.fullmatch(p):
            raise HfcnError(
                f"box {_shown(text)}: expected four numbers x0,y0,x1,y1; {_shown(p, 20)} is not a pixel "
                "coordinate (digits, e.g. 120)"
            )
    box = tuple(int(round(float(p))) for p in parts)
    x0, y0, x1, y1 = box
    if x1 <= x0 or y1 <= y0:
        raise HfcnError(f"box {_shown(text)} is empty or inverted: it needs x1 > x0 and y1 > y0")
    if size is not None:
        w, h = size
        if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
            raise HfcnError(f"box {_shown(text)} lies outside the {w}x{h} image")
    if min(x1 - x0, y1 - y0) < MIN_ROI_SIDE:
        raise HfcnError(f"box {_shown(text)} is {x1 - x0}x{y1 - y0} px: its sides must be at least {MIN_ROI_SIDE} px")
    return box


def image_sample(
    path: str | Path,
    box: tuple[int, int, int, int] | str | None = None,
    case_id: str | None = None,
    frame: int | None = None,
    label_rule: str = "tirads",
) -> Sample:
    """One unlabelled ROI of an image file: the whole image, or ``box``. Raises
    :class:`HfcnError` for an unreadable image (or one over the pixel cap) and a bad box.
    ``label_rule`` is the run's (a prediction carries the rule of the model that makes it)."""
    path = Path(path)
    try:
        with open_image(path) as im:
            im.load()
            size = im.size
    except UnreadableImage as exc:
        raise HfcnError(f"{path}: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise HfcnError(f"{path}: cannot decode: {exc}") from None
    m = re.match(r"^(.+)_(\d+)$", path.stem)
    cid, fr = (m.group(1), int(m.group(2))) if m else (path.stem, 0)
    if box is None and min(size) < MIN_ROI_SIDE:
        # the whole image is the ROI: it must be as large as a box a user may give
        raise HfcnError(
            f"{path.name} is {size[0]}x{size[1]} px: an image used whole as the ROI needs sides of at least "
            f"{MIN_ROI_SIDE} px"
        )
    if box is None:
        return Sample(
            case_id or cid,
            fr if frame is None else frame,
            path,
            None,
            (0, 0, size[0], size[1]),
            None,
            label_rule,
            size,
            0,
            "whole image",
        )
    box = parse_box(box, size) if isinstance(box, str) else parse_box(",".join(map(str, box)), size)
    return Sample(
        case_id or cid, fr if frame is None else frame, path, None, box, None, label_rule, size, 0, "user box"
    )


def read_inputs(
    paths: Sequence[str | Path], label_rule: str, options: dict
) -> tuple[list[tuple[Path, Sample]], list[str], list[str]]:
    """``([(input path, sample)], errors, notes)`` for case XMLs and image files; a file that
    cannot be used gives one error line naming it, never an exception."""
    out: list[tuple[Path, Sample]] = []
    errors: list[str] = []
    notes: list[str] = []
    seen_paths: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if path.resolve() in seen_paths:
            notes.append(f"{path}: given more than once; predicted once")
            continue
        seen_paths.add(path.resolve())
        if not path.is_file():
            errors.append(f"{path}: no such file")
            continue
        suffix = path.suffix.lower()
        if suffix == ".xml":
            base, _ = layout_of_xml(path)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DataWarning)
                    ds = load_ddti(
                        base,
                        label_rule=label_rule,
                        only=[path],
                        keep_unlabelled=True,
                        warn=False,
                        link_near_duplicates=False,  # no split is built from it
                        **{k: v for k, v in options.items() if k in ("margin", "empty_outline", "truncated")},
                    )
            except HfcnError as exc:
                errors.append(f"{path}: {exc}")
                continue
            for w in ds.report.warts:
                line = f"{path}: {w.kind}: {w.message} ({w.action})"
                (errors if w.kind in ("malformed-xml", "duplicate-case") else notes).append(line)
            if not ds.samples and not any(e.startswith(f"{path}:") for e in errors):
                errors.append(
                    f"{path}: no ROI to predict (see the notes for why)"
                    if ds.report.warts
                    else f"{path}: the case has no frames"
                )
            out.extend((path, s) for s in ds.samples)
        elif suffix in IMAGE_SUFFIXES:
            try:
                out.append((path, image_sample(path, label_rule=label_rule)))
            except HfcnError as exc:
                errors.append(str(exc))
        else:
            errors.append(f"{path}: not a case XML or an image ({', '.join(IMAGE_SUFFIXES)})")
    return _unique_keys(out), errors, notes


def _unique_keys(items: list[tuple[Path, Sample]]) -> list[tuple[Path, Sample]]:
    """Inputs from different folders may share a file name (two ``1_1.png``): their ROIs get
    distinct case ids (``1~2``), so no prediction or picture stands in for another."""
    import dataclasses

    seen: dict[str, int] = {}
    out = []
    for path, s in items:
        n = seen.get(s.key, 0) + 1
        seen[s.key] = n
        out.append((path, s if n == 1 else dataclasses.replace(s, case_id=f"{s.case_id}~{n}")))
    return out


@dataclass
class Prediction:
    """One ROI's prediction: ``sample`` as given (its annotated or user box), ``roi_box`` the box
    the system classified (a cascade's detected or segmented box; the given one otherwise),
    ``prob`` (main output) against ``threshold``; ``outputs`` every output's probability;
    ``extra`` the system's per-ROI values (HFCN: global and crop-branch probabilities);
    ``explain`` what :meth:`System.explain` gives for a picture (or None)."""

    sample: Sample
    prob: float
    threshold: float
    outputs: dict
    extra: dict
    explain: dict | None = None
    roi_box: tuple | None = None

    @property
    def call(self) -> str:
        return "malignant" if self.prob >= self.threshold else "benign"


def predict_samples(
    run_dir: str | Path,
    samples: Sequence[Sample],
    *,
    fold: int | None = None,
    checkpoint: str = "best",
    device: str = "cpu",
    explain: bool = True,
    models=None,
) -> tuple[list[Prediction], list[str]]:
    """Predictions for ``samples`` from a finished run (every fold model averaged, or
    ``fold``'s); ``models`` may be given (``evaluation.fitted_models``) to reuse loaded ones.
    Returns ``(predictions, skipped)``: an ROI whose image cannot be read is skipped."""
    run = read_run(run_dir)
    system = get_system(run.system)
    models = models if models is not None else fitted_models(run, checkpoint, device, fold)
    samples = list(samples)
    if not samples:
        return [], []
    per_output: dict[str, list] = {}
    for _, fitted in models:
        out = system.predict(fitted, samples)
        for name, pred in out.predictions.items():
            per_output.setdefault(name, []).append((fitted, pred))
    results = {}
    for name, items in per_output.items():
        preds = [p for _, p in items]
        common = set.intersection(*(set(p.keys) for p in preds))
        preds = [p.take([i for i, k in enumerate(p.keys) if k in common]) for p in preds]
        results[name] = ensemble(preds, [f.threshold(name, None)[0] for f, _ in items])
    main, thr = results["main"]
    given = {s.key: s for s in samples}
    rows = []
    by_key = {name: {k: i for i, k in enumerate(p.keys)} for name, (p, _) in results.items()}
    for i, s in enumerate(main.samples):
        outputs = {
            name: float(p.prob[by_key[name][s.key]]) for name, (p, _) in results.items() if s.key in by_key[name]
        }
        extra = {
            k: (v[i].tolist() if np.ndim(v[i]) else (None if np.isnan(v[i]) else float(v[i])))
            for k, v in main.extra.items()
        }
        info = None
        if explain:
            parts = [system.explain(f, s) for _, f in models]
            info = _mean_explanations([p for p in parts if p is not None])
        rows.append(
            Prediction(
                given.get(s.key, s),
                float(main.prob[i]),
                float(thr),
                outputs,
                extra,
                info,
                tuple(int(v) for v in s.bbox),
            )
        )
    return rows, list(main.skipped)


def _mean_explanations(parts: list[dict]) -> dict | None:
    """One picture's worth from several fold models: numbers and maps averaged, the rest as
    the first model has it."""
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    out = dict(parts[0])
    for key in ("prob", "global_prob", "crop_prob"):
        vals = [p[key] for p in parts if p.get(key) is not None]
        out[key] = float(np.mean(vals)) if vals else None
    if parts[0].get("crop_probs"):
        out["crop_probs"] = [float(v) for v in np.mean([p["crop_probs"] for p in parts], axis=0)]
    cams = [p["cam"] for p in parts if p.get("cam") is not None]
    if cams and all(c.shape == cams[0].shape for c in cams):
        out["cam"] = np.mean(cams, axis=0)
    return out


def predict_inputs(
    run_dir: str | Path,
    inputs: Sequence[str | Path],
    *,
    fold: int | None = None,
    checkpoint: str = "best",
    device: str = "cpu",
    explain: bool = True,
) -> tuple[list[tuple[Path, Prediction]], list[str], list[str]]:
    """Predictions for every ROI of ``inputs`` (case XMLs, image files). Returns
    ``([(input, prediction)], errors, notes)``."""
    run = read_run(run_dir)
    rule = run.manifest.label_rule if run.manifest.label_rule != "folder" else "tirads"
    items, errors, notes = read_inputs(inputs, rule, run.manifest.data.get("options") or {})
    system = get_system(run.system)
    usable = []
    for path, s in items:
        why = system.cannot_predict(s)
        if why:
            errors.append(f"{path}: ROI {s.key}: {why}")
        else:
            usable.append((path, s))
    items = usable
    rows, skipped = predict_samples(
        run_dir, [s for _, s in items], fold=fold, checkpoint=checkpoint, device=device, explain=explain
    )
    src = {s.key + "@" + str(s.image_path): p for p, s in items}
    errors.extend(skipped)
    return [(src[r.sample.key + "@" + str(r.sample.image_path)], r) for r in rows], errors, notes
