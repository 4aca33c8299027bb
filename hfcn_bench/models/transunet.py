"""TransUNet (Chen et al., "TransUNet: Transformers Make Strong Encoders for Medical Image
Segmentation", arXiv 2102.04306, 2021): a CNN stem to 1/16 of the input, a ViT encoder over
that map's pixels, and a cascaded upsampler with skip connections from the CNN stages. It is
the segmenter of the two-stage comparator (Abdelrazik et al., arXiv 2511.11937, 2025;
PAPERS.md section 4).

The layers follow the authors' reference code (``Beckschen/TransUNet``,
``networks/vit_seg_modeling.py`` and ``vit_seg_modeling_resnet_skip.py``), the "R50-ViT-B_16"
model:

* **stem** — the first three stages of a ResNet-50 v2 ("BiT" style: weight-standardised
  convolutions, GroupNorm(32)): a 7x7 stride-2 root conv (1/2), a 3x3 stride-2 max-pool (1/4)
  and bottleneck stages of ``stem_units`` units at 1/4, 1/8 and 1/16, ``4w``, ``8w`` and ``16w``
  channels for width ``w``;
* **encoder** — the 1/16 map's pixels are the tokens (a 1x1 "patch" embedding, so the ViT-B/16
  patch of 16 input pixels), plus a learnt position embedding; ``layers`` pre-norm blocks of
  ``heads``-head self-attention and a GELU MLP of ``mlp`` units, then a LayerNorm;
* **decoder** (the "cascaded upsampler") — the tokens back on their grid, a 3x3 conv to
  ``head_channels``, then one block per entry of ``decoder_channels``: bilinear x2,
  concatenation with the CNN map of that scale (1/8, 1/4, 1/2 for ``n_skip = 3``; none at full
  resolution), two 3x3 conv-BN-ReLU; a 3x3 conv to ``n_classes`` logits.

Two named configurations (:data:`CONFIGS`, as timm's ``default_cfgs`` name theirs):
``transunet``, the paper's (R50 units 3/4/9 + ViT-B/16: 12 layers, hidden 768, 12 heads, MLP
3072; 224 px; ~105 M parameters), and ``transunet-small``, a reduced one a 2-core CPU trains
(one unit per stem stage at width 32, 4 layers of hidden 192 with 3 heads and MLP 768,
decoder 64/32/16/8; ~3.0 M parameters). Both are built by the same code.

Differences from the reference code, none of which changes the layers or their parameter
count: the output is one logit per pixel for the two-class (nodule / background) case
(``n_classes = 1``; sigmoid, where the reference takes a softmax over two logits); any input
size is accepted whose grid matches the configured ``img_size`` (the input is edge-padded to
a multiple of 16 and the output cropped back, where the reference needs multiples of 16 and
zero-pads the skip maps); the max-pool pads by 1, so every stage halves exactly; a one-channel
input is repeated to the stem's channels, as the reference does. No pretrained weights exist
offline: the network is randomly initialised (the reference starts from ImageNet-21k R50+ViT
weights); ``weights=PATH`` loads a local state dict of this layout, with every key and shape
checked (:func:`.backbones.load_backbone_weights`).

>>> net = TransUNet()                                          # the paper's configuration
>>> net(torch.zeros(1, 3, 224, 224)).shape                      # doctest: +SKIP
torch.Size([1, 1, 224, 224])
>>> TransUNet("transunet-small", img_size=(96, 144))           # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ModelConfigError

__all__ = ["TransUNetConfig", "CONFIGS", "TransUNet", "transunet_config"]


@dataclass(frozen=True)
class TransUNetConfig:
    """The hyper-parameters of one TransUNet (see the module docstring for what each sets).

    ``img_size`` is ``(height, width)`` of the input; the token grid is ``ceil(side / 16)``
    of each side, and the position embedding has one row per token."""

    name: str
    img_size: tuple[int, int] = (224, 224)
    in_chans: int = 3
    stem_units: tuple[int, int, int] = (3, 4, 9)
    stem_width: int = 64
    hidden: int = 768
    layers: int = 12
    heads: int = 12
    mlp: int = 3072
    head_channels: int = 512
    decoder_channels: tuple[int, ...] = (256, 128, 64, 16)
    n_skip: int = 3
    n_classes: int = 1
    dropout: float = 0.1
    attention_dropout: float = 0.0

    def validate(self) -> None:
        """Raise :class:`ModelConfigError` naming the first impossible field."""

        def pos_int(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool) and v >= 1

        size = self.img_size
        if not (isinstance(size, tuple) and len(size) == 2 and all(pos_int(v) and v >= 16 for v in size)):
            raise ModelConfigError(f"{self.name}: img_size must be two integers >= 16 (height, width), got {size!r}")
        if not (len(self.stem_units) == 3 and all(pos_int(u) for u in self.stem_units)):
            raise ModelConfigError(f"{self.name}: stem_units must be three integers >= 1, got {self.stem_units!r}")
        if not pos_int(self.stem_width) or self.stem_width % 32:
            raise ModelConfigError(
                f"{self.name}: stem_width must be a positive multiple of 32 (GroupNorm of 32 groups), "
                f"got {self.stem_width!r}"
            )
        for key in ("hidden", "layers", "heads", "mlp", "head_channels", "n_classes", "in_chans"):
            if not pos_int(getattr(self, key)):
                raise ModelConfigError(f"{self.name}: {key} must be an integer >= 1, got {getattr(self, key)!r}")
        if self.hidden % self.heads:
            raise ModelConfigError(f"{self.name}: hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        if len(self.decoder_channels) != 4 or not all(pos_int(c) for c in self.decoder_channels):
            raise ModelConfigError(
                f"{self.name}: decoder_channels must be four integers >= 1 (1/8, 1/4, 1/2, 1/1), "
                f"got {self.decoder_channels!r}"
            )
        if not (isinstance(self.n_skip, int) and 0 <= self.n_skip <= 3):
            raise ModelConfigError(f"{self.name}: n_skip must be 0..3, got {self.n_skip!r}")
        if not (0 <= self.dropout < 1 and 0 <= self.attention_dropout < 1):
            raise ModelConfigError(f"{self.name}: dropout rates must be in [0, 1)")

    @property
    def grid(self) -> tuple[int, int]:
        """The token grid ``(ceil(H / 16), ceil(W / 16))``."""
        return (-(-self.img_size[0] // 16), -(-self.img_size[1] // 16))


#: The named configurations: the paper's and the reduced one this project trains on a CPU.
CONFIGS: dict[str, TransUNetConfig] = {
    "transunet": TransUNetConfig("transunet"),
    "transunet-small": TransUNetConfig(
        "transunet-small",
        stem_units=(1, 1, 1),
        stem_width=32,
        hidden=192,
        layers=4,
        heads=3,
        mlp=768,
        head_channels=128,
        decoder_channels=(64, 32, 16, 8),
    ),
}


def transunet_config(config: str | TransUNetConfig = "transunet", **overrides) -> TransUNetConfig:
    """A named configuration (or ``config`` itself) with ``overrides`` (e.g. ``img_size``),
    validated. Unknown names and fields raise :class:`ModelConfigError`."""
    if isinstance(config, str):
        if config not in CONFIGS:
            raise ModelConfigError(
                f"unknown TransUNet configuration {config!r}; known: {', '.join(CONFIGS)}",
                hint="pick one of: " + ", ".join(CONFIGS),
            )
        config = CONFIGS[config]
    if "img_size" in overrides:
        size = overrides["img_size"]
        overrides["img_size"] = (size, size) if isinstance(size, int) else tuple(size)
    known = {f.name for f in dataclasses.fields(TransUNetConfig)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise ModelConfigError(f"unknown TransUNet option(s) {bad}; known: {', '.join(sorted(known))}")
    cfg = dataclasses.replace(config, **overrides)
    cfg.validate()
    return cfg


# ---------------------------------------------------------------------------------------------
# the ResNet-50 v2 stem


class StdConv2d(nn.Conv2d):
    """A convolution whose kernel is standardised (zero mean, unit variance per output
    channel) at every call: Big Transfer's ResNet v2, which TransUNet's stem is."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(self.weight, dim=(1, 2, 3), keepdim=True, unbiased=False)
        w = (self.weight - mean) / torch.sqrt(var + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


def _gn(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride here) -> 1x1 convolutions, each followed by GroupNorm, ReLU between
    them and after the residual sum; a strided 1x1 projection (+ GroupNorm) on the residual
    when the shape changes."""

    def __init__(self, cin: int, cout: int, cmid: int, stride: int = 1):
        super().__init__()
        self.conv1 = StdConv2d(cin, cmid, 1, bias=False)
        self.gn1 = _gn(cmid)
        self.conv2 = StdConv2d(cmid, cmid, 3, stride=stride, padding=1, bias=False)
        self.gn2 = _gn(cmid)
        self.conv3 = StdConv2d(cmid, cout, 1, bias=False)
        self.gn3 = _gn(cout)
        self.relu = nn.ReLU(inplace=True)
        if stride != 1 or cin != cout:
            self.downsample = StdConv2d(cin, cout, 1, stride=stride, bias=False)
            self.gn_proj = nn.GroupNorm(cout, cout)
        else:
            self.downsample = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.gn_proj(self.downsample(x))
        y = self.relu(self.gn1(self.conv1(x)))
        y = self.relu(self.gn2(self.conv2(y)))
        return self.relu(residual + self.gn3(self.conv3(y)))


class ResNetStem(nn.Module):
    """Root conv + GroupNorm + ReLU (1/2), max-pool (1/4), three bottleneck stages (1/4, 1/8,
    1/16). ``forward`` returns the 1/16 map and the skip maps ``[1/8, 1/4, 1/2]``."""

    def __init__(self, units: tuple[int, int, int], width: int, in_chans: int = 3):
        super().__init__()
        self.root = nn.Sequential(
            StdConv2d(in_chans, width, 7, stride=2, padding=3, bias=False), _gn(width), nn.ReLU(inplace=True)
        )
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        stages = []
        cin = width
        for i, n in enumerate(units):
            cout, cmid = width * 4 * 2**i, width * 2**i
            blocks = [Bottleneck(cin, cout, cmid, stride=1 if i == 0 else 2)]
            blocks += [Bottleneck(cout, cout, cmid) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.stages = nn.ModuleList(stages)
        self.out_channels = cin
        # channels of the skip maps at 1/8, 1/4, 1/2
        self.skip_channels = (width * 8, width * 4, width)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        half = self.root(x)
        q = self.stages[0](self.pool(half))
        e = self.stages[1](q)
        return self.stages[2](e), [e, q, half]


# ---------------------------------------------------------------------------------------------
# the ViT encoder


class Attention(nn.Module):
    """Multi-head scaled dot-product self-attention (separate query/key/value projections,
    as the reference lays them out)."""

    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, hidden)
        self.dropout = dropout
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.heads, c // self.heads).transpose(1, 2)

        ctx = F.scaled_dot_product_attention(
            split(self.query(x)),
            split(self.key(x)),
            split(self.value(x)),
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.proj_drop(self.out(ctx.transpose(1, 2).reshape(b, n, c)))


class Mlp(nn.Module):
    def __init__(self, hidden: int, mlp: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(hidden, mlp)
        self.fc2 = nn.Linear(mlp, hidden)
        self.drop = nn.Dropout(dropout)
        for fc in (self.fc1, self.fc2):  # the reference's (ViT's) MLP initialisation
            nn.init.xavier_uniform_(fc.weight)
            nn.init.normal_(fc.bias, std=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + Attn(LN(x))``, then ``x + MLP(LN(x))``."""

    def __init__(self, cfg: TransUNetConfig):
        super().__init__()
        self.attention_norm = nn.LayerNorm(cfg.hidden, eps=1e-6)
        self.attn = Attention(cfg.hidden, cfg.heads, cfg.attention_dropout)
        self.ffn_norm = nn.LayerNorm(cfg.hidden, eps=1e-6)
        self.ffn = Mlp(cfg.hidden, cfg.mlp, cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attention_norm(x))
        return x + self.ffn(self.ffn_norm(x))


class Encoder(nn.Module):
    """Patch embedding (1x1 conv on the stem's 1/16 map) + position embedding + dropout,
    ``layers`` blocks, final LayerNorm. ``[B, C, h, w] -> [B, h*w, hidden]``."""

    def __init__(self, cfg: TransUNetConfig, in_channels: int):
        super().__init__()
        self.patch_embeddings = nn.Conv2d(in_channels, cfg.hidden, 1)
        gh, gw = cfg.grid
        self.position_embeddings = nn.Parameter(torch.zeros(1, gh * gw, cfg.hidden))
        nn.init.trunc_normal_(self.position_embeddings, std=0.02)  # ViT's; the reference loads them
        self.dropout = nn.Dropout(cfg.dropout)
        self.layer = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.encoder_norm = nn.LayerNorm(cfg.hidden, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.patch_embeddings(x).flatten(2).transpose(1, 2) + self.position_embeddings)
        for block in self.layer:
            x = block(x)
        return self.encoder_norm(x)


# ---------------------------------------------------------------------------------------------
# the cascaded upsampler


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DecoderBlock(nn.Module):
    """Bilinear x2, concatenation with the skip map (when there is one), two 3x3 conv-BN-ReLU."""

    def __init__(self, cin: int, cout: int, skip: int):
        super().__init__()
        self.conv1 = _conv_bn_relu(cin + skip, cout)
        self.conv2 = _conv_bn_relu(cout, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class Decoder(nn.Module):
    def __init__(self, cfg: TransUNetConfig, skip_channels: tuple[int, int, int]):
        super().__init__()
        self.n_skip = cfg.n_skip
        self.conv_more = _conv_bn_relu(cfg.hidden, cfg.head_channels)
        skips = [c if i < cfg.n_skip else 0 for i, c in enumerate(skip_channels)] + [0]
        ins = [cfg.head_channels, *cfg.decoder_channels[:-1]]
        self.blocks = nn.ModuleList(DecoderBlock(i, o, s) for i, o, s in zip(ins, cfg.decoder_channels, skips))

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        x = self.conv_more(x)
        for i, block in enumerate(self.blocks):
            x = block(x, skips[i] if i < self.n_skip else None)
        return x


# ---------------------------------------------------------------------------------------------
# the network


class TransUNet(nn.Module):
    """TransUNet of a named configuration (default: the paper's ``transunet``) or a
    :class:`TransUNetConfig`, with field ``overrides`` (e.g. ``img_size=(96, 144)``).

    ``x (Tensor[B, in_chans or 1, H, W]) -> logits (Tensor[B, n_classes, H, W])`` for the
    configured ``(H, W)``, or any size with the same 16-pixel grid: the input is edge-padded
    (replicate) on the right/bottom to a multiple of 16 and the output cropped back. A size
    on another grid is a :class:`ModelConfigError` (the position embedding has one row per
    token). ``weights``: path of a local state dict of this configuration, loaded with every
    key and shape checked; ``None`` (default) leaves the random initialisation."""

    def __init__(
        self, config: str | TransUNetConfig = "transunet", *, weights: str | os.PathLike | None = None, **overrides
    ):
        super().__init__()
        cfg = transunet_config(config, **overrides)
        self.config = cfg
        self.stem = ResNetStem(cfg.stem_units, cfg.stem_width, cfg.in_chans)
        self.encoder = Encoder(cfg, self.stem.out_channels)
        self.decoder = Decoder(cfg, self.stem.skip_channels)
        self.segmentation_head = nn.Conv2d(cfg.decoder_channels[-1], cfg.n_classes, 3, padding=1)
        if weights is not None:
            from .backbones import load_backbone_weights

            load_backbone_weights(self, weights, name=cfg.name, kind="TransUNet")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if x.dim() != 4 or x.shape[1] not in (1, cfg.in_chans):
            raise ModelConfigError(f"{cfg.name} takes [B, {cfg.in_chans} or 1, H, W] images, got shape {list(x.shape)}")
        h, w = x.shape[-2:]
        if (math.ceil(h / 16), math.ceil(w / 16)) != cfg.grid:
            raise ModelConfigError(
                f"{cfg.name} was built for {cfg.img_size[0]}x{cfg.img_size[1]} inputs (a {cfg.grid[0]}x"
                f"{cfg.grid[1]} token grid), got {h}x{w}",
                hint="build it with img_size=(H, W) of the frames it will see",
            )
        if x.shape[1] != cfg.in_chans:
            x = x.expand(-1, cfg.in_chans, -1, -1)  # a grey frame as RGB, as the reference does
        ph, pw = cfg.grid[0] * 16 - h, cfg.grid[1] * 16 - w
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        deep, skips = self.stem(x)
        tokens = self.encoder(deep)
        b, _, c = tokens.shape
        grid = tokens.transpose(1, 2).reshape(b, c, *cfg.grid)
        return self.segmentation_head(self.decoder(grid, skips))[..., :h, :w]
