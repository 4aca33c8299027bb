"""``two_stage``: segment the nodule, cut the ROI from the predicted mask, classify it.

Abdelrazik et al., "A Deep Learning Framework for Thyroid Nodule Segmentation and Malignancy
Classification from Ultrasound Images", arXiv 2511.11937 (2025) (PAPERS.md section 4): a
segmentation network (TransUNet) outlines the nodule, the region of interest is cut from the
predicted mask, and a ResNet-18 classifies it; their baseline is a Random Forest on shape
features of the mask. Here:

1. **segmenter** — ``segmenter`` picks it (:mod:`.segmentation`): ``unet`` (default), a U-Net
   that trains in CPU-minutes; ``transunet``, the paper's TransUNet (R50 + ViT-B/16,
   :mod:`hfcn_bench.models.transunet`), for a GPU; ``transunet-small``, a reduced TransUNet a
   CPU trains. Trained on whole frames resized to ``frame_size`` against the annotated
   outlines rasterised as masks (cross-entropy + Dice, as TransUNet's authors train it; best
   epoch by validation Dice); ``seg_weights`` loads a local state dict into it first. Fit and
   validation frames come from the same case-level inner split of the training cases as the
   classifier's (``split_train_test(train, val_fraction, seed)``). Frames holding a salvaged
   (truncated) outline are left out of the segmenter's training and of the test Dice: their
   mask closes the cut outline with a chord and would teach and score the wrong region.
2. **ROI** — each test frame's probability map is turned into connected regions and each
   annotated nodule paired with one (the rule in :mod:`.segmentation`: best box IoU with the
   nodule's annotated box, else the largest region, counting *missed* nodules; an empty mask
   falls back to half the frame's maximum probability). The ROI is the region's box in frame
   pixels grown by ``roi_margin`` (``data.rois.expand_box``). The paper's rule is the default,
   0: "the mask gives a region of interest" (PAPERS.md section 4) names no margin, so the ROI
   is the predicted region's tight box, the same rule as DDTI's default outline-box ROIs,
   which is what the classifier is trained on.
3. **classifier** — ResNet-18 trunk (torchvision layout, random init unless ``weights``) +
   global average pool + dropout + linear, trained with :mod:`.roi_classifier` on the
   *annotated* training ROIs (best epoch on validation AUC, threshold on the validation cases).

The main report scores the classifier on the ROIs cut from the *predicted* masks. Variants:
``annotated_roi`` (the same classifier on the annotated test ROIs: what perfect segmentation
would give) and ``shape_rf_predicted`` (the paper's baseline: :mod:`.shape_rf`'s forest
trained on the annotated training outlines, applied to the outlines of the predicted regions).
``segmentation`` holds the test Dice/IoU and ``pairing`` the pairing counts.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.rois import Sample, expand_box
from ..data.splits import split_train_test
from ..engine import torch_threads
from ..errors import HfcnError
from . import common as C
from . import descriptor_aux as DA
from . import roi_classifier as RC
from . import segmentation as SEG
from . import shape_rf
from .base import Fitted, Output, System
from .frames import FrameTensors, group_frames, to_frame_box, with_box

__all__ = ["TwoStageConfig", "ResNetClassifier", "build_classifier", "TwoStage"]


class ResNetClassifier(RC.PooledClassifier):
    """Trunk -> global average pool -> dropout -> linear (2 classes), with optional TI-RADS
    descriptor heads on the pooled features (:class:`.roi_classifier.PooledClassifier`).

    ``x (Tensor[B, 3, S, S]) -> logits (Tensor[B, 2])``."""


@dataclass
class TwoStageConfig(RC.RoiTrainingSpec):
    """Segmenter: ``segmenter`` (``unet``, ``transunet`` or ``transunet-small``);
    ``seg_weights`` (local state dict of that network, or None: random initialisation);
    ``frame_size`` (height, width) the frames are resized to; ``unet_base`` (first-level
    width), ``unet_depth`` (down steps) of the U-Net; ``seg_epochs``, ``seg_batch``,
    ``seg_lr``, ``seg_weight_decay``; ``device`` the segmenter trains and predicts on (``cpu``,
    ``cuda``, ``cuda:N`` or ``auto``; the ResNet-18 and the forest stay on the CPU). ROI:
    ``roi_margin`` (fraction of the predicted box per side; 0, the paper's rule, see the
    module docstring). Classifier: ``weights`` (local ResNet-18 state dict, torchvision layout),
    ``image_size``, ``epochs``, ``batch_size``, ``lr``, ``weight_decay``, ``dropout``;
    ``val_fraction`` (case-level validation part of the training cases, shared by both
    networks); ``threshold_rule``. Baseline: ``rf_trees``, ``threshold_folds``.
    ``threads``: torch threads (None leaves the setting alone)."""

    segmenter: str = "unet"
    seg_weights: str | None = None
    frame_size: tuple[int, int] = (160, 256)
    unet_base: int = 16
    unet_depth: int = 4
    seg_epochs: int = 30
    seg_batch: int = 8
    seg_lr: float = 1e-3
    seg_weight_decay: float = 1e-4
    device: str = "cpu"
    roi_margin: float = 0.0
    weights: str | None = None
    image_size: int = 128
    rf_trees: int = 300
    threshold_folds: int = 5

    def validate(self) -> None:
        fs = self.frame_size
        if (
            not isinstance(fs, (tuple, list))
            or len(fs) != 2
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in fs)
        ):
            raise HfcnError(f"frame_size must be two integers (height, width), got {fs!r}")
        self.frame_size = (int(fs[0]), int(fs[1]))  # a JSON/CLI list becomes the documented tuple
        if self.segmenter not in SEG.SEGMENTERS:
            raise HfcnError(
                f"segmenter must be one of {', '.join(SEG.SEGMENTERS)}, got {self.segmenter!r}",
                hint="unet trains in CPU-minutes; transunet-small is a reduced TransUNet; transunet is the paper's",
            )
        if not 1 <= self.unet_depth <= 6:
            raise HfcnError(f"unet_depth must be in 1..6, got {self.unet_depth}")
        if self.unet_base < 2:
            raise HfcnError(f"unet_base must be >= 2, got {self.unet_base}")
        # a TransUNet's tokens are 16-pixel cells: a side under 16 leaves none
        need = max(16, 2**self.unet_depth) if self.segmenter == "unet" else 16
        if min(self.frame_size) < need:
            net = f"a depth-{self.unet_depth} U-Net" if self.segmenter == "unet" else f"the {self.segmenter} segmenter"
            raise HfcnError(
                f"frame_size sides must be >= {need} for {net}, got {self.frame_size[0]}x{self.frame_size[1]}"
            )
        if self.seg_epochs < 1 or self.seg_batch < 2:
            raise HfcnError(f"seg_epochs must be >= 1 and seg_batch >= 2, got {self.seg_epochs} and {self.seg_batch}")
        if self.seg_lr <= 0 or self.seg_weight_decay < 0:
            raise HfcnError("seg_lr must be > 0 and seg_weight_decay >= 0")
        if self.roi_margin < 0:
            raise HfcnError(f"roi_margin must be >= 0, got {self.roi_margin}")
        if self.image_size < 32:  # ResNet-18 downsamples 32x; smaller crops leave a 0-size map
            raise HfcnError(f"image_size must be >= 32 for the ResNet-18 classifier, got {self.image_size}")
        self.validate_training()
        if self.rf_trees < 1:
            raise HfcnError(f"rf_trees must be >= 1, got {self.rf_trees}")
        if self.threads is not None and self.threads < 1:
            raise HfcnError(f"threads must be >= 1 or None, got {self.threads}")


# ~5 CPU-minutes on one thread for DDTI's ~250 training frames (a split's 3/4): a width-8 U-Net
# at 96x144 reaches the test Dice of a width-16 one (~0.64) in half the time; the fewer, smaller
# steps want a larger learning rate than the default.
QUICK = {
    "frame_size": (96, 144),
    "unet_base": 8,
    "seg_epochs": 20,
    "seg_lr": 2e-3,
    "image_size": 64,
    "epochs": 8,
    "rf_trees": 100,
}
SMOKE = {**QUICK, "frame_size": (64, 96), "seg_epochs": 2, "epochs": 1, "image_size": 32, "rf_trees": 30, "threads": 1}


def build_classifier(cfg: TwoStageConfig, weights: bool = True) -> ResNetClassifier:
    """The seeded ResNet-18 classifier of ``cfg`` (``torch.manual_seed(cfg.seed)`` first);
    ``weights=False`` skips the trunk's initial weights (a checkpoint replaces them)."""
    from ..models import build_backbone

    torch.manual_seed(int(cfg.seed))
    trunk = build_backbone("resnet18", weights=cfg.weights if weights else None)
    return ResNetClassifier(trunk, trunk.num_features, cfg.dropout, cfg.descriptor_classes())


def _frames(
    samples: list[Sample], cfg: TwoStageConfig, skipped: list[str], whole_only: bool = False, need_outline: bool = True
) -> FrameTensors:
    """The frames of ``samples`` decoded at ``cfg.frame_size`` (with their masks when every
    sample has an outline); ``whole_only`` leaves out frames holding a salvaged (truncated)
    outline, whose mask would be wrong."""
    frames = group_frames(samples, need_outline=need_outline, what="segmentation", need_box=need_outline)
    if whole_only:
        frames = [f for f in frames if not _salvaged(f)]
    return FrameTensors(frames, cfg.frame_size, skipped, masks=need_outline)


def _salvaged(frame) -> bool:
    return any(s.salvaged for s in frame.samples)


def _outlined(frame) -> bool:
    return all(s.polygon and len(s.polygon) >= 3 for s in frame.samples)


def _segmenter_limitation(cfg) -> str:
    """What the configured segmenter is, beside the paper's TransUNet."""
    size = f"{cfg.frame_size[0]}x{cfg.frame_size[1]}"
    if cfg.segmenter == "unet":
        return (
            f"segmenter: a U-Net at {size} instead of the paper's TransUNet (its ViT encoder does not train in a "
            "CPU budget; --set segmenter=transunet-small trains a reduced one, segmenter=transunet the paper's)"
        )
    from ..models.transunet import CONFIGS

    c = CONFIGS[cfg.segmenter]
    shape = (
        f"R50 v2 stem of {'/'.join(map(str, c.stem_units))} units at width {c.stem_width}, ViT of {c.layers} layers, "
        f"hidden {c.hidden}, {c.heads} heads, MLP {c.mlp}, decoder {'/'.join(map(str, c.decoder_channels))}"
    )
    if cfg.segmenter == "transunet":
        at = "" if cfg.frame_size == c.img_size else f" (the paper's runs at {c.img_size[0]}x{c.img_size[1]})"
        return f"segmenter: the paper's TransUNet (transunet: {shape}) at {size}{at}"
    return (
        f"segmenter: {cfg.segmenter}, a reduced TransUNet ({shape}) at {size}, instead of the paper's R50 + ViT-B/16 "
        "(transunet), which does not train in a CPU budget"
    )


def _initialisation_limitation(cfg) -> str:
    """Where each network's initial weights come from."""
    seg = "U-Net" if cfg.segmenter == "unet" else f"TransUNet ({cfg.segmenter})"
    random = []
    if cfg.seg_weights is None:
        random.append(seg)
    if cfg.weights is None:
        random.append("ResNet-18")
    parts = []
    if random:
        why = "no pretrained weights for them ship in a package here"
        if cfg.segmenter != "unet" and cfg.seg_weights is None:
            why += " (TransUNet's authors start from ImageNet-21k R50 + ViT-B/16 weights)"
        parts.append(f"randomly initialised {' and '.join(random)} (seed {cfg.seed}): {why}")
    if cfg.seg_weights is not None:
        parts.append(f"{seg} weights from {cfg.seg_weights}")
    if cfg.weights is not None:
        parts.append(f"ResNet-18 trunk weights from {cfg.weights}")
    return "; ".join(parts)


def _stage_files(out_dir, stage: str) -> list[str]:
    d = Path(out_dir) / stage
    return [f"{stage}/{n}" for n in ("best.pt", "last.pt") if (d / n).is_file()]


class TwoStage(System):
    """``two_stage``: U-Net or TransUNet segmentation -> ROI from the predicted mask -> ResNet-18."""

    name = "two_stage"
    paper = "Abdelrazik et al. 2025, arXiv 2511.11937 (PAPERS.md section 4)"
    description = (
        "U-Net or TransUNet segmentation of the frame -> ROI from the predicted mask -> ResNet-18 (variants: "
        "annotated_roi, shape_rf_predicted)"
    )
    config_cls = TwoStageConfig
    presets = {"quick": QUICK, "smoke": SMOKE}
    variants = {
        "annotated_roi": "the same ResNet-18 on the annotated test ROIs (perfect segmentation): the gap to the main "
        "result is the cost of segmenting",
        "shape_rf_predicted": "the paper's baseline: Random Forest on shape/echogenicity features of the nodule "
        "outline, trained on the annotated training outlines, applied to the outlines of the "
        "predicted masks",
    }

    def limitations(self, cfg) -> list[str]:
        return [
            _segmenter_limitation(cfg),
            _initialisation_limitation(cfg),
            "segmentation targets are the annotated outline polygons rasterised at the network's resolution, not "
            "pixel masks drawn by the radiologists; Dice/IoU are measured at that resolution",
            "frames with salvaged (truncated) outlines are left out of the segmenter's training and of the test Dice; "
            "their nodules are still classified",
            "pairing: the annotation only picks which predicted region a nodule is scored against (best box IoU, "
            "else the largest region; counts under 'pairing')",
            "the classifier is trained on annotated ROIs only and sees predicted ROIs only at test time",
            "variant shape_rf_predicted: features of the predicted outlines at test time, of the annotated outlines "
            "in training; predicted outlines are traced at the segmenter's resolution and so are smoother",
            "the paper's private images are not available; trained on the split's training cases only",
            *filter(None, [DA.limitation(cfg.aux_descriptors)]),
        ]

    def fit(self, train_samples, cfg, *, out_dir=None, progress=None, resume=False, keep_last=True) -> Fitted:
        C.sklearn()  # the baseline forest and the connected components (scipy) need it: fail before training
        with torch_threads(cfg.threads):
            return self._fit(list(train_samples), cfg, out_dir, progress, resume, keep_last)

    def _fit(self, train_samples, cfg, out_dir, progress, resume, keep_last) -> Fitted:
        skipped: list[str] = []
        # Refuse outline-less data before anything is trained (group_frames says why).
        group_frames(train_samples, need_outline=True, what="segmentation")
        # Refuse a weights file that does not fit before anything is trained: building a network
        # loads it with every key and shape checked (fit_segmenter and build_classifier seed
        # before they build, so these throw-away builds change nothing).
        if cfg.seg_weights is not None:
            SEG.build_segmenter(cfg)
        if cfg.weights is not None:
            build_classifier(cfg)
        sub = (lambda name: None) if out_dir is None else (lambda name: Path(out_dir) / name)
        # -- the segmenter, on the classifier's inner fit/validation split of the cases
        inner = split_train_test(train_samples, test_fraction=cfg.val_fraction, seed=cfg.seed)
        fit_s, val_s = inner.select(train_samples)
        ft_fit, ft_val = _frames(fit_s, cfg, skipped, whole_only=True), _frames(val_s, cfg, skipped, whole_only=True)
        seg = SEG.fit_segmenter(
            ft_fit, ft_val, cfg, progress, ckpt_dir=sub("segmenter"), resume=resume, keep_last=keep_last
        )
        # -- the classifier on the annotated training ROIs, less those of frames that did not
        # decode above (already warned about; salvaged frames were not tried and load here)
        tried = {f.image_path for f in group_frames(train_samples, True) if not _salvaged(f)}
        failed = tried - {f.image_path for f in ft_fit.frames} - {f.image_path for f in ft_val.frames}
        tr_kept = [s for s in train_samples if s.image_path not in failed]
        C.both_classes(tr_kept, "training")
        clf = RC.train_classifier(
            build_classifier(cfg),
            tr_kept,
            cfg,
            progress,
            skipped,
            ckpt_dir=sub("classifier"),
            resume=resume,
            keep_last=keep_last,
        )
        # -- the baseline forest on the annotated training outlines
        rf_cfg = self._rf_config(cfg)
        rf, rf_thr, rf_source, rf_summary = shape_rf.fit_forest(tr_kept, rf_cfg, None, skipped)
        val = clf.val_predictions
        training = {
            **clf.summary(),
            "segmenter": {"network": cfg.segmenter, **seg.summary()},
            "shape_rf_predicted": {k: v for k, v in rf_summary.items() if not k.endswith("_s")},
            "segmenter_parameters": sum(p.numel() for p in seg.model.parameters()),
        }
        return Fitted(
            self.name,
            cfg,
            {"segmenter": seg.model, "classifier": clf.model, "forest": rf},
            {"main": val, "annotated_roi": val, "shape_rf_predicted": rf_thr},
            {"main": "validation", "annotated_roi": "validation", "shape_rf_predicted": rf_source},
            training,
            {
                "seg_train_s": seg.train_s,
                "seg_device": str(next(seg.model.parameters()).device),
                "train_s": clf.train_s,
                "forest_s": rf_summary["features_s"] + rf_summary["train_s"],
            },
            skipped,
            sorted(set(val.case_ids)),
        )

    @staticmethod
    def _rf_config(cfg) -> shape_rf.ShapeRFConfig:
        return shape_rf.ShapeRFConfig(
            n_estimators=cfg.rf_trees,
            threshold_rule=cfg.threshold_rule,
            threshold_folds=cfg.threshold_folds,
            seed=cfg.seed,
        )

    def predict(self, fitted, samples, *, progress=None) -> Output:
        from .frames import localised

        cfg = fitted.config
        samples = list(samples)
        skipped: list[str] = []
        t = time.perf_counter()
        with torch_threads(cfg.threads):
            outlined = all(s.polygon and len(s.polygon) >= 3 for s in samples)
            ft = _frames(samples, cfg, skipped, need_outline=outlined)
            if not len(ft):
                raise HfcnError("no frame could be loaded")
            prob = SEG.predict_probs(fitted.models["segmenter"], ft, cfg.seg_batch)
            summaries = {}
            if outlined:
                clean = [i for i, f in enumerate(ft.frames) if not _salvaged(f)]
                segm = {"segmenter": cfg.segmenter}
                cases = [ft.frames[i].case_id for i in clean]
                segm.update(
                    SEG.segmentation_summary(prob[clean], SEG.frame_targets(ft, clean), case_ids=cases, seed=cfg.seed)
                )
                segm["salvaged_frames_excluded"] = len(ft) - len(clean)
                summaries["segmentation"] = segm
            pairing = SEG.Pairing()
            kept, boxed, traced = [], [], []
            for i, frame in enumerate(ft.frames):
                counted = all(localised(s) for s in frame.samples)
                regions = SEG.pair_regions(prob[i], ft.boxes(i), ft.scale(i), pairing if counted else None)
                for s, r in zip(frame.samples, regions):
                    box = expand_box(to_frame_box(r.box_net, frame.size, ft.scale(i)), cfg.roi_margin, frame.size)
                    kept.append(s)
                    boxed.append(with_box(s, box, "predicted-mask"))
                    traced.append(dataclasses.replace(s, polygon=r.outline, bbox=box, roi_kind="predicted-mask"))
            if pairing.frames:
                summaries["pairing"] = pairing.as_dict()
            clf = fitted.models["classifier"]
            main = RC.predict_rois(clf, boxed, cfg, skipped)
            annotated = RC.predict_rois(clf, kept, cfg, list(skipped))
            baseline = shape_rf.forest_predict(fitted.models["forest"], traced, self._rf_config(cfg), list(skipped))
        return Output(
            {"main": main, "annotated_roi": annotated, "shape_rf_predicted": baseline},
            summaries,
            time.perf_counter() - t,
        )

    def save(self, fitted, out_dir) -> list[str]:
        return (
            _stage_files(out_dir, "segmenter")
            + _stage_files(out_dir, "classifier")
            + [C.save_sklearn(fitted.models["forest"], Path(out_dir) / "forest.skops")]
        )

    def load(self, cfg, directory, record, checkpoint="best", device="cpu"):
        from ..checkpoint import load_checkpoint, load_weights_into

        d = Path(directory)
        from ..engine import device_of

        segmenter = SEG.build_segmenter(cfg, weights=False)
        seg_path = d / "segmenter" / f"{checkpoint}.pt"
        load_weights_into(segmenter, load_checkpoint(seg_path)["model"], seg_path)
        return {
            "segmenter": segmenter.to(device_of(device)).eval(),
            "classifier": RC.load_weights(build_classifier(cfg, weights=False), d / "classifier" / f"{checkpoint}.pt"),
            "forest": C.load_sklearn(d / "forest.skops"),
        }

    def explain(self, fitted, sample, display: int = 256) -> dict | None:
        """Grad-CAM of the ResNet-18's malignant logit on its trunk's last map, for the ROI the
        classifier was given (``sample`` carries the box cut from the predicted mask;
        :mod:`.gradcam`). The segmenter and the baseline forest are not explained."""
        from .gradcam import roi_classifier_explain

        clf = fitted.models["classifier"]
        with torch_threads(fitted.config.threads):
            return roi_classifier_explain(clf, clf.trunk, sample, fitted.config, display, what="ResNet-18 trunk")
