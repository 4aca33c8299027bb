"""A finished cell's own record, and the check of its files against it before they are pooled.

``cells/<key>/cell.json`` is written when a cell finishes (once its files were made portable,
:func:`seal_cell`): the number of ROIs and cases its test fold scored and the sha256 of the four
files the report reads (``config.json``, ``split.json``, ``metrics.json``, ``predictions.csv``).

:func:`check_cell` reads those files before a run skips a cell as finished and before the
report pools it: each must parse and be complete (a CSV ends with its last line, every row has
every column), the numbers the report reads must be finite, ``predictions.csv`` must hold as
many main-output rows as ``metrics.json`` scored ROIs, all of the split's test cases, and the
files must match the record. A cell that fails is *damaged*: a :class:`GridWarning` names the
file and what is wrong, the report lists it as damaged instead of pooling it, and the next run
recomputes it (:func:`discard_damaged` keeps its model files only when they still match their
own sha256, so the recompute only predicts and scores again). A finished cell written before
records existed (no ``cell.json``) is checked on its content alone and sealed by the next run.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

from ..atomic import write_json_atomic
from ..errors import GridWarning, HfcnError
from ..protocol.runfolder import read_fitted, sha256_file, verify_files

__all__ = [
    "RECORD",
    "POOLED",
    "GridWarning",
    "CellDamaged",
    "CellState",
    "check_contents",
    "check_cell",
    "write_record",
    "seal_cell",
    "discard_damaged",
]

RECORD = "cell.json"
RECORD_FORMAT = "hfcn-bench/reproduce-cell"
RECORD_VERSION = 1
POOLED = ("config.json", "split.json", "metrics.json", "predictions.csv")
_CSV_NEEDS = ("output", "key", "case_id", "label", "prob", "threshold")


class CellDamaged(HfcnError):
    """One of a cell's files is unreadable, incomplete or disagrees with its record."""

    def __init__(self, file: str, what: str):
        super().__init__(f"{file}: {what}", hint="the next run of the grid recomputes the cell")
        self.file, self.what = file, what


@dataclass(frozen=True)
class CellState:
    """``status``: ``done`` (its files check out), ``damaged`` (``problem`` says which file and
    what is wrong) or ``pending`` (not started, or interrupted: the next run resumes it).
    ``recorded``: a done cell was checked against its ``cell.json`` (False: a cell written before
    records existed, checked on its content alone)."""

    status: str
    file: str | None = None
    what: str | None = None
    recorded: bool = False
    n_rois: int | None = None

    @property
    def problem(self) -> str | None:
        """``"FILE: what is wrong"`` of a damaged cell (FILE relative to the cell folder)."""
        return None if self.file is None else f"{self.file}: {self.what}"

    @classmethod
    def damaged(cls, exc: CellDamaged) -> CellState:
        return cls("damaged", exc.file, exc.what)


def _text(d: Path, name: str) -> str:
    """A cell file's text; missing, unreadable or empty is a :class:`CellDamaged` naming it."""
    try:
        text = (d / name).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CellDamaged(name, "missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CellDamaged(name, f"unreadable ({exc})") from None
    if not text.strip():
        raise CellDamaged(name, "empty")
    return text


def _json(d: Path, name: str):
    text = _text(d, name)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CellDamaged(name, f"not valid JSON (truncated?): {exc}") from None


def _finite(name: str, key: str, value, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CellDamaged(name, f"{key} is {value!r}, not a finite number")


def _check_metrics(d: Path) -> dict:
    m = _json(d, "metrics.json")
    if not isinstance(m, dict) or not m:
        raise CellDamaged("metrics.json", "holds no report (empty)")
    for key in ("threshold", "n_samples", "n_cases", "metrics", "auc", "data"):
        if key not in m:
            raise CellDamaged("metrics.json", f"no {key!r}")
    _finite("metrics.json", "threshold", m["threshold"])
    for key in ("n_samples", "n_cases"):
        if not isinstance(m[key], int) or isinstance(m[key], bool) or m[key] < 1:
            raise CellDamaged("metrics.json", f"{key} is {m[key]!r}, not a count")
    # None is how an undefined metric is written (e.g. ROC-AUC of a one-class fold); NaN never.
    _finite("metrics.json", "auc", m["auc"], optional=True)
    if not isinstance(m["metrics"], dict):
        raise CellDamaged("metrics.json", "'metrics' is not a table of metrics")
    for key in ("accuracy", "precision", "recall", "f1", "specificity"):
        if key not in m["metrics"]:
            raise CellDamaged("metrics.json", f"no metrics.{key}")
        _finite("metrics.json", f"metrics.{key}", m["metrics"][key], optional=True)
    total = (m.get("timings") or {}).get("total_s")
    _finite("metrics.json", "timings.total_s", total, optional=True)
    return m


def _check_predictions(d: Path) -> list[dict]:
    name = "predictions.csv"
    text = _text(d, name)
    if not text.endswith("\n"):
        raise CellDamaged(name, "its last line is cut off (truncated?)")
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in _CSV_NEEDS if c not in (reader.fieldnames or [])]
    if missing:
        raise CellDamaged(name, f"no {', '.join(missing)} column(s) (header {reader.fieldnames})")
    main = []
    for row in reader:
        line = reader.line_num
        if None in row or any(v is None for v in row.values()):
            raise CellDamaged(name, f"line {line} has {'more' if None in row else 'fewer'} fields than the header")
        if row["output"] != "main":
            continue
        if row["label"] not in ("0", "1"):
            raise CellDamaged(name, f"line {line}: label {row['label']!r} is not 0 or 1")
        for col in ("prob", "threshold"):
            try:
                v = float(row[col])
            except ValueError:
                raise CellDamaged(name, f"line {line}: {col} {row[col]!r} is not a number") from None
            if not math.isfinite(v):
                raise CellDamaged(name, f"line {line}: {col} is {row[col]!r}, not a finite number")
        if not 0.0 <= float(row["prob"]) <= 1.0:
            raise CellDamaged(name, f"line {line}: prob {row['prob']} is not a probability")
        main.append(row)
    if not main:
        raise CellDamaged(name, "holds no row of the main output")
    return main


def check_contents(cell_dir: str | Path) -> dict:
    """Check a finished cell's files on their own (see the module docstring); returns
    ``{"n_rois", "n_cases"}`` or raises :class:`CellDamaged` naming the file."""
    from ..data.splits import read_manifest

    d = Path(cell_dir)
    m = _check_metrics(d)
    rows = _check_predictions(d)
    if len(rows) != m["n_samples"]:
        raise CellDamaged(
            "predictions.csv", f"{len(rows)} ROI rows of the main output, but metrics.json scored {m['n_samples']}"
        )
    cases = {r["case_id"] for r in rows}
    if len(cases) != m["n_cases"]:
        raise CellDamaged("predictions.csv", f"{len(cases)} cases, but metrics.json scored {m['n_cases']}")
    _json(d, "split.json")  # missing, empty or cut: named as such
    try:
        manifest = read_manifest(d / "split.json")
        manifest.training_labels()
    except HfcnError as exc:
        # The manifest reader names the file by its full path; the cell's problem names it alone.
        raise CellDamaged("split.json", str(exc).replace(str(d / "split.json"), "").strip(": ")) from None
    if len(manifest.splits) != 1:
        raise CellDamaged("split.json", f"{len(manifest.splits)} splits, a cell has one")
    test = set(manifest.splits[0].test)
    if cases - test:
        extra = sorted(cases - test)
        raise CellDamaged("predictions.csv", f"case(s) {extra[:5]} are not in the test fold of split.json")
    if test - cases:
        lost = sorted(test - cases)
        raise CellDamaged("predictions.csv", f"no row for test case(s) {lost[:5]} of split.json")
    return {"n_rois": len(rows), "n_cases": len(cases)}


def check_cell(cell_dir: str | Path) -> CellState:
    """The state of one cell folder (see :class:`CellState`); never raises for what is in it."""
    d = Path(cell_dir)
    has_outputs = (d / RECORD).is_file() or (d / "metrics.json").is_file()
    try:
        header = _json(d, "config.json")
        if not isinstance(header, dict):
            raise CellDamaged("config.json", "not a run header")
    except CellDamaged as exc:
        # Without results, a missing or cut header is a cell that never got going: rerun it.
        return CellState.damaged(exc) if has_outputs else CellState("pending")
    status = header.get("status")
    if status == "running" or (status is None and not has_outputs):
        return CellState("pending")  # interrupted: resumed by the next run
    if status != "finished":
        return CellState("damaged", "config.json", f"status {status!r}, not 'finished'")
    try:
        info = check_contents(d)
        if not (d / RECORD).is_file():
            return CellState("done", recorded=False, n_rois=info["n_rois"])
        rec = _json(d, RECORD)
        if not isinstance(rec, dict) or rec.get("format") != RECORD_FORMAT or not isinstance(rec.get("files"), dict):
            raise CellDamaged(RECORD, "not a cell record")
        for name in POOLED:
            want = rec["files"].get(name)
            if want is None:
                raise CellDamaged(RECORD, f"records no checksum of {name}")
            if sha256_file(d / name) != want:
                raise CellDamaged(name, "differs from the checksum recorded when the cell finished")
        if rec.get("n_rois") != info["n_rois"]:
            raise CellDamaged("predictions.csv", f"{info['n_rois']} ROIs, its record says {rec.get('n_rois')}")
    except CellDamaged as exc:
        return CellState.damaged(exc)
    return CellState("done", recorded=True, n_rois=info["n_rois"])


def write_record(cell_dir: str | Path, key: str) -> Path:
    """Check a finished cell's files (raises :class:`CellDamaged`) and write its ``cell.json``."""
    d = Path(cell_dir)
    info = check_contents(d)
    return write_json_atomic(
        d / RECORD,
        {
            "format": RECORD_FORMAT,
            "version": RECORD_VERSION,
            "key": key,
            **info,
            "files": {name: sha256_file(d / name) for name in POOLED},
            "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
        },
    )


def seal_cell(cell_dir: str | Path, key: str, data_root: str | None = None) -> list[str]:
    """What a finished cell's folder becomes: its records rewritten without machine paths
    (:func:`~hfcn_bench.protocol.portable.make_portable`), then its own record written. Returns
    the files made portable. An older cell (absolute paths, no record) is converted by the same
    call."""
    from ..protocol.portable import make_portable

    check_contents(cell_dir)  # never rewrite (and so hide) a damaged file
    changed = make_portable(cell_dir, data_root)
    write_record(cell_dir, key)
    return changed


def discard_damaged(cell_dir: str | Path) -> list[str]:
    """Before a damaged cell is recomputed: remove its scored files and its record, and its
    model files unless they match the sha256 their ``fitted.json`` recorded (a recompute then
    resumes from them: it predicts and scores again; otherwise it trains afresh). Returns what
    was removed, relative to the cell."""
    d = Path(cell_dir)
    removed = []
    for name in (RECORD, "metrics.json", "predictions.csv"):
        if (d / name).is_file():
            (d / name).unlink()
            removed.append(name)
    for fitted in sorted(d.glob("**/fitted.json")):
        fd = fitted.parent
        try:
            verify_files(fd, read_fitted(fd).get("files", {}))
        except (HfcnError, OSError):
            for p in [fitted, fd / "history.json", *fd.glob("*.pt")]:
                if p.is_file():
                    p.unlink()
                    removed.append(p.relative_to(d).as_posix())
    return removed
