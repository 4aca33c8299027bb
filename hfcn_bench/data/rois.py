"""Nodule regions of interest: one ``Sample`` per outline, its box, and the crop + resize.

The HFCN paper (Song et al., IEEE Access 2020, section IV-A) classifies the *nodule box*: the
bounding box of the radiologist's nodule outline, cropped from the frame and resized to
224x224 RGB. ``Sample.bbox`` is that box (optionally grown by a margin and clipped to the
frame); ``crop_roi`` cuts and resizes it, by squashing (the paper) or letterboxing (keeps the
aspect ratio, which carries the taller-than-wide cue).

Boxes are ``(x0, y0, x1, y1)`` in frame pixels with exclusive ``x1, y1``: PIL's crop
convention, so ``x1 - x0`` is the width.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from PIL import Image

__all__ = [
    "Box",
    "Sample",
    "polygon_bbox",
    "expand_box",
    "is_outline",
    "pane_of",
    "is_dual_view",
    "crop_roi",
    "load_roi",
    "open_rgb",
]

Box = tuple[int, int, int, int]
Point = tuple[int, int]


@dataclass(frozen=True)
class Sample:
    """One ROI: one nodule outline in one frame of one case, with its label.

    ``polygon`` is the outline (``None`` for a full-frame or mask ROI); ``bbox`` is the ROI box
    actually cropped (outline box + margin, clipped to ``frame_size`` = (width, height)).
    ``label`` is 0 benign / 1 malignant under ``label_rule``; ``tirads`` keeps the source value
    so that a result can always say where its labels came from. ``salvaged`` marks outlines
    rebuilt from truncated annotation text (their box may be smaller than the nodule).
    """

    case_id: str
    frame: int
    image_path: Path
    polygon: tuple[Point, ...] | None
    bbox: Box
    label: int
    label_rule: str
    frame_size: tuple[int, int]
    region: int = 0
    roi_kind: str = "outline"
    tirads: str | None = None
    salvaged: bool = False

    @property
    def key(self) -> str:
        """Stable id of the ROI: ``case/frame/region``."""
        return f"{self.case_id}/{self.frame}/{self.region}"

    def to_dict(self) -> dict:
        return {
            "case_id": self.case_id,
            "frame": self.frame,
            "region": self.region,
            "image": str(self.image_path),
            "bbox": list(self.bbox),
            "label": self.label,
            "label_rule": self.label_rule,
            "tirads": self.tirads,
            "roi_kind": self.roi_kind,
            "salvaged": self.salvaged,
            "n_points": len(self.polygon) if self.polygon else 0,
        }


def polygon_bbox(points: Sequence[Point]) -> Box:
    """Tight box of a polygon's vertices, exclusive on the right/bottom (a single vertex at
    x=5 gives x0=5, x1=6)."""
    if not points:
        raise ValueError("polygon_bbox: empty polygon")
    xs = [int(p[0]) for p in points]
    ys = [int(p[1]) for p in points]
    return (min(xs), min(ys), max(xs) + 1, max(ys) + 1)


def expand_box(box: Box, margin: float, frame_size: tuple[int, int]) -> Box:
    """Grow ``box`` by ``margin`` times its width (height) on each side, then clip to the frame.

    A fractional margin scales with the nodule, so small and large nodules keep the same
    amount of surrounding tissue (the margin/halo is itself a TI-RADS cue). The result always
    keeps at least one pixel inside the frame, so outlines drawn past the image edge (a few
    DDTI points lie outside the 560x360 frame) still give a valid crop.
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    w, h = frame_size
    x0, y0, x1, y1 = box
    dx = int(round((x1 - x0) * margin))
    dy = int(round((y1 - y0) * margin))
    x0, y0, x1, y1 = x0 - dx, y0 - dy, x1 + dx, y1 + dy
    x0 = min(max(x0, 0), w - 1)
    y0 = min(max(y0, 0), h - 1)
    x1 = max(min(x1, w), x0 + 1)
    y1 = max(min(y1, h), y0 + 1)
    return (x0, y0, x1, y1)


def is_outline(region_type: str, points: Sequence[Point]) -> bool:
    """A region outlines a nodule unless it is an ``arrow`` (DDTI uses 2-point arrows to point
    at findings) or has too few points to enclose anything."""
    return region_type.lower() != "arrow" and len(points) >= 3


def pane_of(box: Box, frame_width: int) -> str:
    """``left``/``right``: the half of the frame holding the box's centre. Outlines of a
    dual-view pane often spill a few pixels over the midline, so the centre decides."""
    return "left" if (box[0] + box[2]) / 2 < frame_width / 2 else "right"


def is_dual_view(boxes: Sequence[Box], frame_width: int) -> bool:
    """Two outlines, one per half: DDTI's dual-view frames (two ultrasound panes side by side,
    usually the same nodule in two planes). Each outline is still its own sample.
    (168 of DDTI's 173 well-formed two-outline marks are dual-view by this rule.)"""
    if len(boxes) != 2:
        return False
    return sorted(pane_of(b, frame_width) for b in boxes) == ["left", "right"]


class UnreadableImage(Exception):
    """An image file that cannot be read or decoded (the message says why)."""


def read_image(path: Path, verify: bool = True) -> tuple[str, tuple[int, int]]:
    """``(sha1 of the file's bytes, (width, height))``; with ``verify`` the pixels are decoded
    too, so a truncated JPEG is caught here and not in the middle of training. Raises
    :class:`UnreadableImage`."""
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            size = im.size
            if verify:
                im.load()
    except (OSError, Image.DecompressionBombError, SyntaxError, ValueError) as exc:
        raise UnreadableImage(f"cannot decode: {exc}") from None
    return hashlib.sha1(data).hexdigest(), size


def open_rgb(path: str | Path) -> Image.Image:
    """Decode an image file to RGB (greyscale scans become 3 equal channels, as in the paper)."""
    with Image.open(path) as im:
        im.load()
        return im.convert("RGB") if im.mode != "RGB" else im.copy()


def crop_roi(image: Image.Image, box: Box, size: int | tuple[int, int] = 224, letterbox: bool = False,
             fill: int = 0) -> Image.Image:
    """Crop ``box`` from ``image`` and resize it to ``size`` (RGB).

    ``letterbox=False`` squashes the crop to the target shape, as the paper does;
    ``letterbox=True`` scales the longer side to fit and pads the rest with ``fill``, so the
    nodule's aspect ratio survives.
    """
    out_w, out_h = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if out_w <= 0 or out_h <= 0:
        raise ValueError(f"size must be positive, got {size}")
    x0, y0, x1, y1 = box
    if not (0 <= x0 < x1 <= image.width and 0 <= y0 < y1 <= image.height):
        raise ValueError(f"box {box} is not inside the {image.width}x{image.height} image")
    crop = image.crop(box)
    if crop.mode != "RGB":
        crop = crop.convert("RGB")
    if not letterbox:
        return crop.resize((out_w, out_h), Image.BILINEAR)
    scale = min(out_w / crop.width, out_h / crop.height)
    new_w = max(1, min(out_w, int(round(crop.width * scale))))
    new_h = max(1, min(out_h, int(round(crop.height * scale))))
    canvas = Image.new("RGB", (out_w, out_h), (fill, fill, fill))
    canvas.paste(crop.resize((new_w, new_h), Image.BILINEAR), ((out_w - new_w) // 2, (out_h - new_h) // 2))
    return canvas


def load_roi(sample: Sample, size: int | tuple[int, int] = 224, letterbox: bool = False) -> Image.Image:
    """Read the sample's frame and return its ROI, cropped and resized (RGB)."""
    return crop_roi(open_rgb(sample.image_path), sample.bbox, size=size, letterbox=letterbox)
