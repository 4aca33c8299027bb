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
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .descriptors import NO_DESCRIPTORS

__all__ = [
    "Box",
    "Sample",
    "polygon_bbox",
    "expand_box",
    "parse_context",
    "context_box",
    "is_outline",
    "pane_of",
    "is_dual_view",
    "crop_roi",
    "load_roi",
    "open_rgb",
    "open_gray",
    "open_image",
    "read_image",
    "UnreadableImage",
    "MAX_IMAGE_PIXELS",
    "MIN_ROI_SIDE",
    "outline_inside_fraction",
]

# Decompression-bomb cap: an image whose header declares more pixels than this is refused
# before any pixel is decoded. Ultrasound frames are well under one megapixel (DDTI's are
# 560x360) and clinical exports rarely exceed 4k x 4k = 16.8 MP; a few-KB PNG can declare
# gigapixels. Pillow's own check only warns below 179 MP, so ours is stricter and an error.
MAX_IMAGE_PIXELS = 40_000_000

# The smallest ROI side (frame pixels) a nodule box may have: below it the crop is a few
# pixels of speckle resized to the network's input, which no classifier should be asked to
# call (DDTI's smallest outline box is 19 px).
MIN_ROI_SIDE = 8

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
    ``side`` is ``train`` or ``test`` for a dataset that ships its own split (folder format
    with ``train/`` and ``test/``), else ``None``. ``descriptors`` are the case's TI-RADS
    descriptors as class indices (:mod:`hfcn_bench.data.descriptors`; ``-1`` = not recorded):
    training targets of auxiliary heads, never a model input.
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
    unit: str | None = None
    side: str | None = None
    descriptors: tuple[int, ...] = NO_DESCRIPTORS

    @property
    def key(self) -> str:
        """Stable id of the ROI: ``case/frame/region``."""
        return f"{self.case_id}/{self.frame}/{self.region}"

    @property
    def split_unit(self) -> str:
        """What a split keeps whole: the case, or the group of cases linked to it by a shared
        image (``unit``, set by the loader: one patient filed under two case numbers)."""
        return self.unit or self.case_id

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
            "side": self.side,
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


def parse_context(spec: str | float | int) -> tuple[str, float]:
    """An ROI context setting as ``(unit, amount)``: ``"0"``, a fraction ``"0.1"``, a percentage
    ``"10%"`` (both ``("fraction", 0.1)``: per side, times the box's width or height, as
    :func:`expand_box`) or pixels ``"32px"`` (``("px", 32)``: per side, in frame pixels, as
    Buda et al. (Radiology 2019) cropped 32 px around the calipers). Raises ``ValueError``
    naming the setting."""
    text = str(spec).strip().lower()
    try:
        if text.endswith("px"):
            unit, value = "px", float(text[:-2])
        elif text.endswith("%"):
            unit, value = "fraction", float(text[:-1]) / 100.0
        else:
            unit, value = "fraction", float(text)
    except ValueError:
        raise ValueError(f"ROI context {spec!r}: use a fraction (0.1), a percentage (10%) or pixels (32px)") from None
    if not value >= 0 or value != value or value == float("inf"):
        raise ValueError(f"ROI context {spec!r} must be >= 0")
    return unit, value


def context_box(box: Box, spec: str | float | int, frame_size: tuple[int, int]) -> Box:
    """``box`` grown by the context ``spec`` (:func:`parse_context`) on each side, clipped to the
    frame. The surroundings of a nodule (its margin against the parenchyma, a halo, posterior
    shadowing) are TI-RADS cues that a tight box cuts off."""
    unit, value = parse_context(spec)
    if unit == "fraction":
        return expand_box(box, value, frame_size) if value > 0 else box
    px = int(round(value))
    if px == 0:
        return box
    w, h = frame_size
    x0, y0, x1, y1 = box
    return expand_box((max(0, x0 - px), max(0, y0 - px), min(w, x1 + px), min(h, y1 + px)), 0.0, frame_size)


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


@contextmanager
def open_image(path: str | Path | io.BytesIO, max_pixels: int = MAX_IMAGE_PIXELS) -> Iterator[Image.Image]:
    """``Image.open`` that refuses decompression bombs and never lets a file-system fault
    escape as anything but :class:`UnreadableImage`.

    The pixel count comes from the header, so an oversized image is refused before its pixels
    are decoded. Symlink loops, permission errors, directories named like images and files
    Pillow cannot identify all become one :class:`UnreadableImage` saying what went wrong."""
    try:
        with warnings.catch_warnings():
            # Pillow warns (not raises) between its own 89 MP and 179 MP limits; the cap below
            # decides instead, with a message that names the limit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise UnreadableImage(f"refused: {exc}") from None
    except OSError as exc:  # includes PermissionError, ELOOP, IsADirectoryError, UnidentifiedImageError
        raise UnreadableImage(_os_reason(exc)) from None
    except (SyntaxError, ValueError) as exc:
        raise UnreadableImage(f"cannot decode: {exc}") from None
    try:
        w, h = im.size
        if w * h > max_pixels:
            raise UnreadableImage(
                f"refused: {w}x{h} = {w * h / 1e6:.1f} megapixels exceeds the "
                f"{max_pixels / 1e6:.0f}-megapixel cap (decompression-bomb guard)"
            )
        yield im
    finally:
        im.close()


def _os_reason(exc: OSError) -> str:
    if exc.strerror:
        return f"cannot read: {exc.strerror}"
    return f"cannot decode: {exc}"


def read_image(path: Path, verify: bool = True) -> tuple[str, tuple[int, int]]:
    """``(sha1 of the file's bytes, (width, height))``; with ``verify`` the pixels are decoded
    too, so a truncated JPEG is caught here and not in the middle of training. Raises
    :class:`UnreadableImage` (with the reason: undecodable, too large, or a file-system fault
    such as a symlink loop or a permission error)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UnreadableImage(_os_reason(exc)) from None
    with open_image(io.BytesIO(data)) as im:
        size = im.size
        if verify:
            try:
                im.load()
            except (OSError, SyntaxError, ValueError) as exc:
                raise UnreadableImage(f"cannot decode: {exc}") from None
    return hashlib.sha1(data).hexdigest(), size


def _decoded(path: str | Path, mode: str) -> Image.Image:
    with open_image(path) as im:
        try:
            im.load()
        except (OSError, SyntaxError, ValueError) as exc:
            raise UnreadableImage(f"cannot decode: {exc}") from None
        return im.convert(mode) if im.mode != mode else im.copy()


def open_rgb(path: str | Path) -> Image.Image:
    """Decode an image file to RGB (greyscale scans become 3 equal channels, as in the paper).
    Raises :class:`UnreadableImage`."""
    return _decoded(path, "RGB")


def open_gray(path: str | Path) -> Image.Image:
    """Decode an image file to 8-bit greyscale ("L"). Raises :class:`UnreadableImage`."""
    return _decoded(path, "L")


def _clip_polygon(points: Sequence[tuple[float, float]], width: float, height: float) -> list[tuple[float, float]]:
    """Sutherland-Hodgman clipping of a polygon to the frame rectangle [0, width] x [0, height]."""
    out = [(float(x), float(y)) for x, y in points]
    for axis, bound, keep_low in ((0, 0.0, False), (0, float(width), True), (1, 0.0, False), (1, float(height), True)):
        if not out:
            break
        src, out = out, []
        for i, cur in enumerate(src):
            prev = src[i - 1]
            if _inside(cur, axis, bound, keep_low):
                if not _inside(prev, axis, bound, keep_low):
                    out.append(_cross(prev, cur, axis, bound))
                out.append(cur)
            elif _inside(prev, axis, bound, keep_low):
                out.append(_cross(prev, cur, axis, bound))
    return out


def _inside(p, axis: int, bound: float, keep_low: bool) -> bool:
    return p[axis] <= bound if keep_low else p[axis] >= bound


def _cross(a, b, axis: int, bound: float) -> tuple[float, float]:
    t = (bound - a[axis]) / (b[axis] - a[axis])
    return (a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1]))


def _area(points) -> float:
    n = len(points)
    return (
        abs(sum(points[i][0] * points[(i + 1) % n][1] - points[(i + 1) % n][0] * points[i][1] for i in range(n))) / 2.0
    )


def outline_inside_fraction(points: Sequence[Point], frame_size: tuple[int, int]) -> float:
    """Share of an outline's enclosed area that lies inside the frame (1.0 when wholly inside).

    A few DDTI outlines run past the image edge by some pixels, and one (338_2) has 43 % of
    its area below the frame; an outline drawn wholly outside would otherwise become a
    one-pixel ROI at the frame's corner. A polygon enclosing no area (collinear points) is
    judged by its vertices instead."""
    w, h = frame_size
    pts = [(float(x), float(y)) for x, y in points]
    total = _area(pts) if len(pts) >= 3 else 0.0
    if total <= 0:
        inside = sum(1 for x, y in pts if 0 <= x < w and 0 <= y < h)
        return inside / len(pts) if pts else 0.0
    clipped = _clip_polygon(pts, w, h)
    return min(1.0, _area(clipped) / total) if len(clipped) >= 3 else 0.0


def crop_roi(
    image: Image.Image, box: Box, size: int | tuple[int, int] = 224, letterbox: bool = False, fill: int = 0
) -> Image.Image:
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


def load_roi(
    sample: Sample, size: int | tuple[int, int] = 224, letterbox: bool = False, context: str | float = "0"
) -> Image.Image:
    """Read the sample's frame and return its ROI (its box grown by ``context``, see
    :func:`context_box`), cropped and resized (RGB)."""
    image = open_rgb(sample.image_path)
    box = context_box(sample.bbox, context, image.size)
    return crop_roi(image, box, size=size, letterbox=letterbox)
