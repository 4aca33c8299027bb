"""One epoch loop for every trained network: HFCN, the pyramid network and the ResNet-18 ROI
classifiers, the nodule detector, the segmenter and the fine-tuned transfer trunks.

The loop owns what must not differ between them:

- **seeding and order**: the batch order of epoch ``e`` is a permutation drawn from
  ``(seed, e)`` alone (:func:`epoch_order`), so a resumed run draws what the original would
  have drawn; augmentation draws are the task's, from ``(seed, epoch, index)``;
- **the last-batch rule**: a last batch of a single sample is folded into the previous batch
  (BatchNorm statistics of one sample are degenerate), so no sample is ever dropped;
- **best-epoch selection**: the task's validation score is a list compared lexicographically
  (e.g. ``[val AUC, -val loss]``); a later epoch must be strictly better to win, so ties go to
  the first epoch; a non-finite entry counts as -inf; without validation the latest epoch is
  kept;
- **progress**: ``progress("batch", b, n, {...})`` per batch, ``progress(stage, e, E, row)``
  per epoch;
- **resume and atomic checkpoints**: with ``ckpt_dir``, ``best.pt`` is written whenever the
  score improves and ``last.pt`` after every epoch (weights, optimizer, scheduler, every RNG
  state, history), both atomically; ``resume=True`` continues from ``last.pt`` bit-exactly,
  and a stage that already finished is not retrained.

A task (:class:`Task`) says how to compute one batch's loss and how to validate; everything
else is here.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from ..checkpoint import load_checkpoint, load_weights_into, save_checkpoint
from ..errors import HfcnError

__all__ = [
    "LoopSettings",
    "Task",
    "LoopResult",
    "fit_loop",
    "epoch_order",
    "batch_starts",
    "OPTIMIZERS",
    "SCHEDULES",
    "RESUMABLE",
    "better",
    "device_of",
    "torch_threads",
]

# Settings that may differ between a checkpoint and the run resuming it: they change neither
# the model nor the optimisation trajectory of the epochs already run.
RESUMABLE = ("epochs", "threads", "device", "eval_batch_size")

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("none", "cosine")

Progress = Callable[[str, int, int, dict], None]


@dataclass
class LoopSettings:
    """Optimisation of one network: ``epochs``, ``batch_size``, ``lr``, ``weight_decay``,
    ``optimizer`` (sgd/adam/adamw), ``momentum`` (SGD), ``schedule`` ("none", or "cosine" per
    epoch to 5 % of the initial lr), ``grad_clip`` (max gradient norm or None), ``seed``,
    ``warmup_epochs`` (the learning rate rises linearly from ~0 over that many epochs' steps, a
    fraction allowed; 0: none). Parameter groups (``fit_loop(params=[{"params": ..., "lr":
    ...}])``) keep their own learning rates, each scheduled and warmed up alike."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 0.0
    optimizer: str = "adamw"
    momentum: float = 0.9
    schedule: str = "none"
    grad_clip: float | None = None
    seed: int = 0
    warmup_epochs: float = 0.0

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise HfcnError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise HfcnError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise HfcnError(
                f"epochs and batch_size must be >= 1 and lr > 0 (got {self.epochs}, {self.batch_size}, {self.lr})"
            )
        if not self.warmup_epochs >= 0 or not math.isfinite(self.warmup_epochs):
            raise HfcnError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")


class Task(Protocol):
    """What the loop needs from a network's training code.

    ``n``: number of training items. ``start_epoch(epoch)``: set train/eval modes and the
    augmentation epoch. ``step(rows, epoch) -> (loss, scale, count)``: the loss of the items at
    positions ``rows`` (the loop back-propagates it) and how it enters the epoch's reported
    mean (``loss * scale`` summed over batches, divided by the summed ``count``).
    ``validate(epoch) -> (score or None, metrics)``: the selection score (None: no validation,
    the latest epoch is kept) and the values for the history row. ``generators()``: extra
    RNGs whose state must survive a resume (e.g. HFCN's RFC window generator). Optional:
    ``end_epoch(epoch)``, called after the epoch's last training step, before validation (e.g.
    HFCN raises there a bad window its CUDA op found during the epoch)."""

    n: int

    def start_epoch(self, epoch: int) -> None: ...

    def step(self, rows: torch.Tensor, epoch: int) -> tuple[torch.Tensor, float, float]: ...

    def validate(self, epoch: int) -> tuple[list[float] | None, dict]: ...

    def generators(self) -> dict[str, torch.Generator]: ...


@dataclass
class LoopResult:
    """The model holds the best epoch's weights (eval mode) when this is returned.

    ``resumed_from``: ``None`` for a run from scratch, else how many epochs earlier runs had
    trained (this run trained ``history[resumed_from:]``, none when it found the stage finished)."""

    history: list[dict]
    best_epoch: int
    best_score: list[float] | None
    seconds: float
    resumed_from: int | None = None
    checkpoints: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        return {
            "best_epoch": self.best_epoch,
            "best_score": self.best_score,
            "epochs_run": len(self.history),
            "resumed_from": self.resumed_from,
            "history": self.history,
        }


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The batch order of ``epoch``: a function of (seed, epoch) only, so a resumed run draws
    what the original would have drawn without storing a generator state for it."""
    g = torch.Generator()
    g.manual_seed((int(seed) * 1_000_003 + int(epoch)) % (2**63))
    return torch.randperm(n, generator=g)


def batch_starts(n: int, batch_size: int) -> list[int]:
    """Start positions of the batches; a last batch of one sample joins the previous one."""
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return starts


def better(score: list[float] | None, best: list[float] | None) -> bool:
    """Lexicographic comparison with non-finite entries as -inf; strictly better only."""
    if best is None:
        return True
    if score is None:
        return False
    fix = lambda v: [x if isinstance(x, (int, float)) and math.isfinite(x) else -math.inf for x in v]  # noqa: E731
    return fix(score) > fix(best)


def _optimizer(settings: LoopSettings, params) -> torch.optim.Optimizer:
    params = list(params)
    if params and isinstance(params[0], dict):
        # parameter groups (e.g. a pretrained trunk at a lower learning rate than its head)
        params = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in params]
        params = [g for g in params if g["params"]]
    else:
        params = [p for p in params if p.requires_grad]
    if settings.optimizer == "sgd":
        return torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    if settings.optimizer == "adam":
        return torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay)
    return torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)


def _schedule_factor(settings: LoopSettings, epoch: int) -> float:
    """The schedule's learning-rate multiplier of ``epoch``. Cosine to 5 % of the initial lr,
    stepped per epoch: the last epochs refine instead of bouncing, which makes "best on
    validation" less of a lottery on small data."""
    if settings.schedule == "none":
        return 1.0
    total = settings.epochs
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(epoch, total) / total))


def _scheduler(settings: LoopSettings, opt: torch.optim.Optimizer):
    if settings.schedule == "none":
        return None
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda e: _schedule_factor(settings, e))


def _rng_state(gens: dict[str, torch.Generator]) -> dict[str, torch.Tensor]:
    st = {"torch": torch.get_rng_state()}
    for name, g in gens.items():
        st[f"gen:{name}"] = g.get_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state()
    return st


def _set_rng_state(gens: dict[str, torch.Generator], st: dict) -> None:
    if "torch" in st:
        torch.set_rng_state(st["torch"])
    for name, g in gens.items():
        # "crop": the key HFCN checkpoints used for the RFC generator before the shared loop.
        state = st.get(f"gen:{name}", st.get(name))
        if state is not None:
            g.set_state(state)
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state(st["cuda"])


def _check_resume(saved: dict, config: dict, path: Path, resumable: tuple[str, ...]) -> None:
    diff = [k for k in config if k not in resumable and saved.get(k) != config[k]]
    if diff:
        shown = ", ".join(f"{k}: {saved.get(k)!r} -> {config[k]!r}" for k in diff[:6])
        raise HfcnError(
            f"cannot resume {path}: the configuration differs ({shown})",
            hint=f"resume with the run's own settings (only {', '.join(resumable)} may change), or "
            "start a new run folder",
        )


def _cpu_state(model: torch.nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def fit_loop(
    model: torch.nn.Module,
    task: Task,
    settings: LoopSettings,
    *,
    config: dict,
    params=None,
    ckpt_dir: str | Path | None = None,
    resume: bool = False,
    resumable: tuple[str, ...] = RESUMABLE,
    progress: Progress | None = None,
    stage: str = "epoch",
    keep_last: bool = True,
    extra: dict | None = None,
) -> LoopResult:
    """Train ``model`` on ``task`` (see the module docstring) and leave it at its best epoch.

    ``config`` is the stage's configuration as a plain dict: stored in every checkpoint and
    compared on resume (only the ``resumable`` keys may differ). ``params``: the parameters to
    optimise (default: all of the model's that require a gradient). ``ckpt_dir``: where
    ``best.pt``/``last.pt`` go (None: in memory only). ``keep_last=False`` removes ``last.pt``
    once the stage finished (it only serves a resume). ``extra``: plain data stored in every
    checkpoint (e.g. the validation case ids).
    """
    t0 = time.perf_counter()
    # As a checkpoint stores it (tuples become lists), so a resume compares like with like.
    config = json.loads(json.dumps(config))
    out = Path(ckpt_dir) if ckpt_dir is not None else None
    device = next(model.parameters()).device
    opt = _optimizer(settings, model.parameters() if params is None else params)
    sched = _scheduler(settings, opt)
    base_lrs = [g["lr"] for g in opt.param_groups] if sched is None else list(sched.base_lrs)
    gens = task.generators()
    history: list[dict] = []
    best_score: list[float] | None = None
    best_epoch = 0
    best_state: dict | None = None
    start = 0
    resumed_from = None
    last_path = out / "last.pt" if out is not None else None
    best_path = out / "best.pt" if out is not None else None
    if resume and last_path is not None and last_path.exists():
        ck = load_checkpoint(last_path)
        _check_resume(ck["config"], config, last_path, resumable)
        load_weights_into(model, ck["model"], last_path, "cannot resume")
        if ck.get("optimizer") is not None:
            opt.load_state_dict(ck["optimizer"])
        if sched is not None and ck.get("scheduler") is not None:
            sched.load_state_dict(ck["scheduler"])
        _set_rng_state(gens, ck.get("rng", {}))
        saved = ck.get("extra", {})
        history = list(saved.get("history", []))
        best_score = saved.get("best_score")
        best_epoch = int(saved.get("best_epoch", 0))
        start = resumed_from = int(ck["epoch"])
        if best_epoch and best_path.exists():
            best_state = load_checkpoint(best_path)["model"]
        elif best_epoch:
            raise HfcnError(f"cannot resume {last_path}: best.pt of epoch {best_epoch} is missing")
    elif resume and best_path is not None and best_path.exists() and not (last_path and last_path.exists()):
        # A finished stage whose last.pt was dropped (keep_last=False): its best weights are it.
        ck = load_checkpoint(best_path)
        if ck.get("extra", {}).get("final"):
            _check_resume(ck["config"], config, best_path, resumable)
            load_weights_into(model, ck["model"], best_path, "cannot resume")
            saved = ck["extra"]
            model.eval()
            done = list(saved.get("history", []))
            # resumed_from counts the epochs earlier runs trained: here all of them.
            return LoopResult(
                done, int(ck["epoch"]), saved.get("best_score"), time.perf_counter() - t0, len(done), ["best.pt"]
            )
    n = int(task.n)
    if n < 1:
        raise HfcnError("no training items")
    info = dict(extra or {})
    info["planned_epochs"] = int(settings.epochs)
    # On CUDA the batch losses are summed on the device and read once per epoch: reading each
    # one back would synchronise every step. The CPU path reads them as it goes.
    on_cuda = device.type == "cuda"
    for epoch in range(start, settings.epochs):
        te = time.perf_counter()
        task.start_epoch(epoch)
        order = epoch_order(settings.seed, epoch, n)
        starts = batch_starts(n, settings.batch_size)
        loss_sum, count = 0.0, 0.0
        loss_dev = None  # on CUDA: the epoch's weighted loss sum, kept on the device
        warm_steps = settings.warmup_epochs * len(starts)
        for b, s0 in enumerate(starts):
            s1 = starts[b + 1] if b + 1 < len(starts) else n
            step = epoch * len(starts) + b
            if step < warm_steps:
                # a function of the step index alone, so a resumed run warms up as the original did
                factor = _schedule_factor(settings, epoch) * (step + 1) / (warm_steps + 1)
                for g, base in zip(opt.param_groups, base_lrs):
                    g["lr"] = base * factor
            elif warm_steps and step == math.ceil(warm_steps):
                for g, base in zip(opt.param_groups, base_lrs):
                    g["lr"] = base * _schedule_factor(settings, epoch)
            loss, scale, cnt = task.step(order[s0:s1], epoch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if settings.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            opt.step()
            count += cnt
            if on_cuda:
                term = loss.detach().double() * scale
                loss_dev = term if loss_dev is None else loss_dev + term
                batch_info = {"epoch": epoch + 1}
            else:
                lv = _finite_loss(float(loss.detach()), epoch)
                loss_sum += lv * scale
                batch_info = {"epoch": epoch + 1, "loss": lv}
            if progress is not None:
                progress("batch", b + 1, len(starts), batch_info)
        if loss_dev is not None:
            loss_sum = _finite_loss(float(loss_dev), epoch)  # the epoch's one read-back
        end_epoch = getattr(task, "end_epoch", None)
        if end_epoch is not None:
            end_epoch(epoch)
        lr_now = opt.param_groups[0]["lr"]
        if sched is not None:
            sched.step()
        row = {"epoch": epoch + 1, "train_loss": loss_sum / max(count, 1e-12), "lr": lr_now}
        score, metrics = task.validate(epoch)
        row.update(metrics)
        improved = True if score is None else better(score, best_score)
        if improved:
            best_score, best_epoch = score, epoch + 1
            best_state = _cpu_state(model)
        row["seconds"] = time.perf_counter() - te
        row["best"] = improved
        history.append(row)
        if out is not None:
            state = {**info, "history": history, "best_score": best_score, "best_epoch": best_epoch}
            # best.pt before last.pt: a crash in between leaves last.pt one epoch behind, and
            # the resumed epoch rewrites the same best.pt.
            if improved:
                save_checkpoint(best_path, model, None, epoch + 1, config, {"val_score": score}, extra=state)
            save_checkpoint(
                last_path, model, opt, epoch + 1, config, dict(row), scheduler=sched, rng=_rng_state(gens), extra=state
            )
        if progress is not None:
            progress(stage, epoch + 1, settings.epochs, dict(row))
    if best_state is None:
        # Resumed a stage that had already run all its epochs: its last weights are it.
        best_state = _cpu_state(model)
        best_epoch = best_epoch or start
    model.load_state_dict(best_state)
    model.to(device).eval()
    files = []
    if out is not None:
        state = {**info, "history": history, "best_score": best_score, "best_epoch": best_epoch, "final": True}
        save_checkpoint(best_path, model, None, best_epoch, config, {"val_score": best_score}, extra=state)
        files.append("best.pt")
        if keep_last:
            files.append("last.pt")
        elif last_path.exists():
            last_path.unlink()
    return LoopResult(history, best_epoch, best_score, time.perf_counter() - t0, resumed_from, files)


def _finite_loss(value: float, epoch: int) -> float:
    if not math.isfinite(value):
        raise HfcnError(f"training diverged at epoch {epoch + 1} (loss {value})", hint="lower the learning rate (--lr)")
    return value


def device_of(name: str) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto``; a CUDA device without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise HfcnError(f"device {name!r} is not a device name", hint="use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise HfcnError(f"device {name!r} requested but torch sees no CUDA GPU", hint="use --device cpu (or auto)")
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
