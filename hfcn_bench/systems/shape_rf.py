"""``shape_rf``: Random Forest on hand-crafted features of the nodule outline.

The baseline of Abdelrazik et al., "A Deep Learning Framework for Thyroid Nodule
Segmentation and Malignancy Classification from Ultrasound Images", arXiv 2511.11937 (2025)
(PAPERS.md section 4): morphological features of the nodule mask fed to a Random Forest
(their F1 0.829 on 349 images, 5-fold CV). The paper names the feature family, not the exact
list, so the features here follow the sonographic cues of ACR TI-RADS (2017) that a mask and
its frame can carry:

- size/shape: area, perimeter, box aspect ratio (height / width) and the *taller-than-wide*
  flag, ellipse elongation (covariance eigenvalues), circularity 4*pi*A/P^2;
- convexity: solidity (area / convex-hull area), convexity (hull perimeter / perimeter),
  convexity-defect depth (max, mean) relative to the equivalent radius;
- margin irregularity: radial distance from the centroid on an arc-length resampled outline,
  coefficient of variation and roughness (mean |second difference|), both scale-free;
- echogenicity: grey-level mean/std inside the outline and in a ring around it, their contrast,
  a bright-spot fraction (punctate echogenic foci) and the edge strength along the outline
  (an ill-defined margin has a weak edge).

Sizes are in frame pixels: DDTI frames share one scale (560x360), and the model sees the same
unit on both sides of the split. Folder-format images with a mask carry the mask's outline
(``data.contour``); samples without an outline (whole-image ROIs) cannot be described and raise
:class:`HfcnError`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..data.rois import Sample, open_gray
from ..errors import HfcnError
from ..protocol import Predictions
from . import common as C
from .base import Fitted, Output, System

__all__ = ["ShapeRFConfig", "FEATURE_NAMES", "outline_features", "ShapeRF", "fit_forest", "forest_predict"]

FEATURE_NAMES = (
    "area",
    "perimeter",
    "aspect_hw",
    "taller_than_wide",
    "elongation",
    "circularity",
    "solidity",
    "convexity",
    "defect_depth_max",
    "defect_depth_mean",
    "radial_cv",
    "radial_roughness",
    "in_mean",
    "in_std",
    "ring_mean",
    "ring_std",
    "contrast",
    "bright_fraction",
    "edge_strength",
)


@dataclass
class ShapeRFConfig:
    """``n_estimators``/``max_depth``/``min_samples_leaf``/``class_weight``: the forest;
    ``ring``: width of the surrounding ring as a fraction of the equivalent radius;
    ``resample``: outline points after arc-length resampling (margin features);
    ``threshold_rule``/``threshold_folds``: threshold on out-of-fold training scores."""

    n_estimators: int = 300
    max_depth: int | None = None
    min_samples_leaf: int = 1
    class_weight: str | None = None
    ring: float = 0.3
    resample: int = 128
    threshold_rule: str = "youden"
    threshold_folds: int = 5
    seed: int = 0

    def validate(self) -> None:
        if self.n_estimators < 1:
            raise HfcnError(f"n_estimators must be >= 1, got {self.n_estimators}")
        if self.min_samples_leaf < 1:
            raise HfcnError(f"min_samples_leaf must be >= 1, got {self.min_samples_leaf}")
        if not 0 < self.ring <= 2:
            raise HfcnError(f"ring must be in (0, 2], got {self.ring}")
        if self.resample < 8:
            raise HfcnError(f"resample must be >= 8, got {self.resample}")
        if self.threshold_rule not in ("youden", "f1", "fixed"):
            raise HfcnError(f"threshold_rule must be youden, f1 or fixed, got {self.threshold_rule!r}")
        if self.class_weight not in (None, "balanced", "balanced_subsample"):
            raise HfcnError(f"class_weight must be None, 'balanced' or 'balanced_subsample', got {self.class_weight!r}")


QUICK = {"n_estimators": 100}
SMOKE = {"n_estimators": 30}


# ---------------------------------------------------------------------------------------------
# geometry


def _shoelace(p: np.ndarray) -> float:
    x, y = p[:, 0], p[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def _perimeter(p: np.ndarray) -> float:
    return float(np.linalg.norm(p - np.roll(p, -1, axis=0), axis=1).sum())


def _area_moments(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centroid and central second-moment matrix of the polygon's *region* (Green's theorem),
    so the ellipse elongation does not depend on how densely the outline was drawn."""
    x, y = p[:, 0], p[:, 1]
    x1, y1 = np.roll(x, -1), np.roll(y, -1)
    cr = x * y1 - x1 * y
    a = cr.sum() / 2.0
    if abs(a) < 1e-9:
        c = p.mean(axis=0)
        return c, np.cov((p - c).T) if len(p) > 1 else np.zeros((2, 2))
    cx = ((x + x1) * cr).sum() / (6 * a)
    cy = ((y + y1) * cr).sum() / (6 * a)
    sxx = ((x * x + x * x1 + x1 * x1) * cr).sum() / (12 * a) - cx * cx
    syy = ((y * y + y * y1 + y1 * y1) * cr).sum() / (12 * a) - cy * cy
    sxy = ((x * y1 + 2 * x * y + 2 * x1 * y1 + x1 * y) * cr).sum() / (24 * a) - cx * cy
    return np.array([cx, cy]), np.array([[sxx, sxy], [sxy, syy]])


def _convex_hull(p: np.ndarray) -> np.ndarray:
    """Andrew's monotone chain; counter-clockwise hull vertices (no scipy needed)."""
    pts = sorted(set(map(tuple, p.tolist())))
    if len(pts) < 3:
        return np.asarray(pts, dtype=np.float64)

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower, upper = [], []
    for q in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], q) <= 0:
            lower.pop()
        lower.append(q)
    for q in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], q) <= 0:
            upper.pop()
        upper.append(q)
    return np.asarray(lower[:-1] + upper[:-1], dtype=np.float64)


def _dist_to_segments(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance of each point ``p[i]`` to the nearest segment ``a[j]-b[j]``."""
    ab = b - a
    ap = p[:, None, :] - a[None, :, :]
    t = np.clip((ap * ab[None]).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12)[None], 0.0, 1.0)
    d = ap - t[..., None] * ab[None]
    return np.sqrt((d * d).sum(-1)).min(axis=1)


def _resample(p: np.ndarray, n: int) -> np.ndarray:
    """``n`` points equally spaced in arc length along the closed outline: DDTI outlines are
    drawn with uneven vertex spacing, which would weight the radial statistics."""
    closed = np.vstack([p, p[:1]])
    seg = np.linalg.norm(np.diff(closed, axis=0), axis=1)
    s = np.r_[0.0, np.cumsum(seg)]
    t = np.linspace(0.0, s[-1], n, endpoint=False)
    return np.stack([np.interp(t, s, closed[:, 0]), np.interp(t, s, closed[:, 1])], axis=1)


def outline_features(sample: Sample, gray: np.ndarray | None = None, config: ShapeRFConfig | None = None) -> np.ndarray:
    """The :data:`FEATURE_NAMES` vector of one sample (float64). ``gray`` is the frame as a
    2-D array (read from ``sample.image_path`` when ``None``). Raises :class:`HfcnError` when
    the sample has no outline."""
    cfg = config or ShapeRFConfig()
    if not sample.polygon or len(sample.polygon) < 3:
        raise HfcnError(
            f"ROI {sample.key} ({sample.image_path}) has no nodule outline; shape_rf describes the outline polygon",
            hint="use DDTI-format data (outlines in the case XML), or give the "
            "folder-format image a mask (CLASS/masks/NAME.png or CLASS/NAME_mask.png)",
        )
    p = np.asarray(sample.polygon, dtype=np.float64)
    area_signed = _shoelace(p)
    area = abs(area_signed)
    perim = _perimeter(p)
    x0, y0 = p.min(axis=0)
    x1, y1 = p.max(axis=0)
    w, h = x1 - x0 + 1.0, y1 - y0 + 1.0
    r_eq = math.sqrt(max(area, 1.0) / math.pi)

    hull = _convex_hull(p)
    hull_area = abs(_shoelace(hull)) if len(hull) >= 3 else 0.0
    hull_perim = _perimeter(hull) if len(hull) >= 2 else 0.0
    if len(hull) >= 2:
        depth = _dist_to_segments(p, hull, np.roll(hull, -1, axis=0)) / r_eq
    else:
        depth = np.zeros(1)

    q = _resample(p, cfg.resample)
    cen, cov = _area_moments(p)
    ev = np.sort(np.linalg.eigvalsh(cov))
    elong = math.sqrt(ev[1] / ev[0]) if ev[0] > 1e-9 else 0.0
    rad = np.linalg.norm(q - cen, axis=1)
    rmean = float(rad.mean())
    radial_cv = float(rad.std() / rmean) if rmean > 0 else 0.0
    rough = float(np.abs(np.roll(rad, -1) - 2 * rad + np.roll(rad, 1)).mean() / rmean) if rmean > 0 else 0.0

    if gray is None:
        gray = np.asarray(open_gray(sample.image_path), dtype=np.float64)
    H, W = gray.shape
    pts = [tuple(map(float, xy)) for xy in p]
    inside = Image.new("L", (W, H), 0)
    ImageDraw.Draw(inside).polygon(pts, fill=255)
    grown = inside.copy()
    ring_w = max(2, int(round(cfg.ring * r_eq)))
    # A thick closed stroke along the outline grows the mask by ring_w on both sides; its
    # outer half is the ring (the halo / surrounding parenchyma the margin is judged against).
    ImageDraw.Draw(grown).line(pts + [pts[0]], fill=255, width=2 * ring_w, joint="curve")
    band = Image.new("L", (W, H), 0)
    ImageDraw.Draw(band).line(pts + [pts[0]], fill=255, width=3, joint="curve")
    m_in = np.asarray(inside) > 0
    m_ring = (np.asarray(grown) > 0) & ~m_in
    m_band = np.asarray(band) > 0
    vin = gray[m_in] if m_in.any() else gray[m_band]
    if vin.size == 0:  # an outline drawn entirely outside the frame: no pixels to describe
        vin = np.zeros(1)
    vring = gray[m_ring] if m_ring.any() else vin
    in_mean, in_std = float(vin.mean()), float(vin.std())
    ring_mean, ring_std = float(vring.mean()), float(vring.std())
    contrast = (in_mean - ring_mean) / (ring_mean + 1.0)
    bright = float((vin > ring_mean + 2.0 * ring_std).mean())
    gy, gx = np.gradient(gray)
    gmag = np.hypot(gx, gy)
    edge = float(gmag[m_band].mean() / (ring_std + in_std + 1.0)) if m_band.any() else 0.0

    f = [
        area,
        perim,
        h / w,
        float(h > w),
        elong,
        4 * math.pi * area / perim**2 if perim > 0 else 0.0,
        area / hull_area if hull_area > 0 else 1.0,
        hull_perim / perim if perim > 0 else 1.0,
        float(depth.max()),
        float(depth.mean()),
        radial_cv,
        rough,
        in_mean,
        in_std,
        ring_mean,
        ring_std,
        contrast,
        bright,
        edge,
    ]
    return np.nan_to_num(np.asarray(f, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)


def _features(samples: Sequence[Sample], cfg: ShapeRFConfig, progress, what: str, skipped: list[str]):
    """Feature rows of ``samples`` (frames decoded once each, shared by their outlines)."""
    missing = [s for s in samples if not s.polygon or len(s.polygon) < 3]
    if missing:
        raise HfcnError(
            f"shape_rf needs a nodule outline for every ROI; {len(missing)} of {len(samples)} {what} ROIs "
            f"have none (e.g. {missing[0].key}, {missing[0].roi_kind} ROI from {missing[0].image_path})",
            hint="use DDTI-format data (outlines in the case XML), or give every folder-format image "
            "a mask (CLASS/masks/NAME.png or CLASS/NAME_mask.png)",
        )
    rows, keep, frames = [], [], {}
    for i, s in enumerate(samples):
        try:
            if s.image_path not in frames:
                # keep only the current frame: a frame's outlines are consecutive in a dataset
                frames = {s.image_path: np.asarray(open_gray(s.image_path), dtype=np.float64)}
            rows.append(outline_features(s, frames[s.image_path], cfg))
            keep.append(s)
        except HfcnError:
            raise
        except Exception as exc:  # noqa: BLE001 - any decoder failure skips this ROI, as train does
            C.warn_skip(s, exc, skipped)
        if progress is not None:
            progress("load", i + 1, len(samples), {"what": what})
    X = np.stack(rows) if rows else np.zeros((0, len(FEATURE_NAMES)))
    return X, keep


def _forest(cfg: ShapeRFConfig):
    from sklearn.ensemble import RandomForestClassifier

    # n_jobs=1: deterministic and polite on a shared machine; random_state fixes the trees.
    return RandomForestClassifier(
        n_estimators=cfg.n_estimators,
        max_depth=cfg.max_depth,
        min_samples_leaf=cfg.min_samples_leaf,
        class_weight=cfg.class_weight,
        random_state=cfg.seed,
        n_jobs=1,
    )


def fit_forest(
    train_samples: Sequence[Sample], cfg: ShapeRFConfig, progress=None, skipped: list[str] | None = None
) -> tuple[object, Predictions, str, dict]:
    """The forest on the outline features of ``train_samples`` and the out-of-fold training
    scores its threshold is chosen on: ``(forest, threshold predictions, source, summary)``."""
    C.sklearn()
    skipped = [] if skipped is None else skipped
    t0 = time.perf_counter()
    Xtr, tr = _features(train_samples, cfg, progress, "train", skipped)
    C.both_classes(tr, "training")
    feat_s = time.perf_counter() - t0
    ytr = np.asarray([s.label for s in tr])
    groups = np.asarray([s.case_id for s in tr])

    def fit_predict(a, b):
        return _forest(cfg).fit(Xtr[a], ytr[a]).predict_proba(Xtr[b])[:, 1]

    t1 = time.perf_counter()
    oof, mask, source = C.oof_scores(fit_predict, ytr, groups, cfg.threshold_folds, cfg.seed)
    rf = _forest(cfg).fit(Xtr, ytr)
    if mask.any():
        thr = Predictions.of([s for s, m in zip(tr, mask) if m], oof[mask])
    else:  # too few cases for folds: in-sample scores, flagged in the source label
        thr, source = Predictions.of(tr, rf.predict_proba(Xtr)[:, 1]), "training (in-sample)"
    summary = {
        "train_rois": len(tr),
        "threshold_rois": len(thr),
        "features_s": feat_s,
        "train_s": time.perf_counter() - t1,
        "features": {
            "names": list(FEATURE_NAMES),
            "importance": {n: float(v) for n, v in zip(FEATURE_NAMES, rf.feature_importances_)},
        },
    }
    return rf, thr, source, summary


def forest_predict(rf, samples: Sequence[Sample], cfg: ShapeRFConfig, skipped: list[str], progress=None) -> Predictions:
    X, kept = _features(samples, cfg, progress, "test", skipped)
    if not kept:
        raise HfcnError("no ROI could be described")
    return Predictions.of(kept, rf.predict_proba(X)[:, 1], skipped)


LIMITATIONS = [
    "the paper does not list its morphological features: this set follows ACR TI-RADS shape, margin and "
    "echogenicity cues of the annotated outline",
]


class ShapeRF(System):
    """``shape_rf``: Random Forest on the outline's shape and echogenicity features."""

    name = "shape_rf"
    paper = "Abdelrazik et al. 2025, arXiv 2511.11937 (baseline; PAPERS.md section 4)"
    description = "Random Forest on morphological and echogenicity features of the nodule outline"
    config_cls = ShapeRFConfig
    presets = {"quick": QUICK, "smoke": SMOKE}
    has_epochs = False

    def limitations(self, cfg) -> list[str]:
        return [
            *LIMITATIONS,
            "outlines are the annotations (DDTI's outlines, or the masks of a folder dataset), not a segmentation "
            "network's masks (the paper's TransUNet stage is not part of this baseline)",
            f"forest hyper-parameters are scikit-learn defaults with n_estimators={cfg.n_estimators}; the paper's "
            "are not published",
        ]

    def cannot_predict(self, sample) -> str | None:
        if not sample.polygon or len(sample.polygon) < 3:
            return "shape_rf describes the nodule outline; give the case XML that outlines it"
        return None

    def fit(self, train_samples, cfg, *, out_dir=None, progress=None, resume=False, keep_last=True) -> Fitted:
        skipped: list[str] = []
        rf, thr, source, summary = fit_forest(train_samples, cfg, progress, skipped)
        timings = {"features_s": summary.pop("features_s"), "train_s": summary.pop("train_s")}
        return Fitted(self.name, cfg, {"forest": rf}, {"main": thr}, {"main": source}, summary, timings, skipped)

    def predict(self, fitted, samples, *, progress=None) -> Output:
        t = time.perf_counter()
        pred = forest_predict(fitted.models["forest"], samples, fitted.config, [], progress)
        return Output({"main": pred}, seconds=time.perf_counter() - t)

    def save(self, fitted, out_dir) -> list[str]:
        return [C.save_sklearn(fitted.models["forest"], Path(out_dir) / "forest.skops")]

    def load(self, cfg, directory, record, checkpoint="best", device="cpu"):
        return {"forest": C.load_sklearn(Path(directory) / "forest.skops")}
