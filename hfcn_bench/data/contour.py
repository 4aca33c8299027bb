"""A nodule outline from a binary mask: the outer boundary of its largest region, traced.

Folder-format datasets may ship a mask per image; systems that describe the nodule's shape
(``shape_rf``) or learn to segment it need an outline polygon, as DDTI's annotations give. The
outline here is the *external* contour of the mask's largest 8-connected region of non-zero
pixels (holes inside it are ignored; other, smaller regions are left out), traced by Moore
neighbour tracing. Its vertices are the centres of the region's boundary pixels in image
pixels, as an annotated outline passes through its boundary pixels: PIL's ``polygon(...,
fill=1, outline=1)`` of the result fills the region back (holes filled). Runs of collinear
boundary pixels keep only their end points.

No torch and no OpenCV: numpy, plus scipy's connected-component labelling (scipy comes with
scikit-learn).
"""

from __future__ import annotations

import numpy as np

__all__ = ["largest_region", "trace_outer", "mask_outline_polygon"]

# Moore neighbourhood as (dx, dy), clockwise on screen (y grows downwards), starting west.
_DIRS = ((-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1), (0, 1), (-1, 1))
_INDEX = {d: i for i, d in enumerate(_DIRS)}


def largest_region(mask: np.ndarray) -> np.ndarray | None:
    """Boolean image of the largest 8-connected region of ``mask``'s non-zero pixels (the
    first in raster order among equals); ``None`` when the mask has no non-zero pixel."""
    from scipy import ndimage

    m = np.asarray(mask) != 0
    if m.ndim != 2:
        raise ValueError(f"a mask is a 2-D image, got shape {m.shape}")
    labels, n = ndimage.label(m, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    return labels == int(np.argmax(sizes)) + 1


def trace_outer(region: np.ndarray) -> list[tuple[int, int]]:
    """The outer boundary of one 8-connected region as ``(x, y)`` pixel points, clockwise,
    starting at its top-left pixel, not closed (the last point is not the first repeated).
    A single pixel gives that one point; an empty region gives ``[]``."""
    m = np.pad(np.asarray(region, dtype=bool), 1)
    ys, xs = np.nonzero(m)  # row-major: the first is the top-most, then left-most pixel
    if ys.size == 0:
        return []
    start = (int(xs[0]), int(ys[0]))
    pts = [start]
    p, back = start, 0  # west of the first pixel is background (so are its row above and NW/NE)
    first_move = None
    for _ in range(8 * int(m.sum()) + 8):
        for k in range(1, 9):
            d = (back + k) % 8
            q = (p[0] + _DIRS[d][0], p[1] + _DIRS[d][1])
            if m[q[1], q[0]]:
                break
        else:
            break  # an isolated pixel
        if first_move is None:
            first_move = (p, q)
        elif (p, q) == first_move:
            break  # the trace would repeat itself from here
        # the neighbour examined just before q is background: the next search starts there
        prev = _DIRS[(d - 1) % 8]
        back = _INDEX[(p[0] + prev[0] - q[0], p[1] + prev[1] - q[1])]
        p = q
        pts.append(p)
    if len(pts) > 1 and pts[-1] == pts[0]:
        pts.pop()
    return [(x - 1, y - 1) for x, y in pts]


def _drop_collinear(pts: list[tuple[int, int]]) -> list[tuple[int, int]]:
    n = len(pts)
    if n < 3:
        return pts
    out = []
    for i in range(n):
        a, b, c = pts[i - 1], pts[i], pts[(i + 1) % n]
        if (b[0] - a[0]) * (c[1] - b[1]) - (b[1] - a[1]) * (c[0] - b[0]) != 0 or (
            (b[0] - a[0]) * (c[0] - b[0]) + (b[1] - a[1]) * (c[1] - b[1]) < 0
        ):
            out.append(b)  # a turn, or a spike that doubles back (a one-pixel-wide arm)
    return out if len(out) >= 3 else pts


def mask_outline_polygon(mask: np.ndarray) -> tuple[tuple[int, int], ...] | None:
    """The nodule outline of ``mask`` (see the module docstring): a polygon of ``(x, y)`` image
    pixels, or ``None`` when the mask has no non-zero pixel. A region too thin to enclose
    anything gives its boundary points as they are (fewer than 3 for a single pixel)."""
    region = largest_region(mask)
    if region is None:
        return None
    return tuple(_drop_collinear(trace_outer(region)))
