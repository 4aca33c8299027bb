"""Synthetic thyroid ultrasound phantoms written in DDTI format (case XML + JPEG frames).

The phantoms are the embedded default dataset and the test data: they go through the very
reader DDTI goes through (``ddti.load_ddti``), so everything downstream can run and be
tested without the real data, which is not ours to redistribute.

What the generator draws, per frame (560x360, grey content in RGB like DDTI):
  * a linear-probe scan area with tissue layers (skin, strap muscles, thyroid, deep tissue),
    a carotid artery and speckle, plus burned-in scanner text on the right as in DDTI;
  * one nodule, whose appearance follows the sonographic cues radiologists score in
    TI-RADS (Kwak et al., Radiology 2011; ACR TI-RADS, Tessler et al., JACR 2017): solid or
    cystic/spongiform content, echogenicity, margin, taller-than-wide shape, punctate
    echogenic foci (microcalcifications), plus the halo, comet-tail colloid and
    macrocalcifications with their posterior shadow;
  * some frames are dual-view (two panes side by side, one outline each), some marks carry an
    ``arrow`` region, and clinical fields use DDTI's vocabulary with its spelling variants.

Two difficulties:
  * ``"realistic"`` (the default, and the embedded default set's): each cue is drawn with
    class-dependent probabilities (``_CUES``; some nodules look like the other class,
    ``_LOOKALIKE``), so no cue decides the class and the classes overlap as in the clinic,
    and the frame is imaged through a small B-mode scanner model (scatterers, point-spread
    function, envelope, log compression: fully developed Rayleigh speckle). At ``compare``'s
    quick settings the paper CNN ranks a held-out quarter of the default set with a ROC-AUC
    of about 0.73-0.86 (tests/test_phantom_auc.py pins 0.70-0.92).
  * ``"easy"``: generator version 1's phantoms, byte for byte: strong cues mostly decided by
    the class (benign iso-/hyperechoic, smooth, wider than tall; malignant hypoechoic,
    spiculated, taller than wide, with microcalcifications) under multiplicative Rayleigh
    speckle. Every model scores ROC-AUC ~1.0 on them: for checks that need a clear signal.

Labels are written as TI-RADS values consistent with the class (benign 2/3, malignant
4a-5); ``label_noise`` flips the *recorded* class of a labelled case with that probability
(the image keeps its true cues; the embedded default uses ``DEFAULT_LABEL_NOISE``), and
``unlabelled_fraction`` leaves the TI-RADS empty. ``synthetic.json`` next to ``xml/`` records
the arguments (with the generator ``version`` and ``difficulty``) and the truth: true class,
flips, injected warts and, for realistic phantoms, each case's cues.

``warts=True`` injects each DDTI wart once: truncated ``<svg>`` JSON (one salvageable, one
not), an empty ``<svg>``, a repeated outline, byte-identical images (across cases and within
one), a missing image, an unreadable image and a malformed XML.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from lxml import etree
from PIL import Image, ImageDraw

from ..errors import HfcnError

__all__ = [
    "write_synthetic_ddti",
    "ensure_synthetic",
    "DEFAULT_SYNTHETIC_DIR",
    "DEFAULT_SYNTHETIC_CASES",
    "DEFAULT_LABEL_NOISE",
    "DIFFICULTIES",
    "GENERATOR_VERSION",
    "FRAME_SIZE",
    "SYNTHETIC_MANIFEST",
    "MIN_CASES_WITH_WARTS",
]

FRAME_SIZE = (560, 360)  # width, height: the size of every DDTI frame
# The embedded default dataset: relative to the working directory, like the CLI's --out, so
# that from a checkout it lands in the git-ignored data/synthetic/.
DEFAULT_SYNTHETIC_DIR = Path("data") / "synthetic"
DEFAULT_SYNTHETIC_CASES = 200
# A few per cent of the embedded default's recorded labels disagree with the truth, as
# cytology/TI-RADS labels sometimes do with histology.
DEFAULT_LABEL_NOISE = 0.04
# "realistic": cues overlap between the classes (the default); "easy": version 1's strong cues.
DIFFICULTIES = ("realistic", "easy")
# Recorded in synthetic.json: version 2 added the realistic phantoms (version 1 wrote no field).
GENERATOR_VERSION = 2
SYNTHETIC_MANIFEST = "synthetic.json"
MIN_CASES_WITH_WARTS = 10
_TRUNCATE_AT = 2500  # DDTI's truncated marks are all cut at exactly this many characters

# Scan areas (x0, y0, width, height) in the frame, after DDTI's single- and dual-view layouts.
_SINGLE_PANE = (88, 6, 380, 304)
_DUAL_PANES = ((34, 6, 236, 304), (274, 6, 236, 304))

_BENIGN_TIRADS = ("2", "3")
_MALIGNANT_TIRADS = ("4a", "4b", "4c", "5")


# ---------------------------------------------------------------------------------------------
# Image synthesis.


def _box_blur(a: np.ndarray, r: int) -> np.ndarray:
    """Separable box blur of radius r (edge-padded) via cumulative sums: O(pixels), no scipy."""
    if r <= 0:
        return a
    k = 2 * r + 1
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (r + 1, r)
        c = np.cumsum(np.pad(a, pad, mode="edge"), axis=axis)
        if axis == 0:
            a = (c[k:] - c[:-k]) / k
        else:
            a = (c[:, k:] - c[:, :-k]) / k
    return a


def _nodule_polygon(rng: np.random.Generator, malignant: bool, a: float, b: float, n: int = 240) -> np.ndarray:
    """Vertices (n, 2) around (0, 0) of an ellipse with semi-axes a (x) and b (y), perturbed:
    low harmonics (smooth lobulation) for benign, high harmonics and sharp spicules for
    malignant (the irregular/spiculated margin TI-RADS scores as suspicious)."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = 1.0 / np.sqrt((np.cos(t) / a) ** 2 + (np.sin(t) / b) ** 2)
    pert = np.zeros_like(t)
    if malignant:
        for k in rng.integers(4, 14, size=4):
            pert += rng.uniform(0.04, 0.10) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
        for centre in rng.uniform(0, 2 * np.pi, size=rng.integers(3, 8)):
            d = np.angle(np.exp(1j * (t - centre)))
            pert += rng.uniform(0.15, 0.35) * np.exp(-0.5 * (d / rng.uniform(0.03, 0.07)) ** 2)
    else:
        for k in (2, 3):
            pert += rng.uniform(0.0, 0.04) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    r = r * (1.0 + pert)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


@dataclass
class _Look:
    """The appearance of one case's nodule, shared by all its frames (one patient, one nodule)."""

    malignant: bool
    echo: float  # nodule echogenicity relative to thyroid tissue
    aspect: float  # height / width
    size: float  # semi-axis along x, in pixels of a 304-pixel-deep pane
    halo: bool
    cystic: str  # "", "cystic" or "spongiform"; realistic also "mixed" (predominantly solid)
    micro: int  # number of microcalcifications
    macro: bool
    # Only the realistic phantoms set these (the easy ones let the class decide the margin).
    difficulty: str = "easy"
    echo_class: str = ""  # "marked", "hypo", "iso" or "hyper"
    margin: str = ""  # "smooth", "ill-defined", "lobulated" or "spiculated"
    taller: bool = False  # taller than wide (the aspect is drawn from this flag)
    comet: int = 0  # echogenic foci with a comet-tail artefact (inspissated colloid)
    heterogeneity: float = 0.0  # relative amplitude of the nodule's internal echo texture
    lookalike: bool = False  # drawn from the other class's typical appearance


def _tissue(
    rng: np.random.Generator, w: int, h: int, level: tuple[float, float] = (0.55, 0.68)
) -> tuple[np.ndarray, float]:
    """The scan area's mean brightness without the nodule (h, w) and the thyroid's level:
    skin, strap muscles, thyroid, deep tissue, depth attenuation and a carotid artery."""
    y = np.arange(h, dtype=np.float32)[:, None] / h
    x = np.arange(w, dtype=np.float32)[None, :] / w
    wob = lambda amp, f: amp * np.sin(2 * np.pi * (f * x + rng.uniform()))  # noqa: E731
    top = 0.20 + wob(0.02, 0.7)
    bottom = 0.80 + wob(0.03, 0.5)
    skin = 0.05 + wob(0.005, 1.3)
    e = np.where(y < skin, 0.85, 0.40).astype(np.float32)
    muscle = (y >= skin + 0.04) & (y < top)
    e = np.where(muscle, 0.30 + 0.08 * np.sin(2 * np.pi * y * 38 + wob(2.0, 0.4)), e)
    thyroid_level = rng.uniform(*level)
    thyroid = (y >= top) & (y < bottom)
    e = np.where(thyroid, thyroid_level * (1 + wob(0.05, 1.1)), e)
    e = np.where(y >= bottom, 0.22, e).astype(np.float32)
    e *= np.exp(-0.35 * y)  # attenuation the scanner's gain does not fully undo

    # Carotid artery beside the thyroid lobe: anechoic lumen, bright wall.
    cx = (0.9 if rng.uniform() < 0.5 else 0.1) * w
    cy, cr = 0.55 * h, rng.uniform(0.06, 0.08) * h
    d = np.hypot(np.arange(w)[None, :] - cx, np.arange(h)[:, None] - cy)
    e = np.where(d < cr, 0.03, np.where(d < cr + 2.5, 0.9, e)).astype(np.float32)
    return e, thyroid_level


@dataclass
class _Placed:
    """A nodule placed in a pane: its outline (pane px), semi-axes ``a``, ``b`` and centre, and
    the window ``[wy0:, wx0:wx1]`` around it that runs down to the bottom of the pane (where
    posterior shadows and enhancement fall), with its filled outline ``hard`` and pixel grids."""

    poly: np.ndarray
    a: float
    b: float
    px: float
    py: float
    wx0: int
    wx1: int
    wy0: int
    hard: np.ndarray
    gx: np.ndarray
    gy: np.ndarray


def _place_nodule(
    rng: np.random.Generator, look: _Look, w: int, h: int, outline: Callable[[float, float], np.ndarray]
) -> _Placed:
    """Size, outline (``outline(a, b)``, centred at 0) and position of the nodule of ``look``.
    Its size is defined for a full-depth pane and scaled to this one; the second view of a case
    differs a little in size and shape, like a second plane would. Drawing everything about the
    nodule only in its window keeps a frame at ~10 ms."""
    scale = h / 304.0
    a = look.size * scale * rng.uniform(0.9, 1.1)
    b = a * look.aspect * rng.uniform(0.93, 1.07)
    b = min(b, 0.26 * h)
    a = min(a, 0.28 * w)
    poly = outline(a, b)
    px = rng.uniform(0.40, 0.60) * w
    py = (0.50 + rng.uniform(-0.03, 0.03)) * h
    poly = poly + np.array([px, py])
    poly[:, 0] = np.clip(poly[:, 0], 2, w - 3)
    poly[:, 1] = np.clip(poly[:, 1], 2, h - 3)
    wx0, wx1 = max(int(poly[:, 0].min()) - 12, 0), min(int(poly[:, 0].max()) + 13, w)
    wy0 = max(int(poly[:, 1].min()) - 12, 0)
    mask_img = Image.new("L", (wx1 - wx0, h - wy0), 0)
    ImageDraw.Draw(mask_img).polygon([(x - wx0, y - wy0) for x, y in poly.tolist()], fill=255)
    hard = np.asarray(mask_img, dtype=np.float32) / 255.0
    gx = np.arange(wx0, wx1, dtype=np.float32)[None, :]
    gy = np.arange(wy0, h, dtype=np.float32)[:, None]
    return _Placed(poly, a, b, px, py, wx0, wx1, wy0, hard, gx, gy)


def _draw_pane_easy(rng: np.random.Generator, look: _Look, w: int, h: int):
    """Render one scan pane (h, w) in [0, 1] and return it with the nodule outline (pane px).
    The ``easy`` phantoms: every cue drawn strongly, the class deciding most of them."""
    e, thyroid_level = _tissue(rng, w, h)

    # The nodule. Its size is defined for a full-depth pane and scaled to this one; the
    # second view of a case differs a little in size and shape, like a second plane would.
    n = _place_nodule(rng, look, w, h, lambda a, b: _nodule_polygon(rng, look.malignant, a, b))
    poly, hard, gx, gy, wx0, wx1, wy0 = n.poly, n.hard, n.gx, n.gy, n.wx0, n.wx1, n.wy0
    a, b, px, py = n.a, n.b, n.px, n.py
    # Ill-defined margins: a malignant nodule fades into the parenchyma over several pixels.
    soft = np.clip(_box_blur(hard, 3 if look.malignant else 1), 0, 1)
    sub = e[wy0:, wx0:wx1]

    inside = np.full_like(sub, thyroid_level * look.echo)
    if look.cystic:
        n_cyst, r_lo, r_hi = (
            (rng.integers(1, 3), 0.25, 0.5) if look.cystic == "cystic" else (rng.integers(8, 18), 0.06, 0.12)
        )
        for _ in range(n_cyst):
            ccx = px + rng.uniform(-0.4, 0.4) * a
            ccy = py + rng.uniform(-0.4, 0.4) * b
            rx, ry = rng.uniform(r_lo, r_hi) * a, rng.uniform(r_lo, r_hi) * b
            cyst = ((gx - ccx) / rx) ** 2 + ((gy - ccy) / ry) ** 2 < 1
            inside = np.where(cyst & (hard > 0), 0.04, inside)
            # Posterior acoustic enhancement: fluid attenuates less than tissue.
            below = (gy > ccy + ry) & (np.abs(gx - ccx) < rx)
            sub = np.where(below & (hard == 0), sub * 1.25, sub)
    sub = sub * (1 - soft) + inside * soft
    if look.halo:
        spread = _box_blur(hard, 3)
        sub = np.where((spread > 0.05) & (spread < 0.6), sub * 0.45, sub)
    if look.macro:
        mx, my = px + rng.uniform(-0.3, 0.3) * a, py + rng.uniform(-0.2, 0.3) * b
        mr = max(3.0, 0.18 * a)
        dd = np.hypot(gx - mx, gy - my)
        sub = np.where((gy > my + mr) & (np.abs(gx - mx) < mr), sub * 0.3, sub)
        sub = np.where((dd < mr) & (dd > mr - 2.5) & (gy < my), 1.1, sub)
    e[wy0:, wx0:wx1] = sub

    # Multiplicative speckle: Rayleigh amplitude (mean 1), smoothed over ~3 px because the
    # speckle grain is set by the resolution cell, not by the pixel.
    speckle = rng.rayleigh(1.0, size=(h, w)).astype(np.float32)
    speckle = _box_blur(speckle, 1)
    speckle /= speckle.mean()
    speckle = 1 + 1.6 * (speckle - 1)
    img = np.clip(e * np.clip(speckle, 0.05, None), 0, 1.4) / 1.4
    img = 0.9 * img**0.9

    # Microcalcifications: punctate echogenic foci (< 1 mm), drawn after the speckle so they
    # stay bright. Only where the nodule is solid (the hard mask, away from the margin).
    if look.micro:
        ys, xs = np.nonzero(_box_blur(hard, 4) > 0.99)
        ys, xs = ys + wy0, xs + wx0
        if xs.size:
            for i in rng.choice(xs.size, size=min(look.micro, xs.size), replace=False):
                rr = rng.uniform(0.8, 1.6)
                yy, xx = np.ogrid[-2:3, -2:3]
                dot = (xx**2 + yy**2) <= rr**2
                y0, x0 = ys[i] - 2, xs[i] - 2
                if 0 <= y0 and y0 + 5 <= h and 0 <= x0 and x0 + 5 <= w:
                    patch = img[y0 : y0 + 5, x0 : x0 + 5]
                    patch[dot] = rng.uniform(0.9, 1.0)
    return img.astype(np.float32), poly


# The realistic renderer works like a B-mode scanner instead of painting grey levels:
# tissue reflectivity -> one random-phase scatterer per pixel weighted by it -> weighted sum
# over the point-spread function (a separable Gaussian, wider laterally than axially, as a
# linear probe's resolution cell is) -> envelope. A resolution cell sums about 28
# independent scatterers, so by the central limit theorem the echo is close to complex
# Gaussian and its amplitude Rayleigh-distributed: fully developed speckle, with the grain of
# the resolution cell. Log compression then maps it into the display's dynamic range, like the
# DR setting burned into the frame. Strong specular reflectors (calcifications, colloid) are
# added coherently as point targets, so they show as bright blobs of the PSF's size on top of
# the speckle rather than being speckled themselves.
_DR_DB = 60.0  # display dynamic range (dB), within the DR 55-75 burned into the frames
_PSF_SIGMA = (1.1, 2.0)  # PSF standard deviation in pixels (axial, lateral)


def _gauss_taps(sigma: float) -> np.ndarray:
    r = int(np.ceil(2.5 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    return (k / k.max()).astype(np.float32)


_PSF_TAPS = tuple(_gauss_taps(s_) for s_ in _PSF_SIGMA)
# Sum of the PSF's squared weights: the factor by which it scales incoherent scatterer power.
# (Its peak weight is 1, so a point target keeps its amplitude.)
_PSF_POWER = float(np.square(_PSF_TAPS[0]).sum() * np.square(_PSF_TAPS[1]).sum())
# E[20 log10 A] of a Rayleigh amplitude A lies 2.51 dB under 20 log10 of its rms: undoing it
# keeps a region's mean grey level at the brightness it was given.
_RAYLEIGH_LOG_BIAS_DB = 2.51
# Nodule echogenicity, as a ratio of the surrounding thyroid's grey level. Marked
# hypoechogenicity is darker than the strap muscles (~0.5 of the thyroid here); neighbouring
# categories overlap a little, as readers' calls do at their borders.
_ECHO_RANGES = {"marked": (0.25, 0.40), "hypo": (0.45, 0.72), "iso": (0.88, 1.10), "hyper": (1.15, 1.40)}


def _box_sum(a: np.ndarray, ry: int, rx: int) -> np.ndarray:
    """Sum of ``a`` (..., h, w) over a (2 ry + 1) x (2 rx + 1) box, edge-padded: shifted adds,
    which beat the cumulative-sum blur at these small radii."""
    return _separable(a, np.ones(2 * ry + 1, np.float32), np.ones(2 * rx + 1, np.float32))


def _separable(a: np.ndarray, ky: np.ndarray, kx: np.ndarray) -> np.ndarray:
    """``a`` (..., h, w) correlated with ``ky`` along y then ``kx`` along x (odd lengths,
    edge-padded), by weighted shifted adds."""
    h, w = a.shape[-2:]
    ry, rx = len(ky) // 2, len(kx) // 2
    p = np.pad(a, [(0, 0)] * (a.ndim - 2) + [(ry, ry), (0, 0)], mode="edge")
    acc = p[..., 0:h, :] * ky[0]
    for k in range(1, len(ky)):
        acc += p[..., k : k + h, :] * ky[k]
    p = np.pad(acc, [(0, 0)] * (a.ndim - 2) + [(0, 0), (rx, rx)], mode="edge")
    out = p[..., 0:w] * kx[0]
    for k in range(1, len(kx)):
        out += p[..., k : k + w] * kx[k]
    return out


def _psf(a: np.ndarray) -> np.ndarray:
    """``a`` (..., h, w) convolved with the PSF (symmetric taps: correlation = convolution)."""
    return _separable(a, *_PSF_TAPS)


def _display_to_amplitude(level: np.ndarray) -> np.ndarray:
    """Inverse log compression: the echo amplitude whose displayed grey level is ``level``."""
    return np.power(10.0, (np.clip(level, 0.01, None) - 1.0) * (_DR_DB / 20.0)).astype(np.float32)


def _margin_polygon(rng: np.random.Generator, margin: str, a: float, b: float, n: int = 240) -> np.ndarray:
    """Like :func:`_nodule_polygon`, with the shape set by the margin category instead of the
    class: smooth and ill-defined nodules are near-ellipses (ill-defined ones differ by their
    blurred edge), lobulated ones bulge in a few broad lobes, spiculated ones carry high
    harmonics and sharp spicules of random strength."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = 1.0 / np.sqrt((np.cos(t) / a) ** 2 + (np.sin(t) / b) ** 2)
    pert = np.zeros_like(t)
    for k in (2, 3):
        pert += rng.uniform(0.0, 0.04) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    if margin == "lobulated":
        for k in rng.integers(3, 7, size=2):
            pert += rng.uniform(0.08, 0.15) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    elif margin == "spiculated":
        strength = rng.uniform(0.8, 1.3)
        for k in rng.integers(4, 14, size=4):
            pert += strength * rng.uniform(0.04, 0.10) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
        for centre in rng.uniform(0, 2 * np.pi, size=rng.integers(3, 8)):
            d = np.angle(np.exp(1j * (t - centre)))
            pert += strength * rng.uniform(0.2, 0.45) * np.exp(-0.5 * (d / rng.uniform(0.03, 0.07)) ** 2)
    r = r * (1.0 + pert)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _draw_pane_realistic(rng: np.random.Generator, look: _Look, w: int, h: int):
    """Render one scan pane (h, w) in [0, 1] and return it with the nodule outline (pane px).
    The ``realistic`` phantoms: the cues of ``look`` (see :func:`_look_realistic`), each drawn
    whatever the class, imaged through a speckle-forming scanner."""
    # A narrower range of thyroid brightness than the easy phantoms': the ROI holds little
    # parenchyma to compare the nodule with, and the gain below varies on top of it.
    e, thyroid_level = _tissue(rng, w, h, (0.57, 0.65))

    n = _place_nodule(rng, look, w, h, lambda a, b: _margin_polygon(rng, look.margin, a, b))
    poly, hard, gx, gy, wx0, wx1, wy0 = n.poly, n.hard, n.gx, n.gy, n.wx0, n.wx1, n.wy0
    a, b, px, py = n.a, n.b, n.px, n.py
    # An ill-defined margin fades into the parenchyma over several pixels; the others are sharp
    # (the PSF below softens every edge by a pixel or two anyway).
    soft = np.clip(_box_blur(hard, {"ill-defined": 5, "spiculated": 2}.get(look.margin, 1)), 0, 1)
    sub = e[wy0:, wx0:wx1]

    # The solid part: its echogenicity relative to the thyroid at the same depth, with an
    # internal texture (heterogeneous echotexture is common to both classes, so it is noise).
    texture = _box_blur(rng.standard_normal(hard.shape).astype(np.float32), 4)
    texture *= look.heterogeneity / max(float(texture.std()), 1e-6)
    inside = thyroid_level * look.echo * np.exp(-0.35 * gy / h) * (1 + texture)
    fluid = np.zeros(hard.shape, dtype=bool)
    if look.cystic:
        n_cyst, r_lo, r_hi = {
            "mixed": (rng.integers(1, 4), 0.15, 0.35),
            "cystic": (1, 0.6, 0.8),
            "spongiform": (rng.integers(8, 18), 0.06, 0.12),
        }[look.cystic]
        for _ in range(int(n_cyst)):
            spread = 0.15 if look.cystic == "cystic" else 0.4
            ccx = px + rng.uniform(-spread, spread) * a
            ccy = py + rng.uniform(-spread, spread) * b
            rx, ry = rng.uniform(r_lo, r_hi) * a, rng.uniform(r_lo, r_hi) * b
            cyst = (((gx - ccx) / rx) ** 2 + ((gy - ccy) / ry) ** 2 < 1) & (hard > 0)
            fluid |= cyst
            # Posterior acoustic enhancement: fluid attenuates less than tissue.
            below = (gy > ccy + ry) & (np.abs(gx - ccx) < rx)
            sub = np.where(below & (hard == 0), sub * 1.2, sub)
        inside = np.where(fluid, 0.04, inside)
    sub = sub * (1 - soft) + inside * soft
    if look.halo:
        spread = _box_blur(hard, 3)
        sub = np.where((spread > 0.05) & (spread < 0.6), sub * 0.45, sub)

    # Specular reflectors as (y, x, strength relative to the thyroid's echo amplitude).
    targets: list[tuple[float, float, float]] = []
    if look.macro:
        mx, my = px + rng.uniform(-0.3, 0.3) * a, py + rng.uniform(-0.2, 0.3) * b
        mr = max(3.0, 0.18 * a)
        sub = np.where((gy > my + mr) & (np.abs(gx - mx) < mr), sub * 0.3, sub)  # posterior shadow
        for ang in np.linspace(np.pi * 1.1, np.pi * 1.9, 7):  # the bright leading edge, an arc
            targets.append((my + mr * np.sin(ang), mx + mr * np.cos(ang), rng.uniform(6.0, 10.0)))
    e[wy0:, wx0:wx1] = sub
    if look.micro:
        # Punctate echogenic foci (< 1 mm) in the solid part, away from the margin: 4-9 times
        # the parenchyma's echo amplitude (12-19 dB), a PSF-sized blob each.
        ys, xs = np.nonzero((_box_blur(hard, 4) > 0.99) & ~fluid)
        if xs.size:
            for i in rng.choice(xs.size, size=min(look.micro, xs.size), replace=False):
                targets.append((ys[i] + wy0, xs[i] + wx0, rng.uniform(4.0, 9.0)))
    if look.comet:
        # Colloid: a bright focus trailed by reverberations that fade with depth (comet tail).
        # In TI-RADS it points the other way from microcalcifications, which it can mimic.
        ys_c, xs_c = np.nonzero(_box_blur(hard, 3) > 0.99)
        if xs_c.size:
            for i in rng.choice(xs_c.size, size=min(look.comet, xs_c.size), replace=False):
                strength = rng.uniform(3.0, 7.0)
                for k in range(int(rng.integers(3, 7))):
                    targets.append((ys_c[i] + wy0 + 2 * k, xs_c[i] + wx0, strength * 0.7**k))

    # The scanner: reflectivity -> scatterers -> PSF -> envelope -> log compression.
    # In-phase and quadrature parts of each pixel's scatterer: uniform in [-1/2, 1/2) (variance
    # 1/12) scaled so that a resolution cell's mean echo power is the reflectivity squared.
    amp = _display_to_amplitude(e) * np.float32(10 ** (_RAYLEIGH_LOG_BIAS_DB / 20) * np.sqrt(6.0 / _PSF_POWER))
    iq = rng.random((2, h, w), dtype=np.float32) - np.float32(0.5)
    iq *= amp
    if targets:
        # a target of strength 1 peaks at the thyroid's rms echo amplitude
        ref = float(_display_to_amplitude(np.float32(thyroid_level * 0.84))) * 10 ** (_RAYLEIGH_LOG_BIAS_DB / 20)
        phases = rng.uniform(0, 2 * np.pi, size=len(targets))
        for (ty, tx, strength), ph in zip(targets, phases):
            iy, ix = int(round(ty)), int(round(tx))
            if 0 <= iy < h and 0 <= ix < w:
                iq[0, iy, ix] += ref * strength * np.cos(ph)
                iq[1, iy, ix] += ref * strength * np.sin(ph)
    iq = _psf(iq)
    # Post-detection smoothing over 3 x 3 pixels, as scanners' speckle-reduction filters do:
    # it fills the deepest nulls of the log-compressed speckle without blurring the grain away.
    power = _box_sum(iq[0] * iq[0] + iq[1] * iq[1], 1, 1) * np.float32(1 / 9)
    gain_db = rng.normal(0.0, 1.0)  # the sonographer's gain differs from one image to the next
    img = 1.0 + (10.0 * np.log10(power + np.float32(1e-12)) + np.float32(gain_db)) / np.float32(_DR_DB)
    img = 0.95 * np.clip(img, 0, 1)
    return img.astype(np.float32), poly


def _burn_text(draw: ImageDraw.ImageDraw, rng: np.random.Generator, dual: bool) -> None:
    """Scanner annotations like DDTI's (probe, depth, frame rate, side label). Nothing here
    depends on the label: the phantoms must not leak it the way some DDTI frames do."""
    lines = [
        "P100",
        "12L6",
        f"{rng.choice([4.0, 5.0, 6.0, 9.0]):.1f}",
        f"{rng.integers(18, 40)}fps",
        f"DR{rng.integers(55, 75)}",
        "2DG",
        str(rng.integers(60, 95)),
    ]
    for i, line in enumerate(lines):
        draw.text((522, 6 + 12 * i), line, fill=(200, 200, 200))
    draw.text((80, 330), "DER" if rng.uniform() < 0.5 else "IZQ", fill=(210, 210, 210))
    draw.rectangle((8, 160, 13, 250), fill=(230, 230, 230))
    if dual:
        draw.text((250, 14), "T", fill=(220, 220, 220))


def _render_frame(rng: np.random.Generator, look: _Look, dual: bool, n_outline: int) -> tuple[bytes, list]:
    w, h = FRAME_SIZE
    frame = np.zeros((h, w), dtype=np.float32)
    regions = []
    for x0, y0, pw, ph in _DUAL_PANES if dual else (_SINGLE_PANE,):
        draw = _draw_pane_realistic if look.difficulty == "realistic" else _draw_pane_easy
        pane, poly = draw(rng, look, pw, ph)
        frame[y0 : y0 + ph, x0 : x0 + pw] = pane
        # A radiologist's trace: fewer vertices than the rendered polygon, a pixel of jitter.
        idx = np.linspace(0, len(poly), n_outline, endpoint=False).astype(int)
        pts = poly[idx] + rng.normal(0, 0.6, size=(n_outline, 2)) + np.array([x0, y0])
        pts = np.rint(pts).astype(int)
        pts[:, 0] = np.clip(pts[:, 0], x0, x0 + pw - 1)
        pts[:, 1] = np.clip(pts[:, 1], y0, y0 + ph - 1)
        regions.append(
            {"points": [{"x": int(px), "y": int(py)} for px, py in pts], "annotation": {}, "regionType": "freehand"}
        )
    grey = (np.clip(frame, 0, 1) * 255).astype(np.uint8)
    im = Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2), "RGB")
    _burn_text(ImageDraw.Draw(im), rng, dual)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return buf.getvalue(), regions


# ---------------------------------------------------------------------------------------------
# Clinical fields in DDTI's own vocabulary, spelling variants included on purpose.


def _pick(rng, options, p=None):
    return options[int(rng.choice(len(options), p=p))]


def _clinical_fields(rng: np.random.Generator, composition: str, echo: str, margins: str, calc: str) -> dict:
    """A case's clinical XML fields around its TI-RADS descriptors: an age and a sex drawn, and
    DDTI's many empty fields (a fifth of each; the label rules never read them)."""
    fields = {
        "age": str(int(rng.integers(16, 88))),
        "sex": _pick(rng, ["F", "M", "u", ""], [0.7, 0.15, 0.05, 0.1]),
        "composition": composition,
        "echogenicity": echo,
        "margins": margins,
        "calcifications": calc,
    }
    for k in ("age", "composition", "echogenicity", "calcifications"):
        if rng.uniform() < 0.2:
            fields[k] = ""
    return fields


def _clinical_realistic(rng: np.random.Generator, look: _Look) -> dict:
    """The report fields of a realistic phantom: what was drawn, whatever the class."""
    composition = {
        "": _pick(rng, ["solid", "dense"], [0.9, 0.1]),
        "mixed": "predominantly solid",
        "cystic": _pick(rng, ["predominantly cystic", "cystic"], [0.8, 0.2]),
        "spongiform": "spongiform",
    }[look.cystic]
    echo = {
        "marked": "marked hypoechogenicity",
        "hypo": "hypoechogenicity",
        "iso": "isoechogenicity",
        "hyper": "hyperechogenicity",
    }[look.echo_class]
    margins = {
        "smooth": _pick(rng, ["well defined", "well defined smooth"]),
        "ill-defined": _pick(rng, ["ill defined", "ill- defined"]),
        "lobulated": _pick(rng, ["microlobulated", "macrolobulated"]),
        "spiculated": "spiculated",
    }[look.margin]
    if look.micro:
        calc = _pick(rng, ["microcalcifications", "microcalcification"])
    elif look.macro:
        calc = _pick(rng, ["macrocalcifications", "macrocalcification"])
    else:
        calc = "non"
    return _clinical_fields(rng, composition, echo, margins, calc)


def _clinical(rng: np.random.Generator, look: _Look) -> dict:
    if look.difficulty == "realistic":
        return _clinical_realistic(rng, look)
    m = look.malignant
    if look.cystic == "spongiform":
        composition = "spongiform"
    elif look.cystic == "cystic":
        composition = _pick(rng, ["predominantly cystic", "cystic"], [0.8, 0.2])
    else:
        composition = _pick(
            rng, ["solid", "predominantly solid", "dense"], [0.7, 0.2, 0.1] if not m else [0.8, 0.2, 0.0]
        )
    echo = (
        "marked hypoechogenicity"
        if look.echo < 0.32
        else "hypoechogenicity"
        if look.echo < 0.88
        else "isoechogenicity"
        if look.echo < 1.1
        else "hyperechogenicity"
    )
    if m:
        margins = _pick(rng, ["ill defined", "ill- defined", "microlobulated", "spiculated", "macrolobulated"])
        calc = _pick(rng, ["microcalcifications", "microcalcification"]) if look.micro else "non"
    else:
        margins = _pick(rng, ["well defined", "well defined smooth"])
        calc = _pick(rng, ["macrocalcifications", "macrocalcification"]) if look.macro else "non"
    return _clinical_fields(rng, composition, echo, margins, calc)


# The realistic phantoms' cue model. The cues are those TI-RADS scores (Kwak et al., Radiology
# 2011; ACR TI-RADS, Tessler et al., JACR 2017): solid composition, hypo- or markedly
# hypoechoic solid part, lobulated or irregular (here "spiculated") margin, taller-than-wide
# shape, punctate echogenic foci; plus features that lean benign (spongiform or cystic
# content, a thin halo, comet-tail colloid) and one that hardly discriminates
# (macrocalcification), and an ill-defined margin, which ACR TI-RADS does not score.
#
# A nodule's cues are drawn independently of each other from the table of its class's
# *typical* appearance below -- except for a look-alike (_LOOKALIKE: 15 % of cancers, 10 % of
# benign nodules), whose cues come from the other class's table. The look-alikes stand for
# what makes ultrasound miss or over-call in the clinic: follicular-pattern cancers (follicular
# carcinoma, the follicular variant of papillary carcinoma) are often iso- or hyperechoic,
# smooth and free of microcalcifications, and some benign nodules (fibrotic, involuting after
# a haemorrhage, thyroiditis) are hypoechoic and irregular.
#
# Over both components, the share of cancers vs benign nodules showing each cue is: solid
# 84 % vs 41 %, hypo- or markedly hypoechoic 82 % vs 18 % (marked: 21 % vs 3 %), lobulated or
# irregular margin 52 % vs 13 %, taller than wide 39 % vs 8 %, microcalcifications 51 % vs 9 %
# -- odds ratios of 7 to 11 for composition, margin, shape and microcalcifications, the order
# those studies report, and 20 for hypoechogenicity (see below). Every suspicious cue is
# missing from a good share of cancers and present in some benign nodules, so no single cue
# decides the class. Spongiform 3 % vs 16 %, halo 12 %
# vs 32 %, comet tail 5 % vs 17 %, macrocalcification 11 % vs 8 %. (Hypoechogenicity is made
# somewhat more specific than in clinical series, where a third or more of benign nodules are
# hypoechoic: at 48 px it is the cue a small CNN picks up first, and this sets the AUC's level.)
#
# An observer reading every cue perfectly would rank the classes with ROC-AUC ~0.87 (the
# likelihood ratio of this mixture; ~0.84 against labels with 4 % noise); the paper CNN at
# compare's quick settings, which barely sees margins or the aspect ratio in a squashed 48 px
# ROI, gets 0.73-0.86 over generator seeds 0-2 and crop modes none/rfc/bfc. Why a mixture
# rather than more overlap of every cue: with independent, weakly separated cues the CNN must
# add up many small hints and stayed at ~0.74 while the ideal observer reached 0.92; with
# coherent typical appearances it learns the typical cases and the look-alikes set the AUC.
_CUES = {
    # cue: (typical cancer, typical benign nodule); composition "" is solid
    "composition": (
        {"": 0.93, "mixed": 0.07, "cystic": 0.00, "spongiform": 0.00},
        {"": 0.35, "mixed": 0.30, "cystic": 0.17, "spongiform": 0.18},
    ),
    "echo": (
        {"marked": 0.25, "hypo": 0.70, "iso": 0.05, "hyper": 0.00},
        {"marked": 0.00, "hypo": 0.10, "iso": 0.65, "hyper": 0.25},
    ),
    "margin": (
        {"smooth": 0.20, "ill-defined": 0.20, "lobulated": 0.25, "spiculated": 0.35},
        {"smooth": 0.75, "ill-defined": 0.17, "lobulated": 0.06, "spiculated": 0.02},
    ),
    "taller": (0.45, 0.04),
    "micro": (0.60, 0.03),
    "comet": (0.03, 0.18),
    "macro": (0.12, 0.08),
    "halo": (0.08, 0.35),
}
# P(a nodule of this class looks like a typical nodule of the other class): (cancer, benign).
_LOOKALIKE = (0.15, 0.10)


def _look_realistic(rng: np.random.Generator, malignant: bool) -> _Look:
    """One nodule's cues, each drawn from the probabilities in ``_CUES`` of its class, or of
    the other class for a look-alike (``look.lookalike``)."""
    lookalike = bool(rng.uniform() < _LOOKALIKE[0 if malignant else 1])
    side = 0 if malignant != lookalike else 1
    cat = lambda name: _pick(rng, list(_CUES[name][side]), list(_CUES[name][side].values()))  # noqa: E731
    flag = lambda name: bool(rng.uniform() < _CUES[name][side])  # noqa: E731
    cystic, echo_class, margin = cat("composition"), cat("echo"), cat("margin")
    taller, micro, comet, macro, halo = flag("taller"), flag("micro"), flag("comet"), flag("macro"), flag("halo")
    # Size and internal texture do not depend on the class: the ROI is resized anyway, and a
    # size cue would leak the label through the speckle grain's scale.
    return _Look(
        malignant=malignant,
        echo=float(rng.uniform(*_ECHO_RANGES[echo_class])),
        aspect=float(rng.uniform(1.05, 1.4) if taller else rng.uniform(0.6, 0.95)),
        size=float(rng.uniform(18, 45)),
        halo=halo,
        cystic=cystic,
        micro=int(rng.integers(5, 16)) if micro else 0,
        macro=macro,
        difficulty="realistic",
        echo_class=echo_class,
        margin=margin,
        taller=taller,
        comet=int(rng.integers(1, 5)) if comet else 0,
        heterogeneity=float(rng.uniform(0.03, 0.08)),
        lookalike=lookalike,
    )


def _look(rng: np.random.Generator, malignant: bool, difficulty: str = "easy") -> _Look:
    if difficulty == "realistic":
        return _look_realistic(rng, malignant)
    # No single cue separates the classes, as in the clinic: some malignant nodules are
    # isoechoic or wider than tall, some benign ones hypoechoic; the combination decides.
    if malignant:
        echo = _pick(rng, [rng.uniform(0.22, 0.30), rng.uniform(0.35, 0.6), rng.uniform(0.8, 1.0)], [0.2, 0.65, 0.15])
        aspect = rng.uniform(1.1, 1.5) if rng.uniform() < 0.8 else rng.uniform(0.75, 1.0)
        return _Look(
            True,
            echo,
            aspect,
            rng.uniform(18, 34),
            False,
            "",
            int(rng.integers(4, 14)) if rng.uniform() < 0.7 else 0,
            False,
        )
    cystic = _pick(rng, ["", "cystic", "spongiform"], [0.6, 0.2, 0.2])
    echo = rng.uniform(0.95, 1.3) if rng.uniform() < 0.8 else rng.uniform(0.55, 0.85)
    return _Look(
        False,
        echo,
        rng.uniform(0.55, 0.85),
        rng.uniform(24, 50),
        rng.uniform() < 0.4,
        cystic,
        0,
        cystic == "" and rng.uniform() < 0.2,
    )


def _case_xml(number: str, fields: dict, tirads: str, marks: list[tuple[int, str]], report_eco: str = "") -> bytes:
    root = etree.Element("case")
    etree.SubElement(root, "number").text = number
    for k in ("age", "sex", "composition", "echogenicity", "margins", "calcifications"):
        etree.SubElement(root, k).text = fields[k]
    etree.SubElement(root, "tirads").text = tirads
    etree.SubElement(root, "reportbacaf").text = ""
    etree.SubElement(root, "reporteco").text = report_eco
    for index, svg in marks:
        mark = etree.SubElement(root, "mark")
        etree.SubElement(mark, "image").text = str(index)
        etree.SubElement(mark, "svg").text = svg
    # An explicit "" makes lxml write <a></a> like DDTI does, not <a/>.
    return etree.tostring(root, encoding="utf-8")


def _svg_text(regions: list) -> str:
    return json.dumps(regions, separators=(", ", ": "))


# ---------------------------------------------------------------------------------------------


def write_synthetic_ddti(
    out_dir: str | Path,
    n_cases: int = 40,
    seed: int = 0,
    label_noise: float = 0.0,
    warts: bool = False,
    malignant_fraction: float = 0.6,
    unlabelled_fraction: float = 0.1,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    difficulty: str = "realistic",
) -> Path:
    """Write ``n_cases`` phantom cases to ``out_dir/xml`` + ``out_dir/raw_jpg``; return ``out_dir``.

    Deterministic: the same arguments give byte-identical files. ``label_noise`` is the
    probability that a labelled case's recorded TI-RADS comes from the other class;
    ``warts`` injects each DDTI wart once (needs ``MIN_CASES_WITH_WARTS`` cases).
    (Byte-identical for a given Pillow/libjpeg build; another JPEG encoder may differ in the
    last bits, and so would the data fingerprint.)
    ``overwrite`` replaces an earlier output in ``out_dir`` (only its xml/, raw_jpg/ and
    ``synthetic.json``); otherwise a non-empty output folder is an error.
    ``difficulty``: ``"realistic"`` draws each TI-RADS cue with class-dependent probabilities
    and images it through a speckle-forming scanner model, so the classes overlap as in the
    clinic; ``"easy"`` draws the strong, mostly class-decided cues of generator version 1
    (byte-identical to it), for tests that need a signal any model learns.
    """
    if difficulty not in DIFFICULTIES:
        raise HfcnError(f"difficulty must be one of {', '.join(DIFFICULTIES)}, got {difficulty!r}")
    if n_cases < 1:
        raise HfcnError(f"n_cases must be >= 1, got {n_cases}")
    if warts and n_cases < MIN_CASES_WITH_WARTS:
        raise HfcnError(f"warts=True needs at least {MIN_CASES_WITH_WARTS} cases, got {n_cases}")
    for name, p in (
        ("label_noise", label_noise),
        ("malignant_fraction", malignant_fraction),
        ("unlabelled_fraction", unlabelled_fraction),
    ):
        if not 0.0 <= p <= 1.0:
            raise HfcnError(f"{name} must be in [0, 1], got {p}")
    out = Path(out_dir).expanduser()
    xml_dir, img_dir = out / "xml", out / "raw_jpg"
    existing = [p for p in (xml_dir, img_dir, out / SYNTHETIC_MANIFEST) if p.exists()]
    if existing:
        if not overwrite:
            raise HfcnError(
                f"{out} already holds a dataset ({', '.join(p.name for p in existing)})",
                hint="choose another --out, or pass --force / overwrite=True to replace it",
            )
        for p in existing:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    xml_dir.mkdir(parents=True, exist_ok=True)
    img_dir.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(seed)
    # Exact class counts (not coin flips) so that a small phantom set still has both classes.
    n_mal = int(round(n_cases * malignant_fraction))
    if n_cases >= 2 and 0 < malignant_fraction < 1:
        n_mal = min(max(n_mal, 1), n_cases - 1)
    malignant = np.zeros(n_cases, dtype=bool)
    malignant[rng.permutation(n_cases)[:n_mal]] = True

    # Wart targets: fixed positions counted from the end, so they do not depend on the seed.
    plan: dict[str, int] = {}
    if warts:
        names = [
            "truncated-salvage",
            "truncated-skip",
            "empty-outline",
            "duplicate-outline",
            "duplicate-cross",
            "duplicate-within",
            "missing-image",
            "unreadable-image",
            "malformed-xml",
        ]
        plan = {name: n_cases - 1 - i for i, name in enumerate(names)}
    target = {v: k for k, v in plan.items()}

    truth = {
        "generator": "hfcn_bench.data.synthetic",
        "version": GENERATOR_VERSION,
        "difficulty": difficulty,
        "seed": seed,
        "n_cases": n_cases,
        "label_noise": label_noise,
        "malignant_fraction": malignant_fraction,
        "unlabelled_fraction": unlabelled_fraction,
        "warts": [],
        "cases": {},
    }
    first_jpeg: bytes | None = None
    for i in range(n_cases):
        number = str(i + 1)
        crng = np.random.default_rng([seed, i])  # per case: a case does not depend on the others
        look = _look(crng, bool(malignant[i]), difficulty)
        fields = _clinical(crng, look)
        unlabelled = crng.uniform() < unlabelled_fraction
        flipped = (not unlabelled) and crng.uniform() < label_noise
        recorded_malignant = look.malignant != flipped
        tirads = "" if unlabelled else _pick(crng, _MALIGNANT_TIRADS if recorded_malignant else _BENIGN_TIRADS)
        n_frames = int(_pick(crng, [1, 2, 3], [0.65, 0.25, 0.10]))
        wart = target.get(i)
        if wart in ("duplicate-within", "empty-outline", "missing-image", "unreadable-image"):
            n_frames = max(n_frames, 2)  # keep one good frame, so only the wart's frame is lost
        marks, frame_info = [], []
        marks_jpeg_1 = None  # frame 1's bytes, for the within-case duplicate of frame 2
        for k in range(1, n_frames + 1):
            dual = crng.uniform() < 0.35
            n_outline = int(crng.integers(28, 70))
            if wart == "truncated-salvage" and k == 1:
                dual, n_outline = True, 80  # two long outlines: > 2,500 characters of JSON
            if wart == "truncated-skip" and k == 1:
                dual = False
            jpeg, regions = _render_frame(crng, look, dual, n_outline)
            if crng.uniform() < 0.06:
                # DDTI marks findings with 2-point arrows; they are not outlines.
                ax, ay = regions[0]["points"][0]["x"], regions[0]["points"][0]["y"]
                regions.append(
                    {
                        "points": [{"x": ax - 30, "y": ay - 20}, {"x": ax - 4, "y": ay - 3}],
                        "annotation": {},
                        "regionType": "arrow",
                    }
                )
            svg = _svg_text(regions)
            write_image: bytes | None = jpeg
            if k == 1 and wart == "truncated-salvage":
                svg = svg[:_TRUNCATE_AT]
                truth["warts"].append({"kind": "truncated-outline", "case": number, "frame": k, "salvageable": True})
            elif k == 1 and wart == "truncated-skip":
                second = svg.index('{"x"', svg.index('{"x"') + 1)
                svg = svg[: second + 8]  # cut inside the second point: nothing left to bound a nodule
                truth["warts"].append({"kind": "truncated-outline", "case": number, "frame": k, "salvageable": False})
            elif k == 2 and wart == "empty-outline":
                svg = ""
                truth["warts"].append({"kind": "empty-outline", "case": number, "frame": k})
            elif k == 1 and wart == "duplicate-outline":
                svg = _svg_text([regions[0], regions[0]] + regions[1:])
                truth["warts"].append({"kind": "duplicate-outline", "case": number, "frame": k})
            elif k == 1 and wart == "duplicate-cross" and first_jpeg is not None:
                write_image = first_jpeg
                truth["warts"].append({"kind": "duplicate-image", "case": number, "frame": k, "of": "1_1"})
            elif k == 2 and wart == "duplicate-within":
                write_image = marks_jpeg_1
                truth["warts"].append({"kind": "duplicate-image", "case": number, "frame": k, "of": f"{number}_1"})
            elif k == 2 and wart == "missing-image":
                write_image = None
                truth["warts"].append({"kind": "missing-image", "case": number, "frame": k})
            elif k == 2 and wart == "unreadable-image":
                write_image = b"\xff\xd8\xff\xe0 this is not a JPEG " + bytes(range(64))
                truth["warts"].append({"kind": "unreadable-image", "case": number, "frame": k})
            if k == 1:
                marks_jpeg_1 = write_image
            if i == 0 and k == 1:
                first_jpeg = jpeg
            if write_image is not None:
                (img_dir / f"{number}_{k}.jpg").write_bytes(write_image)
            marks.append((k, svg))
            frame_info.append(
                {
                    "frame": k,
                    "dual_view": dual,
                    "outlines": len(regions) - sum(r["regionType"] == "arrow" for r in regions),
                }
            )
        if difficulty == "realistic":
            eco = "taller than wide" if look.taller and crng.uniform() < 0.3 else ""
        else:
            eco = "taller than wide" if look.malignant and crng.uniform() < 0.1 else ""
        data = _case_xml(number, fields, tirads, marks, eco)
        if wart == "malformed-xml":
            data = data.replace(b"</tirads>", b"</tirad>", 1)
            truth["warts"].append({"kind": "malformed-xml", "case": number})
        (xml_dir / f"{number}.xml").write_bytes(data)
        truth["cases"][number] = {
            "true_class": "malignant" if look.malignant else "benign",
            "tirads": tirads,
            "flipped": bool(flipped),
            "frames": frame_info,
        }
        if difficulty == "realistic":
            truth["cases"][number]["cues"] = {
                "composition": look.cystic or "solid",
                "echogenicity": look.echo_class,
                "margin": look.margin,
                "taller_than_wide": look.taller,
                "microcalcifications": look.micro,
                "comet_tail": look.comet,
                "macrocalcification": look.macro,
                "halo": look.halo,
                "lookalike": look.lookalike,
            }
        if progress:
            progress(i + 1, n_cases)
    (out / SYNTHETIC_MANIFEST).write_text(json.dumps(truth, indent=1) + "\n", encoding="utf-8")
    return out


def ensure_synthetic(
    out_dir: str | Path = DEFAULT_SYNTHETIC_DIR,
    n_cases: int = DEFAULT_SYNTHETIC_CASES,
    seed: int = 0,
    label_noise: float = DEFAULT_LABEL_NOISE,
    malignant_fraction: float = 0.6,
    unlabelled_fraction: float = 0.1,
    progress: Callable[[int, int], None] | None = None,
    difficulty: str = "realistic",
) -> Path:
    """The default phantom dataset: reuse ``out_dir`` if it holds phantoms made with these
    arguments, otherwise (re)generate it. Only an earlier phantom output is ever replaced;
    a folder holding anything else is an error, so real data cannot be overwritten.

    The recorded arguments include the generator's ``version`` and the ``difficulty``, so a
    set written by an older generator (version 1 recorded neither) is regenerated."""
    out = Path(out_dir).expanduser()
    wanted = {
        "generator": "hfcn_bench.data.synthetic",
        "version": GENERATOR_VERSION,
        "difficulty": difficulty,
        "seed": seed,
        "n_cases": n_cases,
        "label_noise": label_noise,
        "malignant_fraction": malignant_fraction,
        "unlabelled_fraction": unlabelled_fraction,
        "warts": [],
    }
    args = dict(
        label_noise=label_noise,
        malignant_fraction=malignant_fraction,
        unlabelled_fraction=unlabelled_fraction,
        progress=progress,
        difficulty=difficulty,
    )
    manifest = out / SYNTHETIC_MANIFEST
    if manifest.is_file():
        try:
            truth = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            truth = {}
        if {k: truth.get(k) for k in wanted} == wanted and (out / "xml").is_dir():
            return out
        return write_synthetic_ddti(out, n_cases, seed, overwrite=True, **args)
    if out.exists() and any(out.iterdir()):
        raise HfcnError(
            f"{out} is not empty and holds no phantoms ({SYNTHETIC_MANIFEST} missing)",
            hint="point at an empty or new folder for the synthetic data",
        )
    return write_synthetic_ddti(out, n_cases, seed, **args)
