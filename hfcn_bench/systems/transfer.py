"""``transfer_svm`` / ``transfer_rf`` / ``transfer_softmax``: CNN features + classical heads.

The transfer-learning comparator of PAPERS.md section 3 (a master's project, TensorFlow/Keras):
VGG-16, ResNet-50 and EfficientNet pretrained on ImageNet, fine-tuned at several depths, with a
softmax head, and SVM and Random Forest heads on VGG-16 features. Here:

- the trunk is ``torchvision.models.<backbone>(weights=None)`` up to its last convolutional
  stage, followed by global average pooling (VGG-16: 512, ResNet-50: 2048, EfficientNet-B0:
  1280 features). Nothing is downloaded: the trunk is randomly initialised (seeded) unless
  ``weights`` names a local state dict of the torchvision model (e.g. ImageNet weights saved
  with ``torch.save(model.state_dict(), path)`` on a connected machine);
- ``finetune_layers=0`` (default) keeps the trunk frozen; ``N > 0`` trains its last ``N``
  blocks plus a linear layer with cross-entropy for ``epochs`` on the training cases (minus a
  validation part), and the head is then fitted on the fine-tuned features;
- heads (scikit-learn): ``svm`` = standardised features -> RBF ``SVC`` (score: logistic of
  the margin),
  ``rf`` = ``RandomForestClassifier``, ``softmax`` = standardised features -> multinomial
  logistic regression, which is what a softmax layer on frozen features computes.

Threshold: out-of-fold head scores of a case-grouped k-fold on the training side (frozen
trunk), or the validation cases (fine-tuned trunk: the trunk has seen all other training
cases, so their out-of-fold head scores would be optimistic).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..data.rois import Sample
from ..data.splits import case_labels, split_train_test
from ..errors import HfcnError
from ..train import torch_threads
from . import _common as C

__all__ = ["TransferConfig", "TRUNKS", "HEADS", "build_trunk", "run"]

TRUNKS = ("vgg16", "resnet50", "efficientnet_b0")
HEADS = ("svm", "rf", "softmax")


@dataclass
class TransferConfig:
    """``backbone`` one of :data:`TRUNKS`; ``weights`` a local torchvision state dict or None
    (random init); ``image_size`` the square ROI side; ``finetune_layers``/``epochs``/``lr``/
    ``batch_size``/``val_fraction``: the optional fine-tuning; ``svm_c``, ``rf_trees``,
    ``softmax_c``: the heads; ``threads``: torch threads (None leaves the setting alone)."""

    backbone: str = "vgg16"
    weights: str | None = None
    image_size: int = 96
    batch_size: int = 32
    finetune_layers: int = 0
    epochs: int = 3
    lr: float = 1e-4
    val_fraction: float = 0.2
    svm_c: float = 1.0
    rf_trees: int = 300
    softmax_c: float = 1.0
    threshold_rule: str = "youden"
    threshold_folds: int = 5
    threads: int | None = None
    seed: int = 0

    def validate(self) -> None:
        if self.backbone not in TRUNKS:
            raise HfcnError(f"backbone must be one of {', '.join(TRUNKS)}, got {self.backbone!r}")
        # VGG-16 has five 2x2 pools, so smaller inputs leave no feature map.
        if self.image_size < 32:
            raise HfcnError(f"image_size must be >= 32, got {self.image_size}")
        if self.finetune_layers < 0:
            raise HfcnError(f"finetune_layers must be >= 0, got {self.finetune_layers}")
        if self.finetune_layers and self.epochs < 1:
            raise HfcnError(f"epochs must be >= 1 when fine-tuning, got {self.epochs}")
        if not 0 < self.val_fraction < 1:
            raise HfcnError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if min(self.svm_c, self.softmax_c, self.lr) <= 0 or self.rf_trees < 1 or self.batch_size < 1:
            raise HfcnError("svm_c, softmax_c and lr must be > 0, rf_trees and batch_size >= 1")
        if self.threshold_rule not in ("youden", "f1", "fixed"):
            raise HfcnError(f"threshold_rule must be youden, f1 or fixed, got {self.threshold_rule!r}")


def _quick() -> dict:
    return {"image_size": 64, "rf_trees": 100}


# ---------------------------------------------------------------------------------------------
# trunk


def _load_weights(model: nn.Module, path: str, name: str) -> None:
    import os

    if not os.path.isfile(path):
        raise HfcnError(f"weights file for {name} not found: {path}",
                        hint="pass the path of a local torchvision state dict; nothing is downloaded")
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - any pickle/zip failure means "not loadable"
        raise HfcnError(f"cannot read weights file {path}: {type(exc).__name__}: {str(exc)[:200]}") from None
    for wrap in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrap), dict):
            state = state[wrap]
    if not isinstance(state, dict):
        raise HfcnError(f"{path} holds no state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()
    # The trunk is all that is used: a head of another size (1000 ImageNet classes) is fine.
    needed = [k for k in own if not k.startswith(("fc.", "classifier."))]
    missing = [k for k in needed if k not in state]
    badshape = [k for k in needed if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or badshape:
        raise HfcnError(f"{path} does not fit torchvision {name}: {len(missing)} missing key(s) "
                        f"{missing[:3]}, {len(badshape)} of the wrong shape {badshape[:3]}")
    model.load_state_dict({k: state[k] for k in needed}, strict=False)


def build_trunk(name: str, weights: str | None = None, seed: int = 0) -> tuple[nn.ModuleList, int]:
    """The torchvision network ``name`` cut into its convolutional blocks (a ModuleList run in
    order; fine-tuning unfreezes the last ones) and the feature count after pooling.
    VGG-16: 5 blocks (one per max-pool), ResNet-50: stem + 4 stages, EfficientNet-B0: its 9
    feature stages. Initialisation is seeded; ``weights`` loads a local state dict."""
    try:
        import torchvision
    except ImportError:
        raise HfcnError("the transfer systems need torchvision", hint="pip install hfcn-bench[vision]") from None
    if name not in TRUNKS:
        raise HfcnError(f"backbone must be one of {', '.join(TRUNKS)}, got {name!r}")
    torch.manual_seed(seed)
    if name == "vgg16":
        # Only VGG's convolutional part: torchvision.models.vgg16() would also initialise its
        # 120M-parameter classifier (seconds of CPU) that the trunk never uses. Same layers,
        # same module names (features.*) and VGG's own initialisation rule.
        from torchvision.models import vgg as tv_vgg

        m = nn.Module()
        m.features = tv_vgg.make_layers(tv_vgg.cfgs["D"], batch_norm=False)
        for layer in m.features.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
                nn.init.constant_(layer.bias, 0)
    else:
        m = getattr(torchvision.models, name)(weights=None)
    if weights is not None:
        _load_weights(m, str(weights), name)
    if name == "vgg16":
        blocks, cur = [], []
        for layer in m.features:
            cur.append(layer)
            if isinstance(layer, nn.MaxPool2d):
                blocks.append(nn.Sequential(*cur))
                cur = []
        dim = 512
    elif name == "resnet50":
        blocks = [nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool), m.layer1, m.layer2, m.layer3, m.layer4]
        dim = 2048
    else:
        blocks = list(m.features)
        dim = 1280
    return nn.ModuleList(blocks), dim


def _forward(blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    for b in blocks:
        x = b(x)
    return x.mean(dim=(2, 3))


# ---------------------------------------------------------------------------------------------
# data


@torch.no_grad()
def _features(blocks: nn.ModuleList, ds, idx: list[int], cfg: TransferConfig, progress, what: str) -> np.ndarray:
    blocks.eval()
    out = []
    for start in range(0, len(idx), cfg.batch_size):
        rows = idx[start:start + cfg.batch_size]
        x = torch.stack([ds[i][0] for i in rows])
        out.append(_forward(blocks, x).double().numpy())
        if progress is not None:
            progress("predict", min(start + cfg.batch_size, len(idx)), len(idx), {"what": what})
    return np.concatenate(out) if out else np.zeros((0, 1))


def _finetune(blocks: nn.ModuleList, dim: int, ds, idx: list[int], cfg: TransferConfig, progress) -> list[dict]:
    """Train the last ``finetune_layers`` blocks and a linear layer (cross-entropy, Adam) on
    ``ds[idx]`` (augmented; draws depend on seed and epoch). Earlier blocks stay frozen and in
    eval mode, so their batch-norm statistics do not move either."""
    n_train = min(cfg.finetune_layers, len(blocks))
    for b in blocks[:len(blocks) - n_train]:
        b.requires_grad_(False)
    torch.manual_seed(cfg.seed)
    head = nn.Linear(dim, 2)
    params = [p for b in blocks[len(blocks) - n_train:] for p in b.parameters()] + list(head.parameters())
    opt = torch.optim.Adam(params, lr=cfg.lr)
    labels = torch.tensor([ds.samples[i].label for i in idx])
    history = []
    for epoch in range(cfg.epochs):
        ds.set_epoch(epoch)
        for k, b in enumerate(blocks):
            b.train(k >= len(blocks) - n_train)
        g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        order = torch.randperm(len(idx), generator=g)
        total, seen = 0.0, 0
        for start in range(0, len(idx), cfg.batch_size):
            rows = order[start:start + cfg.batch_size]
            if len(rows) < 2:  # batch norm cannot train on a single sample
                continue
            x = torch.stack([ds[idx[int(r)]][0] for r in rows])
            loss = nn.functional.cross_entropy(head(_forward(blocks, x)), labels[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(rows)
            seen += len(rows)
        history.append({"epoch": epoch + 1, "train_loss": total / max(seen, 1)})
        if progress is not None:
            progress("epoch", epoch + 1, cfg.epochs, history[-1])
    blocks.requires_grad_(False)
    blocks.eval()
    return history


# ---------------------------------------------------------------------------------------------
# heads


class _MarginSVM:
    """An SVC scored by the logistic of its signed margin. AUC and the training-side threshold
    need only a monotone score, so no Platt calibration (``probability=True`` is deprecated
    in scikit-learn 1.9, and its internal 5-fold CV breaks on the few cases of a fold)."""

    def __init__(self, scaler, svc):
        self.scaler, self.svc = scaler, svc

    def fit(self, X, y):
        self.svc.fit(self.scaler.fit_transform(X), y)
        return self

    def predict_proba(self, X):
        d = self.svc.decision_function(self.scaler.transform(X))
        p = 1.0 / (1.0 + np.exp(-np.clip(d, -50, 50)))
        return np.stack([1 - p, p], axis=1)


def _head(kind: str, cfg: TransferConfig):
    C.sklearn()
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    if kind == "svm":
        return _MarginSVM(StandardScaler(), SVC(C=cfg.svm_c, kernel="rbf"))
    if kind == "rf":
        return RandomForestClassifier(n_estimators=cfg.rf_trees, random_state=cfg.seed, n_jobs=1)
    if kind == "softmax":
        return make_pipeline(StandardScaler(), LogisticRegression(C=cfg.softmax_c, max_iter=5000))
    raise HfcnError(f"head must be one of {', '.join(HEADS)}, got {kind!r}")


def run(train_samples: Sequence[Sample], test_samples: Sequence[Sample], cfg: TransferConfig, *, head: str,
        n_boot: int, progress=None) -> dict:
    _head(head, cfg)  # fail early on a missing scikit-learn or a bad head
    with torch_threads(cfg.threads):
        return _run(train_samples, test_samples, cfg, head, n_boot, progress)


def _run(train_samples, test_samples, cfg: TransferConfig, head: str, n_boot: int, progress) -> dict:
    skipped: list[str] = []
    t0 = time.perf_counter()
    blocks, dim = build_trunk(cfg.backbone, cfg.weights, cfg.seed)
    history: list[dict] = []
    if cfg.finetune_layers:
        inner = split_train_test(list(train_samples), test_fraction=cfg.val_fraction, seed=cfg.seed)
        fit_s, val_s = inner.select(list(train_samples))
        C.both_classes(val_s, "validation")
        ds_aug, fit_idx = C.loadable_rois(fit_s, cfg.image_size, cfg.seed, skipped, augment=True)
        history = _finetune(blocks, dim, ds_aug, fit_idx, cfg, progress)
        fit_s = [ds_aug.samples[i] for i in fit_idx]
    else:
        fit_s, val_s = list(train_samples), []
    ds_fit, i_fit = C.loadable_rois(fit_s, cfg.image_size, cfg.seed, skipped)
    ds_te, i_te = C.loadable_rois(test_samples, cfg.image_size, cfg.seed, skipped)
    fit_kept = [ds_fit.samples[i] for i in i_fit]
    te_kept = [ds_te.samples[i] for i in i_te]
    if not te_kept:
        raise HfcnError("no test ROIs could be loaded")
    C.both_classes(fit_kept, "training")
    Xfit = _features(blocks, ds_fit, i_fit, cfg, progress, "train")
    Xte = _features(blocks, ds_te, i_te, cfg, progress, "test")
    yfit = np.asarray([s.label for s in fit_kept])
    train_s = time.perf_counter() - t0

    t1 = time.perf_counter()
    model = _head(head, cfg).fit(Xfit, yfit)
    if cfg.finetune_layers:
        ds_va, i_va = C.loadable_rois(val_s, cfg.image_size, cfg.seed, skipped)
        thr_samples = [ds_va.samples[i] for i in i_va]
        thr_prob = model.predict_proba(_features(blocks, ds_va, i_va, cfg, progress, "validation"))[:, 1]
        source = "validation"
    else:
        groups = np.asarray([s.case_id for s in fit_kept])
        oof, mask, source = C.oof_scores(
            lambda a, b: _head(head, cfg).fit(Xfit[a], yfit[a]).predict_proba(Xfit[b])[:, 1],
            yfit, groups, cfg.threshold_folds, cfg.seed)
        if mask.any():
            thr_samples, thr_prob = [s for s, m in zip(fit_kept, mask) if m], oof[mask]
        else:  # too few cases for folds: in-sample scores, flagged in the source label
            thr_samples, thr_prob, source = fit_kept, model.predict_proba(Xfit)[:, 1], "training (in-sample)"
    head_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    prob = model.predict_proba(Xte)[:, 1]
    predict_s = time.perf_counter() - t2

    report = C.score(te_kept, prob, thr_samples, thr_prob, list(train_samples), seed=cfg.seed, n_boot=n_boot,
                     threshold_rule=cfg.threshold_rule, threshold_source=source)
    report["timings"] = {"train_s": train_s + head_s, "features_and_finetune_s": train_s, "head_s": head_s,
                         "predict_s": predict_s, "ms_per_roi": 1e3 * predict_s / len(te_kept),
                         "threads": torch.get_num_threads(), "device": "cpu"}
    report["training"] = {"train_rois": len(fit_kept), "val_rois": len(val_s), "feature_dim": dim,
                          "finetuned_blocks": min(cfg.finetune_layers, len(blocks)), "history": history,
                          "val_cases": len(case_labels(val_s)) if val_s else 0}
    report["skipped"] = skipped
    lim = []
    if cfg.weights is None:
        lim.append(f"no ImageNet weights offline: {cfg.backbone} is randomly initialised (seed {cfg.seed}); "
                   "pass --weights PATH (a local torchvision state dict) for the published transfer setting")
    else:
        lim.append(f"weights loaded from {cfg.weights}; the project's second pretraining stage on a chest-radiograph "
                   "set is not reproduced")
    lim.append("PyTorch/torchvision instead of the original TensorFlow/Keras models; ROI crops of the annotated "
               f"nodule box at {cfg.image_size} px instead of whole images at the networks' native size")
    if head != "softmax" and cfg.backbone != "vgg16":
        lim.append(f"the project put SVM/RF heads on VGG-16 features only; here on {cfg.backbone}")
    if head == "softmax" and not cfg.finetune_layers:
        lim.append("softmax head on frozen features = logistic regression (no end-to-end training)")
    report["limitations"] = lim
    report["system_config"] = {**asdict(cfg), "head": head}
    return report
