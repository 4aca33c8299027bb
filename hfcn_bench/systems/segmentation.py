"""The segmentation stage of the ``two_stage`` system: a U-Net or a TransUNet on whole frames,
its training loop, mask quality (Dice / IoU), and the step from a predicted probability map to
nodule regions (connected components, their boxes and outlines) paired with the annotated
nodules they are scored against.

Abdelrazik et al., "A Deep Learning Framework for Thyroid Nodule Segmentation and Malignancy
Classification from Ultrasound Images", arXiv 2511.11937 (2025) segment the nodule with a
TransUNet. The segmenter is chosen by the config's ``segmenter`` (:data:`SEGMENTERS`,
:func:`build_segmenter`): ``unet``, a plain U-Net (Ronneberger et al., MICCAI 2015) of
configurable width and depth, the default (it trains in CPU-minutes); ``transunet``, the
paper's TransUNet (R50 + ViT-B/16, :mod:`hfcn_bench.models.transunet`), for a GPU; or
``transunet-small``, a reduced TransUNet a CPU trains. All are trained the same way, with the
loss of TransUNet's authors: cross-entropy + Dice (:func:`segmentation_loss`).

Pixels and coordinates. The network sees frames resized to ``(H, W)``
(:class:`frames.FrameTensors`); ``scale = (sx, sy)`` is network pixels per frame pixel, and a
frame pixel ``x`` has its centre at network coordinate ``(x + 0.5) * sx - 0.5`` (the mapping
FrameTensors rasterises the annotated outlines with). Boxes are ``(x0, y0, x1, y1)``,
exclusive on the right/bottom, as in ``data.rois``.

Pairing rule (:func:`pair_regions`). A frame's prediction is thresholded at 0.5; if no pixel
reaches 0.5 the threshold drops to half the frame's maximum probability (the network saw a
nodule somewhere but was unsure; counted as an *empty-mask fallback*), so every frame yields at
least one region. Each annotated nodule of the frame is then paired with the predicted
connected component whose box has the largest IoU with the nodule's annotated ROI box; when no
component overlaps it, the nodule is *missed* (counted) and gets the largest component
instead, so it is still classified — from the wrong place, as a deployed system would. The
annotation is used only to decide *which* prediction a nodule is scored against (a DDTI
dual-view frame holds two nodules, one per pane); the ROI box and outline come from the
prediction alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import HfcnError
from . import common as C
from . import descriptor_aux as DA
from .frames import FrameTensors, box_iou

__all__ = [
    "UNet",
    "SEGMENTERS",
    "build_segmenter",
    "segmentation_loss",
    "train_segmenter",
    "fit_segmenter",
    "TrainedSegmenter",
    "predict_probs",
    "frame_targets",
    "dice_iou",
    "segmentation_summary",
    "mask_components",
    "mask_outline",
    "Region",
    "Pairing",
    "pair_regions",
]


# ---------------------------------------------------------------------------------------------
# the network


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """U-Net: ``depth`` down steps (2x2 max-pool) and ``depth`` up steps (bilinear x2, a 1x1
    conv halving the channels, concatenation with the skip, two 3x3 conv-BN-ReLU), widths
    ``base * 2**level``, a 1x1 conv to one logit.

    ``x (Tensor[B, in_ch, H, W]) -> logits (Tensor[B, 1, H, W])`` for any ``H, W``: the input
    is edge-padded (replicate) on the right/bottom to a multiple of ``2**depth`` and the
    output cropped back, so frame sizes need not be divisible by 16."""

    def __init__(self, in_ch: int = 1, base: int = 16, depth: int = 4):
        super().__init__()
        if depth < 1 or base < 1 or in_ch < 1:
            raise HfcnError(f"UNet needs depth >= 1, base >= 1, in_ch >= 1 (got {depth}, {base}, {in_ch})")
        self.depth = int(depth)
        widths = [base * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList(
            [_double_conv(in_ch, widths[0])] + [_double_conv(widths[i - 1], widths[i]) for i in range(1, depth + 1)]
        )
        self.reduce = nn.ModuleList(nn.Conv2d(widths[i + 1], widths[i], 1) for i in range(depth))
        self.up = nn.ModuleList(_double_conv(2 * widths[i], widths[i]) for i in range(depth))
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = 2**self.depth
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for i in reversed(range(self.depth)):
            x = self.reduce[i](F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
            x = self.up[i](torch.cat([skips.pop(), x], dim=1))
        return self.head(x)[..., :h, :w]


#: The segmenters ``cfg.segmenter`` may name: the U-Net and the TransUNet configurations.
SEGMENTERS = ("unet", "transunet", "transunet-small")


def build_segmenter(cfg, weights: bool = True) -> nn.Module:
    """The segmenter ``cfg.segmenter`` names, for one-channel frames of ``cfg.frame_size``,
    one logit per pixel: a :class:`UNet` of ``cfg.unet_base`` / ``cfg.unet_depth``, or a
    :class:`~hfcn_bench.models.TransUNet` of that named configuration built for
    ``cfg.frame_size``. ``cfg.seg_weights`` (a local state dict; keys and shapes checked) is
    loaded unless ``weights=False`` (a checkpoint replaces them). Random initialisation
    follows the global torch seed: seed first."""
    from ..models.backbones import load_backbone_weights

    if cfg.segmenter == "unet":
        net = UNet(1, cfg.unet_base, cfg.unet_depth)
    elif cfg.segmenter in SEGMENTERS:
        from ..models import TransUNet

        net = TransUNet(cfg.segmenter, img_size=tuple(cfg.frame_size))
    else:
        raise HfcnError(f"segmenter must be one of {', '.join(SEGMENTERS)}, got {cfg.segmenter!r}")
    if weights and cfg.seg_weights is not None:
        kind = "U-Net" if cfg.segmenter == "unet" else "TransUNet"
        load_backbone_weights(net, cfg.seg_weights, name=cfg.segmenter, kind=kind)
    return net


# ---------------------------------------------------------------------------------------------
# mask quality


def _binary(x: torch.Tensor, thr: float) -> torch.Tensor:
    """``x`` as a boolean [N, H*W] (accepts [H, W], [N, H, W] or [N, 1, H, W])."""
    x = torch.as_tensor(x)
    if x.dim() == 2:
        x = x[None]
    return (x >= thr).reshape(x.shape[0], -1)


def dice_iou(prob_or_mask, target, thr: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame Dice and IoU of ``prob_or_mask >= thr`` against ``target >= 0.5``.

    Shapes [H, W], [N, H, W] or [N, 1, H, W] (the same for both) -> two float64 Tensor[N].
    A frame where both masks are empty scores 1.0 (nothing to find, nothing found)."""
    p, t = _binary(prob_or_mask, thr), _binary(target, 0.5)
    if p.shape != t.shape:
        raise HfcnError(f"prediction {tuple(p.shape)} and target {tuple(t.shape)} masks differ in shape")
    inter = (p & t).sum(1).double()
    ps, ts = p.sum(1).double(), t.sum(1).double()
    union = ps + ts - inter
    both_empty = (ps + ts) == 0
    dice = torch.where(both_empty, torch.ones_like(inter), 2 * inter / (ps + ts).clamp(min=1))
    iou = torch.where(both_empty, torch.ones_like(inter), inter / union.clamp(min=1))
    return dice, iou


def segmentation_summary(
    prob, target, thr: float = 0.5, case_ids: Sequence | None = None, n_boot: int = 1000, seed: int = 0
) -> dict:
    """``{"frames", "dice", "iou", "dice_median", "iou_median", "empty_predictions",
    "threshold"}`` over frames (means unless named): the mask quality of ``prob >= thr``.

    With ``case_ids`` (one per frame) also ``dice_ci`` and ``iou_ci``: 95 % percentile
    intervals of the mean over ``n_boot`` case-level bootstrap resamples (frames of one case
    are drawn together, as for the classification metrics; :func:`hfcn_bench.metrics.bootstrap_ci`)."""
    dice, iou = dice_iou(prob, target, thr)
    n = int(dice.numel())
    if n == 0:
        return {
            "frames": 0,
            "dice": float("nan"),
            "iou": float("nan"),
            "dice_median": float("nan"),
            "iou_median": float("nan"),
            "empty_predictions": 0,
            "threshold": float(thr),
        }
    empty = int((~_binary(prob, thr).any(1)).sum())
    out = {
        "frames": n,
        "dice": float(dice.mean()),
        "iou": float(iou.mean()),
        "dice_median": float(dice.median()),
        "iou_median": float(iou.median()),
        "empty_predictions": empty,
        "threshold": float(thr),
    }
    if case_ids is not None:
        from ..metrics import bootstrap_ci

        none = np.zeros(n, dtype=np.int64)  # bootstrap_ci's labels; the mean ignores them

        def mean(_, v):
            return float(v.mean())

        for key, vals in (("dice", dice), ("iou", iou)):
            _, low, high = bootstrap_ci(none, vals.numpy(), list(case_ids), mean, n_boot=n_boot, seed=seed)
            out[f"{key}_ci"] = [low, high]
    return out


# ---------------------------------------------------------------------------------------------
# training


def _soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per image (smoothed by ``eps``), averaged over the batch: BCE alone is
    dominated by the background, which covers ~90 % of a DDTI frame."""
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    return (1 - (2 * (p * t).sum(1) + eps) / (p.sum(1) + t.sum(1) + eps)).mean()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy + Dice, the loss TransUNet's authors train with (their reference code:
    ``0.5 * CE + 0.5 * Dice``; here both at weight 1, which only scales the step): binary
    cross-entropy of the one logit per pixel (the two-class softmax cross-entropy of a
    nodule-vs-background pair of logits) plus 1 - soft Dice per image. ``logits`` and
    ``target`` are ``[B, 1, H, W]``, the target in {0, 1}."""
    return F.binary_cross_entropy_with_logits(logits, target) + _soft_dice_loss(logits, target)


@torch.no_grad()
def predict_probs(model: nn.Module, frames: FrameTensors, batch: int = 16) -> torch.Tensor:
    """Sigmoid probabilities of ``model`` on every frame: Tensor[N, 1, H, W] float32, on the
    CPU (the frames go to the model's device batch by batch)."""
    model.eval()
    n = len(frames)
    dev = next(model.parameters()).device
    out = [torch.sigmoid(model(frames.images(range(s, min(s + batch, n))).to(dev))).cpu() for s in range(0, n, batch)]
    return torch.cat(out) if out else torch.zeros(0, 1, frames.height, frames.width)


@dataclass
class TrainedSegmenter:
    """The segmenter at its best validation epoch and how it got there."""

    model: nn.Module
    history: list[dict]
    best_epoch: int
    best_val_dice: float
    train_s: float
    fit_frames: int
    val_frames: int
    files: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        return {
            "best_epoch": self.best_epoch,
            "best_val_dice": self.best_val_dice,
            "epochs_run": len(self.history),
            "fit_frames": self.fit_frames,
            "val_frames": self.val_frames,
            "train_s": self.train_s,
            "history": self.history,
            "parameters": sum(p.numel() for p in self.model.parameters()),
        }


class _SegmenterTask:
    def __init__(self, model: nn.Module, fit: FrameTensors, val: FrameTensors, cfg):
        self.model, self.fit, self.val, self.cfg = model, fit, val, cfg
        self.device = next(model.parameters()).device
        self.n = len(fit)
        self.y_val = frame_targets(val)

    def start_epoch(self, epoch):
        self.model.train()

    def step(self, rows, epoch):
        rows = [int(r) for r in rows]
        # each frame's horizontal flip (p = 0.5) from (seed, epoch, index), as RoiDataset draws
        fl = [bool(np.random.default_rng([int(self.cfg.seed), epoch, r]).random() < 0.5) for r in rows]
        x = self.fit.images(rows, fl).to(self.device)
        y = torch.stack([self.fit.mask(r, f) for r, f in zip(rows, fl)]).to(self.device)
        loss = segmentation_loss(self.model(x), y)
        return loss, float(len(rows)), float(len(rows))

    def validate(self, epoch):
        dice, iou = dice_iou(predict_probs(self.model, self.val, self.cfg.seg_batch), self.y_val)
        vd = float(dice.mean())
        return [vd], {"val_dice": vd, "val_iou": float(iou.mean())}

    def generators(self):
        return {}


def train_segmenter(
    fit: FrameTensors, val: FrameTensors, cfg, progress=None, stage: str = "seg_epoch"
) -> tuple[nn.Module, list[dict], int, float]:
    """Train the segmenter on ``fit``'s frames and masks; return ``(model, history, best_epoch,
    best_val_dice)`` with the model at its best validation epoch (mean Dice at 0.5 on ``val``,
    first epoch on ties). See :func:`fit_segmenter` for the details."""
    t = fit_segmenter(fit, val, cfg, progress, stage)
    return t.model, t.history, t.best_epoch, t.best_val_dice


def fit_segmenter(
    fit: FrameTensors,
    val: FrameTensors,
    cfg,
    progress=None,
    stage: str = "seg_epoch",
    ckpt_dir=None,
    resume: bool = False,
    keep_last: bool = True,
) -> TrainedSegmenter:
    """:func:`train_segmenter` returning a :class:`TrainedSegmenter` (with timings), through the
    shared epoch loop (``ckpt_dir``: its resumable checkpoints).

    ``cfg`` needs ``segmenter``, ``seg_weights``, ``frame_size``, ``unet_base``,
    ``unet_depth``, ``seg_epochs``, ``seg_batch``, ``seg_lr``, ``seg_weight_decay``, ``seed``
    (the network: :func:`build_segmenter`) and ``device`` (where it trains; the frames stay on
    the CPU and go there batch by batch). Seeded and deterministic at a fixed thread count:
    ``torch.manual_seed(cfg.seed)`` before building, the batch order from ``(seed, epoch)``
    and each frame's horizontal flip (p = 0.5) from ``(seed, epoch, index)``. Loss:
    :func:`segmentation_loss` (cross-entropy + Dice); AdamW. ``progress(stage, epoch, epochs, info)`` after each
    epoch. Needs masks on both sets (``FrameTensors(..., masks=True)``)."""
    import dataclasses

    from ..engine import LoopSettings, fit_loop

    if len(fit) < 2 or len(val) < 1:
        raise HfcnError(
            f"too few loadable frames to train the segmenter ({len(fit)} training, {len(val)} validation)",
            hint="the segmenter needs at least 2 training frames and 1 validation frame with outlines",
        )
    from ..engine import device_of

    torch.manual_seed(int(cfg.seed))
    model = build_segmenter(cfg).to(device_of(cfg.device))
    settings = LoopSettings(
        epochs=cfg.seg_epochs,
        batch_size=cfg.seg_batch,
        lr=cfg.seg_lr,
        weight_decay=cfg.seg_weight_decay,
        optimizer="adamw",
        seed=int(cfg.seed),
    )
    loop = fit_loop(
        model,
        _SegmenterTask(model, fit, val, cfg),
        settings,
        config={**DA.loop_config(dataclasses.asdict(cfg)), "stage": "segmenter"},
        ckpt_dir=ckpt_dir,
        resume=resume,
        progress=progress,
        stage=stage,
        keep_last=keep_last,
    )
    best = loop.best_score[0] if loop.best_score else float("nan")
    return TrainedSegmenter(
        model, loop.history, loop.best_epoch, best, loop.seconds, len(fit), len(val), loop.checkpoints
    )


# ---------------------------------------------------------------------------------------------
# from a mask to regions


def mask_components(mask) -> list[tuple[tuple[int, int, int, int], int, np.ndarray]]:
    """Connected components (8-connected) of a boolean ``mask`` [H, W], in label order (raster
    scan of each component's first pixel): ``(box, area, component_mask)`` with ``box`` =
    ``(x0, y0, x1, y1)`` exclusive, in network pixels, ``area`` in pixels and
    ``component_mask`` a boolean [H, W]. Uses ``scipy.ndimage`` (installed with scikit-learn)."""
    C.sklearn()  # scipy comes with scikit-learn: a missing install gives the install hint
    from scipy import ndimage

    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise HfcnError(f"mask_components needs a 2-D mask, got shape {m.shape}")
    labels, n = ndimage.label(m, structure=np.ones((3, 3), dtype=bool))
    out = []
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        comp = labels == k
        ys, xs = sl
        out.append(((int(xs.start), int(ys.start), int(xs.stop), int(ys.stop)), int(comp.sum()), comp))
    return out


def mask_outline(component_mask, scale: tuple[float, float]) -> tuple[tuple[int, int], ...]:
    """The boundary polygon of one component as integer frame-pixel points ``(x, y)``.

    The 0.5 iso-line of the zero-padded mask (``contourpy``) runs between pixel centres: each
    of its vertices is the midpoint of an inside and an outside pixel. Each vertex is moved to
    its *inside* pixel, so the polygon passes through the centres of the component's boundary
    pixels, as an annotated outline passes through its boundary pixels (an outline rasterised
    with PIL fills its vertices). Of the closed lines the longest is the outer boundary (the
    others are holes or other blobs). A network coordinate ``u`` maps to frame pixels as
    ``x = (u + 0.5) / sx - 0.5``, the inverse of FrameTensors' rasterisation, so a rasterised
    outline comes back where it was, within the rounding of one network pixel (exactly at
    scale 1). Consecutive duplicate points are dropped; a component that leaves fewer than 3
    distinct points (one network pixel, or a line thinner than a frame pixel) gives its box.
    Raises :class:`HfcnError` on an empty mask."""
    import contourpy

    m = np.asarray(component_mask, dtype=bool)
    if m.ndim != 2 or not m.any():
        raise HfcnError("mask_outline needs a non-empty 2-D component mask")
    z = np.pad(m.astype(np.float64), 1)
    lines = contourpy.contour_generator(z=z, line_type="Separate").lines(0.5)
    line = max(lines, key=lambda a: float(np.linalg.norm(np.diff(a, axis=0), axis=1).sum()))
    u, v = _inside(line[:, 0], line[:, 1], z)
    u, v = u - 1.0, v - 1.0  # undo the padding: indices of the unpadded mask
    sx, sy = scale
    fx, fy = (u + 0.5) / sx - 0.5, (v + 0.5) / sy - 0.5
    pts: list[tuple[int, int]] = []
    for p in zip(np.rint(fx).astype(np.int64).tolist(), np.rint(fy).astype(np.int64).tolist()):
        if not pts or p != pts[-1]:
            pts.append(p)
    while len(pts) > 1 and pts[0] == pts[-1]:
        pts.pop()
    if len(set(pts)) < 3:
        # one network pixel (or a sliver thinner than a frame pixel): the pixels' box
        hx, hy = 0.5 / sx, 0.5 / sy
        x0, y0 = int(np.floor(fx.min() + 0.5 - hx)), int(np.floor(fy.min() + 0.5 - hy))
        x1 = max(int(np.ceil(fx.max() - 0.5 + hx)), x0 + 1)
        y1 = max(int(np.ceil(fy.max() - 0.5 + hy)), y0 + 1)
        pts = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    return tuple(pts)


def _inside(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each iso-line vertex ``(x, y)`` (half-way between two pixel centres along x or y) moved
    to whichever of the two pixels is inside ``z > 0.5``."""
    x, y = x.copy(), y.copy()
    on_x = np.abs(x - np.round(x)) > 1e-6  # the vertex sits between two columns
    for arr, other, along_x in ((x, y, True), (y, x, False)):
        sel = on_x if along_x else ~on_x
        lo = np.floor(arr[sel]).astype(np.int64)
        oth = np.round(other[sel]).astype(np.int64)
        lo_in = z[oth, lo] > 0.5 if along_x else z[lo, oth] > 0.5
        arr[sel] = np.where(lo_in, lo, lo + 1)
        other[sel] = oth
    return x, y


@dataclass
class Region:
    """The predicted region paired with one annotated nodule: ``box_net`` in network pixels,
    ``outline`` in frame pixels, ``missed`` when no predicted component overlapped the
    nodule's annotated box, ``fallback`` when the frame's mask was empty at 0.5."""

    box_net: tuple[int, int, int, int]
    area: int
    outline: tuple[tuple[int, int], ...]
    missed: bool
    fallback: bool


@dataclass
class Pairing:
    """Counts over the paired nodules (see the module docstring): ``nodules`` paired,
    ``missed`` (no predicted component overlapped the annotated box), ``empty_mask_fallbacks``
    (nodules whose frame had no pixel >= 0.5, so the half-maximum threshold was used),
    ``frames`` and the number of predicted components per frame."""

    nodules: int = 0
    missed: int = 0
    empty_mask_fallbacks: int = 0
    frames: int = 0
    components: list[int] = field(default_factory=list)

    def as_dict(self) -> dict:
        comps = np.asarray(self.components, dtype=np.float64)
        return {
            "nodules": self.nodules,
            "missed": self.missed,
            "empty_mask_fallbacks": self.empty_mask_fallbacks,
            "frames": self.frames,
            "mean_components": float(comps.mean()) if comps.size else float("nan"),
        }


def pair_regions(
    prob: torch.Tensor,
    annotated_boxes: torch.Tensor,
    scale: tuple[float, float],
    pairing: Pairing | None = None,
    thr: float = 0.5,
) -> list[Region]:
    """One :class:`Region` per annotated nodule of a frame (the pairing rule of the module
    docstring). ``prob`` Tensor[1, H, W] or [H, W] (sigmoid output); ``annotated_boxes``
    Tensor[n, 4] at network scale (``FrameTensors.boxes(i)``); ``scale`` the frame's
    ``(sx, sy)``. ``pairing`` accumulates the counts when given."""
    p = torch.as_tensor(prob).reshape(prob.shape[-2:]).detach().double().numpy()
    mask = p >= thr
    fallback = not mask.any()
    if fallback:  # sigmoid > 0 everywhere, so half the maximum always keeps the argmax pixel
        mask = p >= 0.5 * float(p.max())
    comps = mask_components(mask)
    boxes = torch.as_tensor([c[0] for c in comps], dtype=torch.float64).reshape(-1, 4)
    ious = box_iou(torch.as_tensor(annotated_boxes, dtype=torch.float64).reshape(-1, 4), boxes)
    largest = max(range(len(comps)), key=lambda k: (comps[k][1], -k))
    regions = []
    for row in ious:
        missed = not bool((row > 0).any())
        k = largest if missed else int(torch.argmax(row))  # argmax: first index on ties
        box, area, comp = comps[k]
        regions.append(Region(box, area, mask_outline(comp, scale), missed, fallback))
    if pairing is not None:
        pairing.frames += 1
        pairing.nodules += len(regions)
        pairing.missed += sum(r.missed for r in regions)
        pairing.empty_mask_fallbacks += int(fallback) * len(regions)
        pairing.components.append(len(comps))
    return regions


def frame_targets(frames: FrameTensors, keep: Sequence[int] | None = None) -> torch.Tensor:
    """The rasterised annotated masks of ``frames`` (or of the ``keep`` indices): Tensor[N, 1, H, W]."""
    idx = range(len(frames)) if keep is None else keep
    return torch.stack([frames.mask(i) for i in idx]) if len(idx) else torch.zeros(0, 1, frames.height, frames.width)
