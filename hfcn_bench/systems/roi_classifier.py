"""The ROI-classifier stage shared by the CNN comparators (MC-CNN's pyramid network, the
two-stage system's ResNet-18): a seeded training loop on nodule crops, prediction on any
samples (annotated or predicted boxes), and the test report.

Training: the split's training cases minus a case-level validation part
(``cfg.val_fraction``); AdamW, cross-entropy, the ``RoiDataset`` augmentation; the best epoch
is picked on validation ROC-AUC (first one on ties) and the decision threshold is chosen on
those validation cases, as in :mod:`hfcn_bench.train`. ``cfg`` is any config with
``image_size``, ``epochs``, ``batch_size``, ``lr``, ``weight_decay``, ``val_fraction``,
``threshold_rule`` and ``seed``.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .. import metrics as M
from ..data.rois import Sample
from ..data.splits import case_labels, split_train_test
from ..errors import HfcnError
from . import _common as C

__all__ = ["TrainedClassifier", "train_classifier", "predict_rois", "score_fit"]


@dataclass
class TrainedClassifier:
    model: nn.Module
    val_samples: list[Sample]
    val_prob: np.ndarray
    history: list[dict]
    best_epoch: int
    best_val_auc: float
    train_s: float
    train_rois: int

    def summary(self) -> dict:
        return {"best_epoch": self.best_epoch, "best_val_auc": self.best_val_auc, "epochs_run": len(self.history),
                "train_rois": self.train_rois, "val_rois": len(self.val_samples),
                "val_cases": len(case_labels(self.val_samples)), "history": self.history,
                "parameters": sum(p.numel() for p in self.model.parameters())}


@torch.no_grad()
def _predict(model: nn.Module, ds, idx: list[int], batch: int = 64) -> np.ndarray:
    model.eval()
    out = [torch.softmax(model(torch.stack([ds[i][0] for i in idx[s:s + batch]])), 1)[:, 1].double().numpy()
           for s in range(0, len(idx), batch)]
    return np.concatenate(out) if out else np.zeros(0)


def train_classifier(model: nn.Module, train_samples: Sequence[Sample], cfg, progress, skipped: list[str],
                     stage: str = "epoch") -> TrainedClassifier:
    """Train ``model`` (logits [B, 2]) on ``train_samples``' annotated ROIs; returns the model
    at its best validation epoch. ``progress(stage, epoch, epochs, info)`` after each epoch."""
    inner = split_train_test(list(train_samples), test_fraction=cfg.val_fraction, seed=cfg.seed)
    fit_s, val_s = inner.select(list(train_samples))
    C.both_classes(val_s, "validation")
    t0 = time.perf_counter()
    ds_fit, i_fit = C.loadable_rois(fit_s, cfg.image_size, cfg.seed, skipped, augment=True)
    ds_val, i_val = C.loadable_rois(val_s, cfg.image_size, cfg.seed, skipped)
    if len(i_fit) < 2 or not i_val:
        raise HfcnError(f"too few loadable ROIs to train ({len(i_fit)} training, {len(i_val)} validation)")
    y_fit = torch.tensor([ds_fit.samples[i].label for i in i_fit])
    y_val = np.asarray([ds_val.samples[i].label for i in i_val])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best, history = None, []
    for epoch in range(cfg.epochs):
        ds_fit.set_epoch(epoch)
        model.train()
        order = torch.randperm(len(i_fit), generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
        total, seen = 0.0, 0
        for s in range(0, len(order), cfg.batch_size):
            rows = order[s:s + cfg.batch_size]
            if len(rows) < 2:  # batch norm cannot train on one sample
                continue
            x = torch.stack([ds_fit[i_fit[int(r)]][0] for r in rows])
            loss = nn.functional.cross_entropy(model(x), y_fit[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(rows)
            seen += len(rows)
        p_val = _predict(model, ds_val, i_val)
        try:
            auc = float(M.roc_auc(y_val, p_val))
        except M.UndefinedMetricError:
            auc = float("nan")
        history.append({"epoch": epoch + 1, "train_loss": total / max(seen, 1), "val_auc": auc})
        if best is None or (auc == auc and (best[1] != best[1] or auc > best[1])):
            best = (epoch + 1, auc, copy.deepcopy(model.state_dict()), p_val)
        if progress is not None:
            progress(stage, epoch + 1, cfg.epochs, history[-1])
    model.load_state_dict(best[2])
    model.eval()
    return TrainedClassifier(model, [ds_val.samples[i] for i in i_val], best[3], history, best[0], best[1],
                             time.perf_counter() - t0, len(i_fit))


def predict_rois(model: nn.Module, samples: Sequence[Sample], cfg, skipped: list[str]
                 ) -> tuple[list[Sample], np.ndarray]:
    """P(malignant) of each loadable sample's ROI (``sample.bbox``); unreadable ones are
    skipped with a warning. Raises when none loads."""
    ds, idx = C.loadable_rois(samples, cfg.image_size, cfg.seed, skipped)
    if not idx:
        raise HfcnError("no test ROIs could be loaded")
    return [ds.samples[i] for i in idx], _predict(model, ds, idx)


def score_fit(fit: TrainedClassifier, test_samples: Sequence[Sample], prob: np.ndarray,
              train_samples: Sequence[Sample], cfg, n_boot: int) -> dict:
    """The test report, threshold chosen on the validation cases."""
    return C.score(test_samples, prob, fit.val_samples, fit.val_prob, list(train_samples), seed=cfg.seed,
                   n_boot=n_boot, threshold_rule=cfg.threshold_rule, threshold_source="validation")
