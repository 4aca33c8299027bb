"""Run folders that hold no path of the machine they ran on.

A result folder that is shared or committed (a ``reproduce`` grid under ``docs/``) must not
carry ``/home/someone/data/...``: the data's identity is its fingerprint (the sha1 of every
file, in ``split.json``), not where it lay. So a portable run folder records the data root as
the placeholder :data:`DATA_PLACEHOLDER` (in ``config.json``, ``metrics.json`` and
``split.json``, and wherever a message quoted a path under it) and each ROI's image in
``predictions.csv`` relative to the data root.

:func:`make_portable` rewrites a finished folder in place (each changed file atomically); it is
idempotent, so a folder written with absolute paths by an older version is converted by the
same call. Readers that need the data again (``eval`` without ``--data``, ``train --resume``)
ask :func:`recorded_root`, which gives ``None`` for a portable record: the user names the data.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path

from ..atomic import write_json_atomic, write_text_atomic
from .runfolder import sha256_file

__all__ = ["DATA_PLACEHOLDER", "recorded_root", "make_portable", "portable_root_text"]

DATA_PLACEHOLDER = "<data>"
# The JSON files of a run folder that describe the data (the model files hold no path).
_JSON_FILES = ("config.json", "metrics.json", "split.json")


def recorded_root(data: dict | None) -> str | None:
    """The data root a record names (its ``root``), or ``None`` when it names none: absent, or
    the placeholder of a portable record."""
    root = (data or {}).get("root")
    if not root or str(root) == DATA_PLACEHOLDER or str(root).startswith(DATA_PLACEHOLDER + "/"):
        return None
    return str(root)


def _root_pattern(root: str) -> re.Pattern:
    # The root itself, as a whole path component: /data must not match inside /database.
    return re.compile(re.escape(root.rstrip("/")) + r"(?=/|$|[\s:'\"),;])")


def portable_root_text(text: str, root: str) -> str:
    """``text`` with every occurrence of the path ``root`` replaced by the placeholder."""
    return _root_pattern(root).sub(DATA_PLACEHOLDER, text)


def _portable_value(value, pattern: re.Pattern):
    if isinstance(value, str):
        return pattern.sub(DATA_PLACEHOLDER, value)
    if isinstance(value, list):
        return [_portable_value(v, pattern) for v in value]
    if isinstance(value, dict):
        return {k: _portable_value(v, pattern) for k, v in value.items()}
    return value


def _relative_image(image: str, root: str) -> str:
    if not image or not os.path.isabs(image):
        return image
    return Path(os.path.relpath(image, root)).as_posix()


def _roots(run_dir: Path, root: str | None) -> list[str]:
    """The absolute data roots to strip: ``root`` and whatever the folder's records name (the
    spelling the loader recorded may differ from the one given, e.g. through a symlink)."""
    found = [str(root)] if root else []
    for name in ("split.json", "config.json"):
        try:
            obj = json.loads((run_dir / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        rec = recorded_root(obj.get("data") if isinstance(obj, dict) else None)
        if rec and os.path.isabs(rec):
            found.append(rec)
    # Longest first: a root nested in another is replaced before its parent would eat it. The
    # file-system root itself is no data root to strip (it would match every path).
    kept = [r.rstrip("/") for r in found if r.rstrip("/")]
    return sorted(dict.fromkeys(kept), key=len, reverse=True)


def _vouched(d: Path) -> set[str]:
    try:
        record = json.loads((d / "config.json").read_text(encoding="utf-8")).get("integrity")
    except (OSError, ValueError, AttributeError):
        return set()
    if not isinstance(record, dict):
        return set()
    out = set()
    for rel, digest in record.items():
        try:
            if sha256_file(d / str(rel)) == digest:
                out.add(str(rel))
        except OSError:
            continue
    return out


def _reseal(d: Path, vouched: set[str], changed: list[str]) -> None:
    redo = [name for name in changed if name in vouched]
    if not redo:
        return
    path = d / "config.json"
    obj = json.loads(path.read_text(encoding="utf-8"))
    for name in redo:
        obj["integrity"][name] = sha256_file(d / name)
    write_json_atomic(path, obj)


def make_portable(run_dir: str | os.PathLike, root: str | None = None) -> list[str]:
    """Rewrite the finished run folder ``run_dir`` without machine paths; returns the names of
    the files it changed (none when it was portable already).

    ``root``: the data root the run was given (the folder's own records are read for the root
    they name too). In the JSON records the root becomes :data:`DATA_PLACEHOLDER`, wherever it
    occurs; in ``predictions.csv`` each ``image`` becomes relative to the root. A file that
    cannot be parsed is left as it is (the caller's integrity check names it)."""
    d = Path(run_dir)
    roots = _roots(d, root)
    if not roots:
        return []
    patterns = [_root_pattern(r) for r in roots]
    # Files the finished run's integrity record vouches for, and still matches: rewritten here,
    # their new sha256 replaces the old one (a file already edited keeps its stale digest, so
    # the conversion never launders a tampered split).
    vouched = _vouched(d)
    changed = []
    for name in _JSON_FILES:
        path = d / name
        try:
            text = path.read_text(encoding="utf-8")
            obj = json.loads(text)
        except (OSError, ValueError):
            continue
        new = obj
        for p in patterns:
            new = _portable_value(new, p)
        if new != obj:
            write_json_atomic(path, new)
            changed.append(name)
    _reseal(d, vouched, changed)
    path = d / "predictions.csv"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return changed
    rows = list(csv.DictReader(io.StringIO(text)))
    if rows and "image" in rows[0] and any(os.path.isabs(r.get("image") or "") for r in rows):
        fields = list(rows[0])
        for r in rows:
            image = r.get("image") or ""
            under = next((rt for rt in roots if image == rt or image.startswith(rt.rstrip("/") + "/")), roots[0])
            r["image"] = _relative_image(image, under)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        write_text_atomic(path, buf.getvalue())
        changed.append("predictions.csv")
    return changed
