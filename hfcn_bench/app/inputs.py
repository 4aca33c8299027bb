"""What a user uploads, read into what the models read: one RGB frame from a PNG/JPEG (or
BMP/TIFF) or a DICOM file, and a DDTI case XML with its frame images laid out for the project's
own DDTI reader.

Every refusal is an :class:`HfcnError` that names the upload by its own file name, never by the
server path the web framework stored it under. Limits (stated on the page):

* images and DICOM frames up to ``data.rois.MAX_IMAGE_PIXELS`` (40 megapixels), checked from
  the header before any pixel is decoded (a few-KB PNG can declare gigapixels);
* uploads up to ``MAX_UPLOAD_MB`` (the web server refuses larger ones before they are stored);
* a nodule box at least ``data.rois.MIN_ROI_SIDE`` pixels a side, inside the image (an image
  classified whole, without a box, as well).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.rois import MAX_IMAGE_PIXELS, MIN_ROI_SIDE, UnreadableImage, open_image
from ..errors import HfcnError
from .dicom import is_dicom, read_dicom

__all__ = [
    "MAX_UPLOAD_MB",
    "IMAGE_FORMATS",
    "Frame",
    "read_frame",
    "write_frame",
    "stage_case",
    "safe_name",
    "limits_text",
]

# Ultrasound cine loops exported as multi-frame DICOM reach a few hundred MB; a single 40 MP
# frame as an uncompressed RGB DICOM is 120 MB. Anything above this is refused by the server.
MAX_UPLOAD_MB = 256

# What Pillow may decode here: the formats of the project's image inputs (runs.IMAGE_SUFFIXES).
# "MPO" is a JPEG with extra pictures (some scanners and phones write it).
IMAGE_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "MPO": "JPEG", "BMP": "BMP", "TIFF": "TIFF"}


def limits_text() -> str:
    return (
        f"images and DICOM frames up to {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels, uploads up to "
        f"{MAX_UPLOAD_MB} MB, nodule boxes (or an image classified whole) at least {MIN_ROI_SIDE} px a side "
        "and inside the image"
    )


@dataclass
class Frame:
    """One decoded frame: ``rgb`` uint8 [H, W, 3], the upload's ``name``, its ``format``
    (PNG, JPEG, BMP, TIFF or DICOM), ``info`` (DICOM header facts) and ``notes`` for the user."""

    rgb: np.ndarray
    name: str
    format: str
    info: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        return int(self.rgb.shape[1]), int(self.rgb.shape[0])

    def describe(self) -> dict:
        w, h = self.size
        return {"name": self.name, "format": self.format, "width": w, "height": h, **self.info}


def safe_name(name: str | None, default: str = "upload") -> str:
    """A file name that is safe to create in a folder of ours: the last path part, with
    anything but letters, digits, ``.``, ``_`` and ``-`` replaced."""
    base = Path(str(name or "")).name
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".")
    return base or default


def read_frame(path: str | Path | None, name: str | None = None) -> Frame:
    """Decode an uploaded image file (see the module docstring). ``name``: the upload's own
    file name for messages (default: the path's)."""
    if path is None or str(path).strip() == "":
        raise HfcnError("no image given: upload a PNG, JPEG or DICOM file")
    path = Path(path)
    name = Path(name).name if name else path.name
    if not path.is_file():
        raise HfcnError(f"{name}: the uploaded file is gone (upload it again)")
    if is_dicom(path) or path.suffix.lower() in (".dcm", ".dicom"):
        d = read_dicom(path, name)
        return Frame(d.rgb, name, "DICOM", d.info, d.notes)
    try:
        with open_image(path) as im:
            fmt = IMAGE_FORMATS.get(str(im.format).upper())
            if fmt is None:
                raise HfcnError(
                    f"{name}: {im.format} images are not supported: give a PNG, JPEG (or BMP, TIFF) "
                    "image or a DICOM file"
                )
            notes = []
            if getattr(im, "n_frames", 1) > 1:
                notes.append(f"{name} holds {im.n_frames} pictures: the first one was classified")
            im.seek(0)
            im.load()
            rgb = _as_rgb(im)
    except UnreadableImage as exc:
        raise HfcnError(f"{name}: {_not_an_image(path, name, str(exc))}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise HfcnError(f"{name}: cannot decode the image: {_scrub(str(exc), path, name)}") from None
    return Frame(rgb, name, fmt, {}, notes)


def _not_an_image(path: Path, name: str, reason: str) -> str:
    reason = _scrub(reason, path, name)
    if reason.startswith("refused"):
        return reason
    try:
        with open(path, "rb") as fh:
            head = fh.read(512).lstrip()
    except OSError:
        head = b""
    if head.startswith(b"<?xml") or b"<case" in head[:512]:
        return "this is an XML file, not an image: a DDTI case XML goes in the 'DDTI case' tab (API: /classify_case)"
    return f"not an image (PNG, JPEG, BMP, TIFF) or a DICOM file ({reason})"


def _scrub(text: str, path: Path, name: str) -> str:
    """An error text without the server-side path of the upload."""
    return text.replace(str(path), name).replace(str(path.parent) + "/", "")


def _as_rgb(im: Image.Image) -> np.ndarray:
    """8-bit RGB of a decoded picture: 16-bit greyscale is scaled by its bit depth (Pillow's
    own conversion clips it), 32-bit integer or float greyscale from its minimum to its maximum."""
    if im.mode in ("I;16", "I;16B", "I;16L"):
        a = np.asarray(im, dtype=np.float64) / 65535.0 * 255.0
        grey = np.round(a).clip(0, 255).astype(np.uint8)
    elif im.mode in ("I", "F"):
        a = np.asarray(im, dtype=np.float64)
        if not np.isfinite(a).all():
            raise ValueError("pixel values that are not finite numbers (NaN or infinity)")
        lo, hi = float(a.min()), float(a.max())
        grey = np.zeros(a.shape, np.uint8) if hi <= lo else np.round((a - lo) / (hi - lo) * 255).astype(np.uint8)
    else:
        return np.asarray(im.convert("RGB") if im.mode != "RGB" else im, dtype=np.uint8).copy()
    return np.repeat(grey[..., None], 3, axis=2)


def write_frame(frame: Frame, folder: Path) -> Path:
    """The frame as a PNG in ``folder`` under the upload's stem (``12_1.dcm`` -> ``12_1.png``,
    so a DDTI-style name still gives the case id and frame)."""
    stem = Path(safe_name(frame.name, "image")).stem or "image"
    out = Path(folder) / f"{stem}.png"
    Image.fromarray(frame.rgb, "RGB").save(out, format="PNG", compress_level=1)
    return out


def stage_case(
    xml: str | Path | None,
    images: Sequence[str | Path | tuple[str | Path, str]] | None,
    folder: Path,
    xml_name: str | None = None,
) -> Path:
    """Copy an uploaded DDTI case XML and its frame images into ``folder`` under their own
    names (the flat DDTI layout: ``N.xml`` beside ``N_1.jpg``, ``N_2.jpg``), so that the DDTI
    reader finds them. ``images`` are paths or ``(path, original name)``. Returns the XML's
    path in ``folder``."""
    if xml is None or str(xml).strip() == "":
        raise HfcnError("no case XML given: upload a DDTI case XML (N.xml) and its frame images (N_k.jpg)")
    xml = Path(xml)
    name = safe_name(xml_name or xml.name, "case.xml")
    if not name.lower().endswith(".xml"):
        raise HfcnError(f"{name}: a DDTI case is an .xml file (N.xml)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    shutil.copyfile(xml, target)
    for item in images or []:
        src, orig = item if isinstance(item, tuple) else (item, Path(item).name)
        img = safe_name(orig, "frame.jpg")
        if img.lower().endswith(".xml"):
            continue
        shutil.copyfile(src, folder / img)
    return target
