"""HFCN models: backbones, the hybrid global + feature-cropping network and its baselines, and
the class-weighted loss (Song et al., IEEE Access 8:64064-64074, 2020); TransUNet (Chen et al.
2021), the two-stage comparator's segmenter.

>>> m = build_model(backbone="paper", crop="bfc", alpha=0.6, branch_weight=0.5)   # doctest: +SKIP
>>> out = m(images)                     # images [B, 3, 224, 224]                  # doctest: +SKIP
>>> loss = hfcn_loss(out, labels)       # w_malignant=3, w_benign=2                # doctest: +SKIP
"""

from .backbones import (
    ModelConfigError,
    PaperBackbone,
    Xception,
    available_backbones,
    build_backbone,
    feature_shape,
    load_backbone_weights,
)
from .descriptor_heads import DESCRIPTOR_CLASSES, DescriptorHeads, descriptor_classes
from .hfcn import CROP_IMPLS, CROP_MODES, HEADS, HFCN, HFCNConfig, HFCNOutput, ModelSpec, build_model
from .loss import descriptor_loss, hfcn_loss
from .transunet import CONFIGS as TRANSUNET_CONFIGS
from .transunet import TransUNet, TransUNetConfig

__all__ = [
    "CROP_IMPLS",
    "CROP_MODES",
    "DESCRIPTOR_CLASSES",
    "DescriptorHeads",
    "HEADS",
    "HFCN",
    "HFCNConfig",
    "HFCNOutput",
    "ModelSpec",
    "ModelConfigError",
    "TRANSUNET_CONFIGS",
    "TransUNet",
    "TransUNetConfig",
    "PaperBackbone",
    "Xception",
    "available_backbones",
    "build_backbone",
    "build_model",
    "descriptor_classes",
    "descriptor_loss",
    "feature_shape",
    "hfcn_loss",
    "load_backbone_weights",
]
