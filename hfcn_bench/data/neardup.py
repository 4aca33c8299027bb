"""Near-duplicate images: the same ultrasound frame saved again, resized, cropped, cut out of a
dual-view frame, made brighter or darker, or converted between grey and RGB.

Public thyroid sets are repackaged copies of each other, so a frame of one set often sits in
another under a new name and a new encoding; byte hashes (sha256) miss all of that. Two stages:

1. **Hash index (candidates).** Each image is decoded once to luma and squashed to a 256x256
   thumbnail (with its 128x128 and 64x64 box means). A 64-bit DCT perceptual hash (pHash,
   exactly as ``imagehash.phash``: 32x32 Lanczos resize, DCT, the top-left 8x8 coefficients
   above their median, DC included) is taken of the whole 64x64 thumbnail and of sub-windows:
   sides of 0.92, 0.84, 0.76 and 0.68 of the frame, every 0.06 of the frame along each axis,
   keeping at least 60 % of its area, plus the left and right halves (the panes of a
   dual-view frame): ``len(window_boxes())`` = 202 hashes per image. They come out of two
   matrix products (Pillow's two Lanczos passes as integer matrices, rounded to 8 bits
   between them as Pillow does), so each is bit for bit ``imagehash.phash`` of that crop.
   A crop of A lies close to one of A's windows; when B is the crop, A lies close to one of
   B's. The whole hash of every image of B is joined against every window hash of A, and
   every window of B against the whole hash of A, by multi-index hashing: the 64 bits are
   dealt into ``BANDS`` = 6 interleaved bands (bit i into band i mod 6) and pairs that agree
   exactly on a band are candidates (numpy sort + ``searchsorted``, no loop over pairs),
   kept when the popcount of their XOR is at most ``DEFAULT_RADIUS``. By the pigeonhole
   principle every pair within 5 bits is found; a copy usually has several close windows,
   so the hash-stage recall is much higher than that guarantee (the benchmark reports it).
   Per image pair, the closest window on each side is a hypothesis, and each image of B
   keeps its 32 closest partners.
2. **Verification (decision).** Ultrasound frames look alike (dark background, the same
   scanner overlays): different frames of one case come within 2 bits. Each hypothesis'
   window is moved (a pattern search over its four edges) to maximise the normalised
   cross-correlation (NCC) of its picture with the whole other image: first 24x24 samples of
   the 64x64 thumbnails, then, for the better hypothesis of a pair whose NCC reaches 0.9,
   48x48 samples of the 128x128 ones. The decision is the correlation of the fine detail
   (each sample minus its 3x3 mean: speckle, mostly) at 96x96 on the 256x256 thumbnails.
   A copy keeps its speckle, another frame does not, even one of the same view; both NCCs
   ignore gain and offset (brightness/contrast). That correlation is the match's ``score``;
   ``threshold`` (``DEFAULT_THRESHOLD``, chosen on DDTI and the phantoms by
   ``bench/test_bench_neardup.py``) decides.

Each match says how the copy differs (``KINDS``): from the refined window (``pane``,
``cropped``), the pixel sizes of the matched parts (``resized``), a grey-level fit
(``brightness/contrast``), the files' colour modes (``grey/rgb``), or exact digests
(``identical-file``: same bytes; ``identical-pixels``: same decoded pixels, other bytes);
``re-encoded`` otherwise. A frame re-saved with burned-in text added (DDTI 294_2 and 294_3)
differs in its detail and scores ~0.6-0.7: below the default threshold.

Typical use::

    a = hash_images(find_images("ddti/raw"), root="ddti/raw")
    b = hash_images(find_images("other"), root="other")
    for m in find_overlap(a, b):
        print(m.b, "is", m.kind, "of", m.a, m.score)
    groups = find_groups(a)          # near-duplicate groups inside one set
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from .report import DataWarning
from .rois import UnreadableImage, open_image

__all__ = [
    "BANDS",
    "DEFAULT_RADIUS",
    "DEFAULT_THRESHOLD",
    "IMAGE_EXTS",
    "KINDS",
    "HashIndex",
    "Match",
    "Group",
    "find_images",
    "hash_images",
    "find_overlap",
    "find_groups",
    "phash",
    "window_boxes",
    "window_hashes",
]

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
KINDS = (
    "identical-file",
    "identical-pixels",
    "re-encoded",
    "resized",
    "cropped",
    "pane",
    "brightness/contrast",
    "grey/rgb",
)

THUMB = 256  # stored thumbnail side (the image squashed to a square); 128 and 64 are its means
HASH_SIDE = 64  # hashing thumbnail side: windows of 44-64 px, each resized to 32x32 by the pHash
_WINDOW_FRACS = (1.0, 0.92, 0.84, 0.76, 0.68)  # window sides, fractions of the frame
_WINDOW_STEP = 0.06  # spacing of window positions, fraction of the frame
_MIN_WINDOW_AREA = 0.6  # the smallest crop to be found keeps 70 % of the area
BANDS = 6  # multi-index hashing: exact recall up to BANDS - 1 = 5 bits
DEFAULT_RADIUS = 10  # candidates up to this Hamming distance (of 64 bits) are verified
# The decision: correlation of the fine detail (speckle) of the aligned thumbnails, 96x96
# samples of the 256x256 ones. Measured by bench/test_bench_neardup.py
# (docs/results/neardup/): every transformed copy scores >= 0.939 on DDTI and >= 0.931 on the
# phantoms, while the different frames verified score at most 0.704 on DDTI and 0.805 on the
# phantoms (whose frames share one synthetic layout and overlays); 0.85 sits between. The
# picture NCC alone leaves no such gap (DDTI: copies >= 0.974, different frames up to 0.956;
# the phantoms' different frames reach 0.971), nor does the detail at 48x48 (phantoms: copies
# >= 0.93, different frames up to 0.91).
DEFAULT_THRESHOLD = 0.85
# Picture NCC (24x24, after the coarse search) a pair needs before the fine search: different
# frames reach 0.95 here, copies score > 0.97, so this only saves work.
_COARSE_FLOOR = 0.9

_PREC = 22  # Pillow's fixed-point precision for 8-bit resampling (libImaging/Resample.c)
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F", "La"}


# ---------------------------------------------------------------------------------------------
# pHash, as imagehash computes it, with the resampling written as matrices.


def _lanczos(x: float) -> float:
    def sinc(v: float) -> float:
        if v == 0.0:
            return 1.0
        v *= math.pi
        return math.sin(v) / v

    return sinc(x) * sinc(x / 3.0) if -3.0 <= x < 3.0 else 0.0


@lru_cache(maxsize=256)
def _lanczos_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix of Pillow's 8-bit Lanczos coefficients (``precompute_coeffs`` +
    ``normalize_coeffs_8bpc``) as integers in float64: products and sums stay exact."""
    scale = filterscale = n_in / n_out
    filterscale = max(filterscale, 1.0)
    support = 3.0 * filterscale
    m = np.zeros((n_out, n_in))
    for xx in range(n_out):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), n_in)
        w = [_lanczos((x + xmin - center + 0.5) / filterscale) for x in range(xmax - xmin)]
        total = sum(w)
        for x, k in enumerate(w):
            k = k / total if total != 0.0 else k
            m[xx, xmin + x] = int(-0.5 + k * (1 << _PREC)) if k < 0 else int(0.5 + k * (1 << _PREC))
    m.setflags(write=False)
    return m


def _round8(a: np.ndarray) -> np.ndarray:
    """Pillow's ``clip8`` of a fixed-point sum (in place): add the half, shift, clamp."""
    a += float(1 << (_PREC - 1))
    a *= 1.0 / (1 << _PREC)
    np.floor(a, out=a)
    return np.clip(a, 0, 255, out=a)


@lru_cache(maxsize=1)
def _dct8() -> np.ndarray:
    """The first 8 rows of scipy.fftpack's unnormalised DCT-II on 32 points."""
    k, n = np.arange(8)[:, None], np.arange(32)[None, :]
    return 2.0 * np.cos(np.pi * k * (2 * n + 1) / 64.0)


def _bits_to_u64(coeffs: np.ndarray) -> np.ndarray:
    """(n, 64) coefficients -> n uint64: bit set where above the row's median, first
    coefficient as the most significant bit (``int(str(imagehash.phash(...)), 16)``)."""
    bits = coeffs > np.median(coeffs, axis=1, keepdims=True)
    return np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64)


def _luma(im: Image.Image) -> np.ndarray:
    if im.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if a.max(initial=0) > 255 else 255.0
        return np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8)
    return np.asarray(im if im.mode == "L" else im.convert("L"))


def phash(image: Image.Image | np.ndarray) -> int:
    """64-bit pHash of a PIL image (any mode) or a 2-D uint8 array, equal bit for bit to
    ``int(str(imagehash.phash(image)), 16)`` (DC coefficient included, as there)."""
    g = _luma(image) if isinstance(image, Image.Image) else np.asarray(image, dtype=np.uint8)
    h, w = g.shape
    t = g.astype(np.float64)
    if w != 32:
        t = _round8(t @ _lanczos_matrix(w, 32).T)
    if h != 32:
        t = _round8(_lanczos_matrix(h, 32) @ t)
    d = _dct8()
    return int(_bits_to_u64((d @ t @ d.T).reshape(1, 64))[0])


def _axis_ranges(n: int, halves: bool) -> list[tuple[int, int]]:
    out = []
    for f in _WINDOW_FRACS:
        size = int(round(n * f))
        k = 1 if f >= 1.0 else int(math.ceil((1.0 - f) / _WINDOW_STEP - 1e-9)) + 1
        for pos in np.linspace(0.0, 1.0, k):
            start = int(round((n - size) * pos))
            out.append((start, start + size))
    if halves:
        out += [(0, n // 2), (n - n // 2, n)]
    return out


@dataclass(frozen=True)
class _Plan:
    boxes: np.ndarray  # (W, 4) pixel boxes (x0, y0, x1, y1) in the HASH_SIDE thumbnail; row 0 = whole
    kx: np.ndarray  # (32 * nx, side): horizontal Lanczos pass of every x-range
    ky: tuple  # per y-range: its (32, height) vertical pass
    y_ranges: tuple
    x_of_y: tuple  # per y-range: the x-range indices windowed with it
    nx: int


@lru_cache(maxsize=1)
def _plan() -> _Plan:
    n = HASH_SIDE
    xr, yr = _axis_ranges(n, halves=True), _axis_ranges(n, halves=False)
    n_halves = 2
    fx = np.array([(b - a) / n for a, b in xr])
    fy = np.array([(b - a) / n for a, b in yr])
    keep = fy[:, None] * fx[None, :] >= _MIN_WINDOW_AREA - 1e-9
    keep[:, -n_halves:] = False
    keep[0, -n_halves:] = True  # the panes: left and right half, full height
    kx = np.concatenate([np.pad(_lanczos_matrix(b - a, 32), ((0, 0), (a, n - b))) for a, b in xr])
    ky = tuple(_lanczos_matrix(b - a, 32) for a, b in yr)
    x_of_y = tuple(np.nonzero(keep[y])[0] for y in range(len(yr)))
    boxes = np.array([(xr[x][0], yr[y][0], xr[x][1], yr[y][1]) for y in range(len(yr)) for x in x_of_y[y]])
    return _Plan(boxes, kx, ky, tuple(yr), x_of_y, len(xr))


def window_boxes() -> np.ndarray:
    """(W, 4) windows as fractions (x0, y0, x1, y1) of the frame; row 0 is the whole frame."""
    return _plan().boxes / float(HASH_SIDE)


def window_hashes(thumb: np.ndarray) -> np.ndarray:
    """The pHash of every window of a ``HASH_SIDE`` x ``HASH_SIDE`` uint8 thumbnail, (W,)
    uint64, in the order of ``window_boxes()``. Equal to ``imagehash.phash`` of each crop."""
    p = _plan()
    t = np.asarray(thumb, dtype=np.float64)
    if t.shape != (HASH_SIDE, HASH_SIDE):
        raise ValueError(f"window_hashes needs a {HASH_SIDE}x{HASH_SIDE} thumbnail, got {t.shape}")
    # Horizontal pass of every x-range at once, 8-bit rounded as in Pillow: (nx, side, 32).
    tmp = _round8(t @ p.kx.T).reshape(HASH_SIDE, p.nx, 32).transpose(1, 0, 2)
    blocks = np.concatenate(
        [np.matmul(p.ky[y], tmp[xs, a:b, :]) for y, ((a, b), xs) in enumerate(zip(p.y_ranges, p.x_of_y))]
    )
    _round8(blocks)
    d = _dct8()
    return _bits_to_u64((d @ blocks @ d.T).reshape(-1, 64))


# ---------------------------------------------------------------------------------------------
# Reading images into an index.


def find_images(root: str | Path) -> list[Path]:
    """Image files under ``root``, recursively and sorted (jpg/jpeg/png/bmp/tif), without
    masks (``*_mask.*`` and anything under a ``masks/`` folder) or hidden folders."""
    root = Path(root).expanduser()
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d.lower() != "masks")
        for f in filenames:
            p = Path(dirpath) / f
            if p.suffix.lower() in IMAGE_EXTS and not p.stem.lower().endswith("_mask"):
                out.append(p)
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


@dataclass
class HashIndex:
    """Hashes and thumbnails of a set of images. ``names`` are the paths relative to
    ``root`` (as given when there is no root); ``errors`` lists ``(name, what is wrong)`` for
    every image that could not be read (not in the index)."""

    root: str | None
    names: list[str]
    sizes: np.ndarray  # (N, 2) width, height in pixels
    modes: list[str]  # "grey" or "rgb": the file's colour mode
    sha256: list[str]  # of the file's bytes
    pixels: list[str]  # sha256 of the decoded RGB pixels and size
    hashes: np.ndarray  # (N, W) uint64 window pHashes; column 0 = whole frame
    thumbs: np.ndarray  # (N, THUMB, THUMB) uint8 luma thumbnails (the image squashed to a square)
    thumbs_128: np.ndarray  # (N, 128, 128) their 2x2 means
    thumbs_64: np.ndarray  # (N, 64, 64) their 4x4 means (hashed)
    errors: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.names)

    def summary(self) -> dict:
        return {
            "root": self.root,
            "images": len(self),
            "errors": [{"image": n, "error": e} for n, e in self.errors],
            "hash_seconds": round(self.seconds, 3),
        }


def _read(path: Path) -> tuple[np.ndarray, str, tuple[int, int], str, str]:
    """(luma, mode, size, sha256 of bytes, sha256 of pixels); raises UnreadableImage."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UnreadableImage(f"cannot read: {exc.strerror or exc}") from None
    with open_image(io.BytesIO(data)) as im:
        try:
            im.load()
        except (OSError, SyntaxError, ValueError) as exc:
            raise UnreadableImage(f"cannot decode: {exc}") from None
        mode = "grey" if im.mode in _GREY_MODES else "rgb"
        luma = _luma(im)
        rgb = np.asarray(im.convert("RGB")) if mode == "rgb" else np.repeat(luma[..., None], 3, axis=2)
        pix = hashlib.sha256(np.ascontiguousarray(rgb).tobytes() + repr(rgb.shape).encode()).hexdigest()
        return luma, mode, im.size, hashlib.sha256(data).hexdigest(), pix


def _thumbs(luma: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    big = Image.fromarray(luma).resize((THUMB, THUMB), Image.Resampling.BILINEAR)  # antialiased
    return np.asarray(big), np.asarray(big.reduce(2)), np.asarray(big.reduce(4))  # box means


def hash_images(
    paths: Iterable[str | Path], root: str | Path | None = None, progress: Callable[[int, int], None] | None = None
) -> HashIndex:
    """Read and hash every image of ``paths``. A file that cannot be read or decoded is
    listed in ``.errors`` with the reason and announced by a ``DataWarning`` naming it; the
    others are hashed. ``progress(done, total)`` is called as images are done."""
    with _one_blas_thread():
        return _hash_images([Path(p) for p in paths], root, progress)


def _one_blas_thread():
    """Every matrix here is tiny (at most 704x128): BLAS threads only add overhead, and on a
    loaded 2-core machine a multi-threaded OpenBLAS made the hashing 5x slower (DDTI's 480
    frames: 8.6 s against 1.7 s)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def _hash_images(paths: list[Path], root, progress) -> HashIndex:
    root_path = Path(root).expanduser() if root is not None else None
    names, sizes, modes, shas, pixels, hashes, errors = [], [], [], [], [], [], []
    thumbs: tuple[list, list, list] = ([], [], [])
    start = time.perf_counter()
    for i, p in enumerate(paths, start=1):
        name = (
            p.relative_to(root_path).as_posix()
            if root_path is not None and p.is_relative_to(root_path)
            else p.as_posix()
        )
        why = None
        try:
            luma, mode, size, sha, pix = _read(p)
            if min(size) < 2:
                raise UnreadableImage(f"{size[0]}x{size[1]} pixels is too small to compare")
        except UnreadableImage as exc:
            why = str(exc)
        except Exception as exc:  # a malformed file must not end the run; say what it was
            why = f"cannot decode: {type(exc).__name__}: {exc}"
        if why is not None:
            errors.append((name, why))
            warnings.warn(f"{name}: {why}; not hashed", DataWarning, stacklevel=2)
        else:
            levels = _thumbs(luma)
            names.append(name)
            sizes.append(size)
            modes.append(mode)
            shas.append(sha)
            pixels.append(pix)
            for kept, t in zip(thumbs, levels):
                kept.append(t)
            hashes.append(window_hashes(levels[2]))
        if progress:
            progress(i, len(paths))
    n_win = len(_plan().boxes)
    return HashIndex(
        root=None if root is None else str(root),
        names=names,
        sizes=np.array(sizes, dtype=np.int64).reshape(-1, 2),
        modes=modes,
        sha256=shas,
        pixels=pixels,
        hashes=np.stack(hashes) if hashes else np.zeros((0, n_win), np.uint64),
        **{
            name: np.stack(t) if t else np.zeros((0, n, n), np.uint8)
            for name, t, n in zip(("thumbs", "thumbs_128", "thumbs_64"), thumbs, (THUMB, THUMB // 2, THUMB // 4))
        },
        errors=errors,
        seconds=time.perf_counter() - start,
    )


# ---------------------------------------------------------------------------------------------
# Candidates: multi-index hashing.


def _band_keys(h: np.ndarray) -> np.ndarray:
    """(BANDS, n) int64 keys: band b holds bits b, b + BANDS, ... (bit 0 = the MSB)."""
    h = np.asarray(h, dtype=np.uint64).ravel()
    keys = np.zeros((BANDS, h.size), dtype=np.uint64)
    for bit in range(64):
        keys[bit % BANDS] = (keys[bit % BANDS] << np.uint64(1)) | ((h >> np.uint64(63 - bit)) & np.uint64(1))
    return keys.astype(np.int64)


def _popcount(x: np.ndarray) -> np.ndarray:
    return np.bitwise_count(x)


def _join(
    q: np.ndarray, e: np.ndarray, radius: int, chunk: int = 4_000_000
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (query index, entry index, distance) of hashes that share a band and are within
    ``radius`` bits. A pair found on several bands comes once per band (deduplicated later)."""
    qk, ek = _band_keys(q), _band_keys(e)
    out_q, out_e, out_d = [], [], []
    for b in range(BANDS):
        order = np.argsort(ek[b], kind="stable")
        sk = ek[b][order]
        lo = np.searchsorted(sk, qk[b], "left")
        counts = np.searchsorted(sk, qk[b], "right") - lo
        ends = np.cumsum(counts)
        start = 0
        while start < q.size:  # chunks of queries with at most ~chunk pairs
            stop = int(np.searchsorted(ends, (ends[start - 1] if start else 0) + chunk, "right"))
            stop = max(stop, start + 1)
            c = counts[start:stop]
            qi = np.repeat(np.arange(start, stop), c)
            if qi.size:
                offs = np.arange(qi.size) - np.repeat(np.cumsum(c) - c, c)
                ei = order[np.repeat(lo[start:stop], c) + offs]
                d = _popcount(q[qi] ^ e[ei])
                ok = d <= radius
                out_q.append(qi[ok])
                out_e.append(ei[ok])
                out_d.append(d[ok].astype(np.int16))
            start = stop
    if not out_q:
        z = np.zeros(0, np.int64)
        return z, z, np.zeros(0, np.int16)
    return np.concatenate(out_q), np.concatenate(out_e), np.concatenate(out_d)


def _candidates(ia: HashIndex, ib: HashIndex, radius: int, same: bool, per_image: int) -> dict[str, np.ndarray]:
    """Alignment hypotheses to verify: per image pair and per side holding the window
    (``side`` 0: the window is in A, B whole; 1: the window is in B, A whole) the closest
    window (then the largest), at most ``per_image`` partners per image of B (the closest
    ones). ``same``: one set against itself (pairs a < b only)."""
    n_win = ia.hashes.shape[1]
    # whole(B) against every window of A: the window is in A
    q1, e1, d1 = _join(ib.hashes[:, 0], ia.hashes.ravel(), radius)
    # every window of B against whole(A): the window is in B
    q2, e2, d2 = _join(ib.hashes.ravel(), ia.hashes[:, 0], radius)
    a = np.concatenate([e1 // n_win, e2])
    b = np.concatenate([q1, q2 // n_win])
    side = np.concatenate([np.zeros(q1.size, np.int64), np.ones(q2.size, np.int64)])
    win = np.concatenate([e1 % n_win, q2 % n_win])
    d = np.concatenate([d1, d2]).astype(np.int64)
    side[win == 0] = 0  # whole against whole: one hypothesis, whichever join found it
    if same:
        ok = a != b
        a, b, side, win, d = a[ok], b[ok], side[ok], win[ok], d[ok]
        swap = a > b  # one unordered pair; the window stays with its image
        a, b = np.where(swap, b, a), np.where(swap, a, b)
        side = np.where(swap & (win != 0), 1 - side, side)
    boxes = window_boxes()
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    # per (pair, side): the smallest distance, then the largest window (whole/whole first)
    order = np.lexsort((-area[win], d, side, b, a))
    a, b, side, win, d = a[order], b[order], side[order], win[order], d[order]
    first = np.ones(a.size, bool)
    first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1]) | (side[1:] != side[:-1])
    a, b, side, win, d = a[first], b[first], side[first], win[first], d[first]
    if a.size:
        # at most per_image partners per image of B, ranked by their closest hypothesis
        pair = a * (len(ib) + 1) + b
        uniq, inv = np.unique(pair, return_inverse=True)
        dbest = np.full(uniq.size, 65)
        np.minimum.at(dbest, inv, d)
        pb = uniq % (len(ib) + 1)
        rank_order = np.lexsort((dbest, pb))
        rank = np.empty(uniq.size, np.int64)
        starts = np.r_[0, np.nonzero(np.diff(pb[rank_order]))[0] + 1]
        pos = np.arange(uniq.size) - np.repeat(starts, np.diff(np.r_[starts, uniq.size]))
        rank[rank_order] = pos
        keep = rank[inv] < per_image
        a, b, side, win, d = a[keep], b[keep], side[keep], win[keep], d[keep]
    return {"a": a, "b": b, "side": side, "win": win, "d": d}


# ---------------------------------------------------------------------------------------------
# Verification: align the window, then normalised cross-correlation.


def _sampling(lo: np.ndarray, hi: np.ndarray, n: int, r: int) -> np.ndarray:
    """(..., r, n) matrices that sample the interval [lo, hi] (fractions) of an n-pixel axis
    at r points with a triangle (area-like) filter, built from its few taps per row."""
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    span = (hi - lo)[..., None]
    centre = (lo[..., None] + (np.arange(r) + 0.5) / r * span) * n - 0.5  # (..., r)
    width = np.maximum(1.0, span * n / r)[..., None]  # (..., 1, 1)
    n_taps = int(np.ceil(2 * width.max())) + 1 if width.size else 1
    x = (np.floor(centre[..., None] - width) + 1) + np.arange(n_taps)  # (..., r, taps)
    inside = (x >= 0) & (x <= n - 1)
    w = np.where(inside, np.maximum(0.0, 1.0 - np.abs(x - centre[..., None]) / width), 0.0)
    w /= np.maximum(w.sum(-1, keepdims=True), 1e-12)
    out = np.zeros(w.shape[:-1] + (n + 1,), np.float32)  # column n takes the taps off the edge
    np.put_along_axis(out, np.where(inside, x, n).astype(np.intp), w.astype(np.float32), axis=-1)
    return out[..., :n]


def _sample(t: np.ndarray, box: np.ndarray, r: int) -> np.ndarray:
    """(K, r, r) samples of boxes (K, 4: x0, y0, x1, y1) of thumbnails t (K, n, n)."""
    n = t.shape[-1]
    return _sampling(box[:, 1], box[:, 3], n, r) @ t @ np.swapaxes(_sampling(box[:, 0], box[:, 2], n, r), -1, -2)


@lru_cache(maxsize=8)
def _whole_sampling(n: int, r: int) -> np.ndarray:
    return _sampling(np.zeros(1), np.ones(1), n, r)[0]


def _whole(t: np.ndarray, r: int) -> np.ndarray:
    """(K, r, r) samples of whole thumbnails t (K, n, n)."""
    s = _whole_sampling(t.shape[-1], r)
    return s @ t @ s.T


def _normalise(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=(-1, -2), keepdims=True)
    return x / np.sqrt((x * x).sum(axis=(-1, -2), keepdims=True) + 1e-6)


def _detail(x: np.ndarray) -> np.ndarray:
    """High-pass of samples (..., r, r): each minus the mean of its 3x3 neighbourhood (edges
    repeated). What is left is mostly speckle, which a copy keeps and another frame does not."""
    r = x.shape[-1]
    p = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(1, 1), (1, 1)], mode="edge")
    c = np.cumsum(np.cumsum(p, axis=-1), axis=-2)
    c = np.pad(c, [(0, 0)] * (x.ndim - 2) + [(1, 0), (1, 0)])
    box = c[..., 3:, 3:] - c[..., :-3, 3:] - c[..., 3:, :-3] + c[..., :-3, :-3]
    return x - box[..., :r, :r] / 9.0


def _features(x: np.ndarray, detail: bool) -> np.ndarray:
    return _normalise(_detail(x) if detail else x)


def _refine(
    tc: np.ndarray, target: np.ndarray, box: np.ndarray, step0: float, min_step: float, max_iter: int = 60
) -> tuple[np.ndarray, np.ndarray]:
    """Pattern search: move the edges of ``box`` in the container thumbnails ``tc`` (K, n, n)
    to maximise the NCC of its samples with ``target`` (K, r, r, normalised). Returns (ncc,
    box). Each round tries every edge one step in and out and takes the best move; no gain
    halves the step."""
    r, n = target.shape[-1], tc.shape[-1]
    box = box.astype(np.float64).copy()
    best = (_normalise(_sample(tc, box, r)) * target).sum(axis=(-1, -2))
    step = np.full(len(box), step0)
    active = np.ones(len(box), bool)
    for _ in range(max_iter):
        idx = np.nonzero(active)[0]
        if idx.size == 0:
            break
        cur, s = box[idx], step[idx][:, None]
        var = np.repeat(cur[:, None, :], 8, axis=1)  # (k, 8, 4): edge e moved -/+ (2e, 2e+1)
        for e in range(4):
            var[:, 2 * e, e] -= s[:, 0]
            var[:, 2 * e + 1, e] += s[:, 0]
        np.clip(var, 0.0, 1.0, out=var)
        small = (var[..., 2] - var[..., 0] < 0.25) | (var[..., 3] - var[..., 1] < 0.25)
        var[small] = np.repeat(cur[:, None, :], 8, axis=1)[small]
        t = tc[idx]
        ry = _sampling(cur[:, 1], cur[:, 3], n, r)  # (k, r, n)
        rx = _sampling(cur[:, 0], cur[:, 2], n, r)
        ryt = ry @ t  # (k, r, n)
        trx = t @ np.swapaxes(rx, -1, -2)  # (k, n, r)
        xs = [0, 1, 4, 5]  # moves of x0 and x1
        ys = [2, 3, 6, 7]  # moves of y0 and y1
        vx = ryt[:, None] @ np.swapaxes(_sampling(var[:, xs, 0], var[:, xs, 2], n, r), -1, -2)
        vy = _sampling(var[:, ys, 1], var[:, ys, 3], n, r) @ trx[:, None]
        scores = np.empty((idx.size, 8))
        scores[:, xs] = (_normalise(vx) * target[idx][:, None]).sum(axis=(-1, -2))
        scores[:, ys] = (_normalise(vy) * target[idx][:, None]).sum(axis=(-1, -2))
        j = scores.argmax(axis=1)
        top = scores[np.arange(idx.size), j]
        gain = top > best[idx] + 1e-5
        moved = idx[gain]
        box[moved] = var[gain, j[gain]]
        best[moved] = top[gain]
        halve = idx[~gain]
        step[halve] /= 2
        active[halve[step[halve] < min_step]] = False
    return best, box


@dataclass(frozen=True)
class Match:
    """``b`` (of the second set) is a near-duplicate of ``a`` (of the first set; in groups, of
    the same set). ``within`` says which image holds the other: ``"a"`` when ``b`` shows the
    ``box`` (fractions x0, y0, x1, y1) of ``a``, ``"b"`` when ``a`` shows that box of ``b``.
    ``score``: correlation of the fine detail (speckle) of the aligned thumbnails, the
    decision (1.0 for identical pixels); ``ncc``: correlation of the aligned pictures
    themselves; ``hamming``: pHash bits between the whole of one and the starting window of
    the other; ``gain``/``offset``: b ~ gain * a + offset in grey levels."""

    a: str
    b: str
    score: float
    ncc: float
    hamming: int
    kind: str
    within: str
    box: tuple[float, float, float, float]
    gain: float
    offset: float

    def to_dict(self) -> dict:
        d = asdict(self)
        d["box"] = [round(v, 4) for v in self.box]
        for k in ("score", "ncc", "gain", "offset"):
            d[k] = round(d[k], 4)
        return d


@dataclass
class Group:
    """Images of one set that are near-duplicates of each other (connected by ``matches``)."""

    members: list[str]
    matches: list[Match]

    def to_dict(self) -> dict:
        return {
            "members": self.members,
            "kinds": sorted({m.kind for m in self.matches}),
            "matches": [m.to_dict() for m in self.matches],
        }


def _kind(box, size_a, size_b, mode_a, mode_b, gain, offset) -> str:
    """The transformation that best explains the pair: the window (pane, cropped), then the
    pixel sizes of the matched parts (resized), the grey-level fit, the colour modes."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    if w <= 0.6 and h >= 0.85:
        return "pane"
    if w * h < 0.97:
        return "cropped"
    ra, rb = np.asarray(size_a, float), np.asarray(size_b, float)
    if np.any(np.abs(ra / rb - 1.0) > 0.015):
        return "resized"
    if abs(gain - 1.0) > 0.04 or abs(offset) > 4.0:
        return "brightness/contrast"
    if mode_a != mode_b:
        return "grey/rgb"
    return "re-encoded"


def _match_sets(
    ia: HashIndex,
    ib: HashIndex,
    threshold: float,
    radius: int,
    same: bool,
    progress: Callable[[int, int], None] | None,
    per_image: int = 32,
    chunk: int = 64,
) -> list[Match]:
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if not 0 <= radius <= 64:
        raise ValueError(f"radius must be in [0, 64], got {radius}")
    if len(ia) == 0 or len(ib) == 0:
        return []
    with _one_blas_thread():
        return _match_sets_inner(ia, ib, threshold, radius, same, progress, per_image, chunk)


def _match_sets_inner(ia, ib, threshold, radius, same, progress, per_image, chunk) -> list[Match]:
    matches: list[Match] = []
    whole_d = lambda i, j: int(_popcount(ia.hashes[i, 0] ^ ib.hashes[j, 0]))  # noqa: E731

    # Exact copies first, from the digests (no hashing or search involved).
    exact: set[tuple[int, int]] = set()
    for digests, kind in ((("sha256", "sha256"), "identical-file"), (("pixels", "pixels"), "identical-pixels")):
        by: dict[str, list[int]] = {}
        for j, v in enumerate(getattr(ib, digests[1])):
            by.setdefault(v, []).append(j)
        for i, v in enumerate(getattr(ia, digests[0])):
            for j in by.get(v, ()):
                if (same and j <= i) or (i, j) in exact:
                    continue
                exact.add((i, j))
                k = kind if kind == "identical-file" or ia.modes[i] == ib.modes[j] else "grey/rgb"
                matches.append(
                    Match(ia.names[i], ib.names[j], 1.0, 1.0, whole_d(i, j), k, "a", (0.0, 0.0, 1.0, 1.0), 1.0, 0.0)
                )

    c = _candidates(ia, ib, radius, same, per_image)
    pair = c["a"] * (len(ib) + 1) + c["b"]
    todo = ~np.isin(pair, np.array([i * (len(ib) + 1) + j for i, j in exact], np.int64))
    pairs = np.unique(pair[todo])
    boxes = window_boxes()
    wholes = (_Wholes(ia), _Wholes(ib))
    for start in range(0, pairs.size, chunk):
        sel = np.nonzero(np.isin(pair, pairs[start : start + chunk]) & todo)[0]
        a, b, side, win, d = (c[k][sel] for k in ("a", "b", "side", "win", "d"))
        in_a = side == 0  # the window is in A, the whole of B is the target; else the other way

        def container(name: str, rows, in_a=in_a, a=a, b=b):
            return np.where(in_a[rows, None, None], getattr(ia, name)[a[rows]], getattr(ib, name)[b[rows]]).astype(
                np.float32
            )

        def target(level: int, rows, in_a=in_a, a=a, b=b) -> np.ndarray:
            fa, fb = wholes[0].get(a[rows], level), wholes[1].get(b[rows], level)
            return np.where(in_a[rows, None, None], fb, fa)

        every = np.arange(len(sel))
        # coarse: every hypothesis, picture NCC on 64x64 thumbnails at 24x24
        coarse, box = _refine(container("thumbs_64", every), target(0, every), boxes[win], 0.03, 0.006)
        # the better hypothesis of each pair goes on, if its picture agrees at all
        order = np.lexsort((-coarse, pair[sel]))
        lead = np.ones(len(sel), bool)
        lead[1:] = pair[sel][order][1:] != pair[sel][order][:-1]
        go = order[lead]
        go = go[coarse[go] >= _COARSE_FLOOR]
        if go.size:
            # fine: picture NCC on 128x128 thumbnails at 48x48 aligns the window
            c128 = container("thumbs_128", go)
            _, fbox = _refine(c128, target(1, go), box[go], 0.008, 0.002)
            tc_go = _sample(c128, fbox, 48)
            ncc = (_features(tc_go, False) * target(1, go)).sum(axis=(-1, -2))
            # the decision: detail correlation at 96x96 on the 256x256 thumbnails
            det = (_features(_sample(container("thumbs", go), fbox, 96), True) * target(2, go)).sum(axis=(-1, -2))
            raw = target(3, go)
            for n in np.nonzero(det >= threshold)[0]:
                h = go[n]
                i, j, s = int(a[h]), int(b[h]), int(side[h])
                xc, xt = tc_go[n].ravel(), raw[n].ravel()
                xa, xb = (xc, xt) if s == 0 else (xt, xc)  # grey levels: b ~ gain * a + offset
                gain = float(np.cov(xa, xb)[0, 1] / max(np.var(xa, ddof=1), 1e-6))
                offset = float(xb.mean() - gain * xa.mean())
                bx = tuple(float(v) for v in fbox[n])
                part = np.array([bx[2] - bx[0], bx[3] - bx[1]])
                size_a, size_b = (ia.sizes[i] * part, ib.sizes[j]) if s == 0 else (ia.sizes[i], ib.sizes[j] * part)
                kind = _kind(bx, size_a, size_b, ia.modes[i], ib.modes[j], gain, offset)
                matches.append(
                    Match(
                        ia.names[i],
                        ib.names[j],
                        float(np.clip(det[n], 0, 1)),
                        float(ncc[n]),
                        int(d[h]),
                        kind,
                        "a" if s == 0 else "b",
                        bx,
                        gain,
                        offset,
                    )
                )
        if progress:
            progress(min(start + chunk, pairs.size), pairs.size)
    return sorted(matches, key=lambda m: (m.b, -m.score, m.a))


class _Wholes:
    """Per image of an index, computed once when first needed: the whole thumbnail's picture
    features at 24x24 (level 0) and 48x48 (1), its detail features at 96x96 (2), and its raw
    48x48 samples (3), the targets every pair with that image compares against."""

    def __init__(self, index: HashIndex):
        self.index = index
        self.levels = ({}, {}, {}, {})

    def get(self, rows: np.ndarray, level: int) -> np.ndarray:
        missing = sorted({int(i) for i in rows} - self.levels[level].keys())
        if missing:
            ix = self.index
            m = np.array(missing)
            raw48 = _whole(ix.thumbs_128[m].astype(np.float32), 48)
            made = (
                _features(_whole(ix.thumbs_64[m].astype(np.float32), 24), False),
                _features(raw48, False),
                _features(_whole(ix.thumbs[m].astype(np.float32), 96), True),
                raw48,
            )
            for lv, arr in zip(self.levels, made):
                lv.update(zip(missing, arr))
        return np.stack([self.levels[level][int(i)] for i in rows])


def find_overlap(
    index_a: HashIndex,
    index_b: HashIndex,
    threshold: float = DEFAULT_THRESHOLD,
    radius: int = DEFAULT_RADIUS,
    progress: Callable[[int, int], None] | None = None,
) -> list[Match]:
    """Every pair (image of A, image of B) that are near-duplicates, sorted by B's name then
    score. ``threshold``: the NCC a verified pair needs; ``radius``: the largest pHash
    distance (bits) of a candidate; ``progress(done, total)`` over the candidates verified."""
    return _match_sets(index_a, index_b, threshold, radius, False, progress)


def find_groups(
    index: HashIndex,
    threshold: float = DEFAULT_THRESHOLD,
    radius: int = DEFAULT_RADIUS,
    progress: Callable[[int, int], None] | None = None,
) -> list[Group]:
    """Near-duplicate groups inside one set (union-find over the matched pairs), largest
    first; images without a near-duplicate are in no group."""
    matches = _match_sets(index, index, threshold, radius, True, progress)
    pos = {n: i for i, n in enumerate(index.names)}
    parent = list(range(len(index)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for m in matches:
        ra, rb = root(pos[m.a]), root(pos[m.b])
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    members: dict[int, list[str]] = {}
    for m in matches:
        for n in (m.a, m.b):
            members.setdefault(root(pos[n]), [])
    for n, i in pos.items():
        if root(i) in members:
            members[root(i)].append(n)
    groups = []
    for names in members.values():
        inside = set(names)
        groups.append(Group(sorted(names, key=pos.get), [m for m in matches if m.a in inside]))
    return sorted(groups, key=lambda g: (-len(g.members), pos[g.members[0]]))
