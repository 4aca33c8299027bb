"""Pure-PyTorch crop + bilinear resize: the test oracle, the "naive slicing" baseline and the
fallback when the C++ extension cannot be built."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .boxes import check_boxes

__all__ = ["crop_resize_reference", "normalize_size", "slice_resize"]


def normalize_size(size) -> tuple[int, int]:
    """``int`` or ``(oh, ow)`` -> ``(oh, ow)``, both positive integers."""
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    try:
        oh, ow = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be an int or a pair (height, width), got {size!r}") from None
    if oh < 1 or ow < 1:
        raise ValueError(f"output size must be positive, got {(oh, ow)}")
    return oh, ow


def crop_resize_reference(x: torch.Tensor, boxes: torch.Tensor, size) -> torch.Tensor:
    """Crop every window of ``boxes`` out of ``x`` and resize it bilinearly, by slicing.

    Args:
        x (Tensor[B, C, H, W]): feature maps.
        boxes (LongTensor[N, 4] or LongTensor[B, N, 4]): ``(top, left, height, width)`` windows,
            shared by the batch or one set per sample, on the device of ``x`` or on the CPU
            (host boxes are read without touching the device).
        size (int or (oh, ow)): output size of every crop.

    Returns:
        Tensor[B, N, C, oh, ow]: ``y[b, n] = F.interpolate(x[b:b+1, :, t:t+h, l:l+w], size,
        mode="bilinear", align_corners=False)[0]``. The interpolation clamps at the *crop*
        border (the crop is a tensor of its own), unlike ``roi_align``/``grid_sample``, which
        read past the window up to the map border.
    """
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D [B, C, H, W], got shape {list(x.shape)}")
    if boxes.device != x.device and boxes.device.type != "cpu":
        raise ValueError(
            f"x is on {x.device} but boxes are on {boxes.device}; put both on one device (or boxes on the CPU)"
        )
    oh, ow = normalize_size(size)
    B, C, H, W = x.shape
    check_boxes(boxes, B, H, W)
    N = boxes.shape[-2]
    if B == 0 or N == 0 or C == 0:
        return x.new_zeros((B, N, C, oh, ow))
    rows = boxes.tolist()
    if boxes.dim() == 2:
        return slice_resize(x, rows, (oh, ow))
    return torch.cat([slice_resize(x[b : b + 1], rows[b], (oh, ow)) for b in range(B)], dim=0)


def slice_resize(x: torch.Tensor, rows, size: tuple[int, int]) -> torch.Tensor:
    """The slicing core of :func:`crop_resize_reference`, without its validation: ``x[B, C, H,
    W]`` and host windows ``[(top, left, height, width), ...]`` shared by the batch ->
    ``[B, N, C, oh, ow]``. For callers whose windows are already checked host integers (reading
    boxes back from a CUDA tensor on every call would sync the device)."""
    crops = [
        F.interpolate(x[:, :, t : t + h, left : left + w], size=size, mode="bilinear", align_corners=False)
        for t, left, h, w in rows
    ]
    return torch.stack(crops, dim=1)
