"""Whole frames for the frame-level stages of the cascades: the nodule detector of MC-CNN and
the segmentation network of the two-stage system.

The ROI systems see one crop per nodule (``Sample``); a detector or a segmenter sees the whole
ultrasound frame with every nodule of it as a target. :func:`group_frames` gathers a split's
samples by frame (a DDTI dual-view frame has two outlines, so two targets);
:class:`FrameTensors` decodes each frame once, resizes it to a fixed ``(height, width)`` as a
normalised single-channel image, and gives the targets at that scale: the ROI boxes
(``Sample.bbox``, the box the classifier crops) and a mask rasterised from the outlines.

Boxes are ``(x0, y0, x1, y1)`` floats, exclusive on the right/bottom as in ``data.rois``.
:func:`box_iou` and :func:`nms` are the two box operations the detector and the evaluation
need (a few lines of torch; no torchvision needed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..data.rois import Sample, open_gray
from ..errors import HfcnError
from . import common as C

__all__ = [
    "Frame",
    "group_frames",
    "FrameTensors",
    "box_iou",
    "nms",
    "to_frame_box",
    "with_box",
    "localised",
    "UNLOCALISED",
]


@dataclass
class Frame:
    """One frame of one case with its ROIs (``samples``, in dataset order)."""

    image_path: Path
    case_id: str
    index: int
    label: int
    size: tuple[int, int]  # (width, height) of the source frame
    samples: list[Sample]

    @property
    def boxes(self) -> np.ndarray:
        """ROI boxes in source-frame pixels, float64 [n, 4]."""
        return np.asarray([s.bbox for s in self.samples], dtype=np.float64).reshape(-1, 4)


# ROI kinds that carry no localisation: the whole frame is the ROI (folder format, an image
# given to predict without a box).
UNLOCALISED = ("full-frame", "whole image")


def localised(sample: Sample) -> bool:
    return sample.roi_kind not in UNLOCALISED


def group_frames(
    samples: Sequence[Sample], need_outline: bool = False, what: str = "", need_box: bool = True
) -> list[Frame]:
    """The frames of ``samples`` in first-seen order. ``need_outline``: every sample must carry
    its nodule outline (segmentation targets); ``need_box``: every sample must be localised
    (training targets; full-frame ROIs carry no localisation). Prediction passes
    ``need_box=False``: a frame given without any box is still a frame to look at."""
    frames: dict[Path, Frame] = {}
    for s in samples:
        if (need_box and not localised(s)) or (need_outline and (not s.polygon or len(s.polygon) < 3)):
            raise HfcnError(
                f"ROI {s.key} ({s.image_path}) has no nodule {'outline' if need_outline else 'box'}; "
                f"the {what or 'frame'}"
                " stage learns where the nodule is from the annotated outlines",
                hint="use DDTI-format data (outlines in the case XML), or folder-format images with masks "
                "(CLASS/masks/NAME.png or CLASS/NAME_mask.png: each mask gives the nodule's outline)",
            )
        f = frames.get(s.image_path)
        if f is None:
            frames[s.image_path] = Frame(s.image_path, s.case_id, s.frame, s.label, s.frame_size, [s])
        else:
            f.samples.append(s)
    return list(frames.values())


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of boxes ``a [n, 4]`` and ``b [m, 4]`` -> ``[n, m]`` (0 for empty boxes)."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(dim=1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(dim=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou: float, max_keep: int | None = None) -> torch.Tensor:
    """Greedy non-maximum suppression: indices of the kept boxes, best score first. Ties keep
    the lower index (a stable sort), so the result is deterministic."""
    order = torch.sort(scores, descending=True, stable=True).indices
    keep: list[int] = []
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    ious = box_iou(boxes[order], boxes[order]) if len(order) else None
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(int(order[i]))
        if max_keep is not None and len(keep) >= max_keep:
            break
        suppressed |= ious[i] > iou
    return torch.as_tensor(keep, dtype=torch.long)


def to_frame_box(box, frame_size: tuple[int, int], scale: tuple[float, float]) -> tuple[int, int, int, int]:
    """A box predicted at the network's scale (``scale`` = (sx, sy) network px per frame px)
    as integer frame pixels, clipped so at least one pixel stays inside the frame."""
    w, h = frame_size
    sx, sy = scale
    x0, y0, x1, y1 = (float(v) for v in box)
    x0 = int(np.floor(x0 / sx))
    y0 = int(np.floor(y0 / sy))
    x1 = int(np.ceil(x1 / sx))
    y1 = int(np.ceil(y1 / sy))
    x0 = min(max(x0, 0), w - 1)
    y0 = min(max(y0, 0), h - 1)
    return (x0, y0, max(min(x1, w), x0 + 1), max(min(y1, h), y0 + 1))


def with_box(sample: Sample, box: tuple[int, int, int, int], kind: str) -> Sample:
    """``sample`` with a predicted ROI box in place of the annotated one (the label, case and
    key stay, so its prediction is scored against the same nodule)."""
    return replace(sample, bbox=tuple(int(v) for v in box), roi_kind=kind)


class FrameTensors:
    """Frames decoded once, resized to ``(height, width)``, as normalised 1-channel tensors.

    ``image(i, flip)`` -> Tensor[1, H, W]; ``boxes(i, flip)`` -> Tensor[n, 4] at network scale;
    ``mask(i, flip)`` -> Tensor[1, H, W] in {0, 1} (every outline of the frame filled).
    ``scale(i)`` is (sx, sy), network pixels per source pixel. A frame that cannot be decoded
    is dropped with a warning naming the file (its ROIs listed in ``skipped``), not the run.
    """

    MEAN, STD = 0.3, 0.2

    def __init__(self, frames: Sequence[Frame], size: tuple[int, int], skipped: list[str], masks: bool = False):
        self.height, self.width = int(size[0]), int(size[1])
        if self.height < 16 or self.width < 16:
            raise HfcnError(f"frame size must be at least 16x16, got {self.height}x{self.width}")
        self.frames: list[Frame] = []
        images, masks_out = [], []
        for f in frames:
            try:
                g = open_gray(f.image_path)
                src = g.size
                g = g.resize((self.width, self.height), Image.BILINEAR)
            except Exception as exc:  # noqa: BLE001 - one bad frame skips its ROIs, not the run
                for s in f.samples:
                    C.warn_skip(s, exc, skipped)
                continue
            if src != tuple(f.size):  # the ROI boxes were made for frame_size; trust the file
                f = replace(f, size=src)
            self.frames.append(f)
            images.append(np.asarray(g, dtype=np.float32) / 255.0)
            if masks:
                masks_out.append(self._rasterise(f))
        if images:
            self._images = (torch.from_numpy(np.stack(images))[:, None] - self.MEAN) / self.STD
        else:
            self._images = torch.zeros(0, 1, self.height, self.width)
        self._masks = torch.from_numpy(np.stack(masks_out))[:, None] if masks_out else None

    def __len__(self) -> int:
        return len(self.frames)

    def scale(self, i: int) -> tuple[float, float]:
        w, h = self.frames[i].size
        return self.width / w, self.height / h

    def _rasterise(self, f: Frame) -> np.ndarray:
        sx, sy = self.width / f.size[0], self.height / f.size[1]
        canvas = Image.new("L", (self.width, self.height), 0)
        draw = ImageDraw.Draw(canvas)
        for s in f.samples:
            if s.polygon and len(s.polygon) >= 3:
                # pixel centres: source pixel x covers [x, x+1), so its centre maps to (x+0.5)*sx
                draw.polygon([((x + 0.5) * sx - 0.5, (y + 0.5) * sy - 0.5) for x, y in s.polygon], fill=1, outline=1)
        return np.asarray(canvas, dtype=np.float32)

    def image(self, i: int, flip: bool = False) -> torch.Tensor:
        x = self._images[i]
        return x.flip(-1) if flip else x

    def images(self, idx: Sequence[int], flips: Sequence[bool] | None = None) -> torch.Tensor:
        if flips is None:
            return self._images[list(idx)]
        return torch.stack([self.image(i, f) for i, f in zip(idx, flips)])

    def boxes(self, i: int, flip: bool = False) -> torch.Tensor:
        sx, sy = self.scale(i)
        b = torch.as_tensor(self.frames[i].boxes, dtype=torch.float32) * torch.tensor([sx, sy, sx, sy])
        if flip:
            b = torch.stack([self.width - b[:, 2], b[:, 1], self.width - b[:, 0], b[:, 3]], dim=1)
        return b

    def mask(self, i: int, flip: bool = False) -> torch.Tensor:
        if self._masks is None:
            raise HfcnError("FrameTensors was built without masks=True")
        m = self._masks[i]
        return m.flip(-1) if flip else m
