"""The grid of the paper's Tables 3 and 4 under case-level k-fold CV: which cells to run.

Song et al. (IEEE Access 2020) choose alpha in Table 3 with the feature-cropping branch alone
(their alpha = 0.6 row, 95.03 % accuracy, differs from the hybrid's 96.13 % in Table 4; their
alpha = 1.0 row equals the Global row of Table 4), so here:

- **Table 3**, per backbone: BFC with the cropping branch alone (``branch_weight = 0``) for
  each alpha < 1, and alpha = 1.0 as the Global model (``crop = none``, shared with Table 4);
- **Table 4**, per backbone: Global (``crop = none``), Global + RFC and Global + BFC (alpha 0.6,
  ``branch_weight = 0.5``, eq. 1 with the paper's w).
- **Table 5** (ours: the paper's section III argument measured), per backbone: Table 4's three
  models plus Global + Image crops (``crop = image``: the five BFC windows of the *image* at
  alpha 0.6, each resized to the input size and run through the backbone, fused by the same
  w). The first three are Table 4's cells, same keys, so finished ones are reused.

A *cell* is one configuration on one fold: an ordinary run folder of the protocol, a pure
function of (configuration, fold, data) -- so the local engine and Ray produce identical
cells, finished cells are skipped and interrupted ones resume. EfficientNet-Lite0/1/2 cells use
the ImageNet weights shipped in their packages; every other backbone is randomly initialised.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import HfcnError

__all__ = [
    "Config",
    "Cell",
    "PAPER_TABLE3",
    "TABLES",
    "DEFAULT_BACKBONES",
    "DEFAULT_ALPHAS",
    "build_configs",
    "build_cells",
    "config_overrides",
]

# Song et al. 2020, Table 3 (BFC branch, proposed CNN): alpha -> (accuracy %, F1 %).
PAPER_TABLE3 = {
    0.5: (92.27, 90.54),
    0.6: (95.03, 93.88),
    0.7: (94.48, 93.24),
    0.8: (93.37, 91.89),
    0.9: (93.37, 91.89),
    1.0: (89.50, 87.07),
}
TABLES = ("3", "4", "5", "all")
DEFAULT_BACKBONES = {"3": ("paper",), "4": ("paper", "efficientnet_lite0"), "5": ("paper", "efficientnet_lite0")}
DEFAULT_ALPHAS = (0.5, 0.6, 0.7, 0.8, 0.9)
ARCH = {"none": "Global", "rfc": "Global + RFC", "bfc": "Global + BFC", "image": "Global + Image crops"}


@dataclass(frozen=True)
class Config:
    """One model of the grid: ``backbone``, ``crop`` (none/rfc/bfc/image), ``alpha``, ``branch_weight``;
    ``tables`` says which of the paper's tables it fills."""

    backbone: str
    crop: str
    alpha: float
    branch_weight: float
    tables: tuple[str, ...]

    @property
    def key(self) -> str:
        if self.crop == "none":
            return f"{self.backbone}-global"
        return f"{self.backbone}-{self.crop}-a{self.alpha:g}-w{self.branch_weight:g}"

    @property
    def label(self) -> str:
        if self.crop == "none":
            return f"{self.backbone} Global"
        alone = " alone" if self.branch_weight == 0 else ""
        return f"{self.backbone} {self.crop.upper()}{alone} (alpha {self.alpha:g}, w {self.branch_weight:g})"


@dataclass(frozen=True)
class Cell:
    """One configuration on one fold of ``k``, trained with the grid's seed (``seed=None``) or,
    for the repeats of ``--seeds``, another training seed on the same folds (key ``-s<seed>``)."""

    config: Config
    fold: int
    k: int
    seed: int | None = None

    @property
    def key(self) -> str:
        return f"{self.config.key}-f{self.fold}" + ("" if self.seed is None else f"-s{self.seed}")


def build_configs(
    table: str, backbones: tuple[str, ...] | None = None, alphas: tuple[float, ...] | None = None
) -> list[Config]:
    """The configurations of ``table`` ("3", "4", "5" or "all"), each once (a configuration two
    tables share, like Global, carries both tags)."""
    if table not in TABLES:
        raise HfcnError(f"--table must be one of {', '.join(TABLES)}, got {table!r}")
    from ..models import available_backbones

    alphas = tuple(DEFAULT_ALPHAS if alphas is None else alphas)
    for a in alphas:
        if not 0 < a <= 1:
            raise HfcnError(f"alpha must be in (0, 1], got {a}")
    wanted = ("3", "4", "5") if table == "all" else (table,)
    found: dict[str, Config] = {}

    def add(cfg: Config) -> None:
        old = found.get(cfg.key)
        found[cfg.key] = (
            cfg if old is None else dataclasses.replace(old, tables=tuple(sorted(set(old.tables) | set(cfg.tables))))
        )

    for t in wanted:
        bbs = tuple(DEFAULT_BACKBONES[t] if backbones is None else backbones)
        for b in bbs:
            if b not in available_backbones():
                raise HfcnError(f"unknown backbone {b!r}; known: {', '.join(available_backbones())}")
            if t == "3":
                for a in alphas:
                    add(Config(b, "none", 1.0, 0.5, ("3",)) if a >= 1.0 else Config(b, "bfc", float(a), 0.0, ("3",)))
                add(Config(b, "none", 1.0, 0.5, ("3",)))  # alpha = 1.0: the global model
            else:
                # Table 5 is Table 4 plus the image multi-crop: the shared rows carry both tags.
                tags = ("4", "5") if t == "5" else ("4",)
                add(Config(b, "none", 1.0, 0.5, tags))
                add(Config(b, "rfc", 0.6, 0.5, tags))
                add(Config(b, "bfc", 0.6, 0.5, tags))
                if t == "5":
                    add(Config(b, "image", 0.6, 0.5, ("5",)))
    return list(found.values())


def build_cells(
    configs: list[Config],
    k: int,
    seeds: tuple[int, ...] = (),
    grid_seed: int = 0,
    seed_crops: tuple[str, ...] | None = None,
) -> list[Cell]:
    """Every configuration on every fold, with the grid's seed; then, for each extra training
    seed of ``seeds`` (the grid's own is skipped), the configurations whose crop is in
    ``seed_crops`` (default: all) again on the same folds."""
    if k < 2:
        raise HfcnError(f"--folds must be at least 2, got {k}")
    for c in seed_crops or ():
        if c not in ARCH:
            raise HfcnError(f"--seed-architectures: unknown architecture {c!r}; known: {', '.join(ARCH)}")
    cells = [Cell(c, f, k) for c in configs for f in range(k)]
    extra = [int(s) for s in dict.fromkeys(seeds) if int(s) != int(grid_seed)]
    for s in extra:
        cells += [Cell(c, f, k, s) for c in configs if seed_crops is None or c.crop in seed_crops for f in range(k)]
    return cells


def config_overrides(cfg: Config) -> dict:
    """The HFCN config fields a grid configuration sets on top of its preset."""
    from ..models.backbones import IMAGENET_WEIGHTS

    out = {"backbone": cfg.backbone, "crop": cfg.crop, "alpha": cfg.alpha, "branch_weight": cfg.branch_weight}
    if cfg.backbone in IMAGENET_WEIGHTS:
        out["weights"] = "imagenet"
    return out
