"""The ROI-classifier stage shared by the CNN comparators (MC-CNN's pyramid network, the
two-stage system's ResNet-18): training on nodule crops through the shared epoch loop,
prediction on any samples (annotated or predicted boxes), and the checkpoint it loads from.

Training: the split's training cases minus a case-level validation part
(``cfg.val_fraction``); AdamW, cross-entropy, the ``RoiDataset`` augmentation; the best epoch
is picked on validation ROC-AUC (the first on ties) and the decision threshold is chosen on
those validation cases. ``cfg`` is any config with ``image_size``, ``epochs``,
``batch_size``, ``lr``, ``weight_decay``, ``val_fraction``, ``threshold_rule``, ``seed`` and
``aux_descriptors``.

A classifier may carry auxiliary TI-RADS descriptor heads (``aux_descriptors > 0``): it then
has a ``forward_all(x) -> (logits, descriptor logits)`` method beside ``forward``. Their
masked cross-entropy joins the loss at that weight, each epoch's history row gets their
validation AUCs (``val_descriptor_auc``), and predictions carry their probabilities
(``descriptor_<field>`` extras). The malignancy logits never read them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import metrics as M
from ..checkpoint import load_checkpoint, load_weights_into
from ..data.rois import Sample
from ..data.splits import case_labels, split_train_test
from ..engine import LoopSettings, fit_loop
from ..errors import HfcnError
from ..models import DescriptorHeads, descriptor_classes, descriptor_loss
from ..protocol import Predictions
from ..protocol.descriptors import descriptor_extras
from . import common as C
from . import descriptor_aux as DA

__all__ = [
    "RoiTrainingSpec",
    "PooledClassifier",
    "TrainedClassifier",
    "train_classifier",
    "predict_rois",
    "predict_outputs",
    "load_weights",
]


@dataclass
class RoiTrainingSpec:
    """The training fields of every ROI classifier this module trains (MC-CNN's pyramid
    network, the two-stage system's ResNet-18), declared once: ``epochs``, ``batch_size``,
    ``lr``, ``weight_decay``, ``dropout``, ``val_fraction`` (the case-level validation part of
    the training cases), ``threshold_rule``, ``threads`` (torch threads; None leaves the setting
    alone), ``seed`` and ``aux_descriptors`` (the weight of the auxiliary TI-RADS descriptor
    loss; 0, the default, builds no descriptor heads). A system's config subclasses it and adds
    its own fields."""

    epochs: int = 15
    batch_size: int = 16
    lr: float = 3e-4
    weight_decay: float = 1e-4
    dropout: float = 0.5
    val_fraction: float = 0.2
    threshold_rule: str = "youden"
    threads: int | None = None
    seed: int = 0
    aux_descriptors: float = 0.0

    def descriptor_classes(self) -> tuple[int, ...]:
        """The descriptor heads the classifier carries (``()``: none)."""
        return descriptor_classes(self.aux_descriptors)

    def validate_training(self) -> None:
        """Raise :class:`HfcnError` naming the first bad training field."""
        if self.epochs < 1 or self.batch_size < 2:
            raise HfcnError(f"epochs must be >= 1 and batch_size >= 2, got {self.epochs} and {self.batch_size}")
        if self.lr <= 0 or self.weight_decay < 0 or not 0 <= self.dropout < 1:
            raise HfcnError("lr must be > 0, weight_decay >= 0, dropout in [0, 1)")
        if not 0 < self.val_fraction < 1:
            raise HfcnError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.threshold_rule not in ("youden", "f1", "fixed"):
            raise HfcnError(f"threshold_rule must be youden, f1 or fixed, got {self.threshold_rule!r}")
        self.aux_descriptors = DA.check_weight(self.aux_descriptors)


@dataclass
class TrainedClassifier:
    model: nn.Module
    val_predictions: Predictions
    history: list[dict]
    best_epoch: int
    best_val_auc: float
    train_s: float
    train_rois: int
    files: list[str]

    def summary(self) -> dict:
        return {
            "best_epoch": self.best_epoch,
            "best_val_auc": self.best_val_auc,
            "epochs_run": len(self.history),
            "train_rois": self.train_rois,
            "val_rois": len(self.val_predictions),
            "val_cases": len(case_labels(self.val_predictions.samples)),
            "history": self.history,
            "parameters": sum(p.numel() for p in self.model.parameters()),
        }


class PooledClassifier(nn.Module):
    """``trunk`` -> global average pool -> dropout -> linear (2 classes), with optional
    descriptor heads on the same pooled features (``descriptor_classes``: one class count per
    head; empty: none).

    ``x (Tensor[B, 3, S, S]) -> logits (Tensor[B, 2])``; ``forward_all(x)`` also returns the
    heads' logits (one ``Tensor[B, K_f]`` each; ``None`` without heads). A subclass with more
    layers before the pooling overrides :meth:`feature_map`; ``channels`` is the width of
    what it returns (``neck``: a named module between the trunk and the pooling)."""

    def __init__(
        self,
        trunk: nn.Module,
        channels: int,
        dropout: float = 0.5,
        descriptor_classes=(),
        neck: tuple[str, nn.Module] | None = None,
    ):
        super().__init__()
        self.trunk = trunk
        # (name, module) between the trunk and the pooling, registered right after the trunk:
        # parameter order (which an optimizer's saved state is matched by) stays trunk, neck,
        # classifier, heads
        self._neck = None if neck is None else neck[0]
        if neck is not None:
            self.add_module(*neck)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, 2)
        self.descriptor_heads = DescriptorHeads(channels, descriptor_classes, dropout) if descriptor_classes else None

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        f = self.trunk(x)
        return f if self._neck is None else getattr(self, self._neck)(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.feature_map(x).mean(dim=(2, 3))))

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        z = self.feature_map(x).mean(dim=(2, 3))
        return self.fc(self.drop(z)), (None if self.descriptor_heads is None else self.descriptor_heads(z))


def _outputs(model: nn.Module, x: torch.Tensor):
    forward_all = getattr(model, "forward_all", None)
    return forward_all(x) if forward_all is not None else (model(x), None)


@torch.no_grad()
def predict_outputs(model: nn.Module, ds, idx: list[int], batch: int = 64) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """P(malignant) of ``ds``'s rows ``idx`` and the descriptor heads' probabilities
    (``{field: [N, K]}``; empty without heads), in batches of ``batch``, in eval mode. A model
    with a ``forward_all`` method (descriptor heads) is called through it."""
    model.eval()
    prob, heads = [], []
    for s in range(0, len(idx), batch):
        logits, desc = _outputs(model, torch.stack([ds[i][0] for i in idx[s : s + batch]]))
        prob.append(torch.softmax(logits, 1)[:, 1].double().numpy())
        if desc is not None:
            heads.append(desc)
    return (np.concatenate(prob) if prob else np.zeros(0)), DA.head_probs(heads)


class _ClassifierTask:
    def __init__(self, model, ds_fit, i_fit, ds_val, i_val, aux_weight: float = 0.0):
        self.model, self.ds_fit, self.i_fit, self.ds_val, self.i_val = model, ds_fit, i_fit, ds_val, i_val
        self.aux_weight = aux_weight
        self.n = len(i_fit)
        self.y_fit = torch.tensor([ds_fit.samples[i].label for i in i_fit])
        self.y_val = np.asarray([ds_val.samples[i].label for i in i_val])
        # the descriptor heads' targets (-1 = not recorded): a loss term, never an input
        self.d_fit = DA.targets([ds_fit.samples[i] for i in i_fit])
        self.d_val = DA.targets([ds_val.samples[i] for i in i_val])

    def start_epoch(self, epoch):
        self.ds_fit.set_epoch(epoch)
        self.model.train()

    def step(self, rows, epoch):
        x = torch.stack([self.ds_fit[self.i_fit[int(r)]][0] for r in rows])
        logits, desc = _outputs(self.model, x)
        loss = nn.functional.cross_entropy(logits, self.y_fit[rows])
        if self.aux_weight > 0:
            loss = loss + self.aux_weight * descriptor_loss(desc, self.d_fit[rows])
        return loss, float(len(rows)), float(len(rows))

    def validate(self, epoch):
        p, heads = predict_outputs(self.model, self.ds_val, self.i_val)
        try:
            auc = float(M.roc_auc(self.y_val, p))
        except M.UndefinedMetricError:
            auc = float("nan")
        metrics = {"val_auc": auc}
        if heads:
            metrics["val_descriptor_auc"] = DA.head_aucs(self.d_val, heads)
        return [auc], metrics

    def generators(self):
        return {}


def train_classifier(
    model: nn.Module,
    train_samples: Sequence[Sample],
    cfg,
    progress,
    skipped: list[str],
    stage: str = "epoch",
    ckpt_dir: Path | None = None,
    resume: bool = False,
    keep_last: bool = True,
) -> TrainedClassifier:
    """Train ``model`` (logits [B, 2]) on ``train_samples``' annotated ROIs; returns it at its
    best validation epoch. ``progress(stage, epoch, epochs, info)`` after each epoch;
    ``ckpt_dir``: the loop's checkpoints (resumable)."""
    inner = split_train_test(list(train_samples), test_fraction=cfg.val_fraction, seed=cfg.seed)
    fit_s, val_s = inner.select(list(train_samples))
    C.both_classes(val_s, "validation")
    ds_fit, i_fit = C.loadable_rois(fit_s, cfg.image_size, cfg.seed, skipped, augment=True)
    ds_val, i_val = C.loadable_rois(val_s, cfg.image_size, cfg.seed, skipped)
    if len(i_fit) < 2 or not i_val:
        raise HfcnError(f"too few loadable ROIs to train ({len(i_fit)} training, {len(i_val)} validation)")
    settings = LoopSettings(
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        optimizer="adamw",
        seed=cfg.seed,
    )
    loop = fit_loop(
        model,
        _ClassifierTask(model, ds_fit, i_fit, ds_val, i_val, cfg.aux_descriptors),
        settings,
        config={**DA.loop_config(dataclasses.asdict(cfg)), "stage": stage},
        ckpt_dir=ckpt_dir,
        resume=resume,
        progress=progress,
        stage=stage,
        keep_last=keep_last,
    )
    val_samples = [ds_val.samples[i] for i in i_val]
    prob, heads = predict_outputs(model, ds_val, i_val)
    val_pred = Predictions.of(val_samples, prob, **descriptor_extras(heads))
    best_auc = loop.best_score[0] if loop.best_score else float("nan")
    return TrainedClassifier(
        model, val_pred, loop.history, loop.best_epoch, best_auc, loop.seconds, len(i_fit), loop.checkpoints
    )


def predict_rois(model: nn.Module, samples: Sequence[Sample], cfg, skipped: list[str]) -> Predictions:
    """P(malignant) of each loadable sample's ROI (``sample.bbox``); unreadable ones are
    skipped with a warning. Raises when none loads."""
    ds, idx = C.loadable_rois(samples, cfg.image_size, cfg.seed, skipped)
    if not idx:
        raise HfcnError("no ROI could be loaded")
    prob, heads = predict_outputs(model, ds, idx)
    return Predictions.of([ds.samples[i] for i in idx], prob, skipped, **descriptor_extras(heads))


def load_weights(model: nn.Module, path: Path) -> nn.Module:
    """Load a stage's checkpoint (``best.pt``/``last.pt`` of the loop) into ``model``."""
    return load_weights_into(model, load_checkpoint(path)["model"], path).eval()
