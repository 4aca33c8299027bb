"""Crop windows for the feature-cropping branch of HFCN.

Song et al., "Thyroid nodule ultrasound image classification through hybrid feature cropping
network", IEEE Access 8 (2020): the feature-cropping branch cuts the shared feature map into
windows of size alpha*h x alpha*w. Boundary feature cropping (BFC) slides the window along the
map's border with steps (1 - alpha)*h and (1 - alpha)*w, which gives the four corner windows, and
adds one centre window (N = 5). Random feature cropping (RFC) draws the windows at random, the
same windows for every map of the batch.

Every window is an integer ``(top, left, height, width)`` in feature-map pixels.
"""

from __future__ import annotations

import math

import torch

__all__ = ["window_size", "boundary_boxes", "random_boxes", "check_boxes"]


def window_size(size: int, alpha: float) -> int:
    """Side of a crop window: ``round(alpha * size)``, halves rounded up, at least 1.

    Rounding (rather than flooring) keeps the window closest to the paper's ``alpha*h``; rounding
    halves up makes ``alpha = 0.5`` on an odd map keep the centre row/column in every corner
    window. On the paper's 14x14 map: alpha 0.5 -> 7, 0.6 -> 8 (8.4), 0.7 -> 10 (9.8),
    0.8 -> 11 (11.2), 0.9 -> 13 (12.6), 1.0 -> 14.
    """
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"feature-map size must be a positive integer, got {size!r}")
    if not (isinstance(alpha, (int, float)) and 0.0 < float(alpha) <= 1.0):
        raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
    # A tiny epsilon absorbs binary representation error (0.5 * 7 must round to 4, 0.6 * 10 == 6).
    return max(1, min(size, int(math.floor(float(alpha) * size + 0.5 + 1e-9))))


def boundary_boxes(height: int, width: int, alpha: float) -> torch.Tensor:
    """The paper's boundary feature cropping (BFC) windows.

    The window (``window_size(height, alpha)`` x ``window_size(width, alpha)``) starts at the top-left
    corner and moves along the border by ``height - h`` and ``width - w`` pixels (the paper's steps
    ``(1 - alpha) * h`` rounded so that the far windows touch the far border exactly), giving the
    four corner windows; the fifth window is centred (offsets floored).

    Returns:
        LongTensor[5, 4]: rows ``(top, left, height, width)`` in the order top-left, top-right,
        bottom-left, bottom-right, centre. With ``alpha = 1`` all five windows are the whole map.
    """
    h = window_size(height, alpha)
    w = window_size(width, alpha)
    bottom, right = height - h, width - w
    rows = [
        (0, 0, h, w),
        (0, right, h, w),
        (bottom, 0, h, w),
        (bottom, right, h, w),
        (bottom // 2, right // 2, h, w),
    ]
    return torch.tensor(rows, dtype=torch.int64)


def random_boxes(
    height: int,
    width: int,
    alpha: float,
    n: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random feature cropping (RFC) windows: ``n`` windows of the BFC size at uniform positions.

    The positions come from ``generator`` (a CPU ``torch.Generator``), so a seeded generator
    reproduces them. Returns LongTensor[n, 4] of ``(top, left, height, width)``.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"number of random windows must be a non-negative integer, got {n!r}")
    h = window_size(height, alpha)
    w = window_size(width, alpha)
    tops = torch.randint(0, height - h + 1, (n,), generator=generator)
    lefts = torch.randint(0, width - w + 1, (n,), generator=generator)
    return torch.stack([tops, lefts, torch.full_like(tops, h), torch.full_like(tops, w)], dim=1).to(torch.int64)


def check_boxes(boxes: torch.Tensor, batch: int, height: int, width: int) -> None:
    """Raise ``ValueError`` naming the first bad window of ``boxes`` for a ``[batch, C, height, width]`` map.

    Mirrors the checks of the C++ host entry, so that the pure-PyTorch reference rejects exactly
    what the extension rejects.
    """
    if not isinstance(boxes, torch.Tensor):
        raise TypeError(f"boxes must be a tensor, got {type(boxes).__name__}")
    if boxes.dtype != torch.int64:
        raise TypeError(f"boxes must be int64 (top, left, height, width), got {boxes.dtype}")
    if not (
        (boxes.dim() == 2 and boxes.shape[1] == 4)
        or (boxes.dim() == 3 and boxes.shape[0] == batch and boxes.shape[2] == 4)
    ):
        raise ValueError(f"boxes must have shape [N, 4] or [B={batch}, N, 4], got {list(boxes.shape)}")
    flat = boxes.reshape(-1, 4).tolist()
    n = boxes.shape[-2]
    for k, (t, left, h, w) in enumerate(flat):
        if h < 1 or w < 1 or t < 0 or left < 0 or t + h > height or left + w > width:
            where = f"box {k % n}" if boxes.dim() == 2 else f"box [{k // n}, {k % n}]"
            raise ValueError(
                f"{where} (top={t}, left={left}, height={h}, width={w}) does not fit a "
                f"{height}x{width} feature map: it needs height, width >= 1 and "
                f"0 <= top, top + height <= {height}, 0 <= left, left + width <= {width}"
            )
