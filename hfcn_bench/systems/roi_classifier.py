"""The ROI-classifier stage shared by the CNN comparators (MC-CNN's pyramid network, the
two-stage system's ResNet-18): training on nodule crops through the shared epoch loop,
prediction on any samples (annotated or predicted boxes), and the checkpoint it loads from.

Training: the split's training cases minus a case-level validation part
(``cfg.val_fraction``); AdamW, cross-entropy, the ``RoiDataset`` augmentation; the best epoch
is picked on validation ROC-AUC (the first on ties) and the decision threshold is chosen on
those validation cases. ``cfg`` is any config with ``image_size``, ``epochs``,
``batch_size``, ``lr``, ``weight_decay``, ``val_fraction``, ``threshold_rule`` and ``seed``.
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
from ..protocol import Predictions
from . import common as C

__all__ = ["RoiTrainingSpec", "TrainedClassifier", "train_classifier", "predict_rois", "load_weights"]


@dataclass
class RoiTrainingSpec:
    """The training fields of every ROI classifier this module trains (MC-CNN's pyramid
    network, the two-stage system's ResNet-18), declared once: ``epochs``, ``batch_size``,
    ``lr``, ``weight_decay``, ``dropout``, ``val_fraction`` (the case-level validation part of
    the training cases), ``threshold_rule``, ``threads`` (torch threads; None leaves the setting
    alone) and ``seed``. A system's config subclasses it and adds its own fields."""

    epochs: int = 15
    batch_size: int = 16
    lr: float = 3e-4
    weight_decay: float = 1e-4
    dropout: float = 0.5
    val_fraction: float = 0.2
    threshold_rule: str = "youden"
    threads: int | None = None
    seed: int = 0

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


@torch.no_grad()
def _predict(model: nn.Module, ds, idx: list[int], batch: int = 64) -> np.ndarray:
    model.eval()
    out = [
        torch.softmax(model(torch.stack([ds[i][0] for i in idx[s : s + batch]])), 1)[:, 1].double().numpy()
        for s in range(0, len(idx), batch)
    ]
    return np.concatenate(out) if out else np.zeros(0)


class _ClassifierTask:
    def __init__(self, model, ds_fit, i_fit, ds_val, i_val):
        self.model, self.ds_fit, self.i_fit, self.ds_val, self.i_val = model, ds_fit, i_fit, ds_val, i_val
        self.n = len(i_fit)
        self.y_fit = torch.tensor([ds_fit.samples[i].label for i in i_fit])
        self.y_val = np.asarray([ds_val.samples[i].label for i in i_val])

    def start_epoch(self, epoch):
        self.ds_fit.set_epoch(epoch)
        self.model.train()

    def step(self, rows, epoch):
        x = torch.stack([self.ds_fit[self.i_fit[int(r)]][0] for r in rows])
        loss = nn.functional.cross_entropy(self.model(x), self.y_fit[rows])
        return loss, float(len(rows)), float(len(rows))

    def validate(self, epoch):
        p = _predict(self.model, self.ds_val, self.i_val)
        try:
            auc = float(M.roc_auc(self.y_val, p))
        except M.UndefinedMetricError:
            auc = float("nan")
        return [auc], {"val_auc": auc}

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
        _ClassifierTask(model, ds_fit, i_fit, ds_val, i_val),
        settings,
        config={**dataclasses.asdict(cfg), "stage": stage},
        ckpt_dir=ckpt_dir,
        resume=resume,
        progress=progress,
        stage=stage,
        keep_last=keep_last,
    )
    val_samples = [ds_val.samples[i] for i in i_val]
    val_pred = Predictions.of(val_samples, _predict(model, ds_val, i_val))
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
    return Predictions.of([ds.samples[i] for i in idx], _predict(model, ds, idx), skipped)


def load_weights(model: nn.Module, path: Path) -> nn.Module:
    """Load a stage's checkpoint (``best.pt``/``last.pt`` of the loop) into ``model``."""
    return load_weights_into(model, load_checkpoint(path)["model"], path).eval()
