"""Training HFCN (Song et al., IEEE Access 8:64064-64074, 2020): its configuration and presets,
its data in memory, its training task for the shared epoch loop, prediction, and rebuilding a
model from a checkpoint. Everything that is not specific to HFCN (the epoch loop, the
protocol, the run folder) lives in :mod:`hfcn_bench.engine`, :mod:`hfcn_bench.protocol` and
:mod:`hfcn_bench.runs`; HFCN is registered among the systems as ``hfcn``
(:mod:`hfcn_bench.systems.hfcn`).

Library API (no printing; progress goes through an optional callback)::

    cfg = preset_config("default", crop="bfc")               # or "paper", "cpu", "quick", "smoke"
    result = fit(train_samples, val_samples, cfg, out_dir="runs/x")
    pred = predict(result.model, test_samples, cfg)          # protocol.Predictions

Reproducible on the CPU for a seed: the initial weights come from ``torch.manual_seed(seed)``,
the batch order and the augmentation draws are functions of (seed, epoch), and the dropout and
RFC generator states go into every checkpoint, so a resumed run continues exactly where the
killed one stopped. The best epoch is picked on validation ROC-AUC (ties: lower loss, then the
first), the threshold on the validation predictions (training predictions without a
validation set), never on the test side.

Progress callback: ``progress(kind, done, total, info)`` with ``kind`` one of ``"load"`` (ROIs
decoded), ``"batch"``, ``"epoch"`` (``info`` is the epoch's history row) and ``"predict"``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import metrics as M
from .. import ops
from ..atomic import write_json_atomic
from ..checkpoint import load_checkpoint, load_weights_into
from ..data.dataset import AUGMENT_POLICIES
from ..data.descriptors import DESCRIPTORS
from ..data.rois import Sample, parse_context
from ..engine import OPTIMIZERS, SCHEDULES, LoopSettings, device_of, fit_loop, torch_threads
from ..errors import HfcnError
from ..models import (
    HFCN,
    HFCNConfig,
    ModelSpec,
    available_backbones,
    build_model,
    descriptor_classes,
    descriptor_loss,
    hfcn_loss,
)
from ..models.backbones import IMAGENET_WEIGHTS
from ..protocol import THRESHOLD_RULES, Predictions, threshold_from_predictions
from ..protocol.descriptors import descriptor_extras
from . import descriptor_aux as DA
from .common import loadable_rois

__all__ = [
    "PRESETS",
    "TrainConfig",
    "TrainResult",
    "preset_config",
    "recipe_differences",
    "fit",
    "predict",
    "model_from_checkpoint",
    "RoiTensors",
]

Progress = Callable[[str, int, int, dict], None]


def _meta(help: str, **kw) -> dict:
    return {"help": help, **kw}


# ---------------------------------------------------------------------------------------------
# configuration


@dataclass
class TrainConfig(ModelSpec):
    """Everything that defines an HFCN training run: the model's :class:`ModelSpec` fields
    (backbone, crop, alpha, branch_weight, crop_impl, weights) plus optimisation, data handling
    and protocol. Every field is a command-line flag of ``hfcn-bench train`` (generated from
    this class) and a ``--set KEY=VALUE`` key; see each field's ``help``."""

    preset: str = field(default="default", metadata=_meta("the preset this configuration started from"))
    epochs: int = field(default=15, metadata=_meta("training epochs"))
    batch_size: int = field(default=16, metadata=_meta("training batch size"))
    lr: float = field(default=3e-4, metadata=_meta("initial learning rate"))
    trunk_lr_scale: float = field(
        default=1.0,
        metadata=_meta("the backbone's learning rate as a fraction of lr (a pretrained trunk: e.g. 0.1)"),
    )
    warmup_epochs: float = field(
        default=0.0, metadata=_meta("linear learning-rate warmup over this many epochs, per step (0: none)")
    )
    momentum: float = field(default=0.9, metadata=_meta("SGD momentum"))
    weight_decay: float = field(default=1e-4, metadata=_meta("weight decay"))
    optimizer: str = field(default="adamw", metadata=_meta("optimizer", choices=OPTIMIZERS))
    schedule: str = field(default="cosine", metadata=_meta("learning-rate schedule per epoch", choices=SCHEDULES))
    loss_reduction: str = field(
        default="mean",
        metadata=_meta(
            "mean: class-weighted mean over the batch; sum: the paper's sum (eqs. 4-8)", choices=("mean", "sum")
        ),
    )
    grad_clip: float | None = field(default=None, metadata=_meta("max gradient norm (none: no clipping)"))
    w_malignant: float = field(default=3.0, metadata=_meta("loss weight of malignant samples (paper: 3)"))
    w_benign: float = field(default=2.0, metadata=_meta("loss weight of benign samples (paper: 2)"))
    image_size: int = field(default=64, metadata=_meta("ROI side in pixels (the model's input size)"))
    augment: bool = field(default=True, metadata=_meta("augment the training ROIs (see augment_policy)"))
    augment_policy: str = field(
        default="basic",
        metadata=_meta(
            "basic: flip, shift, +-10%% brightness/contrast; strong: also rotations up to +-10 degrees, "
            "scale +-15%% and +-20%% brightness/contrast",
            choices=tuple(AUGMENT_POLICIES),
        ),
    )
    roi_context: str = field(
        default="0",
        metadata=_meta(
            "context added around each ROI box before cropping, per side: a fraction (0.1), a percentage "
            "(10%%) or frame pixels (32px); 0: the box itself"
        ),
    )
    letterbox: bool = field(default=False, metadata=_meta("keep the ROI's aspect ratio (pad) instead of squashing"))
    seed: int = field(default=0, metadata=_meta("seed of the weights, batch order, augmentation and splits"))
    device: str = field(default="cpu", metadata=_meta("cpu, cuda, cuda:N or auto"))
    threads: int | None = field(default=None, metadata=_meta("torch CPU threads"))
    val_fraction: float = field(
        default=0.2, metadata=_meta("fraction of the training cases held out to pick the epoch and the threshold")
    )
    threshold_rule: str = field(
        default="youden",
        metadata=_meta("how the decision threshold is chosen on validation predictions", choices=THRESHOLD_RULES),
    )
    eval_batch_size: int = field(default=64, metadata=_meta("batch size of prediction"))
    tta_flip: bool = field(
        default=False,
        metadata=_meta("test-time augmentation: average every prediction over the ROI and its horizontal mirror"),
    )
    aux_descriptors: float = field(
        default=0.0,
        metadata=_meta(
            "weight of the auxiliary TI-RADS descriptor loss (heads for composition, echogenicity, margins, "
            "calcifications on the pooled global map; masked where a case lacks one; never a prediction input); "
            "0: no descriptor heads"
        ),
    )

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise :class:`HfcnError` naming the first bad field."""

        def bad(name, what):
            raise HfcnError(f"training option {name}={getattr(self, name)!r}: {what}")

        if self.backbone not in available_backbones():
            bad("backbone", f"known backbones: {', '.join(available_backbones())}")
        if self.weights == "imagenet" and self.backbone not in IMAGENET_WEIGHTS:
            bad("weights", f"ImageNet weights ship for {', '.join(IMAGENET_WEIGHTS)} only, not {self.backbone}")
        if self.optimizer not in OPTIMIZERS:
            bad("optimizer", f"known: {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            bad("schedule", f"known: {', '.join(SCHEDULES)}")
        if self.loss_reduction not in ("mean", "sum"):
            bad("loss_reduction", "use 'mean' or 'sum'")
        if self.threshold_rule not in THRESHOLD_RULES:
            bad("threshold_rule", f"known: {', '.join(THRESHOLD_RULES)}")
        if self.device not in ("cpu", "cuda", "auto") and not str(self.device).startswith("cuda:"):
            bad("device", "use cpu, cuda, cuda:N or auto")
        for name in ("epochs", "batch_size", "image_size", "eval_batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                bad(name, "must be a positive integer")
        if self.threads is not None and (
            isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1
        ):
            bad("threads", "must be a positive integer or None")
        for name in ("lr", "w_malignant", "w_benign"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0 or not math.isfinite(v):
                bad(name, "must be a positive number")
        for name in ("momentum", "weight_decay"):
            v = getattr(self, name)
            if (
                not isinstance(v, (int, float))
                or isinstance(v, bool)
                or not 0 <= v < (1 if name == "momentum" else 1e3)
            ):
                bad(name, "out of range")
        if self.grad_clip is not None and (
            not isinstance(self.grad_clip, (int, float)) or isinstance(self.grad_clip, bool) or not self.grad_clip > 0
        ):
            bad("grad_clip", "must be a positive number or None")
        v = self.aux_descriptors
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            bad("aux_descriptors", "must be a number >= 0 (0: no descriptor heads)")
        if not isinstance(self.val_fraction, (int, float)) or not 0.0 <= self.val_fraction < 1.0:
            bad("val_fraction", "must be in [0, 1)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            bad("seed", "must be an integer")
        if self.augment_policy not in AUGMENT_POLICIES:
            bad("augment_policy", f"known: {', '.join(AUGMENT_POLICIES)}")
        try:
            parse_context(self.roi_context)
        except ValueError as exc:
            bad("roi_context", str(exc))
        for name in ("trunk_lr_scale",):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 10 or not math.isfinite(v):
                bad(name, "must be a number in (0, 10]")
        v = self.warmup_epochs
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= self.epochs:
            bad("warmup_epochs", f"must be a number in [0, epochs={self.epochs}]")
        for name in ("augment", "letterbox", "tta_flip"):
            if not isinstance(getattr(self, name), bool):
                bad(name, "must be true or false")
        # Model fields (crop, alpha, branch weight, the feature map of image_size) are checked
        # by the model's own config, whose errors name the field.
        self.model_config()

    def model_config(self) -> HFCNConfig:
        """The :class:`HFCNConfig` this run builds (input size = ``image_size``, RFC seed = ``seed``)."""
        spec = {f.name: getattr(self, f.name) for f in dataclasses.fields(ModelSpec)}
        heads = descriptor_classes(self.aux_descriptors)
        return HFCNConfig(**spec, seed=int(self.seed), input_size=int(self.image_size), descriptor_classes=heads)

    def loop_settings(self) -> LoopSettings:
        return LoopSettings(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
            optimizer=self.optimizer,
            momentum=self.momentum,
            schedule=self.schedule,
            grad_clip=self.grad_clip,
            seed=self.seed,
            warmup_epochs=float(self.warmup_epochs),
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Rebuild from :meth:`to_dict` output; unknown keys are an error (a newer file)."""
        from .base import config_from_dict

        return config_from_dict(cls, d)


# The paper's settings (section IV-B): SGD, lr 1e-5, momentum 0.9, weight decay 5e-4, batch 16,
# class weights 3/2, w = 0.5, alpha = 0.6 (Table 3), 224x224 inputs, loss summed over the batch.
# The paper gives no epoch count and no augmentation; 100 epochs is our choice.
# "cpu" keeps the paper's 224 px inputs and architecture but trains as "default" does (AdamW +
# cosine + augmentation) for 12 epochs: what a 2-core CPU can afford per fold (~6 minutes for the
# paper CNN on DDTI). "default" and "quick" were tuned on this project's 2-core CPU (README);
# "smoke" checks that the code runs (seconds; its numbers mean nothing).
# "pretrained" is the fair recipe for an ImageNet trunk (issue 22; Buda et al., Radiology 2019):
# EfficientNet-Lite0 with its packaged ImageNet weights, a pooled head, the trunk at a tenth of
# the heads' learning rate after a one-epoch warmup, strong augmentation, 32 px of context
# around the box, the TI-RADS descriptor heads at weight 0.5 and flip test-time augmentation, at
# the paper's 224 px. Its values are the recipe as designed; docs/results.md says which of its
# elements the DDTI ablation (hfcn-bench recipe) has measured so far.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(
        optimizer="sgd",
        lr=1e-5,
        momentum=0.9,
        weight_decay=5e-4,
        batch_size=16,
        w_malignant=3.0,
        w_benign=2.0,
        branch_weight=0.5,
        alpha=0.6,
        image_size=224,
        epochs=100,
        schedule="none",
        loss_reduction="sum",
        augment=False,
    ),
    "cpu": dict(
        optimizer="adamw",
        lr=3e-4,
        weight_decay=1e-4,
        batch_size=16,
        image_size=224,
        epochs=12,
        schedule="cosine",
        loss_reduction="mean",
        augment=True,
    ),
    "default": dict(
        optimizer="adamw",
        lr=3e-4,
        weight_decay=1e-4,
        batch_size=16,
        image_size=64,
        epochs=15,
        schedule="cosine",
        loss_reduction="mean",
        augment=True,
    ),
    "quick": dict(
        optimizer="adamw",
        lr=5e-4,
        weight_decay=1e-4,
        batch_size=16,
        image_size=48,
        epochs=8,
        schedule="cosine",
        loss_reduction="mean",
        augment=True,
    ),
    "pretrained": dict(
        backbone="efficientnet_lite0",
        weights="imagenet",
        head="pooled",
        optimizer="adamw",
        lr=1e-3,
        trunk_lr_scale=0.1,
        warmup_epochs=1.0,
        weight_decay=1e-4,
        batch_size=16,
        image_size=224,
        epochs=12,
        schedule="cosine",
        loss_reduction="mean",
        augment=True,
        augment_policy="strong",
        roi_context="32px",
        aux_descriptors=0.5,
        tta_flip=True,
    ),
    "smoke": dict(
        optimizer="adamw",
        lr=5e-4,
        weight_decay=1e-4,
        batch_size=16,
        image_size=32,
        epochs=1,
        schedule="none",
        loss_reduction="mean",
        augment=False,
        eval_batch_size=32,
    ),
}


def recipe_differences(cfg: TrainConfig) -> list[str]:
    """The elements of the pretrained-trunk recipe (issue 22) that ``cfg`` switches on, each a
    difference from the paper, in the words a report lists them."""
    out = []
    if cfg.head == "pooled":
        out.append(
            "pooled head: global average pooling + FC 512 + FC 2 instead of the paper's flatten head "
            "(whose first layer takes C*h*w inputs)"
        )
    if cfg.trunk_lr_scale != 1:
        out.append(f"backbone trained at {cfg.trunk_lr_scale:g} x the heads' learning rate")
    if cfg.warmup_epochs:
        out.append(f"learning-rate warmup over {cfg.warmup_epochs:g} epoch(s)")
    if cfg.augment and cfg.augment_policy != "basic":
        out.append(
            f"{cfg.augment_policy} augmentation (flips, rotations up to +-10 degrees, scale +-15%, "
            "+-20% brightness/contrast); the paper states none"
        )
    if parse_context(cfg.roi_context)[1] > 0:
        out.append(f"ROI context {cfg.roi_context} per side around the nodule box (the paper crops the box)")
    if cfg.aux_descriptors > 0:
        out.append(DA.limitation(cfg.aux_descriptors))
    if cfg.tta_flip:
        out.append("flip test-time augmentation (mean of the ROI and its mirror)")
    return out


def preset_config(name: str = "default", **overrides) -> TrainConfig:
    """A :class:`TrainConfig` from a preset plus keyword overrides (see :data:`PRESETS`)."""
    if name not in PRESETS:
        raise HfcnError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise HfcnError(f"unknown training option(s) {unknown}; known: {', '.join(sorted(names))}")
    return TrainConfig(**{**PRESETS[name], "preset": name, **overrides})


# ---------------------------------------------------------------------------------------------
# data in memory


class RoiTensors:
    """The ROIs of a sample list decoded once (via ``RoiDataset``'s cache), ready to batch.

    ROIs that fail to load are skipped with a :class:`DataWarning` naming the file, so one bad
    image cannot end a run. Without augmentation the whole set is one normalised tensor; with
    augmentation each batch is drawn through ``RoiDataset`` (draws depend on seed, epoch, index).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        config: TrainConfig,
        augment: bool,
        progress: Progress | None = None,
        what: str = "ROIs",
    ):
        self.augment = augment
        self.skipped: list[str] = []
        self.ds, keep = loadable_rois(
            samples,
            config.image_size,
            config.seed,
            self.skipped,
            augment=augment,
            letterbox=config.letterbox,
            progress=progress,
            what=what,
            policy=config.augment_policy,
            context=config.roi_context,
        )
        self.index = np.asarray(keep, dtype=np.int64)
        self.samples = [self.ds.samples[i] for i in keep]
        self.labels = torch.tensor([-1 if s.label is None else s.label for s in self.samples], dtype=torch.int64)
        # [N, F] descriptor targets (-1 = missing): the auxiliary heads' labels, never an input
        self.descriptors = DA.targets(self.samples)
        self._fixed = None
        if not augment:
            self._fixed = (
                torch.stack([self.ds[int(i)][0] for i in self.index])
                if keep
                else torch.zeros((0, 3, config.image_size, config.image_size))
            )

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        self.ds.set_epoch(epoch)

    def batch(self, rows: torch.Tensor) -> torch.Tensor:
        """Images ``[len(rows), 3, S, S]`` for positions ``rows`` of this set."""
        if self._fixed is not None:
            return self._fixed[rows]
        return torch.stack([self.ds[int(self.index[r])][0] for r in rows.tolist()])


# ---------------------------------------------------------------------------------------------
# prediction


def _crop_generator(model: HFCN) -> torch.Generator | None:
    gen = getattr(model, "crop_generator", None)
    return gen if isinstance(gen, torch.Generator) else None


@contextmanager
def _eval_mode(model: HFCN):
    """Evaluation mode with a fixed RFC window sequence (so scores do not depend on how many
    training steps ran before), restoring the training generator afterwards."""
    gen = _crop_generator(model)
    state = gen.get_state() if gen is not None else None
    was_training = model.training
    model.eval()
    if gen is not None:
        model.reset_crop_generator()
    try:
        with torch.no_grad():
            yield
    finally:
        if gen is not None:
            gen.set_state(state)
        model.train(was_training)


def _forward_tta(model: HFCN, x: torch.Tensor, flip: bool):
    """The model's output, or with ``flip`` the mean of the outputs on ``x`` and its mirror
    (probabilities averaged; ``log_prob``/logits are not needed at prediction)."""
    out = model(x)
    if not flip:
        return out
    mirror = model(x.flip(-1))
    mean = lambda a, b: None if a is None else (a + b) / 2  # noqa: E731
    desc = None
    if out.descriptor_logits is not None:
        # average the heads' probabilities; log turns them back into logits for the softmax below
        desc = tuple(
            ((a.softmax(-1) + b.softmax(-1)) / 2).log() for a, b in zip(out.descriptor_logits, mirror.descriptor_logits)
        )
    return out._replace(
        prob=mean(out.prob, mirror.prob),
        global_prob=mean(out.global_prob, mirror.global_prob),
        crop_prob=mean(out.crop_prob, mirror.crop_prob),
        crop_probs=mean(out.crop_probs, mirror.crop_probs),
        descriptor_logits=desc,
    )


def _predict_tensors(
    model: HFCN, data: RoiTensors, batch_size: int, progress: Progress | None = None, tta_flip: bool = False
) -> dict[str, np.ndarray]:
    device = next(model.parameters()).device
    n = len(data)
    prob, gprob, cprob, cprobs = [], [], [], []
    heads = model.config.descriptor_classes
    desc: list[list[torch.Tensor]] = [[] for _ in heads]
    with _eval_mode(model):
        for b, start in enumerate(range(0, n, batch_size)):
            rows = torch.arange(start, min(n, start + batch_size))
            out = _forward_tta(model, data.batch(rows).to(device), tta_flip)
            prob.append(out.prob[:, 1].float().cpu())
            gprob.append(out.global_prob[:, 1].float().cpu())
            if out.crop_prob is not None:
                cprob.append(out.crop_prob[:, 1].float().cpu())
                cprobs.append(out.crop_probs[..., 1].float().cpu())
            for f, lg in enumerate(out.descriptor_logits or ()):
                desc[f].append(lg.softmax(dim=-1).float().cpu())
            if progress is not None:
                progress("predict", b + 1, math.ceil(n / batch_size), {})
    cat = lambda xs: torch.cat(xs).numpy().astype(np.float64) if xs else np.zeros(0)  # noqa: E731
    return {
        "prob": cat(prob),
        "global_prob": cat(gprob),
        "crop_prob": cat(cprob) if cprob else np.full(n, np.nan),
        "crop_probs": torch.cat(cprobs).numpy().astype(np.float64) if cprobs else None,
        "descriptors": {name: (cat(d) if d else np.zeros((0, k))) for name, k, d in zip(DESCRIPTORS, heads, desc)},
    }


def predict(
    model: HFCN,
    samples: Sequence[Sample],
    config: TrainConfig,
    progress: Progress | None = None,
    data: RoiTensors | None = None,
) -> Predictions:
    """Predict every loadable ROI of ``samples`` (eval mode, no augmentation): P(malignant) of
    the fused output (eq. 1), with ``extra`` ``global_prob``, ``crop_prob`` (NaN for
    crop="none"), ``crop_probs`` [N, n_crops] and, for a model with descriptor heads,
    ``descriptor_<field>`` [N, K] (each head's class probabilities; the samples' descriptors
    are never read)."""
    with torch_threads(config.threads):
        data = data if data is not None else RoiTensors(samples, config, augment=False)
        out = _predict_tensors(model, data, config.eval_batch_size, progress, config.tta_flip)
    return Predictions.of(
        data.samples,
        out["prob"],
        data.skipped,
        global_prob=out["global_prob"],
        crop_prob=out["crop_prob"],
        crop_probs=out["crop_probs"],
        **descriptor_extras(out["descriptors"]),
    )


# ---------------------------------------------------------------------------------------------
# training


@dataclass
class TrainResult:
    """What :func:`fit` returns.

    ``model`` holds the best epoch's weights (best validation score; the last epoch when there
    is no validation set), in eval mode. ``threshold`` (ROI level) was chosen with
    ``config.threshold_rule`` on ``threshold_predictions`` (validation, or training when
    ``threshold_source`` starts with "training"). ``history`` has one row per epoch.
    """

    model: HFCN
    config: TrainConfig
    history: list[dict]
    best_epoch: int
    best_score: list[float] | None
    threshold: float
    threshold_source: str
    threshold_predictions: Predictions
    val_cases: list[str]
    skipped: list[str]
    seconds: float
    resumed_from: int | None = None
    out_dir: Path | None = None
    checkpoints: list[str] = field(default_factory=list)


def _val_score(p: np.ndarray, y: np.ndarray, loss: float) -> list[float]:
    """Validation score, compared lexicographically: ROC-AUC first, then lower loss. AUC
    saturates on easy data (several epochs at 1.0) and the loss breaks the tie towards the
    better-calibrated epoch; with one class in the validation set AUC has no value and only
    the loss counts."""
    try:
        return [M.roc_auc(y, p), -loss]
    except M.UndefinedMetricError:
        return [-1.0, -loss]


class _HFCNTask:
    """HFCN's training task for :func:`engine.fit_loop`: the class-weighted loss of eqs. 4-8 on
    a batch, plus ``aux_descriptors`` times the descriptor heads' masked cross-entropy;
    validation ROC-AUC then loss on the validation ROIs (the descriptor heads' validation AUCs
    go into the history, not into the selection)."""

    def __init__(
        self, model: HFCN, train: RoiTensors, val: RoiTensors | None, config: TrainConfig, device: torch.device
    ):
        self.model, self.train, self.val, self.config, self.device = model, train, val, config, device
        self.n = len(train)
        self.w = torch.tensor([config.w_benign, config.w_malignant])

    def start_epoch(self, epoch: int) -> None:
        self.model.train()
        self.train.set_epoch(epoch)

    def step(self, rows: torch.Tensor, epoch: int):
        cfg = self.config
        y_host = self.train.labels[rows]
        # Report the weighted-mean loss whatever the reduction, so runs compare (from the host
        # labels: reading the device copy back would synchronise every step).
        wsum = float(self.w[y_host].sum())
        x = self.train.batch(rows).to(self.device, non_blocking=True)
        y = y_host.to(self.device, non_blocking=True)
        out = self.model(x)
        loss = hfcn_loss(out, y, w_malignant=cfg.w_malignant, w_benign=cfg.w_benign, reduction=cfg.loss_reduction)
        if cfg.aux_descriptors > 0:
            targets = self.train.descriptors[rows].to(self.device, non_blocking=True)
            loss = loss + cfg.aux_descriptors * descriptor_loss(
                out.descriptor_logits, targets, reduction=cfg.loss_reduction
            )
        return loss, (1.0 if cfg.loss_reduction == "sum" else wsum), wsum

    def end_epoch(self, epoch: int) -> None:
        # CUDA windows are checked on the device without a synchronisation; a bad one of this
        # epoch is raised now rather than at some later call of the op.
        if self.device.type == "cuda":
            ops.raise_device_box_error(self.device)

    def validate(self, epoch: int):
        if self.val is None:
            return None, {}
        cfg = self.config
        vp = _predict_tensors(self.model, self.val, cfg.eval_batch_size, tta_flip=cfg.tta_flip)
        p = torch.from_numpy(vp["prob"])
        vl = float(hfcn_loss(torch.stack([1 - p, p], 1), self.val.labels, cfg.w_malignant, cfg.w_benign))
        y = self.val.labels.numpy()
        try:
            auc = float(M.roc_auc(y, vp["prob"]))
        except M.UndefinedMetricError:
            auc = None
        metrics = {"val_loss": vl, "val_auc": auc}
        if vp["descriptors"]:
            metrics["val_descriptor_auc"] = DA.head_aucs(self.val.descriptors, vp["descriptors"])
        return _val_score(vp["prob"], y, vl), metrics

    def generators(self) -> dict[str, torch.Generator]:
        gen = _crop_generator(self.model)
        return {"crop": gen} if gen is not None else {}


def _param_groups(model: HFCN, config: TrainConfig) -> list[dict]:
    """The backbone at ``lr * trunk_lr_scale``, the heads at ``lr``: a pretrained trunk moves
    slowly while the heads, trained from scratch, learn at the full rate."""
    trunk = list(model.backbone.parameters())
    ids = {id(p) for p in trunk}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return [
        {"params": trunk, "lr": config.lr * config.trunk_lr_scale},
        {"params": rest, "lr": config.lr},
    ]


def fit(
    train_samples: Sequence[Sample],
    val_samples: Sequence[Sample] | None,
    config: TrainConfig,
    out_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
    resume: bool = False,
    keep_last: bool = True,
) -> TrainResult:
    """Train an HFCN on ``train_samples``; select the epoch and the threshold on ``val_samples``.

    Args:
        train_samples: ROI samples to train on (augmented when ``config.augment``).
        val_samples: held-out samples (cases disjoint from training) for best-epoch selection
            and the decision threshold; ``None``/empty: the last epoch is kept and the
            threshold is chosen on (unaugmented) training predictions.
        config: the run's :class:`TrainConfig`.
        out_dir: when given, the loop's ``best.pt``/``last.pt`` (atomic) and ``history.json``.
        progress: ``progress(kind, done, total, info)`` (see the module docstring).
        resume: continue from ``out_dir/last.pt`` (see :func:`engine.fit_loop`); only
            ``epochs``, ``threads``, ``device`` and ``eval_batch_size`` may change.
        keep_last: keep ``last.pt`` once training finished (only a resume needs it).

    Returns:
        :class:`TrainResult`; its ``model`` holds the best weights.
    """
    config.validate()
    t0 = time.perf_counter()
    device = device_of(config.device)
    out = Path(out_dir) if out_dir is not None else None
    val_samples = list(val_samples or [])
    if not train_samples:
        raise HfcnError("no training samples")
    with torch_threads(config.threads):
        torch.manual_seed(config.seed)
        model = build_model(config.model_config()).to(device)
        train = RoiTensors(train_samples, config, augment=config.augment, progress=progress, what="training ROIs")
        val = (
            RoiTensors(val_samples, config, augment=False, progress=progress, what="validation ROIs")
            if val_samples
            else None
        )
        if len(train) == 0:
            raise HfcnError("none of the training ROIs could be loaded", hint="see the warnings above for the files")
        if val is not None and len(val) == 0:
            val = None
        val_cases = sorted({s.case_id for s in val.samples}) if val is not None else []
        loop = fit_loop(
            model,
            _HFCNTask(model, train, val, config, device),
            config.loop_settings(),
            params=_param_groups(model, config) if config.trunk_lr_scale != 1 else None,
            config=config.to_dict(),
            ckpt_dir=out,
            resume=resume,
            progress=progress,
            keep_last=keep_last,
            extra={"val_cases": val_cases},
        )
        thr_data = val if val is not None else RoiTensors(train.samples, config, augment=False)
        source = "validation" if val is not None else "training"
        tp = predict(model, thr_data.samples, config, data=thr_data)
        threshold, source = threshold_from_predictions(tp, config.threshold_rule, None, source)
        if out is not None:
            write_json_atomic(
                out / "history.json",
                {"best_epoch": loop.best_epoch, "best_score": loop.best_score, "history": loop.history},
            )
    return TrainResult(
        model=model,
        config=config,
        history=loop.history,
        best_epoch=loop.best_epoch,
        best_score=loop.best_score,
        threshold=threshold,
        threshold_source=source,
        threshold_predictions=tp,
        val_cases=val_cases,
        skipped=train.skipped + (val.skipped if val is not None else []),
        seconds=time.perf_counter() - t0,
        resumed_from=loop.resumed_from,
        out_dir=out,
        checkpoints=loop.checkpoints,
    )


def model_from_checkpoint(path: str | os.PathLike, device: str = "cpu") -> tuple[HFCN, TrainConfig, dict]:
    """Rebuild the model a checkpoint was trained with and load its weights (eval mode).
    Returns ``(model, config, checkpoint)``; errors name the file."""
    ck = load_checkpoint(path)
    try:
        cfg = TrainConfig.from_dict(ck["config"])
    except (HfcnError, TypeError, ValueError) as exc:
        raise HfcnError(f"{path}: its training configuration is not usable: {exc}") from None
    # The weights come from the checkpoint: do not read the backbone's initial weights again
    # (an ImageNet file, or a local one that may have moved since training).
    model = build_model(dataclasses.replace(cfg.model_config(), weights=None))
    load_weights_into(model, ck["model"], path)
    model.to(device_of(device)).eval()
    return model, cfg, ck
