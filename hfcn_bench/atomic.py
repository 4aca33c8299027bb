"""Atomic file writes: every result, report, manifest, figure and checkpoint of hfcn-bench goes
through here, so a crash or a kill mid-write leaves the previous file, never half of one; and
the one JSON reader whose errors name the file."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["atomic_write", "write_text_atomic", "write_json_atomic", "read_json"]


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> Path:
    """Call ``write(fh)`` on a temporary file next to ``path`` (binary mode), fsync it, then
    rename it over ``path``. The temporary file is in the same folder, so the rename stays on one
    file system and is atomic: readers see the old file or the new one. On any error the
    temporary file is removed and the error propagates."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp makes the file private (0600); an output file should read like any other.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) atomically."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda fh: fh.write(data))


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int = 1, allow_nan: bool = True) -> Path:
    """Write ``obj`` as JSON atomically. Serialised before the file is opened, so an object that
    is not JSON raises without touching the target."""
    return write_text_atomic(path, json.dumps(obj, indent=indent, allow_nan=allow_nan) + "\n")


def read_json(path: str | os.PathLike, missing: str | None = None, hint: str | None = None) -> Any:
    """The JSON value in ``path``; a missing file (``missing``: the message, default one naming
    the path) or invalid JSON is an :class:`~hfcn_bench.errors.HfcnError` naming the file."""
    from .errors import HfcnError

    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HfcnError(missing or f"no file at {path}", hint=hint) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HfcnError(f"{path} is not valid JSON: {exc}") from None
