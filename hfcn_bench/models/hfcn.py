"""The Hybrid Feature Cropping Network (HFCN) and its baselines.

Song R., Zhang L., Zhu C., Liu J., Yang J., Zhang T., "Thyroid nodule ultrasound image
classification through hybrid feature cropping network", IEEE Access 8:64064-64074, 2020.

One backbone computes the feature map ``F (Tensor[B, C, h, w])`` once per image. Two branches
share one classifier (flatten -> dropout 0.5 -> FC 512 -> ReLU -> dropout 0.5 -> FC 2):

- the *global* branch classifies ``F`` itself: ``P_G = softmax(head(F))``;
- the *feature-cropping* branch cuts ``F`` into N windows of ``alpha*h x alpha*w``, resizes each
  back to ``h x w`` (bilinear; the paper's "upsampling") so that the same classifier applies, and
  averages the N softmax outputs: ``P_C = mean_n softmax(head(crop_n(F)))``. The windows are the
  paper's boundary feature cropping (BFC: four corners + centre) or random feature cropping
  (RFC: random positions, the same for the whole batch).

The prediction fuses both (eq. 1): ``P = w * P_G + (1 - w) * P_C``.

Two options beyond the paper, for pretrained trunks (issue 22): ``head="pooled"`` replaces the
flatten head (whose first layer has ``C*h*w`` inputs: ~32 M weights after EfficientNet's
1280x7x7 map, trained from scratch on a few hundred ROIs) by global average pooling and the same
small MLP; ``descriptor_classes`` adds one linear head per TI-RADS descriptor on the pooled
global map (Buda et al., Radiology 2019), trained as auxiliary targets. The descriptor heads
never feed ``P``: the prediction stays image-only.

Two baselines share the code: ``crop="none"`` (global branch only, ``P = P_G``) and
``crop="image"``, the image-level multi-crop of AlexNet/VGG/GoogLeNet that the paper argues
against: it crops the *input image* into the BFC windows, resizes each crop to the input size
and runs the backbone once per crop (N + 1 backbone passes instead of one).
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn as nn

from .. import ops
from .backbones import (
    ModelConfigError,
    build_backbone,
    check_backbone_name,
    feature_shape,
)
from .descriptor_heads import DescriptorHeads

__all__ = [
    "CROP_MODES",
    "CROP_IMPLS",
    "HEADS",
    "HFCN",
    "HFCNConfig",
    "HFCNOutput",
    "ModelSpec",
    "build_model",
    "naive_crop_resize",
]

CROP_MODES = ("none", "bfc", "rfc", "image")
CROP_IMPLS = ("fused", "naive")
HEADS = ("flatten", "pooled")

# BFC: the four corner windows the paper's stride formula gives, plus the centre window.
BFC_NUM_CROPS = 5


@dataclass
class ModelSpec:
    """The fields of an HFCN that a training run chooses: declared once here, inherited by
    :class:`HFCNConfig` (the model) and by the training configuration (``train.TrainConfig``),
    whose command-line flags are generated from these fields.

    Attributes:
        backbone: feature extractor, one of :func:`available_backbones` ("paper" = Table 1).
        crop: "none" (global branch only), "bfc", "rfc" (feature cropping) or "image"
            (image-level multi-crop baseline).
        alpha: window side as a fraction of the map (paper's best: 0.6, Table 3), in (0, 1].
        branch_weight: ``w`` of eq. 1, the weight of the global branch, in [0, 1] (0: the
            cropping branch alone, as in the paper's Table 3).
        crop_impl: "fused" (the registered op, ``ops.crop_resize``) or "naive"
            (slicing + ``F.interpolate`` per window); numerically equivalent.
        weights: backbone weights: a local state dict's path, ``"imagenet"`` for backbones whose
            ImageNet weights ship in an installed package, or ``None`` (random init).
        head: "flatten" (the paper's: flatten -> FC 512 -> FC 2) or "pooled" (global average
            pooling -> FC 512 -> FC 2).
    """

    backbone: str = field(
        default="paper", metadata={"help": "feature extractor (paper = Table 1)", "choices": "backbones"}
    )
    crop: str = field(
        default="bfc",
        metadata={"help": "none (global only), bfc, rfc, image (image multi-crop)", "choices": CROP_MODES},
    )
    alpha: float = field(default=0.6, metadata={"help": "crop window side as a fraction of the feature map"})
    branch_weight: float = field(default=0.5, metadata={"help": "w of eq. 1: weight of the global branch"})
    crop_impl: str = field(
        default="fused", metadata={"help": "fused (the op) or naive (slicing)", "choices": CROP_IMPLS}
    )
    weights: str | None = field(
        default=None,
        metadata={"help": "backbone weights: a local state dict (.pt), 'imagenet' where a package ships them, or none"},
    )
    head: str = field(
        default="flatten",
        metadata={
            "help": "classifier: flatten (the paper's, C*h*w inputs) or pooled (global average pooling + the same MLP)",
            "choices": HEADS,
        },
    )


@dataclass
class HFCNConfig(ModelSpec):
    """Everything that defines an HFCN model (paper defaults): the :class:`ModelSpec` fields
    plus

    Attributes:
        num_crops: windows per image for "rfc" (default 5); "bfc" and "image" always use 5.
        seed: seed of the RFC window generator.
        input_size: ``H`` or ``(H, W)`` the model is built for; fixes the feature-map size and so
            the classifier's input size ``C*h*w``.
        hidden: width of the classifier's hidden FC layer (512).
        dropout: dropout probability before each FC layer (0.5).
        num_classes: 2 (index 1 = malignant, the positive class).
        backbone_kwargs: options passed to the backbone builder (e.g. xception ``width``).
        descriptor_classes: one auxiliary head per entry, with that many classes, on the pooled
            global feature map (the TI-RADS descriptors; empty: none).
    """

    num_crops: int | None = None
    seed: int = 0
    input_size: int | tuple[int, int] = 224
    hidden: int = 512
    dropout: float = 0.5
    num_classes: int = 2
    backbone_kwargs: dict = field(default_factory=dict)
    descriptor_classes: tuple[int, ...] = ()

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ModelConfigError` (an ``HfcnError`` and ``ValueError``) on a bad field."""
        check_backbone_name(self.backbone)
        if self.crop not in CROP_MODES:
            raise ModelConfigError(f"unknown crop mode {self.crop!r}; known modes: {', '.join(CROP_MODES)}")
        if self.crop_impl not in CROP_IMPLS:
            raise ModelConfigError(f"unknown crop_impl {self.crop_impl!r}; known: {', '.join(CROP_IMPLS)}")
        if self.head not in HEADS:
            raise ModelConfigError(f"unknown head {self.head!r}; known: {', '.join(HEADS)}")
        dc = self.descriptor_classes
        if not isinstance(dc, (tuple, list)) or not all(
            isinstance(k, int) and not isinstance(k, bool) and k >= 2 for k in dc
        ):
            raise ModelConfigError(f"descriptor_classes must be class counts >= 2, got {dc!r}")
        self.descriptor_classes = tuple(dc)
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0.0 < self.alpha <= 1.0:
            raise ModelConfigError(f"alpha must be in (0, 1], got {self.alpha!r}")
        w = self.branch_weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0.0 <= w <= 1.0:
            raise ModelConfigError(f"branch_weight must be in [0, 1], got {w!r}")
        if self.num_crops is not None:
            n = self.num_crops
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ModelConfigError(f"num_crops must be a positive integer, got {n!r}")
            if self.crop in ("bfc", "image") and n != BFC_NUM_CROPS:
                raise ModelConfigError(
                    f"crop={self.crop!r} always uses the {BFC_NUM_CROPS} boundary windows "
                    f"(4 corners + centre); num_crops={n} only applies to crop='rfc'"
                )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ModelConfigError(f"seed must be an integer, got {self.seed!r}")
        size = self.input_size
        pair = (size, size) if isinstance(size, int) else tuple(size) if isinstance(size, (tuple, list)) else None
        if (
            pair is None
            or len(pair) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in pair)
        ):
            raise ModelConfigError(f"input_size must be a positive int or a pair (H, W), got {size!r}")
        for name in ("hidden", "num_classes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ModelConfigError(f"{name} must be a positive integer, got {v!r}")
        if self.num_classes < 2:
            raise ModelConfigError(f"num_classes must be >= 2, got {self.num_classes}")
        if (
            isinstance(self.dropout, bool)
            or not isinstance(self.dropout, (int, float))
            or not 0.0 <= self.dropout < 1.0
        ):
            raise ModelConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.weights is not None:
            if not isinstance(self.weights, (str, os.PathLike)):
                raise ModelConfigError(
                    f"weights must be a file path, 'imagenet' or None, got {type(self.weights).__name__}"
                )
            self.weights = os.fspath(self.weights)
        if not isinstance(self.backbone_kwargs, dict):
            raise ModelConfigError(f"backbone_kwargs must be a dict, got {type(self.backbone_kwargs).__name__}")

    @property
    def input_hw(self) -> tuple[int, int]:
        s = self.input_size
        return (s, s) if isinstance(s, int) else (int(s[0]), int(s[1]))

    @property
    def n_crops(self) -> int:
        """Windows per image of the cropping branch (0 for crop="none")."""
        if self.crop == "none":
            return 0
        if self.crop == "rfc":
            return self.num_crops or BFC_NUM_CROPS
        return BFC_NUM_CROPS


class HFCNOutput(NamedTuple):
    """What :class:`HFCN` returns (a NamedTuple, so ``torch.compile`` handles it).

    Attributes:
        prob (Tensor[B, K]): fused probability ``P = w * P_G + (1 - w) * P_C`` (eq. 1);
            ``P_G`` when crop="none". Column 1 = malignant.
        global_prob (Tensor[B, K]): ``P_G``, softmax of the global branch.
        crop_prob (Tensor[B, K] or None): ``P_C``, mean of the per-crop softmax.
        crop_probs (Tensor[B, N, K] or None): per-crop softmax.
        global_logits (Tensor[B, K]): logits of the global branch.
        crop_logits (Tensor[B, N, K] or None): logits of every crop.
        boxes (LongTensor[N, 4] or None): the windows used, ``(top, left, height, width)`` in
            feature-map pixels (image pixels for crop="image").
        log_prob (Tensor[B, K]): ``log P``, computed from the logits with log-sum-exp over the
            mixture components, so it stays finite (and has a gradient) where ``P`` rounds to 0.
        descriptor_logits (tuple of Tensor[B, K_f] or None): the auxiliary descriptor heads'
            logits on the global map (``config.descriptor_classes``); they never enter ``prob``.
    """

    prob: torch.Tensor
    global_prob: torch.Tensor
    crop_prob: torch.Tensor | None
    crop_probs: torch.Tensor | None
    global_logits: torch.Tensor
    crop_logits: torch.Tensor | None
    boxes: torch.Tensor | None
    log_prob: torch.Tensor | None = None
    descriptor_logits: tuple[torch.Tensor, ...] | None = None


# Slicing + F.interpolate per window (the "naive" implementation): ops' unvalidated core.
naive_crop_resize = ops.slice_resize


class HFCN(nn.Module):
    """Hybrid Feature Cropping Network (Song et al. 2020), timm-style.

    ``forward_features`` (backbone) -> ``crop_features`` (the cropping branch) ->
    ``forward_head`` (the shared classifier) -> softmax and fusion.

    Input ``x (Tensor[B, 3, H, W])`` must give the feature-map size the model was built for
    (``config.input_size``; the classifier's first FC layer has ``C*h*w`` inputs). For the
    paper backbone ``h = ceil(H/16)``: 224 -> 14; other rules in
    :mod:`hfcn_bench.models.backbones`.

    RFC windows come from the model's own ``torch.Generator`` seeded with ``config.seed``: a new
    set (shared by the batch) on every forward, in training *and* evaluation (the paper averages
    the crops at test time as well). Two models with the same seed draw the same sequence;
    :meth:`reset_crop_generator` restarts it, e.g. before an evaluation, so that evaluation does
    not depend on how many training steps ran before.

    Args:
        config: the model definition.
        backbone: an already built feature extractor to use instead of building
            ``config.backbone`` (any module mapping ``[B, 3, H, W]`` to ``[B, C, h, w]``; it is
            used as is, shared if the caller shares it); ``config.weights`` is then ignored.
    """

    def __init__(self, config: HFCNConfig, backbone: nn.Module | None = None):
        super().__init__()
        config.validate()
        self.config = config
        if backbone is None:
            backbone = build_backbone(config.backbone, weights=config.weights, **config.backbone_kwargs)
        elif not isinstance(backbone, nn.Module):
            raise ModelConfigError(f"backbone must be an nn.Module, got {type(backbone).__name__}")
        self.backbone = backbone
        H, W = config.input_hw
        C, h, w = feature_shape(self.backbone, (H, W))
        self.num_features = C
        self.feature_hw = (h, w)
        # "pooled" sees the map's mean only, so its first layer has C inputs instead of C*h*w.
        reduce = [nn.Flatten(1)] if config.head == "flatten" else [nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]
        self.head = nn.Sequential(
            *reduce,
            nn.Dropout(config.dropout),
            nn.Linear(C * h * w if config.head == "flatten" else C, config.hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, config.num_classes),
        )
        self.descriptor_heads = (
            DescriptorHeads(C, config.descriptor_classes, config.dropout) if config.descriptor_classes else None
        )
        self.num_crops = config.n_crops
        # Fixed windows (BFC on the map, or BFC on the image for crop="image") live in a
        # non-persistent buffer: they follow .to(device) and stay out of checkpoints.
        if config.crop == "bfc":
            boxes = ops.boundary_boxes(h, w, config.alpha)
        elif config.crop == "image":
            boxes = ops.boundary_boxes(H, W, config.alpha)
        else:
            boxes = torch.zeros((0, 4), dtype=torch.int64)
        self.register_buffer("crop_boxes", boxes, persistent=False)
        self._box_rows = [tuple(r) for r in boxes.tolist()]
        self._generator = torch.Generator(device="cpu")
        self._generator.manual_seed(config.seed)
        # Load (or build) the extension now, outside any torch.compile trace.
        self._fused = config.crop_impl == "fused" and config.crop != "none" and ops.load_extension()
        self._fused_cuda = self._fused and ops.backend() == "cuda"
        self._warned_cuda = False

    # ------------------------------------------------------------------ parts

    @property
    def crop_backend(self) -> str:
        """What crops the maps: "none", "naive" or the op's backend ("cpp-cpu", "cuda", ...);
        "reference" when crop_impl="fused" but the extension could not be built."""
        if self.config.crop == "none":
            return "none"
        if self.config.crop_impl == "naive":
            return "naive"
        return ops.backend()

    @property
    def crop_generator(self) -> torch.Generator:
        """The CPU generator RFC windows are drawn from (``get_state``/``set_state`` to save and
        restore the window sequence, e.g. in a checkpoint)."""
        return self._generator

    def reset_crop_generator(self, seed: int | None = None) -> None:
        """Restart the RFC window sequence from ``seed`` (default: ``config.seed``)."""
        self._generator.manual_seed(self.config.seed if seed is None else seed)

    def next_boxes(self) -> torch.Tensor:
        """The windows of the next forward, ``LongTensor[N, 4]`` on the CPU: a fresh RFC draw
        (advances the generator), else the fixed windows (``crop_boxes``: BFC on the feature
        map, BFC on the image for crop="image", none for crop="none")."""
        if self.config.crop == "rfc":
            h, w = self.feature_hw
            return ops.random_boxes(h, w, self.config.alpha, self.num_crops, generator=self._generator)
        return self.crop_boxes.cpu()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone: ``x (Tensor[B, 3, H, W]) -> Tensor[B, C, h, w]``."""
        return self.backbone(x)

    def crop_resize(
        self, x: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int], rows: list | None = None
    ) -> torch.Tensor:
        """Crop every window and resize it to ``size``: ``[B, C, H, W] -> [B, N, C, oh, ow]``,
        with the configured implementation. ``rows`` are ``boxes`` as host ints (optional)."""
        if not self._fused:
            return naive_crop_resize(x, rows if rows is not None else [tuple(r) for r in boxes.tolist()], size)
        if x.device.type != "cpu" and not (x.is_cuda and self._fused_cuda) and not self._warned_cuda:
            self._warned_cuda = True
            warnings.warn(
                f"crop_impl='fused' but the crop_resize extension has no kernels for {x.device}; "
                "the op falls back to its pure-PyTorch reference (set HFCN_BUILD_CUDA=1 before the first "
                "use to build the CUDA kernels)",
                RuntimeWarning,
                stacklevel=3,
            )
        # The public op (its autograd registered in C++). CPU boxes (RFC draws) go as they are:
        # it checks them on the host and copies them without blocking; a .to(cuda) here would
        # synchronise every step.
        if boxes.device.type != "cpu":
            boxes = boxes.to(x.device)
        return ops.crop_resize(x, boxes, size)

    def crop_features(self, feat: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
        """Feature-cropping branch: ``feat (Tensor[B, C, h, w]) -> Tensor[B, N, C, h, w]``, each
        window resized back to the map size so the shared classifier applies. ``boxes``
        (``LongTensor[N, 4]``, feature-map pixels) defaults to the model's windows: BFC, or a
        fresh RFC draw; for crop="none"/"image" models, the BFC windows of the map."""
        rows = None
        if boxes is None:
            if self.config.crop == "bfc":
                boxes, rows = self.crop_boxes, self._box_rows
            elif self.config.crop == "rfc":
                boxes = self.next_boxes()
            else:
                boxes = ops.boundary_boxes(*feat.shape[-2:], self.config.alpha)
        return self.crop_resize(feat, boxes, tuple(feat.shape[-2:]), rows)

    def forward_head(self, feat: torch.Tensor) -> torch.Tensor:
        """Shared classifier: ``Tensor[M, C, h, w] -> logits Tensor[M, K]``."""
        return self.head(feat)

    def forward_descriptors(self, feat: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
        """Auxiliary descriptor heads on the pooled global map: ``Tensor[B, C, h, w]`` -> one
        ``Tensor[B, K_f]`` of logits per head (``None`` for a model without them)."""
        if self.descriptor_heads is None:
            return None
        return self.descriptor_heads(feat.mean(dim=(2, 3)))

    # ------------------------------------------------------------------ forward

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ModelConfigError(f"HFCN expects images [B, 3, H, W], got shape {list(x.shape)}")

    def _check_features(self, feat: torch.Tensor, x: torch.Tensor) -> None:
        if tuple(feat.shape[-2:]) != self.feature_hw:
            raise ModelConfigError(
                f"a {x.shape[-2]}x{x.shape[-1]} input gives a {feat.shape[-2]}x{feat.shape[-1]} feature "
                f"map, but this model was built for input_size={self.config.input_size} "
                f"({self.feature_hw[0]}x{self.feature_hw[1]} maps; the classifier's input size depends on it)",
                hint="resize the images or build the model with a matching input_size",
            )

    def _fuse(self, g_logits: torch.Tensor, c_logits: torch.Tensor | None, boxes, descriptors=None) -> HFCNOutput:
        p_g = g_logits.softmax(dim=-1)
        if c_logits is None:
            return HFCNOutput(p_g, p_g, None, None, g_logits, None, None, g_logits.log_softmax(dim=-1), descriptors)
        p_n = c_logits.softmax(dim=-1)
        p_c = p_n.mean(dim=1)
        w = float(self.config.branch_weight)
        # log P = log(w * P_G + (1 - w)/N * sum_n P_n): a log-sum-exp over the 1 + N components
        # (a weight of 0 gives a -inf term, which log-sum-exp ignores).
        n = c_logits.shape[1]
        parts = torch.cat(
            [
                g_logits.log_softmax(dim=-1).unsqueeze(1) + (math.log(w) if w > 0 else -math.inf),
                c_logits.log_softmax(dim=-1) + (math.log((1.0 - w) / n) if w < 1 else -math.inf),
            ],
            dim=1,
        )
        log_p = torch.logsumexp(parts, dim=1)
        return HFCNOutput(w * p_g + (1.0 - w) * p_c, p_g, p_c, p_n, g_logits, c_logits, boxes, log_p, descriptors)

    def forward(self, x: torch.Tensor) -> HFCNOutput:
        """``x (Tensor[B, 3, H, W])`` -> :class:`HFCNOutput` (probabilities ``[B, K]``, per-crop
        ``[B, N, K]``)."""
        self._check_input(x)
        B = x.shape[0]
        crop = self.config.crop
        if crop == "image":
            return self._forward_image(x)
        feat = self.forward_features(x)
        self._check_features(feat, x)
        desc = self.forward_descriptors(feat)
        if crop == "none":
            return self._fuse(self.forward_head(feat), None, None, desc)
        if crop == "bfc":
            boxes, rows = self.crop_boxes, self._box_rows
        else:
            boxes, rows = self.next_boxes(), None
        crops = self.crop_resize(feat, boxes, self.feature_hw, rows)
        N = crops.shape[1]
        # One classifier call for the map and its crops: the same weights, one GEMM.
        logits = self.forward_head(torch.cat([feat, crops.flatten(0, 1)], dim=0))
        return self._fuse(logits[:B], logits[B:].unflatten(0, (B, N)), boxes, desc)

    def _forward_image(self, x: torch.Tensor) -> HFCNOutput:
        """Image-level multi-crop: the backbone runs on the image and on its N resized crops."""
        B, _, H, W = x.shape
        if (H, W) != self.config.input_hw:
            raise ModelConfigError(
                f"crop='image' model built for {self.config.input_hw[0]}x{self.config.input_hw[1]} images got {H}x{W}",
                hint="resize the images or build the model with a matching input_size",
            )
        crops = self.crop_resize(x, self.crop_boxes, (H, W), self._box_rows)  # [B, N, 3, H, W]
        N = crops.shape[1]
        # One backbone pass over image + crops: BatchNorm sees all of them, as it would if the
        # crops were simply more training images.
        feat = self.forward_features(torch.cat([x, crops.flatten(0, 1)], dim=0))
        self._check_features(feat, x)
        logits = self.forward_head(feat)
        return self._fuse(
            logits[:B], logits[B:].unflatten(0, (B, N)), self.crop_boxes, self.forward_descriptors(feat[:B])
        )


def build_model(config: HFCNConfig | None = None, /, **kwargs) -> HFCN:
    """Build an :class:`HFCN` from a config, keyword fields, or both (keywords override).

    Example::

        m = build_model(backbone="paper", crop="bfc", alpha=0.6, branch_weight=0.5, crop_impl="fused")
        out = m(images)       # images [B, 3, 224, 224]; out.prob [B, 2]

    Raises :class:`ModelConfigError` on an unknown field or a bad value (the message lists the
    known choices).
    """
    names = {f.name for f in dataclasses.fields(HFCNConfig)}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise ModelConfigError(f"unknown model option(s) {unknown}; known options: {', '.join(sorted(names))}")
    if config is None:
        config = HFCNConfig(**kwargs)
    elif not isinstance(config, HFCNConfig):
        raise ModelConfigError(f"config must be an HFCNConfig, got {type(config).__name__}")
    elif kwargs:
        config = dataclasses.replace(config, **kwargs)
    return HFCN(config)
