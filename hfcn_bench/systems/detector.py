"""A single-shot nodule detector: stage 1 of the MC-CNN cascade.

Song W. et al., "Multitask cascade convolution neural networks for automatic thyroid nodule
detection and recognition", IEEE JBHI 2019 (PAPERS.md section 2), detect nodules with an SSD
(Liu et al., ECCV 2016): default boxes of several sizes and aspect ratios on feature maps of
several strides, each predicting a class score and a box offset, trained with cross-entropy +
smooth-L1, decoded through non-maximum suppression. This module is that design at a size a
2-core CPU can train in minutes on DDTI's ~300 training frames:

- **input**: the whole frame, grey, resized to ``frame_size`` (``frames.FrameTensors``);
- **trunk**: four stride-2 stages of two 3x3 conv-BN-ReLU layers (16-32-64-128 channels);
  the stride-8 and stride-16 maps carry the heads (a 3x3 conv each: 1 nodule logit and 4 box
  offsets per anchor);
- **anchors from the nodule prior**: k-means in log-(width, height) space over the training
  ROI boxes (at network scale) gives ``n_anchors`` shapes; the smaller half sits on the
  stride-8 map, the larger half on the stride-16 map. Nodule sizes and aspect ratios thus
  come from the data instead of SSD's generic scale ladder;
- **matching and loss** (SSD): an anchor is positive at IoU >= 0.5 with a nodule box (and
  each nodule's best anchor is positive whatever its IoU), negative below 0.4, ignored in
  between; box targets are SSD's centre/log-size offsets with variances (0.1, 0.2); loss =
  smooth-L1 over positives + binary cross-entropy over positives and the hardest negatives
  (3 per positive), both divided by the number of positives;
- **augmentation** (SSD's random crops, :func:`augment`): horizontal flips, random zoom-in
  windows that keep every nodule at least half visible, contrast/brightness jitter;
- **inference**: sigmoid scores, decoded boxes, greedy NMS at ``nms_iou``, at most ``max_det``
  boxes per frame (the best one is always kept, so every frame yields a box);
- **quality**: average precision at IoU 0.5 (all-point interpolated, VOC 2010+) over the test
  frames and recall at IoU 0.5 of the nodules, see :func:`detection_quality`.

The detector's targets are the ROI boxes the classifier crops (``Sample.bbox``: the outline's
box plus the dataset's margin), so a detected box replaces an annotated one directly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import HfcnError
from . import descriptor_aux as DA
from .frames import FrameTensors, box_iou, nms

__all__ = [
    "anchor_shapes",
    "NoduleDetector",
    "train_detector",
    "detector_from_state",
    "detect",
    "detection_quality",
    "average_precision",
]

STRIDES = (8, 16)
VARIANCES = (0.1, 0.2)


def anchor_shapes(boxes: np.ndarray, k: int, seed: int = 0, iters: int = 50) -> np.ndarray:
    """``k`` anchor shapes (width, height) [k, 2], sorted by area, from k-means over the
    log-sizes of ``boxes [n, 4]`` (network pixels). Fewer distinct boxes than ``k`` repeat
    the largest; no boxes is an error."""
    wh = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1).astype(np.float64)
    wh = wh[(wh > 0).all(axis=1)]
    if len(wh) == 0:
        raise HfcnError("no nodule box to derive the detector's anchors from")
    x = np.log(wh)
    rng = np.random.default_rng(seed)
    # k-means++ seeding, then Lloyd iterations; deterministic for a seed
    centres = [x[rng.integers(len(x))]]
    while len(centres) < min(k, len(x)):
        d = np.min(((x[:, None] - np.asarray(centres)[None]) ** 2).sum(-1), axis=1)
        if d.sum() <= 0:
            break
        centres.append(x[rng.choice(len(x), p=d / d.sum())])
    c = np.asarray(centres)
    for _ in range(iters):
        lab = np.argmin(((x[:, None] - c[None]) ** 2).sum(-1), axis=1)
        c = np.stack([x[lab == j].mean(0) if (lab == j).any() else c[j] for j in range(len(c))])
    out = np.exp(c)
    out = out[np.argsort(out.prod(axis=1))]
    while len(out) < k:
        out = np.concatenate([out, out[-1:]])
    return out


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class NoduleDetector(nn.Module):
    """SSD-style single-shot detector over two feature maps.

    ``forward(x: Tensor[B, 1, H, W]) -> (logits Tensor[B, A], offsets Tensor[B, A, 4])`` with
    ``A`` the anchors of both maps (``self.anchors(H, W)`` gives them as boxes [A, 4], in the
    same order). ``shapes`` [k, 2] are the anchor (width, height) in network pixels; the first
    ``k // 2`` go on the stride-8 map, the rest on the stride-16 map.
    """

    def __init__(self, shapes: np.ndarray, width: int = 16):
        super().__init__()
        shapes = np.asarray(shapes, dtype=np.float64)
        if shapes.ndim != 2 or shapes.shape[1] != 2 or len(shapes) < 2:
            raise HfcnError(f"anchor shapes must be [k >= 2, 2], got {shapes.shape}")
        half = len(shapes) // 2
        self.register_buffer("shapes", torch.as_tensor(shapes, dtype=torch.float32))
        self.split = (half, len(shapes) - half)
        c = (width, 2 * width, 4 * width, 8 * width)
        self.s1, self.s2, self.s3, self.s4 = _block(1, c[0]), _block(c[0], c[1]), _block(c[1], c[2]), _block(c[2], c[3])
        self.head8 = nn.Conv2d(c[2], self.split[0] * 5, 3, padding=1)
        self.head16 = nn.Conv2d(c[3], self.split[1] * 5, 3, padding=1)
        for head in (self.head8, self.head16):
            nn.init.normal_(head.weight, std=0.01)
            nn.init.zeros_(head.bias)
            # a low nodule prior at start (focal-loss style) keeps the first steps stable
            head.bias.data.view(-1, 5)[:, 0] = -math.log(99.0)

    @staticmethod
    def _flatten(out: torch.Tensor, a: int) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, h, w = out.shape
        out = out.view(b, a, 5, h, w).permute(0, 3, 4, 1, 2).reshape(b, h * w * a, 5)
        return out[..., 0], out[..., 1:]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f8 = self.s3(self.s2(self.s1(x)))
        f16 = self.s4(f8)
        l8, o8 = self._flatten(self.head8(f8), self.split[0])
        l16, o16 = self._flatten(self.head16(f16), self.split[1])
        return torch.cat([l8, l16], 1), torch.cat([o8, o16], 1)

    def anchors(self, height: int, width: int) -> torch.Tensor:
        """Anchor boxes [A, 4] (x0, y0, x1, y1) for an input of ``height x width``: centred on
        each cell of each map, cells in row-major order, the map's shapes innermost."""
        out = []
        shapes = (self.shapes[: self.split[0]], self.shapes[self.split[0] :])
        for stages, wh in zip((3, 4), shapes):  # the stride-8 map after 3 stages, stride 16 after 4
            h, w = _map_size(height, stages), _map_size(width, stages)
            ys = (torch.arange(h, dtype=torch.float32) + 0.5) * (height / h)
            xs = (torch.arange(w, dtype=torch.float32) + 0.5) * (width / w)
            cy, cx = torch.meshgrid(ys, xs, indexing="ij")
            c = torch.stack([cx, cy], -1).reshape(-1, 1, 2).expand(-1, len(wh), 2)
            half = (wh / 2).view(1, -1, 2)
            out.append(torch.cat([c - half, c + half], -1).reshape(-1, 4))
        return torch.cat(out, 0)


def _map_size(n: int, stages: int) -> int:
    """Size after ``stages`` 3x3, stride-2, padding-1 convolutions."""
    for _ in range(stages):
        n = (n - 1) // 2 + 1
    return n


def encode(gt: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """SSD offsets of boxes ``gt [A, 4]`` relative to ``anchors [A, 4]``."""
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ax, ay = anchors[:, 0] + aw / 2, anchors[:, 1] + ah / 2
    gw, gh = (gt[:, 2] - gt[:, 0]).clamp(min=1e-3), (gt[:, 3] - gt[:, 1]).clamp(min=1e-3)
    gx, gy = gt[:, 0] + gw / 2, gt[:, 1] + gh / 2
    return torch.stack(
        [
            (gx - ax) / aw / VARIANCES[0],
            (gy - ay) / ah / VARIANCES[0],
            torch.log(gw / aw) / VARIANCES[1],
            torch.log(gh / ah) / VARIANCES[1],
        ],
        1,
    )


def decode(off: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`encode` (log-sizes clamped so a wild offset cannot overflow)."""
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ax, ay = anchors[:, 0] + aw / 2, anchors[:, 1] + ah / 2
    cx = ax + off[:, 0] * VARIANCES[0] * aw
    cy = ay + off[:, 1] * VARIANCES[0] * ah
    w = aw * torch.exp((off[:, 2] * VARIANCES[1]).clamp(max=4.0))
    h = ah * torch.exp((off[:, 3] * VARIANCES[1]).clamp(max=4.0))
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)


def match(
    anchors: torch.Tensor, gt: torch.Tensor, pos_iou: float = 0.5, neg_iou: float = 0.4
) -> tuple[torch.Tensor, torch.Tensor]:
    """SSD matching of ``anchors [A, 4]`` to one frame's nodule boxes ``gt [n, 4]``.

    Returns ``(labels [A] in {1 positive, 0 negative, -1 ignored}, matched gt index [A])``."""
    labels = torch.zeros(len(anchors), dtype=torch.long)
    idx = torch.zeros(len(anchors), dtype=torch.long)
    if len(gt) == 0:
        return labels, idx
    iou = box_iou(anchors, gt)
    best, idx = iou.max(dim=1)
    labels[best >= pos_iou] = 1
    labels[(best >= neg_iou) & (best < pos_iou)] = -1
    # every nodule keeps its best anchor, however poor the overlap (one that overlaps no
    # anchor at all cannot be regressed from any and is left unmatched)
    top, forced = iou.max(dim=0)
    ok = top > 0
    labels[forced[ok]] = 1
    idx[forced[ok]] = torch.arange(len(gt))[ok]
    return labels, idx


def detection_loss(
    logits: torch.Tensor,
    offsets: torch.Tensor,
    anchors: torch.Tensor,
    targets: Sequence[torch.Tensor],
    neg_ratio: int = 3,
) -> torch.Tensor:
    """SSD loss over a batch: smooth-L1 on positive anchors' offsets + BCE on positives and
    the ``neg_ratio`` hardest negatives per positive, divided by the positives' count."""
    total_box, total_cls, n_pos = logits.new_zeros(()), logits.new_zeros(()), 0
    for b, gt in enumerate(targets):
        labels, idx = match(anchors, gt)
        pos = labels == 1
        npos = int(pos.sum())
        if npos:
            total_box = total_box + F.smooth_l1_loss(
                offsets[b][pos], encode(gt[idx[pos]], anchors[pos]), reduction="sum"
            )
        cls = F.binary_cross_entropy_with_logits(logits[b], pos.float(), reduction="none")
        neg_loss = cls.detach().clone()
        neg_loss[labels != 0] = -1.0
        k = min(int((labels == 0).sum()), max(neg_ratio * npos, neg_ratio))
        hard = torch.topk(neg_loss, k).indices if k else torch.zeros(0, dtype=torch.long)
        total_cls = total_cls + cls[pos].sum() + cls[hard].sum()
        n_pos += npos
    return (total_box + total_cls) / max(n_pos, 1)


@torch.no_grad()
def detect(
    model: NoduleDetector, data: FrameTensors, nms_iou: float = 0.45, max_det: int = 5, batch: int = 32
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per frame: ``(boxes [m, 4] at network scale, scores [m])`` after NMS, best first,
    ``1 <= m <= max_det``; boxes clipped to the frame."""
    model.eval()
    anchors = model.anchors(data.height, data.width)
    out = []
    for s in range(0, len(data), batch):
        idx = list(range(s, min(s + batch, len(data))))
        logits, offsets = model(data.images(idx))
        for b in range(len(idx)):
            scores = torch.sigmoid(logits[b])
            top = torch.topk(scores, min(200, len(scores))).indices
            boxes = decode(offsets[b][top], anchors[top])
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, data.width)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, data.height)
            keep = nms(boxes, scores[top], nms_iou, max_keep=max_det)
            out.append((boxes[keep], scores[top][keep]))
    return out


def average_precision(
    dets: Sequence[tuple[torch.Tensor, torch.Tensor]], gts: Sequence[torch.Tensor], iou: float = 0.5
) -> float:
    """All-point interpolated AP (PASCAL VOC 2010+) at ``iou`` over frames: detections ranked
    by score across frames; a detection is a true positive when it overlaps a not-yet-claimed
    nodule of its frame at ``>= iou``. NaN when there is no nodule."""
    n_gt = sum(len(g) for g in gts)
    if n_gt == 0:
        return float("nan")
    records = []  # (score, frame, box index)
    for f, (boxes, scores) in enumerate(dets):
        records.extend((float(scores[j]), f, j) for j in range(len(boxes)))
    records.sort(key=lambda r: (-r[0], r[1], r[2]))
    claimed = [torch.zeros(len(g), dtype=torch.bool) for g in gts]
    tp = np.zeros(len(records))
    for r, (_, f, j) in enumerate(records):
        if len(gts[f]) == 0:
            continue
        ious = box_iou(dets[f][0][j : j + 1], gts[f])[0]
        ious[claimed[f]] = -1.0
        best = int(ious.argmax())
        if float(ious[best]) >= iou:
            tp[r] = 1
            claimed[f][best] = True
    ctp = np.cumsum(tp)
    recall = ctp / n_gt
    precision = ctp / np.arange(1, len(records) + 1)
    # precision envelope, then the area under the step curve
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    steps = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def detection_quality(dets, gts, iou: float = 0.5) -> dict:
    """``ap50``; ``recall50``: nodules overlapped at ``>= iou`` by any kept detection of their
    frame; ``top1_hit``: frames whose best detection hits a nodule; ``mean_best_iou``: mean over
    nodules of the best IoU among their frame's detections; ``frames``, ``nodules``."""
    best = []
    top1 = []
    for (boxes, _), g in zip(dets, gts):
        if len(g) == 0:
            continue
        m = box_iou(boxes, g) if len(boxes) else torch.zeros(0, len(g))
        best.extend(m.max(dim=0).values.tolist() if len(boxes) else [0.0] * len(g))
        top1.append(bool(len(boxes)) and float(m[0].max()) >= iou)
    best_a = np.asarray(best, dtype=np.float64)
    return {
        "frames": len(gts),
        "nodules": int(best_a.size),
        "ap50": average_precision(dets, gts, iou),
        "recall50": float((best_a >= iou).mean()) if best_a.size else float("nan"),
        "top1_hit": float(np.mean(top1)) if top1 else float("nan"),
        "mean_best_iou": float(best_a.mean()) if best_a.size else float("nan"),
    }


def augment(
    image: torch.Tensor, boxes: torch.Tensor, rng: np.random.Generator, min_zoom: float = 0.6
) -> tuple[torch.Tensor, torch.Tensor]:
    """SSD-style training augmentation of one frame ``image [1, H, W]`` with ``boxes [n, 4]``:
    with p = 0.5 a random zoom-in (a window of 60-100 % of each side, resized back to H x W;
    boxes cut by the window keep their visible part, and a window that would keep less than
    half of any nodule is not used), then a contrast/brightness change of up to +-15 %.
    Ultrasound depth runs downwards, so no vertical flips or rotations."""
    _, H, W = image.shape
    if rng.uniform() < 0.5:
        s = rng.uniform(min_zoom, 1.0)
        cw, ch = max(8, int(round(W * s))), max(8, int(round(H * s)))
        x0, y0 = int(rng.integers(0, W - cw + 1)), int(rng.integers(0, H - ch + 1))
        shifted = boxes - torch.tensor([x0, y0, x0, y0], dtype=boxes.dtype)
        clipped = torch.stack(
            [
                shifted[:, 0].clamp(0, cw),
                shifted[:, 1].clamp(0, ch),
                shifted[:, 2].clamp(0, cw),
                shifted[:, 3].clamp(0, ch),
            ],
            1,
        )

        def area(b):
            return (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)

        if bool((area(clipped) >= 0.5 * area(shifted)).all()):
            crop = image[:, y0 : y0 + ch, x0 : x0 + cw]
            image = F.interpolate(crop[None], size=(H, W), mode="bilinear", align_corners=False)[0]
            boxes = clipped * torch.tensor([W / cw, H / ch, W / cw, H / ch], dtype=boxes.dtype)
    c, b = rng.uniform(0.85, 1.15, size=2)
    return image * float(c) + float(b - 1.0), boxes


class _DetectorTask:
    def __init__(self, model: NoduleDetector, fit: FrameTensors, val: FrameTensors, cfg):
        self.model, self.fit, self.val, self.cfg = model, fit, val, cfg
        self.n = len(fit)
        self.anchors = model.anchors(fit.height, fit.width)
        self.val_gt = [val.boxes(i) for i in range(len(val))]

    def start_epoch(self, epoch):
        self.model.train()

    def step(self, rows, epoch):
        cfg = self.cfg
        rows = [int(r) for r in rows]
        rngs = [np.random.default_rng([cfg.seed, epoch, r]) for r in rows]
        flips = [bool(g.uniform() < 0.5) for g in rngs]
        images, targets = self.fit.images(rows, flips), [self.fit.boxes(r, f) for r, f in zip(rows, flips)]
        if cfg.det_augment:
            pairs = [augment(images[j], targets[j], g) for j, g in enumerate(rngs)]
            images, targets = torch.stack([p[0] for p in pairs]), [p[1] for p in pairs]
        logits, offsets = self.model(images)
        return detection_loss(logits, offsets, self.anchors, targets), 1.0, 1.0

    def validate(self, epoch):
        q = detection_quality(detect(self.model, self.val, self.cfg.nms_iou, self.cfg.max_det), self.val_gt)
        return [q["ap50"]], {"val_ap50": q["ap50"], "val_recall50": q["recall50"]}

    def generators(self):
        return {}


def train_detector(
    fit: FrameTensors,
    val: FrameTensors,
    cfg,
    progress=None,
    ckpt_dir=None,
    resume: bool = False,
    keep_last: bool = True,
) -> tuple[NoduleDetector, dict]:
    """Train on ``fit`` frames (horizontal flips, and with ``det_augment`` :func:`augment`, drawn
    from (seed, epoch, frame)) through the shared epoch loop, keeping the epoch with the best
    validation AP@0.5 (the first on ties). ``cfg``: ``n_anchors``, ``det_width``,
    ``det_epochs``, ``det_lr``, ``det_batch``, ``det_augment``, ``nms_iou``, ``max_det``,
    ``seed``. Returns the model and a training summary (anchors, history, best epoch, files)."""
    from ..engine import LoopSettings, fit_loop

    if len(fit) < 2 or len(val) < 1:
        raise HfcnError(f"too few frames to train the detector ({len(fit)} training, {len(val)} validation)")
    gts = np.concatenate([fit.boxes(i).numpy() for i in range(len(fit))])
    shapes = anchor_shapes(gts, cfg.n_anchors, seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    model = NoduleDetector(shapes, width=cfg.det_width)
    settings = LoopSettings(
        epochs=cfg.det_epochs,
        batch_size=cfg.det_batch,
        lr=cfg.det_lr,
        weight_decay=1e-4,
        optimizer="adamw",
        seed=cfg.seed,
    )
    import dataclasses

    loop = fit_loop(
        model,
        _DetectorTask(model, fit, val, cfg),
        settings,
        config={**DA.loop_config(dataclasses.asdict(cfg)), "stage": "detector"},
        ckpt_dir=ckpt_dir,
        resume=resume,
        progress=progress,
        stage="det_epoch",
        keep_last=keep_last,
    )
    return model, {
        "anchors_wh": np.round(shapes, 2).tolist(),
        "best_epoch": loop.best_epoch,
        "best_val_ap50": loop.best_score[0] if loop.best_score else float("nan"),
        "history": loop.history,
        "train_s": loop.seconds,
        "fit_frames": len(fit),
        "val_frames": len(val),
        "parameters": sum(p.numel() for p in model.parameters()),
        "files": loop.checkpoints,
    }


def detector_from_state(state: dict, width: int) -> NoduleDetector:
    """Rebuild a trained detector from its state dict (the anchor shapes are a buffer in it)."""
    if "shapes" not in state:
        raise HfcnError("detector weights hold no anchor shapes")
    model = NoduleDetector(state["shapes"].numpy(), width=width)
    model.load_state_dict(state)
    return model.eval()
