"""Classifying one nodule for the app, free of any web framework: an uploaded image (PNG, JPEG
or DICOM) with a nodule box, or an uploaded DDTI case XML with its frame images, through the
same prediction path as ``hfcn-bench predict`` (:func:`hfcn_bench.runs.predict_samples`, with
the run's models loaded once by the :class:`~.catalog.Catalog`).

:meth:`Classifier.classify` returns an :class:`Outcome`: the JSON-able ``result`` the API
returns, and what the page draws from (the prediction with its explanation, the frame).
Every bad input is an :class:`HfcnError` with a message for the user.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import HfcnError
from .card import LABEL_CAVEAT, NOTICE, model_card
from .catalog import Catalog, LoadedRun
from .inputs import read_frame, stage_case, write_frame
from .picture import make_preview

__all__ = ["Classifier", "Outcome"]


@dataclass
class Outcome:
    """One classified ROI: ``result`` (JSON-able, what the API returns), ``prediction``
    (``runs.Prediction``, its ``explain`` holding the pictures' arrays), ``view`` (the frame at
    preview size: a page session keeps this, never a 40-megapixel frame) and ``title`` for the
    picture."""

    result: dict
    prediction: object
    view: dict
    title: str
    roi: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)


class Classifier:
    """The app's classify functions over a :class:`Catalog` of runs."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog

    # -- the model card ------------------------------------------------------------------------
    def card(self, run: str | None) -> dict:
        """The model card of ``run``; its status says why it cannot be used when it cannot."""
        name = (run or "").strip() or self.catalog.default
        path = self.catalog.path(name)
        status = None
        try:
            self.catalog.load(name)
        except HfcnError as exc:
            status = str(exc)
        card = model_card(path, name, status)
        card["status"] = self.catalog.relative(card["status"])
        return card

    # -- an image with a box -------------------------------------------------------------------
    def classify(self, run: str | None, image: str | Path | None, box: str | None, name: str | None = None) -> Outcome:
        """P(malignant) of the nodule in ``box`` (``"x0,y0,x1,y1"``, frame pixels, exclusive
        ends; empty for the whole image) of the uploaded ``image``."""
        from ..runs import image_sample

        loaded = self.catalog.load(run)
        frame = read_frame(image, name)
        text = (box or "").strip()
        notes = list(frame.notes)
        if not text:
            notes.append(
                "no nodule box given: the whole image is the ROI (the models were trained on nodule boxes; "
                "draw or type one)"
            )
        with tempfile.TemporaryDirectory(prefix="hfcn-app-") as tmp:
            png = write_frame(frame, Path(tmp))
            try:
                sample = image_sample(png, text or None, label_rule=loaded.label_rule)
            except HfcnError as exc:  # named by the upload, not by the staged PNG
                raise HfcnError(str(exc).replace(png.name, frame.name), hint=exc.hint) from None
            pred = self._predict(loaded, sample)
            roi = None if pred.explain else _display_roi(frame.rgb, pred.roi_box or sample.bbox)
        box_text = ",".join(map(str, sample.bbox))
        title = f"{frame.name}, ROI {box_text} ({loaded.name})"
        result = self._result(loaded, pred, notes, image=frame.describe())
        return Outcome(result, pred, make_preview(frame.rgb, frame.name), title, roi, notes)

    # -- a DDTI case XML -------------------------------------------------------------------------
    def classify_case(
        self,
        run: str | None,
        xml: str | Path | None,
        images: Sequence | None,
        frame: int | float | None = None,
        region: int | float | None = 0,
        xml_name: str | None = None,
    ) -> Outcome:
        """P(malignant) of one nodule outline of a DDTI case: ``xml`` (``N.xml``) read by the
        project's DDTI reader with the run's options, its frame images ``N_k.jpg`` uploaded
        beside it (paths or ``(path, original name)``); ``frame`` (default: the first with an
        outline) and ``region`` (the outline's index within the frame, default 0)."""
        from ..runs import read_inputs

        loaded = self.catalog.load(run)
        options = loaded.run.manifest.data.get("options") or {}
        with tempfile.TemporaryDirectory(prefix="hfcn-app-case-") as tmp:
            target = stage_case(xml, images, Path(tmp), xml_name)
            items, errors, notes = read_inputs([target], loaded.label_rule, options)
            notes = [_scrub(n, tmp) for n in notes]
            hint = None
            if any("missing-image" in n for n in notes):
                frames_missing = sorted(
                    {int(m) for m in re.findall(r"refers to frame (\d+), no such image", " ".join(notes))}
                )
                names = ", ".join(f"{target.stem}_{k}.jpg" for k in frames_missing) or f"{target.stem}_1.jpg"
                hint = f"upload the case's frame images with the XML, named as in DDTI: {names}"
            if errors:
                raise HfcnError(
                    "; ".join(_scrub(e, tmp) for e in errors) + (f" ({'; '.join(notes)})" if notes else ""), hint=hint
                )
            samples = [s for _, s in items]
            if not samples:
                raise HfcnError(f"{target.name}: no ROI to classify" + (f" ({'; '.join(notes)})" if notes else ""))
            frames = sorted({s.frame for s in samples})
            want = frames[0] if frame is None or str(frame).strip() == "" else _as_int(frame, "frame")
            in_frame = [s for s in samples if s.frame == want]
            if not in_frame:
                raise HfcnError(
                    f"case {samples[0].case_id} has no nodule outline in frame {want}; frames with one: "
                    f"{', '.join(map(str, frames))}" + (f" ({'; '.join(notes)})" if notes else ""),
                    hint=hint,
                )
            reg = 0 if region is None or str(region).strip() == "" else _as_int(region, "region")
            chosen = [s for s in in_frame if s.region == reg]
            if not chosen:
                raise HfcnError(
                    f"frame {want} of case {in_frame[0].case_id} has outline(s) "
                    f"{', '.join(str(s.region) for s in in_frame)}, not {reg}"
                )
            sample = chosen[0]
            pred = self._predict(loaded, sample)
            shown = read_frame(sample.image_path)
            roi = None if pred.explain else _display_roi(shown.rgb, pred.roi_box or sample.bbox)
        title = (
            f"case {sample.case_id}, frame {sample.frame}, outline {sample.region}"
            + (f", TI-RADS {sample.tirads} (a proxy label, not pathology)" if sample.tirads else "")
            + f" ({loaded.name})"
        )
        image = {
            "name": Path(sample.image_path).name,
            "format": "JPEG",
            "width": shown.size[0],
            "height": shown.size[1],
        }
        result = self._result(loaded, pred, notes, image=image)
        result.update(
            {
                "case_id": sample.case_id,
                "frame": sample.frame,
                "region": sample.region,
                "tirads": sample.tirads,
                "tirads_label": None if sample.label is None else ("benign", "malignant")[int(sample.label)],
                "other_outlines": [s.region for s in in_frame if s.region != sample.region],
            }
        )
        return Outcome(result, pred, make_preview(shown.rgb, image["name"]), title, roi, notes)

    # -- shared ------------------------------------------------------------------------------------
    @staticmethod
    def _system(loaded: LoadedRun):
        from ..systems import get_system

        return get_system(loaded.system)

    def _predict(self, loaded: LoadedRun, sample):
        from ..runs import predict_samples

        why = self._system(loaded).cannot_predict(sample)
        if why:
            raise HfcnError(f"system {loaded.system} cannot classify this ROI: {why}")
        with loaded.lock:
            rows, skipped = predict_samples(loaded.run.path, [sample], models=loaded.models, explain=True)
        if not rows:
            raise HfcnError("the ROI could not be classified" + (f": {'; '.join(skipped)}" if skipped else ""))
        return rows[0]

    def _result(self, loaded: LoadedRun, pred, notes: list[str], image: dict) -> dict:
        s = pred.sample
        info = pred.explain or {}
        res = {
            "prob": float(pred.prob),
            "label": pred.call,
            "threshold": float(pred.threshold),
            "run": loaded.name,
            "system": loaded.system,
            "box": [int(v) for v in s.bbox],
            "roi_box": [int(v) for v in (pred.roi_box or s.bbox)],
            "roi_kind": s.roi_kind,
            "image": image,
            "outputs": {k: float(v) for k, v in pred.outputs.items()},
            "label_rule": loaded.run.manifest.label_rule,
            "label_caveat": LABEL_CAVEAT if loaded.run.manifest.label_rule in ("tirads", "mccnn") else None,
            "gradcam": info.get("cam") is not None,
            "notes": list(notes),
            "notice": NOTICE,
        }
        if pred.roi_box and tuple(pred.roi_box) != tuple(s.bbox):
            res["notes"].append(
                f"{loaded.system} classified the box it localised itself ({', '.join(map(str, pred.roi_box))}), "
                "the one that overlaps the given box most"
            )
        for key in ("global_prob", "crop_prob", "crop_probs"):
            if key in pred.extra:
                res[key] = pred.extra[key]
        if loaded.system == "hfcn":
            cfg = loaded.models[0][1].config
            res.update({"crop": cfg.crop, "branch_weight": float(cfg.branch_weight)})
        return res


def _as_int(value, what: str) -> int:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise HfcnError(f"{what} must be a whole number, got {value!r}") from None
    if not f.is_integer():
        raise HfcnError(f"{what} must be a whole number, got {value!r}")
    return int(f)


def _scrub(text: str, folder: str) -> str:
    """A reader message without the temporary folder the upload was staged in."""
    return text.replace(str(Path(folder).resolve()) + "/", "").replace(str(folder) + "/", "")


def _display_roi(rgb: np.ndarray, box, size: int = 256) -> np.ndarray:
    """The ROI cut from the frame and resized for display (systems without an explanation)."""
    from PIL import Image

    from ..data.rois import crop_roi

    return np.asarray(crop_roi(Image.fromarray(rgb), tuple(box), size=size))
