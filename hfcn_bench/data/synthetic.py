"""Synthetic thyroid ultrasound phantoms written in DDTI format (case XML + JPEG frames).

The phantoms are the embedded default dataset and the test data: they go through the very
reader DDTI goes through (``ddti.load_ddti``), so everything downstream can run and be
tested without the real data, which is not ours to redistribute.

What the generator draws, per frame (560x360, grey content in RGB like DDTI):
  * a linear-probe scan area with tissue layers (skin, strap muscles, thyroid, deep tissue),
    a carotid artery, and multiplicative Rayleigh speckle (fully developed speckle has
    Rayleigh-distributed amplitude), plus burned-in scanner text on the right as in DDTI;
  * one nodule, whose appearance follows the sonographic cues radiologists score in
    TI-RADS (Kwak et al., Radiology 2011; ACR TI-RADS 2017):
      - benign: iso- or hyperechoic, smooth well-defined oval, wider than tall, sometimes
        a thin hypoechoic halo, cystic/spongiform spaces with posterior enhancement, or a
        macrocalcification with a posterior shadow;
      - malignant: hypo- or markedly hypoechoic, irregular/spiculated ill-defined margin,
        taller than wide, punctate bright microcalcifications.
  * some frames are dual-view (two panes side by side, one outline each), some marks carry an
    ``arrow`` region, and clinical fields use DDTI's vocabulary with its spelling variants.

Labels are written as TI-RADS values consistent with the class (benign 2/3, malignant
4a-5); ``label_noise`` flips the *recorded* class of a labelled case with that probability
(the image keeps its true cues), and ``unlabelled_fraction`` leaves the TI-RADS empty.
``synthetic.json`` next to ``xml/`` records the truth (true class, flips, injected warts).

``warts=True`` injects each DDTI wart once: truncated ``<svg>`` JSON (one salvageable, one
not), an empty ``<svg>``, a repeated outline, byte-identical images (across cases and within
one), a missing image, an unreadable image and a malformed XML.
"""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from lxml import etree
from PIL import Image, ImageDraw

from ..errors import HfcnError

__all__ = [
    "write_synthetic_ddti",
    "ensure_synthetic",
    "DEFAULT_SYNTHETIC_DIR",
    "DEFAULT_SYNTHETIC_CASES",
    "FRAME_SIZE",
    "SYNTHETIC_MANIFEST",
    "MIN_CASES_WITH_WARTS",
]

FRAME_SIZE = (560, 360)  # width, height: the size of every DDTI frame
# The embedded default dataset: relative to the working directory, like the CLI's --out, so
# that from a checkout it lands in the git-ignored data/synthetic/.
DEFAULT_SYNTHETIC_DIR = Path("data") / "synthetic"
DEFAULT_SYNTHETIC_CASES = 200
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
    cystic: str  # "", "cystic" or "spongiform"
    micro: int  # number of microcalcifications
    macro: bool


def _draw_pane(rng: np.random.Generator, look: _Look, w: int, h: int):
    """Render one scan pane (h, w) in [0, 1] and return it with the nodule outline (pane px)."""
    y = np.arange(h, dtype=np.float32)[:, None] / h
    x = np.arange(w, dtype=np.float32)[None, :] / w
    wob = lambda amp, f: amp * np.sin(2 * np.pi * (f * x + rng.uniform()))  # noqa: E731
    top = 0.20 + wob(0.02, 0.7)
    bottom = 0.80 + wob(0.03, 0.5)
    skin = 0.05 + wob(0.005, 1.3)
    e = np.where(y < skin, 0.85, 0.40).astype(np.float32)
    muscle = (y >= skin + 0.04) & (y < top)
    e = np.where(muscle, 0.30 + 0.08 * np.sin(2 * np.pi * y * 38 + wob(2.0, 0.4)), e)
    thyroid_level = rng.uniform(0.55, 0.68)
    thyroid = (y >= top) & (y < bottom)
    e = np.where(thyroid, thyroid_level * (1 + wob(0.05, 1.1)), e)
    e = np.where(y >= bottom, 0.22, e).astype(np.float32)
    e *= np.exp(-0.35 * y)  # attenuation the scanner's gain does not fully undo

    # Carotid artery beside the thyroid lobe: anechoic lumen, bright wall.
    cx = (0.9 if rng.uniform() < 0.5 else 0.1) * w
    cy, cr = 0.55 * h, rng.uniform(0.06, 0.08) * h
    d = np.hypot(np.arange(w)[None, :] - cx, np.arange(h)[:, None] - cy)
    e = np.where(d < cr, 0.03, np.where(d < cr + 2.5, 0.9, e)).astype(np.float32)

    # The nodule. Its size is defined for a full-depth pane and scaled to this one; the
    # second view of a case differs a little in size and shape, like a second plane would.
    scale = h / 304.0
    a = look.size * scale * rng.uniform(0.9, 1.1)
    b = a * look.aspect * rng.uniform(0.93, 1.07)
    b = min(b, 0.26 * h)
    a = min(a, 0.28 * w)
    poly = _nodule_polygon(rng, look.malignant, a, b)
    px = rng.uniform(0.40, 0.60) * w
    py = (0.50 + rng.uniform(-0.03, 0.03)) * h
    poly = poly + np.array([px, py])
    poly[:, 0] = np.clip(poly[:, 0], 2, w - 3)
    poly[:, 1] = np.clip(poly[:, 1], 2, h - 3)
    # Everything about the nodule happens in a window around it that runs down to the
    # bottom of the pane (posterior shadows/enhancement); this keeps a frame at ~10 ms.
    wx0, wx1 = max(int(poly[:, 0].min()) - 12, 0), min(int(poly[:, 0].max()) + 13, w)
    wy0 = max(int(poly[:, 1].min()) - 12, 0)
    ww, wh = wx1 - wx0, h - wy0
    mask_img = Image.new("L", (ww, wh), 0)
    ImageDraw.Draw(mask_img).polygon([(px_ - wx0, py_ - wy0) for px_, py_ in poly.tolist()], fill=255)
    hard = np.asarray(mask_img, dtype=np.float32) / 255.0
    # Ill-defined margins: a malignant nodule fades into the parenchyma over several pixels.
    soft = np.clip(_box_blur(hard, 3 if look.malignant else 1), 0, 1)
    gx = np.arange(wx0, wx1, dtype=np.float32)[None, :]
    gy = np.arange(wy0, h, dtype=np.float32)[:, None]
    sub = e[wy0:, wx0:wx1]

    inside = np.full_like(sub, thyroid_level * look.echo)
    if look.cystic:
        n_cyst, r_lo, r_hi = (rng.integers(1, 3), 0.25, 0.5) if look.cystic == "cystic" else (rng.integers(8, 18), 0.06, 0.12)
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
    img = 0.9 * img ** 0.9

    # Microcalcifications: punctate echogenic foci (< 1 mm), drawn after the speckle so they
    # stay bright. Only where the nodule is solid (the hard mask, away from the margin).
    if look.micro:
        ys, xs = np.nonzero(_box_blur(hard, 4) > 0.99)
        ys, xs = ys + wy0, xs + wx0
        if xs.size:
            for i in rng.choice(xs.size, size=min(look.micro, xs.size), replace=False):
                rr = rng.uniform(0.8, 1.6)
                yy, xx = np.ogrid[-2:3, -2:3]
                dot = (xx ** 2 + yy ** 2) <= rr ** 2
                y0, x0 = ys[i] - 2, xs[i] - 2
                if 0 <= y0 and y0 + 5 <= h and 0 <= x0 and x0 + 5 <= w:
                    patch = img[y0:y0 + 5, x0:x0 + 5]
                    patch[dot] = rng.uniform(0.9, 1.0)
    return img.astype(np.float32), poly


def _burn_text(draw: ImageDraw.ImageDraw, rng: np.random.Generator, dual: bool) -> None:
    """Scanner annotations like DDTI's (probe, depth, frame rate, side label). Nothing here
    depends on the label: the phantoms must not leak it the way some DDTI frames do."""
    lines = ["P100", "12L6", f"{rng.choice([4.0, 5.0, 6.0, 9.0]):.1f}", f"{rng.integers(18, 40)}fps",
             f"DR{rng.integers(55, 75)}", "2DG", str(rng.integers(60, 95))]
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
        pane, poly = _draw_pane(rng, look, pw, ph)
        frame[y0:y0 + ph, x0:x0 + pw] = pane
        # A radiologist's trace: fewer vertices than the rendered polygon, a pixel of jitter.
        idx = np.linspace(0, len(poly), n_outline, endpoint=False).astype(int)
        pts = poly[idx] + rng.normal(0, 0.6, size=(n_outline, 2)) + np.array([x0, y0])
        pts = np.rint(pts).astype(int)
        pts[:, 0] = np.clip(pts[:, 0], x0, x0 + pw - 1)
        pts[:, 1] = np.clip(pts[:, 1], y0, y0 + ph - 1)
        regions.append({"points": [{"x": int(px), "y": int(py)} for px, py in pts], "annotation": {},
                        "regionType": "freehand"})
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


def _clinical(rng: np.random.Generator, look: _Look) -> dict:
    m = look.malignant
    if look.cystic == "spongiform":
        composition = "spongiform"
    elif look.cystic == "cystic":
        composition = _pick(rng, ["predominantly cystic", "cystic"], [0.8, 0.2])
    else:
        composition = _pick(rng, ["solid", "predominantly solid", "dense"], [0.7, 0.2, 0.1] if not m else [0.8, 0.2, 0.0])
    echo = ("marked hypoechogenicity" if look.echo < 0.32 else "hypoechogenicity" if look.echo < 0.88
            else "isoechogenicity" if look.echo < 1.1 else "hyperechogenicity")
    if m:
        margins = _pick(rng, ["ill defined", "ill- defined", "microlobulated", "spiculated", "macrolobulated"])
        calc = _pick(rng, ["microcalcifications", "microcalcification"]) if look.micro else "non"
    else:
        margins = _pick(rng, ["well defined", "well defined smooth"])
        calc = _pick(rng, ["macrocalcifications", "macrocalcification"]) if look.macro else "non"
    fields = {
        "age": str(int(rng.integers(16, 88))),
        "sex": _pick(rng, ["F", "M", "u", ""], [0.7, 0.15, 0.05, 0.1]),
        "composition": composition,
        "echogenicity": echo,
        "margins": margins,
        "calcifications": calc,
    }
    # DDTI leaves many fields empty; so do the phantoms (the label rules never read them).
    for k in ("age", "composition", "echogenicity", "calcifications"):
        if rng.uniform() < 0.2:
            fields[k] = ""
    return fields


def _look(rng: np.random.Generator, malignant: bool) -> _Look:
    # No single cue separates the classes, as in the clinic: some malignant nodules are
    # isoechoic or wider than tall, some benign ones hypoechoic; the combination decides.
    if malignant:
        echo = _pick(rng, [rng.uniform(0.22, 0.30), rng.uniform(0.35, 0.6), rng.uniform(0.8, 1.0)], [0.2, 0.65, 0.15])
        aspect = rng.uniform(1.1, 1.5) if rng.uniform() < 0.8 else rng.uniform(0.75, 1.0)
        return _Look(True, echo, aspect, rng.uniform(18, 34), False, "",
                     int(rng.integers(4, 14)) if rng.uniform() < 0.7 else 0, False)
    cystic = _pick(rng, ["", "cystic", "spongiform"], [0.6, 0.2, 0.2])
    echo = rng.uniform(0.95, 1.3) if rng.uniform() < 0.8 else rng.uniform(0.55, 0.85)
    return _Look(False, echo, rng.uniform(0.55, 0.85), rng.uniform(24, 50),
                 rng.uniform() < 0.4, cystic, 0, cystic == "" and rng.uniform() < 0.2)


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
) -> Path:
    """Write ``n_cases`` phantom cases to ``out_dir/xml`` + ``out_dir/raw_jpg``; return ``out_dir``.

    Deterministic: the same arguments give byte-identical files. ``label_noise`` is the
    probability that a labelled case's recorded TI-RADS comes from the other class;
    ``warts`` injects each DDTI wart once (needs ``MIN_CASES_WITH_WARTS`` cases).
    (Byte-identical for a given Pillow/libjpeg build; another JPEG encoder may differ in the
    last bits, and so would the data fingerprint.)
    ``overwrite`` replaces an earlier output in ``out_dir`` (only its xml/, raw_jpg/ and
    ``synthetic.json``); otherwise a non-empty output folder is an error.
    """
    if n_cases < 1:
        raise HfcnError(f"n_cases must be >= 1, got {n_cases}")
    if warts and n_cases < MIN_CASES_WITH_WARTS:
        raise HfcnError(f"warts=True needs at least {MIN_CASES_WITH_WARTS} cases, got {n_cases}")
    for name, p in (("label_noise", label_noise), ("malignant_fraction", malignant_fraction),
                    ("unlabelled_fraction", unlabelled_fraction)):
        if not 0.0 <= p <= 1.0:
            raise HfcnError(f"{name} must be in [0, 1], got {p}")
    out = Path(out_dir).expanduser()
    xml_dir, img_dir = out / "xml", out / "raw_jpg"
    existing = [p for p in (xml_dir, img_dir, out / SYNTHETIC_MANIFEST) if p.exists()]
    if existing:
        if not overwrite:
            raise HfcnError(f"{out} already holds a dataset ({', '.join(p.name for p in existing)})",
                            hint="choose another --out, or pass --force / overwrite=True to replace it")
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
        names = ["truncated-salvage", "truncated-skip", "empty-outline", "duplicate-outline", "duplicate-cross",
                 "duplicate-within", "missing-image", "unreadable-image", "malformed-xml"]
        plan = {name: n_cases - 1 - i for i, name in enumerate(names)}
    target = {v: k for k, v in plan.items()}

    truth = {"generator": "hfcn_bench.data.synthetic", "seed": seed, "n_cases": n_cases, "label_noise": label_noise,
             "malignant_fraction": malignant_fraction, "unlabelled_fraction": unlabelled_fraction, "warts": [],
             "cases": {}}
    first_jpeg: bytes | None = None
    for i in range(n_cases):
        number = str(i + 1)
        crng = np.random.default_rng([seed, i])  # per case: a case does not depend on the others
        look = _look(crng, bool(malignant[i]))
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
                regions.append({"points": [{"x": ax - 30, "y": ay - 20}, {"x": ax - 4, "y": ay - 3}],
                                "annotation": {}, "regionType": "arrow"})
            svg = _svg_text(regions)
            write_image: bytes | None = jpeg
            if k == 1 and wart == "truncated-salvage":
                svg = svg[:_TRUNCATE_AT]
                truth["warts"].append({"kind": "truncated-outline", "case": number, "frame": k, "salvageable": True})
            elif k == 1 and wart == "truncated-skip":
                second = svg.index('{"x"', svg.index('{"x"') + 1)
                svg = svg[:second + 8]  # cut inside the second point: nothing left to bound a nodule
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
            frame_info.append({"frame": k, "dual_view": dual, "outlines": len(regions) - sum(
                r["regionType"] == "arrow" for r in regions)})
        eco = "taller than wide" if look.malignant and crng.uniform() < 0.1 else ""
        data = _case_xml(number, fields, tirads, marks, eco)
        if wart == "malformed-xml":
            data = data.replace(b"</tirads>", b"</tirad>", 1)
            truth["warts"].append({"kind": "malformed-xml", "case": number})
        (xml_dir / f"{number}.xml").write_bytes(data)
        truth["cases"][number] = {"true_class": "malignant" if look.malignant else "benign", "tirads": tirads,
                                  "flipped": bool(flipped), "frames": frame_info}
        if progress:
            progress(i + 1, n_cases)
    (out / SYNTHETIC_MANIFEST).write_text(json.dumps(truth, indent=1) + "\n", encoding="utf-8")
    return out


def ensure_synthetic(
    out_dir: str | Path = DEFAULT_SYNTHETIC_DIR,
    n_cases: int = DEFAULT_SYNTHETIC_CASES,
    seed: int = 0,
    label_noise: float = 0.0,
    malignant_fraction: float = 0.6,
    unlabelled_fraction: float = 0.1,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """The default phantom dataset: reuse ``out_dir`` if it holds phantoms made with these
    arguments, otherwise (re)generate it. Only an earlier phantom output is ever replaced;
    a folder holding anything else is an error, so real data cannot be overwritten."""
    out = Path(out_dir).expanduser()
    wanted = {"generator": "hfcn_bench.data.synthetic", "seed": seed, "n_cases": n_cases, "label_noise": label_noise,
              "malignant_fraction": malignant_fraction, "unlabelled_fraction": unlabelled_fraction, "warts": []}
    args = dict(label_noise=label_noise, malignant_fraction=malignant_fraction,
                unlabelled_fraction=unlabelled_fraction, progress=progress)
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
        raise HfcnError(f"{out} is not empty and holds no phantoms ({SYNTHETIC_MANIFEST} missing)",
                        hint="point at an empty or new folder for the synthetic data")
    return write_synthetic_ddti(out, n_cases, seed, **args)
