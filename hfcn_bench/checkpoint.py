"""Training checkpoints: written atomically, read without executing code from the file.

A checkpoint is a ``dict`` of tensors and plain Python containers only (``dict``, ``list``,
``str``, numbers, ``None``): the model and optimizer state dicts, the epoch, the training
configuration as a dict, metrics, RNG states (as byte tensors) and free-form ``extra`` data.
No custom class goes in, so :func:`load_checkpoint` can read it with
``torch.load(weights_only=True)``, which refuses to unpickle anything else: a checkpoint someone
sent you cannot run code on your machine.

:func:`save_checkpoint` writes to a temporary file in the target directory, flushes it to disk
and then ``os.replace``-s it over the target, so a process killed mid-write leaves the previous
checkpoint intact (and a stray ``.NAME.*.tmp`` file, never a half-written ``NAME``).
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_write
from .errors import HfcnError

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "save_checkpoint",
    "load_checkpoint",
    "peek_epoch",
    "check_zip_integrity",
    "torch_load_reason",
    "load_weights_into",
]

CHECKPOINT_FORMAT = "hfcn-bench/checkpoint"
CHECKPOINT_VERSION = 1
_REQUIRED = ("format", "version", "epoch", "model", "config")


def _plain(obj: Any, where: str) -> Any:
    """A copy of ``obj`` made only of what ``weights_only`` loading accepts; tuples become lists
    (JSON-like), anything else is an error now rather than an unloadable file later."""
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)):
        return obj
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"checkpoint {where}: key {k!r} is a {type(k).__name__}, not str/int")
            out[k] = _plain(v, f"{where}.{k}")
        return out
    if isinstance(obj, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    # numpy scalars and the like: keep the number, drop the class.
    if hasattr(obj, "item") and callable(obj.item):
        return _plain(obj.item(), where)
    raise TypeError(f"checkpoint {where}: {type(obj).__name__} is not a tensor or plain container")


def save_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    epoch: int,
    config: Mapping[str, Any],
    metrics: Mapping[str, Any] | None = None,
    *,
    scheduler: Any = None,
    rng: Mapping[str, torch.Tensor] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically; return its path.

    Args:
        path: target file (``last.pt``, ``best.pt``); its folder is created.
        model: its ``state_dict()`` is stored (tensors moved to the CPU, so a CUDA checkpoint
            loads anywhere).
        optimizer: its ``state_dict()``, or ``None``.
        epoch: number of completed epochs.
        config: the training configuration as a plain dict (e.g. ``dataclasses.asdict``).
        metrics: plain numbers/lists (validation scores, threshold, ...).
        scheduler: optional LR scheduler whose ``state_dict()`` is stored.
        rng: named RNG states (byte tensors) to restore on resume.
        extra: any further plain data (history, validation case ids, ...).
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    obj = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "epoch": int(epoch),
        "model": state,
        "optimizer": _plain(_to_cpu(optimizer.state_dict()), "optimizer") if optimizer is not None else None,
        "scheduler": _plain(scheduler.state_dict(), "scheduler") if scheduler is not None else None,
        "config": _plain(dict(config), "config"),
        "metrics": _plain(dict(metrics or {}), "metrics"),
        "rng": _plain(dict(rng or {}), "rng"),
        "extra": _plain(dict(extra or {}), "extra"),
    }
    return atomic_write(path, lambda fh: torch.save(obj, fh))


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


DAMAGED_HINT = "use --checkpoint last if the run kept it, or retrain (a run killed mid-write keeps the previous file)"


def check_zip_integrity(path: str | os.PathLike, what: str = "torch checkpoint", hint: str = DAMAGED_HINT) -> None:
    """Refuse a zip-based model file (torch.save, skops) whose bytes were damaged.

    torch.load reads tensor bytes without checking the archive's CRC-32 checksums, so a file
    with flipped bytes but an intact index loads as garbage weights (a silently wrong model);
    a cut-off file loses the index at the end of the archive. Both are caught here, before any
    byte is unpickled, with the file's name."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise HfcnError(f"{path}: not a readable {what} (truncated or damaged?): not a complete zip archive", hint=hint)
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError) as exc:
        raise HfcnError(f"{path}: not a readable {what} (damaged zip archive: {exc})", hint=hint) from None
    if bad is not None:
        raise HfcnError(
            f"{path}: damaged {what}: the checksum of its entry {bad!r} does not match its bytes", hint=hint
        )


def torch_load_reason(exc: Exception) -> str:
    """What torch.load's error says, without its advice: torch suggests re-running with
    ``weights_only=False``, the one thing nobody should do with a file they were sent."""
    if isinstance(exc, pickle.UnpicklingError):
        m = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\. Please use|\n\n|$)", str(exc), re.S)
        why = " ".join(m.group(1).split()) if m else "it holds more than tensors and plain containers"
        return f"refused to load: not a plain tensor file ({why[:200]}); loading it could run code"
    text = str(exc).strip()
    first = text.splitlines()[0].split(". ")[0] if text else ""
    if "weights_only" in first:
        first = ""
    return f"{type(exc).__name__}" + (f": {first[:200]}" if first else "")


def _torch_load(path: Path):
    with warnings.catch_warnings():
        # torch warns about pickle protocols of foreign files; the error below says more.
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=True)


def peek_epoch(path: str | os.PathLike) -> tuple[int, int | None] | None:
    """``(epochs done, epochs planned)`` of a checkpoint, or ``None`` when it does not load."""
    try:
        ck = load_checkpoint(path)
    except HfcnError:
        return None
    planned = (ck.get("extra") or {}).get("planned_epochs", (ck.get("config") or {}).get("epochs"))
    return int(ck["epoch"]), (int(planned) if isinstance(planned, int) else None)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`, on the CPU, with
    ``torch.load(weights_only=True)``.

    Raises :class:`HfcnError` naming the file and the problem when it is missing, truncated,
    damaged (checksums), not a torch file, holds objects other than tensors and plain
    containers, is some other program's torch file, or is an hfcn-bench checkpoint of an
    unsupported version or with missing keys.
    """
    path = Path(path)
    if not path.is_file():
        raise HfcnError(
            f"no checkpoint at {path}", hint="train first (hfcn-bench train --out RUN_DIR) or check the path"
        )
    check_zip_integrity(path)
    try:
        obj = _torch_load(path)
    except pickle.UnpicklingError as exc:
        raise HfcnError(
            f"{path}: {torch_load_reason(exc)}",
            hint="only checkpoints written by hfcn-bench load; a file holding arbitrary Python objects could run "
            "code when unpickled",
        ) from None
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError, KeyError, EOFError... on junk
        raise HfcnError(
            f"{path}: not a readable torch checkpoint (truncated or damaged?): {torch_load_reason(exc)}",
            hint=DAMAGED_HINT,
        ) from None
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        what = (
            f"a {type(obj).__name__}"
            if not isinstance(obj, dict)
            else (f"format tag {obj.get('format')!r}" if "format" in obj else "no format tag")
        )
        raise HfcnError(
            f"{path}: not an hfcn-bench checkpoint ({what})",
            hint="give a best.pt/last.pt from an hfcn-bench run folder",
        )
    if obj.get("version") != CHECKPOINT_VERSION:
        raise HfcnError(
            f"{path}: checkpoint version {obj.get('version')!r} is not supported "
            f"(this hfcn-bench reads version {CHECKPOINT_VERSION})"
        )
    missing = [k for k in _REQUIRED if k not in obj]
    if missing:
        raise HfcnError(f"{path}: damaged checkpoint, missing {', '.join(missing)}")
    if not isinstance(obj["model"], dict) or not all(isinstance(v, torch.Tensor) for v in obj["model"].values()):
        raise HfcnError(f"{path}: damaged checkpoint, 'model' is not a state dict of tensors")
    if not isinstance(obj["config"], dict):
        raise HfcnError(f"{path}: damaged checkpoint, 'config' is not a dict")
    for key in ("metrics", "rng", "extra"):
        obj.setdefault(key, {})
    return obj


def load_weights_into(
    model: torch.nn.Module, state: dict, source: str | os.PathLike, what: str = ""
) -> torch.nn.Module:
    """``model.load_state_dict(state)``; weights that do not fit the model (missing, unexpected
    or mis-shaped keys) become one :class:`HfcnError` naming ``source`` (the file they came
    from) and, when given, ``what`` the load was for (e.g. "cannot resume")."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        lead = f"{what}: " if what else ""
        raise HfcnError(
            f"{lead}{source}: weights do not fit the model its config describes: {str(exc).splitlines()[0][:200]}"
        ) from None
    return model
