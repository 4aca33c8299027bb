"""The run folder: one versioned layout for every system, written and read here only.

::

    RUN/
      config.json      header: format "hfcn-bench/run", version, system, its config, preset,
                       data provenance, split method, protocol (seed, n_boot, aggregate),
                       status ("running" until metrics.json is written, then "finished")
      split.json       the case-level split manifest (data.splits.write_manifest)
      metrics.json     the test report (pooled over folds for k-fold runs)
      predictions.csv  per-ROI test predictions (every variant, every fold)
      fitted.json      (one split) what the fitted system is: thresholds and the predictions
                       they were chosen on, training summary, model files with their sha256
      <model files>    the system's own (best.pt/last.pt, <stage>/best.pt, *.skops)
      fold{i}/         (k-fold) one fitted.json + model files per fold
      external/<fp12>[-last]/  (``eval --data OTHER``) one record per external set and
                       checkpoint: eval_report.json/.md/.csv (``external_record_dir``)
      predictions/     (``predict`` without --out) pictures of predicted ROIs

A run is a run only once it finished: ``status`` says so, and :func:`check_reusable` lets a
plain rerun train over a folder whose earlier start failed before anything was trained.
Training afresh over a run (``--force``) first removes what the old run wrote
(:func:`clear_run`), its external records and pictures included, so nothing of the old model
is shown as the new one's.
Model files are recorded with their sha256 in ``fitted.json`` when written and checked before
they are loaded, so a damaged file is refused with its name instead of giving a silently
wrong result. When the run finishes, ``config.json`` records the sha256 of ``split.json`` and
of every ``fitted.json`` (``integrity``); :func:`read_run` checks them, so a hand-edited split
(a training case moved to the test list), threshold or label rule is refused, naming the file,
instead of being trusted. (Runs finished before this record existed carry none and are read
as they are.)
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..atomic import read_json, write_json_atomic
from ..data.splits import Manifest, read_manifest
from ..errors import HfcnError

__all__ = [
    "RUN_FORMAT",
    "RUN_VERSION",
    "FITTED_FORMAT",
    "FITTED_VERSION",
    "RunFolder",
    "read_run",
    "write_header",
    "mark_finished",
    "fit_dir",
    "write_fitted",
    "read_fitted",
    "sha256_file",
    "verify_files",
    "remove_stray_temps",
    "check_reusable",
    "has_state",
    "clear_run",
    "external_record_dir",
    "check_integrity",
]

RUN_FORMAT = "hfcn-bench/run"
RUN_VERSION = 2
FITTED_FORMAT = "hfcn-bench/fitted"
FITTED_VERSION = 1
HEADER = "config.json"
FITTED = "fitted.json"


def fit_dir(run_dir: str | os.PathLike, fold: int | None) -> Path:
    """Where one split's fitted system lives: the run folder, or ``fold{i}/`` for k-fold runs."""
    return Path(run_dir) if fold is None else Path(run_dir) / f"fold{fold}"


def write_header(run_dir: str | os.PathLike, header: dict) -> Path:
    from .. import __version__

    obj = {
        "format": RUN_FORMAT,
        "version": RUN_VERSION,
        "created_by": f"hfcn-bench {__version__}",
        "status": "running",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **header,
    }
    return write_json_atomic(Path(run_dir) / HEADER, obj)


def _recorded_files(root: Path) -> list[str]:
    """The files whose sha256 a finished run's header records: the split manifest and every
    split's fitted record (the thresholds and the model files' own sha256)."""
    fitted = [root / FITTED, *sorted(root.glob("fold*/" + FITTED))]
    return ["split.json"] + [p.relative_to(root).as_posix() for p in fitted if p.is_file()]


def mark_finished(run_dir: str | os.PathLike) -> None:
    root = Path(run_dir)
    path = root / HEADER
    obj = json.loads(path.read_text(encoding="utf-8"))
    obj["status"] = "finished"
    obj["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    obj["integrity"] = {rel: sha256_file(root / rel) for rel in _recorded_files(root)}
    write_json_atomic(path, obj)


def check_integrity(run_dir: str | os.PathLike, header: dict) -> None:
    """Refuse a finished run whose ``split.json`` or ``fitted.json`` differs from what it
    wrote (the ``integrity`` record of its header), naming the file."""
    record = header.get("integrity")
    if record is None:
        return
    root = Path(run_dir)
    if not isinstance(record, dict):
        raise HfcnError(f"{root / HEADER}: damaged run header (its integrity record is not a mapping)")
    for rel, digest in record.items():
        path = root / str(rel)
        if not path.is_file():
            raise HfcnError(
                f"{path}: missing (the run recorded it when it finished)",
                hint="restore it from a copy of the run, or retrain the run (hfcn-bench train --force)",
            )
        if sha256_file(path) != digest:
            raise HfcnError(
                f"{path} was changed after the run finished (its sha256 differs from the one recorded in "
                f"{HEADER}); an edited split, threshold or label rule is not trusted",
                hint="restore the file from a copy of the run, or retrain the run (hfcn-bench train --force)",
            )


@dataclass
class RunFolder:
    """A run folder's header and split manifest (see the module docstring)."""

    path: Path
    header: dict
    manifest: Manifest

    @property
    def system(self) -> str:
        return self.header["system"]

    @property
    def config(self) -> dict:
        return dict(self.header["config"])

    @property
    def is_kfold(self) -> bool:
        return self.manifest.method == "kfold"

    @property
    def finished(self) -> bool:
        return self.header.get("status") == "finished"

    @property
    def folds(self) -> list[int | None]:
        return [s.fold for s in self.manifest.splits] if self.is_kfold else [None]

    def fit_dir(self, fold: int | None) -> Path:
        return fit_dir(self.path, fold)

    def metrics(self) -> dict:
        return read_json(self.path / "metrics.json", f"{self.path} holds no finished run (no metrics.json)")

    def progress_note(self) -> str | None:
        """When the run stopped before its last epoch: where it stopped, from its checkpoints
        (``None`` for a finished run)."""
        if self.finished:
            return None
        from ..checkpoint import peek_epoch

        notes = []
        for fold in self.folds:
            d = self.fit_dir(fold)
            for last in sorted(d.glob("**/last.pt")):
                done = peek_epoch(last)
                if done is not None:
                    where = last.parent.relative_to(self.path).as_posix()
                    notes.append(f"{where if where != '.' else 'training'} at epoch {done[0]} of {done[1]}")
        what = "; ".join(notes) if notes else "before its first epoch"
        return f"{self.path} did not finish training (stopped {what})"


def read_run(run_dir: str | os.PathLike) -> RunFolder:
    """Read a run folder's header and manifest; a missing, foreign or older file is a clear error."""
    path = Path(run_dir)
    cfg_path = path / HEADER
    if not path.is_dir():
        raise HfcnError(
            f"{path} is not a run folder (not a directory)", hint="give the --out folder of an `hfcn-bench train` run"
        )
    if not cfg_path.is_file():
        raise HfcnError(
            f"{path} is not a run folder (no {HEADER})", hint="give the --out folder of an `hfcn-bench train` run"
        )
    header = read_json(cfg_path)
    if not isinstance(header, dict) or header.get("format") != RUN_FORMAT:
        raise HfcnError(f"{cfg_path} is not an hfcn-bench run header")
    if header.get("version") != RUN_VERSION:
        raise HfcnError(
            f"{cfg_path}: run format version {header.get('version')!r}; this hfcn-bench reads version {RUN_VERSION}",
            hint="retrain the run with this version of hfcn-bench",
        )
    for key in ("system", "config", "split", "protocol"):
        if key not in header:
            raise HfcnError(f"{cfg_path}: damaged run header (no {key!r})")
    check_integrity(path, header)
    return RunFolder(path, header, read_manifest(path / "split.json"))


def has_state(run_dir: str | os.PathLike) -> bool:
    """Whether a folder holds anything a plain rerun would destroy: a finished run, or the
    checkpoints of one that was interrupted."""
    path = Path(run_dir)
    if (path / "metrics.json").is_file():
        return True
    return any(path.glob("**/last.pt")) or any(path.glob("**/" + FITTED))


def check_reusable(run_dir: str | os.PathLike, force: bool, resume: bool) -> None:
    """Refuse to train over a run unless asked to: a finished or interrupted run needs
    ``--force`` (or ``--resume`` to continue it); a folder whose earlier start failed before
    anything was trained (only a header and a manifest) is reused silently."""
    path = Path(run_dir)
    if path.exists() and not path.is_dir():
        raise HfcnError(f"--out {path} is a file, not a folder", hint="choose a folder for the run")
    if force or resume or not path.exists():
        return
    if (path / "metrics.json").is_file():
        raise HfcnError(
            f"{path} already holds a finished run", hint="--force to train over it, or choose another --out"
        )
    if has_state(path):
        raise HfcnError(f"{path} holds an interrupted run", hint="--resume to continue it, --force to start over")


def _is_run_header(path: Path) -> bool:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(obj, dict) and obj.get("format") == RUN_FORMAT


def clear_run(run_dir: str | os.PathLike) -> list[Path]:
    """Remove what an earlier run wrote into ``run_dir`` before a fresh one is trained there:
    the files of the layout above (header, manifest, metrics, predictions, fitted records and
    the model files they list, checkpoints, fold folders), its ``external/`` records and its
    ``predictions/`` pictures. Only a folder whose ``config.json`` is a run header is cleared;
    anything else in it is left alone. Returns what was removed."""
    import shutil

    root = Path(run_dir)
    if not (root / HEADER).is_file() or not _is_run_header(root / HEADER):
        return []
    base = Path(os.path.abspath(root))
    doomed: list[Path] = [root / n for n in (HEADER, "split.json", "metrics.json", "predictions.csv", FITTED)]
    doomed += [root / "external", root / "predictions"]
    doomed += [p for p in root.iterdir() if p.is_dir() and p.name.startswith("fold") and p.name[4:].isdigit()]
    for fitted in [root / FITTED, *root.glob("fold*/" + FITTED)]:
        try:
            listed = (json.loads(fitted.read_text(encoding="utf-8")).get("files") or {}) if fitted.is_file() else {}
        except (OSError, ValueError, AttributeError):
            listed = {}
        doomed += [fitted.parent / rel for rel in listed]
    doomed += [*root.glob("**/last.pt"), *root.glob("**/best.pt")]
    removed = []
    for p in doomed:
        # an entry of the run folder itself (a recorded name with ".." in it is not followed)
        if base not in Path(os.path.normpath(os.path.abspath(p))).parents:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
        else:
            continue
        removed.append(p)
    return removed


def external_record_dir(run_dir: str | os.PathLike, fingerprint: str, checkpoint: str = "best") -> Path:
    """Where a run keeps the record of one external validation: ``external/<first 12 hex of
    the external data's fingerprint>/`` for the best weights, ``...-last/`` for the last ones,
    so records of different checkpoints never overwrite each other."""
    return Path(run_dir) / "external" / (str(fingerprint)[:12] + ("" if checkpoint == "best" else f"-{checkpoint}"))


def write_fitted(directory: str | os.PathLike, obj: dict, files: list[str]) -> Path:
    """Write ``fitted.json`` with the sha256 of every model file in ``files`` (paths relative
    to ``directory``), so loading can tell a damaged file."""
    d = Path(directory)
    record = {rel: sha256_file(d / rel) for rel in files}
    return write_json_atomic(d / FITTED, {"format": FITTED_FORMAT, "version": FITTED_VERSION, **obj, "files": record})


def read_fitted(directory: str | os.PathLike) -> dict:
    path = Path(directory) / FITTED
    obj = read_json(
        path,
        f"{Path(directory)} holds no fitted model ({FITTED} missing: training did not finish?)",
        hint="resume the run (hfcn-bench train --resume --out RUN) or retrain it",
    )
    if not isinstance(obj, dict) or obj.get("format") != FITTED_FORMAT or obj.get("version") != FITTED_VERSION:
        raise HfcnError(f"{path} is not an hfcn-bench fitted-model record (version {FITTED_VERSION})")
    return obj


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_files(directory: str | os.PathLike, recorded: dict[str, str], only: list[str] | None = None) -> None:
    """Check model files against the sha256 recorded when they were written; a missing or
    changed file is refused with its name."""
    d = Path(directory)
    for rel, digest in recorded.items():
        if only is not None and rel not in only:
            continue
        path = d / rel
        if not path.is_file():
            raise HfcnError(f"{path}: model file missing", hint="retrain the run (hfcn-bench train --force)")
        if sha256_file(path) != digest:
            raise HfcnError(
                f"{path}: model file is damaged (its sha256 differs from the one recorded when it was written)",
                hint="use --checkpoint last if the run kept it, or retrain the run",
            )


def remove_stray_temps(run_dir: str | os.PathLike) -> list[Path]:
    """Remove the ``.NAME.*.tmp`` files an atomic write killed mid-way leaves behind (the
    finished files are intact: the rename never happened). Returns what was removed."""
    removed = []
    root = Path(run_dir)
    if not root.is_dir():
        return removed
    for p in root.rglob(".*.tmp"):
        if p.is_file():
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed
