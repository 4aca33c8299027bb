"""``mccnn_spp``: the fine-recognition stage of MC-CNN with its spatial pyramid module.

Song W. et al., "Multitask cascade convolution neural networks for automatic thyroid nodule
detection and recognition", IEEE JBHI 2019 (PAPERS.md section 2). Stage 2 classifies nodule
boxes with an AlexNet whose conv5/pool5 output goes through a *spatial pyramid module*:
three parallel levels with kernels 1x1, 3x3 and 5x5 (a convolution and a pooling each), each
level's channels reduced to 1/N (N = 3 levels) by a 1x1 convolution, the levels concatenated.

``mccnn_spp`` trains and tests the stage on the *annotated* nodule boxes (``Sample.bbox``):
the recognition network alone, with perfect localisation. ``mccnn_cascade`` puts the stage-1
detector (:mod:`.detector`) in front: stage 2 is trained on the annotated boxes and scored on
the boxes the detector finds, with the annotated-box score kept as a variant. Trunks:
``alexnet`` (torchvision's AlexNet convolutional part, the published trunk, randomly
initialised) or any HFCN backbone name (``paper`` is the fast one; ``efficientnet_lite0`` with
``weights="imagenet"`` is pretrained). Training: the shared epoch loop (AdamW,
cross-entropy, the ``RoiDataset`` augmentation), the best epoch picked on validation ROC-AUC
and the threshold chosen on those validation cases (:mod:`.roi_classifier`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.rois import Sample
from ..data.splits import split_train_test
from ..engine import torch_threads
from ..errors import HfcnError
from . import descriptor_aux as DA
from . import roi_classifier as RC
from .base import Fitted, Output, System

__all__ = [
    "MCCNNConfig",
    "MCCNNCascadeConfig",
    "SpatialPyramidModule",
    "MCCNNClassifier",
    "build_mccnn",
    "MCCNNSPP",
    "MCCNNCascade",
    "pair_detections",
]


class SpatialPyramidModule(nn.Module):
    """MC-CNN's spatial pyramid module (Song et al., JBHI 2019, stage 2).

    Level ``k`` in ``kernels``: ``Conv k x k`` (same padding) -> ReLU -> ``MaxPool k x k``
    (stride 1, same padding) -> ``Conv 1 x 1`` to ``channels // len(kernels)`` channels -> ReLU.
    The levels see the same map at three receptive-field sizes; the 1/N reduction keeps the
    concatenation at about the input width.

    Shapes: ``x (Tensor[B, C, h, w]) -> Tensor[B, len(kernels) * (C // len(kernels)), h, w]``.
    """

    def __init__(self, channels: int, kernels: Sequence[int] = (1, 3, 5)):
        super().__init__()
        n = len(kernels)
        if channels < n:
            raise HfcnError(f"the spatial pyramid needs at least {n} input channels, got {channels}")
        red = channels // n
        self.levels = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(channels, channels, k, padding=k // 2),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(k, stride=1, padding=k // 2),
                nn.Conv2d(channels, red, 1),
                nn.ReLU(inplace=True),
            )
            for k in kernels
        )
        self.out_channels = red * n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([level(x) for level in self.levels], dim=1)


class MCCNNClassifier(RC.PooledClassifier):
    """Trunk -> spatial pyramid module -> global average pool -> dropout -> linear (2 classes),
    with optional TI-RADS descriptor heads on the pooled pyramid features
    (``descriptor_classes``; :class:`.roi_classifier.PooledClassifier`).

    ``x (Tensor[B, 3, H, W]) -> logits (Tensor[B, 2])``."""

    def __init__(self, trunk: nn.Module, channels: int, dropout: float = 0.5, descriptor_classes=()):
        spm = SpatialPyramidModule(channels)
        super().__init__(trunk, spm.out_channels, dropout, descriptor_classes, neck=("spm", spm))


@dataclass
class MCCNNConfig(RC.RoiTrainingSpec):
    """``trunk``: ``alexnet`` or an HFCN backbone name; ``weights``: a local state dict for the
    trunk (torchvision AlexNet layout for ``alexnet``); ``image_size`` (AlexNet needs >= 64,
    128 gives pool5 a 3x3 map); the training fields of :class:`.roi_classifier.RoiTrainingSpec`."""

    trunk: str = "alexnet"
    weights: str | None = None
    image_size: int = 128

    def validate(self) -> None:
        from ..models import available_backbones

        known = ("alexnet",) + tuple(available_backbones())
        if self.trunk not in known:
            raise HfcnError(f"trunk must be one of {', '.join(known)}, got {self.trunk!r}")
        if self.trunk == "alexnet" and self.image_size < 64:
            raise HfcnError(f"the alexnet trunk needs image_size >= 64, got {self.image_size}")
        if self.image_size < 16:
            raise HfcnError(f"image_size must be >= 16, got {self.image_size}")
        self.validate_training()


QUICK = {"trunk": "paper", "image_size": 64, "epochs": 8}
SMOKE = {"trunk": "paper", "image_size": 32, "epochs": 1, "threads": 1}


def build_mccnn(cfg: MCCNNConfig, weights: bool = True) -> MCCNNClassifier:
    """The seeded classifier of ``cfg`` (``torch.manual_seed(cfg.seed)`` before building);
    ``weights=False`` skips the trunk's initial weights (they are about to be replaced by a
    checkpoint's)."""
    torch.manual_seed(cfg.seed)
    init = cfg.weights if weights else None
    if cfg.trunk == "alexnet":
        try:
            import torchvision
        except ImportError:
            raise HfcnError("the alexnet trunk needs torchvision", hint="pip install hfcn-bench[vision]") from None
        net = torchvision.models.alexnet(weights=None)
        if init is not None:
            from ..models.backbones import load_backbone_weights

            holder = nn.Module()
            holder.features = net.features
            load_backbone_weights(holder, init, name="alexnet")
        trunk, channels = net.features, 256
    else:
        from ..models import build_backbone

        trunk = build_backbone(cfg.trunk, weights=init)
        channels = trunk.num_features
    return MCCNNClassifier(trunk, channels, cfg.dropout, cfg.descriptor_classes())


def _trunk_limitations(cfg: MCCNNConfig) -> list[str]:
    """What the trunk could not be as published: its weights, and AlexNet when another is chosen."""
    if cfg.weights is None:
        lim = [
            f"randomly initialised {cfg.trunk} trunk (seed {cfg.seed}): no ImageNet weights for it ship in a "
            "package here"
        ]
    elif cfg.weights == "imagenet":
        lim = [f"ImageNet {cfg.trunk} trunk (weights shipped in a package)"]
    else:
        lim = [f"trunk weights from {cfg.weights}"]
    if cfg.trunk != "alexnet":
        lim.append(f"trunk {cfg.trunk} instead of the published AlexNet")
    if cfg.aux_descriptors > 0:
        lim.append(DA.limitation(cfg.aux_descriptors))
    return lim


# ---------------------------------------------------------------------------------------------
# the full cascade: stage-1 detector -> stage-2 pyramid network on the detected box


@dataclass
class MCCNNCascadeConfig(MCCNNConfig):
    """:class:`MCCNNConfig` (stage 2) plus the stage-1 detector (``detector.py``):
    ``frame_size`` (height, width) the frames are resized to; ``n_anchors`` anchor shapes
    from the training boxes; ``det_width`` the trunk's first width; ``det_epochs``,
    ``det_lr``, ``det_batch``; ``det_augment`` (random zoom-in + contrast jitter on top of the
    flips); ``nms_iou`` and ``max_det`` (boxes kept per frame)."""

    frame_size: tuple[int, int] = (160, 256)
    n_anchors: int = 6
    det_width: int = 16
    det_epochs: int = 40
    det_lr: float = 2e-3
    det_batch: int = 8
    det_augment: bool = True
    nms_iou: float = 0.45
    max_det: int = 5

    def validate(self) -> None:
        super().validate()
        fs = tuple(self.frame_size)
        if len(fs) != 2 or min(fs) < 32:
            raise HfcnError(f"frame_size must be (height, width) with both >= 32, got {self.frame_size}")
        self.frame_size = (int(fs[0]), int(fs[1]))
        if self.n_anchors < 2 or self.det_width < 4 or self.det_epochs < 1 or self.det_batch < 2 or self.max_det < 1:
            raise HfcnError("n_anchors must be >= 2, det_width >= 4, det_epochs >= 1, det_batch >= 2, max_det >= 1")
        if self.det_lr <= 0 or not 0 < self.nms_iou < 1:
            raise HfcnError("det_lr must be > 0 and nms_iou in (0, 1)")


QUICK_CASCADE = {**QUICK, "frame_size": (96, 160), "det_epochs": 25}
SMOKE_CASCADE = {**SMOKE, "frame_size": (64, 96), "det_epochs": 2}


def pair_detections(dets, data, what: str = "detected") -> tuple[list[Sample], dict]:
    """The detected ROI of every annotated nodule of ``data``'s frames.

    A frame's detections are the system's own (no annotation used to make them). Each
    annotated nodule is then *paired*, for scoring, with the detection of its frame that
    overlaps its ROI box most; a nodule that no detection overlaps is a miss and takes the
    frame's best detection (the cascade classifies whatever it found). Returns the samples
    with their detected box (``roi_kind`` = ``what``) and counts: ``nodules``, ``missed``,
    ``hit50`` (paired IoU >= 0.5) and ``mean_iou`` of the pairs."""
    from .frames import box_iou, localised, to_frame_box, with_box

    out, ious, missed = [], [], 0
    for i, (boxes, _) in enumerate(dets):
        gt = data.boxes(i)
        m = box_iou(boxes, gt)  # [detections, nodules]
        for j, s in enumerate(data.frames[i].samples):
            if not localised(s):
                # nothing annotated to pair with (a frame given to predict without a box): the
                # cascade classifies its most confident detection
                out.append(with_box(s, to_frame_box(boxes[0].tolist(), data.frames[i].size, data.scale(i)), what))
                continue
            best = int(m[:, j].argmax())
            iou = float(m[best, j])
            if iou <= 0.0:
                best, missed = 0, missed + 1
            ious.append(iou)
            out.append(with_box(s, to_frame_box(boxes[best].tolist(), data.frames[i].size, data.scale(i)), what))
    a = np.asarray(ious, dtype=np.float64)
    return out, {
        "nodules": len(out),
        "missed": missed,
        "hit50": int((a >= 0.5).sum()),
        "mean_iou": float(a.mean()) if a.size else float("nan"),
    }


# ---------------------------------------------------------------------------------------------
# the systems


_SPP_LIMITS = [
    "the paper's 4309 private images are not available; trained on the split's training cases only",
    "global average pooling + one linear layer after the pyramid module instead of AlexNet's FC6-FC8",
]


class MCCNNSPP(System):
    """``mccnn_spp``: MC-CNN stage 2 alone, on the annotated nodule boxes."""

    name = "mccnn_spp"
    paper = "Song et al., IEEE JBHI 2019, MC-CNN stage 2 (PAPERS.md section 2)"
    description = (
        "AlexNet-style trunk + spatial pyramid module (1x1/3x3/5x5 levels, 1/3 channels each) on annotated boxes"
    )
    config_cls = MCCNNConfig
    presets = {"quick": QUICK, "smoke": SMOKE}

    def limitations(self, cfg) -> list[str]:
        return [
            "stage 2 only: trained and tested on the annotated nodule boxes, so localisation is perfect here "
            "(mccnn_cascade runs it behind the stage-1 detector)",
            *_SPP_LIMITS,
            *_trunk_limitations(cfg),
        ]

    def fit(self, train_samples, cfg, *, out_dir=None, progress=None, resume=False, keep_last=True) -> Fitted:
        skipped: list[str] = []
        with torch_threads(cfg.threads):
            clf = RC.train_classifier(
                build_mccnn(cfg),
                train_samples,
                cfg,
                progress,
                skipped,
                ckpt_dir=_sub(out_dir, "classifier"),
                resume=resume,
                keep_last=keep_last,
            )
        return Fitted(
            self.name,
            cfg,
            {"classifier": clf.model},
            {"main": clf.val_predictions},
            {"main": "validation"},
            {"classifier": clf.summary()},
            {"train_s": clf.train_s},
            skipped,
            sorted(set(clf.val_predictions.case_ids)),
        )

    def predict(self, fitted, samples, *, progress=None) -> Output:
        t = time.perf_counter()
        with torch_threads(fitted.config.threads):
            pred = RC.predict_rois(fitted.models["classifier"], samples, fitted.config, [])
        return Output({"main": pred}, seconds=time.perf_counter() - t)

    def save(self, fitted, out_dir) -> list[str]:
        return _stage_files(out_dir, "classifier")

    def load(self, cfg, directory, record, checkpoint="best", device="cpu"):
        return {
            "classifier": RC.load_weights(
                build_mccnn(cfg, weights=False), Path(directory) / "classifier" / f"{checkpoint}.pt"
            )
        }

    def explain(self, fitted, sample, display: int = 256) -> dict | None:
        return _explain_classifier(fitted, sample, display)


class MCCNNCascade(System):
    """``mccnn_cascade``: the stage-1 detector, then the pyramid network on the detected box."""

    name = "mccnn_cascade"
    paper = "Song et al., IEEE JBHI 2019, MC-CNN stages 1 + 2 (PAPERS.md section 2)"
    description = (
        "SSD-style nodule detector on the whole frame -> the pyramid network on the detected box "
        "(variant annotated_roi: on the annotated box)"
    )
    config_cls = MCCNNCascadeConfig
    presets = {"quick": QUICK_CASCADE, "smoke": SMOKE_CASCADE}
    variants = {"annotated_roi": "the same stage-2 network on the annotated nodule boxes (perfect localisation)"}

    def limitations(self, cfg) -> list[str]:
        return [
            "stage 1 is a small SSD-style detector (two feature maps, anchors by k-means over the training boxes), "
            "not the paper's VGG-16 SSD300, and is trained on the split's training frames only",
            "stage 2 is trained on the annotated boxes and applied to the detected ones; each annotated nodule is "
            "scored with the detection of its frame that overlaps it most (a missed nodule with the frame's best box)",
            *_SPP_LIMITS,
            *_trunk_limitations(cfg),
        ]

    def fit(self, train_samples, cfg, *, out_dir=None, progress=None, resume=False, keep_last=True) -> Fitted:
        from . import detector as D
        from .frames import FrameTensors, group_frames

        skipped: list[str] = []
        with torch_threads(cfg.threads):
            # The detector's validation frames are the cases roi_classifier holds out for stage 2.
            inner = split_train_test(list(train_samples), test_fraction=cfg.val_fraction, seed=cfg.seed)
            fit_s, val_s = inner.select(list(train_samples))
            fit_f = FrameTensors(group_frames(fit_s, what="detection"), cfg.frame_size, skipped)
            val_f = FrameTensors(group_frames(val_s, what="detection"), cfg.frame_size, skipped)
            det, det_train = D.train_detector(
                fit_f, val_f, cfg, progress, ckpt_dir=_sub(out_dir, "detector"), resume=resume, keep_last=keep_last
            )
            clf = RC.train_classifier(
                build_mccnn(cfg),
                train_samples,
                cfg,
                progress,
                skipped,
                ckpt_dir=_sub(out_dir, "classifier"),
                resume=resume,
                keep_last=keep_last,
            )
        val = clf.val_predictions
        return Fitted(
            self.name,
            cfg,
            {"detector": det, "classifier": clf.model},
            {"main": val, "annotated_roi": val},
            {"main": "validation", "annotated_roi": "validation"},
            {
                "detector": {k: v for k, v in det_train.items() if k not in ("train_s", "files")},
                "classifier": clf.summary(),
            },
            {"det_train_s": det_train["train_s"], "train_s": clf.train_s},
            skipped,
            sorted(set(val.case_ids)),
        )

    def predict(self, fitted, samples, *, progress=None) -> Output:
        from . import detector as D
        from .frames import FrameTensors, group_frames, localised

        cfg = fitted.config
        skipped: list[str] = []
        t = time.perf_counter()
        with torch_threads(cfg.threads):
            frames = FrameTensors(group_frames(samples, what="detection", need_box=False), cfg.frame_size, skipped)
            if not len(frames):
                raise HfcnError("no frame could be loaded")
            dets = D.detect(fitted.models["detector"], frames, cfg.nms_iou, cfg.max_det)
            scored = [i for i in range(len(frames)) if all(localised(s) for s in frames.frames[i].samples)]
            summaries = {}
            if scored:
                quality = D.detection_quality([dets[i] for i in scored], [frames.boxes(i) for i in scored])
                _, pairing = pair_detections([dets[i] for i in scored], _Subset(frames, scored))
                summaries["detection"] = {**quality, **{f"paired_{k}": v for k, v in pairing.items() if k != "nodules"}}
            detected, _ = pair_detections(dets, frames)
            annotated = [s for f in frames.frames for s in f.samples]
            clf = fitted.models["classifier"]
            main = RC.predict_rois(clf, detected, cfg, skipped)
            ann = RC.predict_rois(clf, annotated, cfg, list(skipped))
        return Output({"main": main, "annotated_roi": ann}, summaries, time.perf_counter() - t)

    def save(self, fitted, out_dir) -> list[str]:
        return _stage_files(out_dir, "detector") + _stage_files(out_dir, "classifier")

    def load(self, cfg, directory, record, checkpoint="best", device="cpu"):
        from ..checkpoint import load_checkpoint
        from .detector import detector_from_state

        d = Path(directory)
        det = detector_from_state(load_checkpoint(d / "detector" / f"{checkpoint}.pt")["model"], cfg.det_width)
        return {
            "detector": det,
            "classifier": RC.load_weights(build_mccnn(cfg, weights=False), d / "classifier" / f"{checkpoint}.pt"),
        }

    def explain(self, fitted, sample, display: int = 256) -> dict | None:
        # ``sample`` carries the box the detector found (what stage 2 classified)
        return _explain_classifier(fitted, sample, display)


class _Subset:
    """Some frames of a FrameTensors, with the accessors pair_detections reads."""

    def __init__(self, frames, idx):
        self._f, self._idx = frames, list(idx)
        self.frames = [frames.frames[i] for i in self._idx]

    def boxes(self, i):
        return self._f.boxes(self._idx[i])

    def scale(self, i):
        return self._f.scale(self._idx[i])


def _explain_classifier(fitted, sample, display: int) -> dict | None:
    """Grad-CAM of the pyramid network's malignant logit on its trunk's map (the last map with
    spatial layout before the pyramid module mixes scales; :mod:`.gradcam`)."""
    from .gradcam import roi_classifier_explain

    clf = fitted.models["classifier"]
    with torch_threads(fitted.config.threads):
        return roi_classifier_explain(
            clf, clf.trunk, sample, fitted.config, display, what=f"{fitted.config.trunk} trunk"
        )


def _sub(out_dir, name: str):
    return None if out_dir is None else Path(out_dir) / name


def _stage_files(out_dir, stage: str) -> list[str]:
    """The checkpoint files one trained stage left in ``out_dir/stage``."""
    d = Path(out_dir) / stage
    return [f"{stage}/{n}" for n in ("best.pt", "last.pt") if (d / n).is_file()]
