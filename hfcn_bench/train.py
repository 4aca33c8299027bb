"""Training and test-side scoring of HFCN models (Song et al., IEEE Access 8:64064-64074, 2020).

Library API (no printing; progress goes through an optional callback)::

    cfg = preset_config("default", crop="bfc")               # or "paper", "quick"
    result = fit(train_samples, val_samples, cfg, out_dir="runs/x")
    prob, labels, case_ids = predict_samples(result.model, test_samples, cfg)
    report = train_and_evaluate(dataset, split, cfg, out_dir="runs/x")
    cv = cross_validate(dataset, k=5, config=cfg)

Protocol, chosen against the medical-imaging anti-patterns listed in DESIGN.md:

- every split is by case (``data.split_train_test``/``data.kfold``); the validation set is a
  case-level split of the *training* cases (``val_fraction``);
- the best epoch is picked on validation ROC-AUC, and the decision threshold is chosen on
  validation predictions (training predictions when there is no validation set), never on the
  test side; the test report carries the majority-class baseline and case-bootstrap intervals;
- a run is deterministic on the CPU for a seed: the initial weights come from
  ``torch.manual_seed(seed)``, the batch order and the augmentation draws are functions of
  (seed, epoch), and the dropout/RFC generator states go into every checkpoint, so a resumed
  run continues exactly where the killed one stopped.

Progress callback: ``progress(kind, done, total, info)`` with ``kind`` one of ``"load"``
(ROIs decoded), ``"batch"`` (batches of the current epoch), ``"epoch"`` (``info`` is the epoch's
history row), ``"fold"`` (cross-validation folds) and ``"predict"``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from . import metrics as M
from .atomic import atomic_write, write_json_atomic
from .checkpoint import load_checkpoint, save_checkpoint
from .data.collection import LoadedDataset
from .data.report import DataWarning
from .data.rois import Sample
from .data.splits import Split, case_labels, kfold, split_train_test, write_manifest
from .errors import HfcnError
from .models import CROP_IMPLS, CROP_MODES, HFCN, HFCNConfig, available_backbones, build_model, hfcn_loss

__all__ = [
    "PRESETS",
    "TrainConfig",
    "TrainResult",
    "Predictions",
    "preset_config",
    "fit",
    "predict",
    "predict_samples",
    "score_predictions",
    "train_and_evaluate",
    "cross_validate",
    "pool_folds",
    "pool_timings",
    "FoldResult",
    "model_from_checkpoint",
    "write_predictions_csv",
    "synthetic_acceptance",
    "RUN_FORMAT",
]

RUN_FORMAT = "hfcn-bench/run"
RUN_VERSION = 1
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("none", "cosine")
THRESHOLD_RULES = ("youden", "f1", "fixed")
AGGREGATES = (None, "mean", "max")

Progress = Callable[[str, int, int, dict], None]


# ---------------------------------------------------------------------------------------------
# configuration


@dataclass
class TrainConfig:
    """Everything that defines a training run (model, optimisation, data handling, protocol).

    Model: ``backbone``, ``crop`` ("none", "bfc", "rfc", "image"), ``alpha`` (window side as a
    fraction of the map), ``branch_weight`` (ω of eq. 1), ``crop_impl`` ("fused"/"naive").
    Optimisation: ``epochs``, ``batch_size``, ``lr``, ``momentum`` (SGD), ``weight_decay``,
    ``optimizer`` ("sgd", "adam", "adamw"), ``schedule`` ("none", "cosine" per epoch),
    ``w_malignant``/``w_benign`` (class weights of the loss, eqs. 7-8), ``loss_reduction``
    ("mean": weighted mean; "sum": the paper's sum over the batch), ``grad_clip`` (max gradient
    norm, ``None`` = no clipping).
    Data: ``image_size`` (ROIs are resized to it), ``augment`` (flip, shift, brightness; see
    ``RoiDataset``), ``letterbox``.
    Protocol: ``seed``, ``device`` ("cpu", "cuda", "auto"), ``threads`` (torch CPU threads;
    ``None`` leaves torch's setting), ``val_fraction`` (cases of the training side held out for
    best-epoch selection and the threshold; 0 = none), ``threshold_rule`` ("youden", "f1",
    "fixed" = 0.5), ``eval_batch_size``. ``preset`` names the preset it started from.
    """

    preset: str = "default"
    backbone: str = "paper"
    crop: str = "bfc"
    alpha: float = 0.6
    branch_weight: float = 0.5
    crop_impl: str = "fused"
    epochs: int = 15
    batch_size: int = 16
    lr: float = 3e-4
    momentum: float = 0.9
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    schedule: str = "cosine"
    loss_reduction: str = "mean"
    grad_clip: float | None = None
    w_malignant: float = 3.0
    w_benign: float = 2.0
    image_size: int = 64
    augment: bool = True
    letterbox: bool = False
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    val_fraction: float = 0.2
    threshold_rule: str = "youden"
    eval_batch_size: int = 64

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise :class:`HfcnError` naming the first bad field."""
        def bad(name, what):
            raise HfcnError(f"training option {name}={getattr(self, name)!r}: {what}")

        if self.backbone not in available_backbones():
            bad("backbone", f"known backbones: {', '.join(available_backbones())}")
        if self.crop not in CROP_MODES:
            bad("crop", f"known modes: {', '.join(CROP_MODES)}")
        if self.crop_impl not in CROP_IMPLS:
            bad("crop_impl", f"known: {', '.join(CROP_IMPLS)}")
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
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            bad("threads", "must be a positive integer or None")
        for name in ("lr", "w_malignant", "w_benign"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0 or not math.isfinite(v):
                bad(name, "must be a positive number")
        for name in ("momentum", "weight_decay"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v < (1 if name == "momentum" else 1e3):
                bad(name, "out of range")
        if self.grad_clip is not None and (not isinstance(self.grad_clip, (int, float))
                                           or isinstance(self.grad_clip, bool) or not self.grad_clip > 0):
            bad("grad_clip", "must be a positive number or None")
        if not isinstance(self.val_fraction, (int, float)) or not 0.0 <= self.val_fraction < 1.0:
            bad("val_fraction", "must be in [0, 1)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            bad("seed", "must be an integer")
        # Model fields (alpha, branch weight, the feature map of image_size) are checked by
        # the model's own config, whose errors name the field.
        self.model_config()

    def model_config(self) -> HFCNConfig:
        """The :class:`HFCNConfig` this run builds (input size = ``image_size``)."""
        return HFCNConfig(backbone=self.backbone, crop=self.crop, alpha=float(self.alpha),
                          branch_weight=float(self.branch_weight), crop_impl=self.crop_impl, seed=int(self.seed),
                          input_size=int(self.image_size))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Rebuild from :meth:`to_dict` output; unknown keys are an error (a newer file)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise HfcnError(f"unknown training option(s) {unknown} in a saved config",
                            hint="the run was written by another hfcn-bench version")
        return cls(**d)


# The paper's settings (section IV-B): SGD, lr 1e-5, momentum 0.9, weight decay 5e-4, batch 16,
# class weights 3/2, ω = 0.5, α = 0.6 (Table 3), 224x224 inputs, loss summed over the batch.
# The paper gives no epoch count and no augmentation; 100 epochs is our choice.
# "default" and "quick" were tuned on this project's 2-core CPU (see the README for the runs).
PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(optimizer="sgd", lr=1e-5, momentum=0.9, weight_decay=5e-4, batch_size=16, w_malignant=3.0,
                  w_benign=2.0, branch_weight=0.5, alpha=0.6, image_size=224, epochs=100, schedule="none",
                  loss_reduction="sum", augment=False),
    "default": dict(optimizer="adamw", lr=3e-4, weight_decay=1e-4, batch_size=16, image_size=64, epochs=15,
                    schedule="cosine", loss_reduction="mean", augment=True),
    "quick": dict(optimizer="adamw", lr=5e-4, weight_decay=1e-4, batch_size=16, image_size=48, epochs=8,
                  schedule="cosine", loss_reduction="mean", augment=True),
}


def preset_config(name: str = "default", **overrides) -> TrainConfig:
    """A :class:`TrainConfig` from a preset plus keyword overrides.

    Presets: ``"paper"`` (the paper's optimiser settings at 224 px: hours on a CPU),
    ``"default"`` (converges on DDTI-sized data on a 2-core CPU in minutes: AdamW + cosine at
    64 px with augmentation) and ``"quick"`` (48 px, 8 epochs: for ``compare`` on synthetic data
    within a CPU budget).
    """
    if name not in PRESETS:
        raise HfcnError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise HfcnError(f"unknown training option(s) {unknown}; known: {', '.join(sorted(names))}")
    return TrainConfig(**{**PRESETS[name], "preset": name, **overrides})


# Fields that may differ between a checkpoint's config and the config resuming it: they change
# neither the model nor the optimisation trajectory of the epochs already run.
_RESUMABLE_CHANGES = ("epochs", "threads", "device", "eval_batch_size")


# ---------------------------------------------------------------------------------------------
# data in memory


class _RoiTensors:
    """The ROIs of a sample list decoded once (via ``RoiDataset``'s cache), ready to batch.

    ROIs that fail to load are skipped with a :class:`DataWarning` naming the file, so one bad
    image cannot end a run. Without augmentation the whole set is one normalised tensor; with
    augmentation each batch is drawn through ``RoiDataset`` (draws depend on seed, epoch, index).
    """

    def __init__(self, samples: Sequence[Sample], config: TrainConfig, augment: bool,
                 progress: Progress | None = None, what: str = "ROIs"):
        from .data.dataset import RoiDataset

        self.ds = RoiDataset(list(samples), size=config.image_size, letterbox=config.letterbox, augment=augment,
                             normalize="imagenet", seed=config.seed)
        self.augment = augment
        keep, self.skipped = [], []
        n = len(self.ds)
        for i in range(n):
            s = self.ds.samples[i]
            try:
                self.ds.roi_array(i)
            except Exception as exc:  # noqa: BLE001 - any decoder failure: skip this ROI, not the run
                msg = f"{s.image_path}: ROI {s.key} could not be loaded ({type(exc).__name__}: {exc}); skipped"
                warnings.warn(msg, DataWarning, stacklevel=3)
                self.skipped.append(msg)
            else:
                keep.append(i)
            if progress is not None:
                progress("load", i + 1, n, {"what": what})
        self.index = np.asarray(keep, dtype=np.int64)
        self.samples = [self.ds.samples[i] for i in keep]
        self.labels = torch.tensor([s.label for s in self.samples], dtype=torch.int64)
        self._fixed = None
        if not augment:
            self._fixed = torch.stack([self.ds[int(i)][0] for i in self.index]) if keep else torch.zeros(
                (0, 3, config.image_size, config.image_size))

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


@dataclass
class Predictions:
    """Per-ROI predictions of one model on one sample list (skipped ROIs left out).

    ``prob`` is P(malignant) of the fused output (eq. 1); ``global_prob``/``crop_prob`` the two
    branches' (``crop_prob`` is NaN for crop="none"); ``crop_probs`` ``[N, n_crops]``.
    """

    prob: np.ndarray
    labels: np.ndarray
    case_ids: np.ndarray
    keys: list[str]
    samples: list[Sample]
    global_prob: np.ndarray
    crop_prob: np.ndarray
    crop_probs: np.ndarray | None = None
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.prob.size)

    def at_level(self, aggregate: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(prob, labels, ids)`` per ROI (``aggregate=None``) or per case ("mean"/"max")."""
        if aggregate is None:
            return self.prob, self.labels, self.case_ids
        ids, p, y = M.aggregate_by_case(self.case_ids, self.prob, self.labels, how=aggregate)
        return p, y, ids


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise HfcnError(f"device {name!r} requested but torch sees no CUDA GPU",
                        hint="use --device cpu (or auto)")
    return dev


@contextmanager
def torch_threads(n: int | None):
    """Set torch's CPU thread count for the duration of a call, then restore it: a library
    function must not leave global state changed behind."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _crop_generator(model: HFCN) -> torch.Generator | None:
    """The generator RFC windows come from (its state goes into checkpoints). Read through the
    model's public ``crop_generator`` when it has one; older models keep it as ``_generator``."""
    gen = getattr(model, "crop_generator", None)
    return gen if isinstance(gen, torch.Generator) else getattr(model, "_generator", None)


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


def _predict_tensors(model: HFCN, data: _RoiTensors, config: TrainConfig, device: torch.device,
                     progress: Progress | None = None) -> dict[str, np.ndarray]:
    n = len(data)
    bs = config.eval_batch_size
    prob, gprob, cprob, cprobs = [], [], [], []
    with _eval_mode(model):
        for b, start in enumerate(range(0, n, bs)):
            rows = torch.arange(start, min(n, start + bs))
            out = model(data.batch(rows).to(device))
            prob.append(out.prob[:, 1].float().cpu())
            gprob.append(out.global_prob[:, 1].float().cpu())
            if out.crop_prob is not None:
                cprob.append(out.crop_prob[:, 1].float().cpu())
                cprobs.append(out.crop_probs[..., 1].float().cpu())
            if progress is not None:
                progress("predict", b + 1, math.ceil(n / bs), {})
    cat = lambda xs: torch.cat(xs).numpy().astype(np.float64) if xs else np.zeros(0)  # noqa: E731
    return {
        "prob": cat(prob),
        "global_prob": cat(gprob),
        "crop_prob": cat(cprob) if cprob else np.full(n, np.nan),
        "crop_probs": torch.cat(cprobs).numpy().astype(np.float64) if cprobs else None,
    }


def predict(model: HFCN, samples: Sequence[Sample], config: TrainConfig, progress: Progress | None = None,
            _data: _RoiTensors | None = None) -> Predictions:
    """Predict every loadable ROI of ``samples`` (eval mode, no augmentation)."""
    device = next(model.parameters()).device
    with torch_threads(config.threads):
        data = _data if _data is not None else _RoiTensors(samples, config, augment=False)
        out = _predict_tensors(model, data, config, device, progress)
    return Predictions(
        prob=out["prob"], labels=data.labels.numpy().astype(np.int64),
        case_ids=np.asarray([s.case_id for s in data.samples], dtype=object),
        keys=[s.key for s in data.samples], samples=list(data.samples), global_prob=out["global_prob"],
        crop_prob=out["crop_prob"], crop_probs=out["crop_probs"], skipped=list(data.skipped),
    )


def predict_samples(model: HFCN, samples: Sequence[Sample], config: TrainConfig
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(prob[N], labels[N], case_ids[N])`` for the loadable ROIs of ``samples``: P(malignant)
    of the fused output, the labels, the case ids (for case bootstrap / aggregation)."""
    p = predict(model, samples, config)
    return p.prob, p.labels, p.case_ids


# ---------------------------------------------------------------------------------------------
# training


@dataclass
class TrainResult:
    """What :func:`fit` returns.

    ``model`` holds the best epoch's weights (best validation ROC-AUC; the last epoch when
    there is no validation set), in eval mode. ``threshold`` was chosen with
    ``config.threshold_rule`` on ``threshold_predictions`` (validation, or training when
    ``threshold_source == "training"``). ``history`` has one row per epoch.
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


def _optimizer(config: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def _scheduler(config: TrainConfig, opt: torch.optim.Optimizer):
    if config.schedule == "none":
        return None
    total = config.epochs
    # Cosine to 5 % of the initial lr, stepped per epoch: the last epochs refine instead of
    # bouncing, which makes "best on validation" less of a lottery on small data.
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda e: 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(e, total) / total)))


def _epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    # The order is a function of (seed, epoch) only, so a resumed run draws what the original
    # would have drawn without having to store a generator state for it.
    g = torch.Generator()
    g.manual_seed((int(seed) * 1_000_003 + int(epoch)) % (2**63))
    return torch.randperm(n, generator=g)


def _rng_state(model: HFCN) -> dict[str, torch.Tensor]:
    st = {"torch": torch.get_rng_state()}
    gen = _crop_generator(model)
    if gen is not None:
        st["crop"] = gen.get_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state()
    return st


def _set_rng_state(model: HFCN, st: dict) -> None:
    if "torch" in st:
        torch.set_rng_state(st["torch"])
    gen = _crop_generator(model)
    if gen is not None and "crop" in st:
        gen.set_state(st["crop"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state(st["cuda"])


def _check_resume(saved: dict, config: TrainConfig, path: Path) -> None:
    now = config.to_dict()
    diff = [k for k in now if k not in _RESUMABLE_CHANGES and saved.get(k) != now[k]]
    if diff:
        shown = ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in diff[:6])
        raise HfcnError(f"cannot resume {path}: the configuration differs ({shown})",
                        hint="resume with the run's own settings (only epochs, threads, device may change), "
                        "or start a new run folder")


def _val_score(p: np.ndarray, y: np.ndarray, loss: float) -> list[float]:
    """Validation score, compared lexicographically: ROC-AUC first, then lower loss. AUC
    saturates on easy data (several epochs at 1.0) and the loss breaks the tie towards the
    better-calibrated epoch; with one class in the validation set AUC has no value and only
    the loss counts."""
    try:
        return [M.roc_auc(y, p), -loss]
    except M.UndefinedMetricError:
        return [-1.0, -loss]


def _choose_threshold(pred: Predictions, rule: str, aggregate: str | None = None) -> float:
    p, y, _ = pred.at_level(aggregate)
    return M.choose_threshold(y, p, rule=rule)


def fit(
    train_samples: Sequence[Sample],
    val_samples: Sequence[Sample] | None,
    config: TrainConfig,
    out_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train an HFCN on ``train_samples``; select the epoch and the threshold on ``val_samples``.

    Args:
        train_samples: ROI samples to train on (augmented when ``config.augment``).
        val_samples: held-out samples (cases disjoint from training) for best-epoch selection
            (ROC-AUC) and the decision threshold; ``None``/empty: the last epoch is kept and the
            threshold is chosen on (unaugmented) training predictions.
        config: the run's :class:`TrainConfig`.
        out_dir: when given, ``last.pt`` is written after every epoch, ``best.pt`` whenever the
            validation score improves (both atomically), and ``history.json`` at the end.
        progress: ``progress(kind, done, total, info)`` (see the module docstring).
        resume: continue from ``out_dir/last.pt`` when it exists (weights, optimizer,
            scheduler, RNG states, history); the configuration must match except for
            ``epochs``/``threads``/``device``. A run that already finished is not retrained.

    Returns:
        :class:`TrainResult`; its ``model`` holds the best weights.
    """
    config.validate()
    t0 = time.perf_counter()
    device = _device(config.device)
    out = Path(out_dir) if out_dir is not None else None
    val_samples = list(val_samples or [])
    if not train_samples:
        raise HfcnError("no training samples")
    with torch_threads(config.threads):
        torch.manual_seed(config.seed)
        model = build_model(config.model_config()).to(device)
        train = _RoiTensors(train_samples, config, augment=config.augment, progress=progress, what="training ROIs")
        val = _RoiTensors(val_samples, config, augment=False, progress=progress, what="validation ROIs") \
            if val_samples else None
        if len(train) == 0:
            raise HfcnError("none of the training ROIs could be loaded", hint="see the warnings above for the files")
        if val is not None and len(val) == 0:
            val = None
        opt = _optimizer(config, model)
        sched = _scheduler(config, opt)
        history: list[dict] = []
        best_score: list[float] | None = None
        best_epoch = 0
        best_state: dict | None = None
        start = 0
        resumed_from = None
        last_path = out / "last.pt" if out is not None else None
        if resume and last_path is not None and last_path.exists():
            ck = load_checkpoint(last_path)
            _check_resume(ck["config"], config, last_path)
            model.load_state_dict(ck["model"])
            if ck.get("optimizer") is not None:
                opt.load_state_dict(ck["optimizer"])
            if sched is not None and ck.get("scheduler") is not None:
                sched.load_state_dict(ck["scheduler"])
            _set_rng_state(model, ck.get("rng", {}))
            extra = ck.get("extra", {})
            history = list(extra.get("history", []))
            best_score = extra.get("best_score")
            best_epoch = int(extra.get("best_epoch", 0))
            start = resumed_from = int(ck["epoch"])
            if best_epoch and (out / "best.pt").exists():
                best_state = load_checkpoint(out / "best.pt")["model"]
            elif best_epoch:
                raise HfcnError(f"cannot resume {last_path}: best.pt of epoch {best_epoch} is missing")
        val_cases = sorted({s.case_id for s in val.samples}) if val is not None else []
        w = torch.tensor([config.w_benign, config.w_malignant])
        n = len(train)
        bs = config.batch_size
        for epoch in range(start, config.epochs):
            te = time.perf_counter()
            model.train()
            train.set_epoch(epoch)
            order = _epoch_order(config.seed, epoch, n)
            starts = list(range(0, n, bs))
            # A last batch of one sample would make BatchNorm statistics degenerate; fold it
            # into the previous batch.
            if len(starts) > 1 and n - starts[-1] == 1:
                starts.pop()
            loss_sum, count = 0.0, 0
            for b, s0 in enumerate(starts):
                s1 = starts[b + 1] if b + 1 < len(starts) else n
                rows = order[s0:s1]
                x = train.batch(rows).to(device, non_blocking=True)
                y = train.labels[rows].to(device, non_blocking=True)
                out_b = model(x)
                loss = hfcn_loss(out_b, y, w_malignant=config.w_malignant, w_benign=config.w_benign,
                                 reduction=config.loss_reduction)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                opt.step()
                lv = float(loss.detach())
                if not math.isfinite(lv):
                    raise HfcnError(f"training diverged at epoch {epoch + 1} (loss {lv})",
                                    hint="lower the learning rate (--lr)")
                # Report the weighted-mean loss whatever the reduction, so runs compare.
                wsum = float(w[y.cpu()].sum())
                loss_sum += lv * (1.0 if config.loss_reduction == "sum" else wsum)
                count += wsum
                if progress is not None:
                    progress("batch", b + 1, len(starts), {"epoch": epoch + 1, "loss": lv})
            lr_now = opt.param_groups[0]["lr"]
            if sched is not None:
                sched.step()
            row = {"epoch": epoch + 1, "train_loss": loss_sum / max(count, 1e-12), "lr": lr_now}
            improved = False
            if val is not None:
                vp = _predict_tensors(model, val, config, device)
                vl = float(hfcn_loss(torch.stack([1 - torch.from_numpy(vp["prob"]), torch.from_numpy(vp["prob"])], 1),
                                     val.labels, config.w_malignant, config.w_benign))
                score = _val_score(vp["prob"], val.labels.numpy(), vl)
                row["val_loss"] = vl
                row["val_auc"] = _or_none(lambda: M.roc_auc(val.labels.numpy(), vp["prob"]))
                improved = best_score is None or list(score) > list(best_score)
            else:
                score = None
                improved = True  # no validation: the latest epoch is the one kept
            if improved:
                best_score, best_epoch = score, epoch + 1
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            row["seconds"] = time.perf_counter() - te
            row["best"] = improved
            history.append(row)
            if out is not None:
                extra = {"history": history, "best_score": best_score, "best_epoch": best_epoch,
                         "val_cases": val_cases}
                # best.pt before last.pt: a crash in between leaves last.pt one epoch behind,
                # and the resumed epoch rewrites the same best.pt.
                if improved:
                    save_checkpoint(out / "best.pt", model, None, epoch + 1, config.to_dict(),
                                    {"val_score": score, "final": False}, extra=extra)
                save_checkpoint(last_path, model, opt, epoch + 1, config.to_dict(), dict(row), scheduler=sched,
                                rng=_rng_state(model), extra=extra)
            if progress is not None:
                progress("epoch", epoch + 1, config.epochs, dict(row))
        if best_state is None:
            # Resumed a run that had already finished all its epochs: its last weights are it.
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            best_epoch = best_epoch or start
        model.load_state_dict(best_state)
        model.eval()
        thr_data = val if val is not None else _RoiTensors(train.samples, config, augment=False)
        source = "validation" if val is not None else "training"
        tp = predict(model, thr_data.samples, config, _data=thr_data)
        threshold, source = _threshold_with_fallback(tp, config.threshold_rule, None, source)
        if out is not None:
            extra = {"history": history, "best_score": best_score, "best_epoch": best_epoch, "val_cases": val_cases,
                     "threshold": threshold, "threshold_source": source, "threshold_rule": config.threshold_rule}
            save_checkpoint(out / "best.pt", model, None, best_epoch, config.to_dict(),
                            {"val_score": best_score, "threshold": threshold, "final": True}, extra=extra)
            write_json_atomic(out / "history.json", {"best_epoch": best_epoch, "best_score": best_score,
                                                     "history": history})
    return TrainResult(model=model, config=config, history=history, best_epoch=best_epoch, best_score=best_score,
                       threshold=threshold, threshold_source=source, threshold_predictions=tp, val_cases=val_cases,
                       skipped=train.skipped + (val.skipped if val is not None else []),
                       seconds=time.perf_counter() - t0, resumed_from=resumed_from, out_dir=out)


def _or_none(fn):
    try:
        return float(fn())
    except M.UndefinedMetricError:
        return None


def _threshold_with_fallback(pred: Predictions, rule: str, aggregate: str | None, source: str) -> tuple[float, str]:
    try:
        return _choose_threshold(pred, rule, aggregate), source
    except M.UndefinedMetricError:
        # A one-class validation set cannot place a threshold; the softmax argmax rule can.
        return 0.5, f"{source} (one class only: fixed 0.5)"


def model_from_checkpoint(path: str | os.PathLike, device: str = "cpu") -> tuple[HFCN, TrainConfig, dict]:
    """Rebuild the model a checkpoint was trained with and load its weights (eval mode).
    Returns ``(model, config, checkpoint)``; errors name the file."""
    ck = load_checkpoint(path)
    try:
        cfg = TrainConfig.from_dict(ck["config"])
    except (HfcnError, TypeError, ValueError) as exc:
        raise HfcnError(f"{path}: its training configuration is not usable: {exc}") from None
    model = build_model(cfg.model_config())
    try:
        model.load_state_dict(ck["model"])
    except RuntimeError as exc:
        raise HfcnError(f"{path}: weights do not fit the model its config describes: "
                        f"{str(exc).splitlines()[0][:200]}") from None
    model.to(_device(device)).eval()
    return model, cfg, ck


# ---------------------------------------------------------------------------------------------
# scoring on the test side


def _roc_points(y, p, max_points: int = 400) -> dict | None:
    try:
        fpr, tpr, _ = M.roc_curve(y, p)
    except M.UndefinedMetricError:
        return None
    if fpr.size > max_points:
        keep = np.unique(np.linspace(0, fpr.size - 1, max_points).round().astype(int))
        fpr, tpr = fpr[keep], tpr[keep]
    return {"fpr": [float(v) for v in fpr], "tpr": [float(v) for v in tpr]}


def _flatten(report: dict, protocol: str) -> dict:
    """Copy the headline numbers into ``report["metrics"]`` (``auc``, ``pr_auc`` and ``ci`` as
    ``{name: [low, high]}``) so a report table can read one flat dict per model; the full
    intervals stay in ``report["ci"]``."""
    m = report["metrics"]
    m["auc"] = report.get("auc")
    m["pr_auc"] = report.get("pr_auc")
    m["ci"] = {k: (None if v is None else [v["low"], v["high"]]) for k, v in (report.get("ci") or {}).items()}
    report["protocol"] = protocol
    return report


def score_predictions(
    test: Predictions,
    threshold_from: Predictions,
    y_train: Sequence[int],
    config: TrainConfig,
    aggregate: str | None = None,
    n_boot: int = 1000,
    train_case_labels: dict[str, int] | None = None,
    threshold_source: str = "validation",
) -> dict:
    """The test report: :func:`metrics.evaluate` at a threshold chosen on ``threshold_from``
    (validation or training predictions, never ``test``), at ROI level or per case.

    ``y_train`` (ROI labels of the training side) feeds the majority baseline; with
    ``aggregate`` the baseline uses ``train_case_labels`` (one label per training case).
    Returns ``metrics.evaluate``'s dict plus ``level``, ``threshold_source``,
    ``threshold_rule``, ``protocol`` and ``roc`` points (``{"fpr": [...], "tpr": [...]}``);
    ``metrics`` also carries ``auc``, ``pr_auc`` and ``ci`` (``{name: [low, high]}``).
    """
    if aggregate not in AGGREGATES:
        raise HfcnError(f"aggregate must be None, 'mean' or 'max', got {aggregate!r}")
    threshold, source = _threshold_with_fallback(threshold_from, config.threshold_rule, aggregate, threshold_source)
    p, y, ids = test.at_level(aggregate)
    if y.size == 0:
        raise HfcnError("no test predictions to score")
    y_tr = list(train_case_labels.values()) if (aggregate and train_case_labels) else list(y_train)
    report = M.evaluate(y, p, ids, threshold, n_boot=n_boot, seed=config.seed, y_train=y_tr)
    report["level"] = "roi" if aggregate is None else f"case-{aggregate}"
    report["threshold_source"] = source
    report["threshold_rule"] = config.threshold_rule
    report["roc"] = _roc_points(y, p)
    return _flatten(report, f"case-level split, threshold by {config.threshold_rule} on {source} predictions, "
                            f"scored per {'ROI' if aggregate is None else 'case (' + aggregate + ')'}")


def write_predictions_csv(path: str | os.PathLike, pred: Predictions, threshold: float,
                          fold: int | None = None, append_to: list[dict] | None = None) -> list[dict]:
    """Per-ROI rows (key, case, frame, image, label, probabilities, decision); written
    atomically to ``path`` unless ``path`` is None. Returns the rows (appended to
    ``append_to`` when given, for pooled cross-validation files)."""
    rows = append_to if append_to is not None else []
    for i, s in enumerate(pred.samples):
        rows.append({
            "fold": "" if fold is None else fold,
            "key": s.key, "case_id": s.case_id, "frame": s.frame, "region": s.region,
            "image": str(s.image_path), "label": int(pred.labels[i]),
            "prob": f"{pred.prob[i]:.6f}", "global_prob": f"{pred.global_prob[i]:.6f}",
            "crop_prob": "" if np.isnan(pred.crop_prob[i]) else f"{pred.crop_prob[i]:.6f}",
            "threshold": f"{threshold:.6f}", "pred": int(pred.prob[i] >= threshold),
        })
    if path is not None:
        _write_csv(path, rows)
    return rows


def _write_csv(path, rows: list[dict]) -> None:
    buf = io.StringIO()
    cols = ["fold", "key", "case_id", "frame", "region", "image", "label", "prob", "global_prob", "crop_prob",
            "threshold", "pred"]
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    data = buf.getvalue().encode("utf-8")
    atomic_write(path, lambda fh: fh.write(data))


def _run_header(dataset: LoadedDataset, config: TrainConfig, split_info: dict, aggregate, n_boot) -> dict:
    from . import __version__

    return {"format": RUN_FORMAT, "version": RUN_VERSION, "created_by": f"hfcn-bench {__version__}",
            "train": config.to_dict(), "data": dataset.describe(), "split": split_info,
            "aggregate": aggregate, "n_boot": int(n_boot)}


def _inner_split(train_samples: list[Sample], config: TrainConfig) -> tuple[list[Sample], list[Sample]]:
    """Validation cases carved out of the training side (by case, stratified)."""
    if config.val_fraction <= 0 or len(case_labels(train_samples)) < 4:
        return train_samples, []
    inner = split_train_test(train_samples, test_fraction=config.val_fraction, seed=config.seed)
    return inner.select(train_samples)


def _fit_and_score(train_samples, test_samples, config, out_dir, progress, resume, aggregate, n_boot):
    tr, va = _inner_split(train_samples, config)
    res = fit(tr, va, config, out_dir=out_dir, progress=progress, resume=resume)
    t = time.perf_counter()
    test_pred = predict(res.model, test_samples, config, progress=progress)
    predict_s = time.perf_counter() - t
    report = score_predictions(test_pred, res.threshold_predictions, [s.label for s in train_samples], config,
                               aggregate=aggregate, n_boot=n_boot, train_case_labels=case_labels(train_samples),
                               threshold_source=res.threshold_source.split(" ")[0])
    report["timings"] = {"train_s": res.seconds, "predict_s": predict_s,
                         "ms_per_roi": 1e3 * predict_s / max(len(test_pred), 1), "threads": torch.get_num_threads(),
                         "device": str(next(res.model.parameters()).device)}
    report["training"] = {"best_epoch": res.best_epoch, "best_val_score": res.best_score,
                          "epochs_run": len(res.history), "resumed_from": res.resumed_from,
                          "val_cases": len(res.val_cases), "train_rois": len(tr), "val_rois": len(va),
                          "history": res.history}
    report["skipped"] = res.skipped + test_pred.skipped
    return res, test_pred, report


def train_and_evaluate(
    dataset: LoadedDataset,
    split: Split,
    config: TrainConfig,
    out_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
    resume: bool = False,
    n_boot: int = 1000,
    aggregate: str | None = None,
) -> dict:
    """Train on ``split``'s training cases (minus a validation part), score its test cases.

    Returns (and with ``out_dir`` writes as ``metrics.json``, beside ``config.json``,
    ``split.json``, ``predictions.csv`` and the checkpoints) a dict with the
    :func:`score_predictions` report (metrics, 95 % case-bootstrap intervals, majority
    baseline, ROC points), ``timings``, ``training`` (best epoch, history), ``config`` and
    ``data`` (the dataset's provenance: root, label rule, fingerprint).
    """
    train_samples, test_samples = split.select(dataset)
    if not test_samples:
        raise HfcnError("the split has no test samples")
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        write_manifest(out / "split.json", dataset, split)
        write_json_atomic(out / "config.json", _run_header(
            dataset, config, {"method": split.method, "seed": split.seed, "params": dict(split.params)}, aggregate,
            n_boot))
    res, test_pred, report = _fit_and_score(train_samples, test_samples, config, out, progress, resume, aggregate,
                                            n_boot)
    report.update({"kind": split.method, "config": config.to_dict(), "data": dataset.describe()})
    if out is not None:
        write_predictions_csv(out / "predictions.csv", test_pred, report["threshold"] if aggregate is None
                              else res.threshold)
        write_json_atomic(out / "metrics.json", report)
    return report


def cross_validate(
    dataset: LoadedDataset,
    k: int,
    config: TrainConfig,
    out_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
    resume: bool = False,
    n_boot: int = 1000,
    aggregate: str | None = None,
    seed: int | None = None,
) -> dict:
    """Case-level stratified k-fold cross-validation (``data.kfold``).

    Each fold trains on k-1 folds (minus a validation part, which picks the epoch and the
    fold's threshold) and predicts its held-out fold; :func:`pool_folds` then scores all
    out-of-fold predictions together (see there for how the per-fold thresholds are kept).

    With ``out_dir``: ``split.json`` (all folds), ``config.json``, ``fold{i}/`` (checkpoints,
    history), pooled ``predictions.csv`` and ``metrics.json``. ``resume`` continues an
    interrupted fold from its ``last.pt`` (a finished fold is not retrained).
    """
    seed = config.seed if seed is None else int(seed)
    splits = kfold(dataset, k=k, seed=seed)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        write_manifest(out / "split.json", dataset, splits)
        write_json_atomic(out / "config.json", _run_header(
            dataset, config, {"method": "kfold", "seed": seed, "params": {"k": int(k)}}, aggregate, n_boot))
    t0 = time.perf_counter()
    folds = []
    for split in splits:
        fold_dir = out / f"fold{split.fold}" if out is not None else None
        train_samples, test_samples = split.select(dataset)
        res, test_pred, rep = _fit_and_score(train_samples, test_samples, config, fold_dir, progress, resume,
                                             aggregate, _fold_boot(n_boot))
        folds.append(FoldResult(split.fold, test_pred, res.threshold,
                                train_samples, rep))
        if progress is not None:
            progress("fold", split.fold + 1, len(splits), {"fold": split.fold, "auc": rep["auc"],
                                                           "f1": rep["metrics"]["f1"]})
    report = pool_folds(folds, config, aggregate=aggregate, n_boot=n_boot)
    report["timings"] = pool_timings([f.report["timings"] for f in folds])
    report["timings"]["total_s"] = time.perf_counter() - t0
    report.update({"config": config.to_dict(), "data": dataset.describe()})
    if out is not None:
        rows: list[dict] = []
        for f in folds:
            write_predictions_csv(None, f.test, f.roi_threshold, fold=f.fold, append_to=rows)
        _write_csv(out / "predictions.csv", rows)
        write_json_atomic(out / "metrics.json", report)
    return report


def _fold_boot(n_boot: int) -> int:
    # Per-fold intervals are secondary to the pooled ones; a fifth of the resamples keeps
    # k-fold scoring from costing k times the pooled bootstrap.
    return max(1, n_boot // 5) if n_boot > 1 else n_boot


@dataclass
class FoldResult:
    """One fold's out-of-fold predictions, its ROI-level threshold, its training samples and
    its own :func:`score_predictions` report."""

    fold: int
    test: Predictions
    roi_threshold: float
    train_samples: list[Sample]
    report: dict


def pool_timings(per_fold: list[dict]) -> dict:
    """One report's ``timings`` from its folds': every stage's seconds (``*_s``: training,
    prediction, a comparator's detector and segmenter) summed, ``ms_per_roi`` averaged, the rest
    (threads, device) as the first fold has them. ``total_s`` is the caller's wall clock."""
    out = {}
    for key in dict.fromkeys(k for t in per_fold for k in t):
        values = [t[key] for t in per_fold if key in t]
        if key.endswith("_s"):
            out[key] = float(sum(values))
        elif key == "ms_per_roi":
            out[key] = float(sum(values) / len(values))
        else:
            out[key] = values[0]
    return out


def pool_folds(folds: Sequence[FoldResult], config: TrainConfig, aggregate: str | None = None,
               n_boot: int = 1000) -> dict:
    """Score the pooled out-of-fold predictions of a cross-validation.

    Each fold's model has its own threshold, so the pooled scores are ``prob - threshold_fold``
    with decision ``>= 0``: this reproduces every fold's decisions exactly, and ranks across
    folds by distance from each fold's operating point. ``folds`` in the result holds each
    fold's own report (raw probabilities), ``fold_summary`` the mean and standard deviation of
    AUC and F1 over folds.
    """
    pooled_p, pooled_y, pooled_ids, y_train_all, train_cases = [], [], [], [], {}
    fold_reports = []
    for f in folds:
        p, y, ids = f.test.at_level(aggregate)
        pooled_p.append(p - f.report["threshold"])
        pooled_y.append(y)
        pooled_ids.append(ids)
        y_train_all.extend(s.label for s in f.train_samples)
        train_cases.update({f"{f.fold}/{c}": v for c, v in case_labels(f.train_samples).items()})
        rep = {k: v for k, v in f.report.items() if k != "roc"}
        rep["fold"] = f.fold
        fold_reports.append(rep)
    p = np.concatenate(pooled_p)
    y = np.concatenate(pooled_y)
    ids = np.concatenate(pooled_ids)
    report = M.evaluate(y, p, ids, 0.0, n_boot=n_boot, seed=config.seed,
                        y_train=list(train_cases.values()) if aggregate else y_train_all)
    report.update({
        "kind": "kfold", "k": len(folds), "level": "roi" if aggregate is None else f"case-{aggregate}",
        "scores": "prob - fold threshold (decision >= 0)", "threshold_rule": config.threshold_rule,
        "roc": _roc_points(y, p), "folds": fold_reports,
        "fold_summary": {name: _mean_sd([r["auc"] if name == "auc" else r["metrics"]["f1"] for r in fold_reports])
                         for name in ("auc", "f1")},
        "skipped": [m for r in fold_reports for m in r.get("skipped", [])],
    })
    return _flatten(report, f"{len(folds)}-fold case-level CV, pooled out-of-fold, each fold's threshold by "
                            f"{config.threshold_rule} on its validation cases, scored per "
                            f"{'ROI' if aggregate is None else 'case (' + aggregate + ')'}")


def _mean_sd(values) -> dict:
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    if v.size == 0:
        return {"mean": None, "sd": None, "n": 0}
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size)}


# ---------------------------------------------------------------------------------------------
# acceptance on the phantoms


def synthetic_acceptance(
    data_dir: str | os.PathLike | None = None,
    preset: str = "default",
    min_auc: float = 0.95,
    out_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
    **overrides,
) -> dict:
    """The issue's acceptance check: the paper CNN with BFC reaches ROC-AUC >= ``min_auc`` on
    the held-out quarter of the default phantoms in a CPU run of minutes.

    Uses ``data.ensure_synthetic(data_dir)`` (the embedded default set when ``None``), a 3:1
    case split (seed 0) and ``preset_config(preset, backbone="paper", crop="bfc", **overrides)``.
    Returns the :func:`train_and_evaluate` report plus ``passed`` and ``wall_s``; it does not
    raise on failure, so callers can report the number either way.
    """
    from .data import ensure_synthetic, load_dataset

    t0 = time.perf_counter()
    path = ensure_synthetic(data_dir) if data_dir is not None else ensure_synthetic()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        ds = load_dataset(path, label_rule="tirads")
    cfg = preset_config(preset, **{"backbone": "paper", "crop": "bfc", **overrides})
    split = split_train_test(ds, test_fraction=0.25, seed=0)
    report = train_and_evaluate(ds, split, cfg, out_dir=out_dir, progress=progress)
    report["wall_s"] = time.perf_counter() - t0
    report["min_auc"] = float(min_auc)
    report["passed"] = report["auc"] is not None and report["auc"] >= min_auc
    return report
