"""A reproduce grid folder under faults: damaged cell files (cut, empty, non-finite, edited
after the cell finished) are named, left out of the report and recomputed by the next run;
two runs on one folder (a lock naming its holder, a stale one taken over); and grid folders
that hold no path of the machine they ran on, an older grid's cells converted in place."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from clitools import run

import hfcn_bench
from hfcn_bench.data import write_synthetic_ddti
from hfcn_bench.protocol.portable import DATA_PLACEHOLDER, make_portable, recorded_root
from hfcn_bench.reproduce import ReproduceOptions, reproduce
from hfcn_bench.reproduce.lock import LOCK, GridBusy, grid_lock
from hfcn_bench.reproduce.record import RECORD, GridWarning, check_cell

REPO = str(Path(hfcn_bench.__file__).resolve().parent.parent)
GLOBAL_F1 = "paper-global-f1"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_synthetic_ddti(tmp_path_factory.mktemp("faults") / "ddti", n_cases=24, seed=0)


def _opts(data, out, **kw):
    base = dict(
        table="3", data=str(data), folds=2, preset="smoke", engine="local", out=str(out), n_boot=30, alphas=(0.6,)
    )
    return ReproduceOptions(**{**base, **kw})


@pytest.fixture(scope="module")
def grid(data, tmp_path_factory):
    """A finished 4-cell grid (Global and BFC alone at alpha 0.6, 2 folds), never modified:
    tests damage copies of it."""
    out = tmp_path_factory.mktemp("grid") / "g"
    rep = reproduce(_opts(data, out))
    assert rep["summary"]["done"] == 4
    return out


def _copy(grid, tmp_path) -> Path:
    out = tmp_path / "g"
    shutil.copytree(grid, out)
    return out


def _report_only(data, out):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        rep = reproduce(_opts(data, out, report_only=True))
    return rep, [str(w.message) for w in seen if issubclass(w.category, GridWarning)]


def _cell(rep, key):
    return next(c for c in rep["cells"] if c["key"] == key)


def _rows(path: Path) -> tuple[list[str], list[str]]:
    lines = path.read_text().splitlines(keepends=True)
    return lines[:1], lines[1:]


# --- item 2: a cell's files against its own record -----------------------------------------


@pytest.mark.parametrize("recorded", [True, False], ids=["with-record", "older-cell-without-record"])
def test_a_truncated_predictions_file_is_not_pooled(data, grid, tmp_path, recorded):
    """Rows cut off at a line end still parse: the ROI count (metrics.json, and the record)
    gives them away. The Global row is then not pooled on the rows that are left."""
    out = _copy(grid, tmp_path)
    cell = out / "cells" / GLOBAL_F1
    if not recorded:
        (cell / RECORD).unlink()  # as a cell written before records existed
    head, rows = _rows(cell / "predictions.csv")
    (cell / "predictions.csv").write_text("".join(head + rows[: len(rows) // 2]))
    rep, warned = _report_only(data, out)
    row = _cell(rep, GLOBAL_F1)
    assert row["status"] == "damaged" and row["problem"].startswith("predictions.csv: ")
    assert "ROI rows of the main output, but metrics.json scored" in row["problem"]
    assert any(str(cell / "predictions.csv") in w and "damaged" in w for w in warned), warned
    assert rep["summary"]["damaged"] == 1 and rep["summary"]["done"] == 3
    glob = next(r for r in rep["table3"] if r["config"] == "paper-global")
    assert not glob["done"]  # never pooled on half its rows
    assert not any(p["versus"] == "paper-global" for p in rep["paired"])
    md = (out / "report.md").read_text()
    assert "1 damaged" in md and "damaged: predictions.csv:" in md


def test_a_file_edited_after_the_cell_finished_fails_its_checksum(data, grid, tmp_path):
    """Same number of rows, one probability changed: only the record written when the cell
    finished can tell."""
    out = _copy(grid, tmp_path)
    path = out / "cells" / GLOBAL_F1 / "predictions.csv"
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    rows[0]["prob"] = "0.999999" if rows[0]["prob"] != "0.999999" else "0.000001"
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    path.write_text(buf.getvalue())
    state = check_cell(path.parent)
    assert state.status == "damaged" and state.problem == (
        "predictions.csv: differs from the checksum recorded when the cell finished"
    )
    rep, _ = _report_only(data, out)
    assert _cell(rep, GLOBAL_F1)["status"] == "damaged"


# --- item 3: cut, empty, non-finite files: named, reported, recomputed ---------------------


def _cut(path: Path) -> None:
    """Cut a file in the middle of a line, as a write killed half-way leaves it."""
    text = path.read_text()
    cut = len(text) // 2
    while text[cut - 1] == "\n":
        cut -= 1
    path.write_text(text[:cut])


def _nan_auc(path: Path) -> None:
    m = json.loads(path.read_text())
    m["auc"] = float("nan")
    path.write_text(json.dumps(m, indent=1))


def _nan_prob(path: Path) -> None:
    head, rows = _rows(path)
    first = rows[0].split(",")
    first[8] = "nan"  # the prob column
    path.write_text("".join(head + [",".join(first)] + rows[1:]))


DAMAGE = {
    "metrics-cut": ("metrics.json", _cut, "not valid JSON"),
    "metrics-empty-object": ("metrics.json", lambda p: p.write_text("{}"), "holds no report"),
    "metrics-nan-auc": ("metrics.json", _nan_auc, "auc is nan, not a finite number"),
    "predictions-nan-prob": ("predictions.csv", _nan_prob, "prob is 'nan', not a finite number"),
    "predictions-cut-mid-line": ("predictions.csv", _cut, "cut off"),
    "predictions-empty": ("predictions.csv", lambda p: p.write_text(""), "empty"),
    "split-empty": ("split.json", lambda p: p.write_text(""), "empty"),
    "config-cut": ("config.json", _cut, "not valid JSON"),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_damaged_cell_is_named_reported_and_recomputed(data, grid, tmp_path, kind):
    name, damage, needle = DAMAGE[kind]
    out = _copy(grid, tmp_path)
    damage(out / "cells" / GLOBAL_F1 / name)
    # --report-only reports it (no abort), names the file, and does not count it as done
    rep, warned = _report_only(data, out)
    row = _cell(rep, GLOBAL_F1)
    assert row["status"] == "damaged" and row["problem"].startswith(f"{name}: ") and needle in row["problem"], row
    assert any(str(out / "cells" / GLOBAL_F1 / name) in w for w in warned), warned
    assert rep["summary"]["damaged"] == 1
    # the command line says so too, in one line per cell, and exits 1 without a traceback
    rc, text = run(
        ["reproduce", "--table", "3", "--alphas", "0.6", "--folds", "2", "--preset", "smoke", "--n-boot", "30"]
        + ["--data", str(data), "--out", str(out), "--report-only"]
    )
    assert rc == 1 and "Traceback" not in text
    assert f"damaged: cell {GLOBAL_F1}:" in text and name in text
    # the next run recomputes the cell (not "cached") and the report is the undamaged one
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GridWarning)
        again = reproduce(_opts(data, out))
    assert _cell(again, GLOBAL_F1)["status"] == "done"
    assert again["summary"]["done"] == 4 and again["summary"]["damaged"] == 0
    assert check_cell(out / "cells" / GLOBAL_F1).recorded
    original = json.loads((grid / "report.json").read_text())
    assert again["table3"] == original["table3"] and again["paired"] == original["paired"]
    for f in ("predictions.csv", "split.json"):
        assert (out / "cells" / GLOBAL_F1 / f).read_text() == (grid / "cells" / GLOBAL_F1 / f).read_text()
    assert "damaged (" in (out / "cells" / GLOBAL_F1 / "cell.log").read_text()


def test_a_damaged_model_file_is_retrained_not_resumed(data, grid, tmp_path):
    """metrics.json cut and best.pt cut too: the recompute cannot resume from a model file
    that no longer matches its recorded sha256, so it trains afresh, to the same numbers."""
    out = _copy(grid, tmp_path)
    cell = out / "cells" / GLOBAL_F1
    _cut(cell / "metrics.json")
    best = next(cell.glob("fold*/best.pt"))
    best.write_bytes(best.read_bytes()[:100])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GridWarning)
        again = reproduce(_opts(data, out))
    assert _cell(again, GLOBAL_F1)["status"] == "done"
    log = (cell / "cell.log").read_text()
    assert f"{best.parent.name}/best.pt" in log.split("damaged (")[1].splitlines()[0]  # removed, not resumed from
    assert f"cell {GLOBAL_F1} (start)" in log.split("damaged (")[1]
    original = json.loads((grid / "report.json").read_text())
    assert again["table3"] == original["table3"]


# --- item 4: one run per grid folder ---------------------------------------------------------


def _holder(out: Path, tmp_path: Path) -> subprocess.Popen:
    """Another process holding the grid's lock (as a running `reproduce` does)."""
    code = (
        "import sys, time\n"
        "from hfcn_bench.reproduce.lock import grid_lock\n"
        "with grid_lock(sys.argv[1]):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(300)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_on_a_grid_folder_is_refused_naming_the_holder(data, grid, tmp_path):
    out = _copy(grid, tmp_path)
    holder = _holder(out, tmp_path)
    try:
        lock = json.loads((out / LOCK).read_text())
        assert lock["pid"] == holder.pid and lock["host"] == socket.gethostname()
        with pytest.raises(GridBusy) as err:
            reproduce(_opts(data, out))
        assert f"PID {holder.pid} on host {socket.gethostname()}" in str(err.value)
        rc, text = run(
            ["reproduce", "--table", "3", "--alphas", "0.6", "--folds", "2", "--preset", "smoke"]
            + ["--data", str(data), "--out", str(out)]
        )
        assert rc == 1 and "is in use by another reproduce run" in text and f"PID {holder.pid}" in text
        # --report-only still reports (the holder may be running the rest), converting nothing
        (out / "cells" / GLOBAL_F1 / RECORD).unlink()
        rep, warned = _report_only(data, out)
        assert rep["summary"]["done"] == 4 and any("reads the cells without converting" in w for w in warned)
        assert not (out / "cells" / GLOBAL_F1 / RECORD).exists()
    finally:
        holder.kill()
        holder.wait()
    # killed (SIGKILL): its lock file stays behind, stale; the next run takes it over
    assert json.loads((out / LOCK).read_text())["pid"] == holder.pid
    rep, warned = _report_only(data, out)
    assert any(f"stale lock of PID {holder.pid}" in w and "taken over" in w for w in warned), warned
    assert (out / "cells" / GLOBAL_F1 / RECORD).exists()  # converted, now that it holds the lock
    assert not (out / LOCK).exists()  # released on the way out


def test_a_lock_held_in_this_process_blocks_a_second_taker(tmp_path):
    with grid_lock(tmp_path / "g"):
        with pytest.raises(GridBusy, match=f"PID {os.getpid()} on host"):
            with grid_lock(tmp_path / "g"):
                pass
    with grid_lock(tmp_path / "g") as me:  # free again
        assert me["pid"] == os.getpid()


def _write_lock(out: Path, **rec) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / LOCK).write_text(json.dumps(rec))


def test_a_lock_from_another_host_is_refused(tmp_path):
    out = tmp_path / "g"
    _write_lock(out, pid=1, host="elsewhere.example", started="2026-01-01T00:00:00", started_epoch=0.0)
    with pytest.raises(GridBusy) as err:
        with grid_lock(out):
            pass
    assert "PID 1 on host elsewhere.example" in str(err.value) and str(out / LOCK) in err.value.hint


def test_a_lock_whose_pid_was_reused_is_stale_but_a_live_holder_is_not(tmp_path):
    """The PID a lock names runs, but started after the lock was taken: another process got
    the number, the holder is gone. A holder that started before its lock still counts."""
    out = tmp_path / "g"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        time.sleep(0.5)
        host = socket.gethostname()
        _write_lock(out, pid=sleeper.pid, host=host, started="then", started_epoch=time.time() - 3600)
        with pytest.warns(GridWarning, match=f"stale lock of PID {sleeper.pid}"):
            with grid_lock(out):
                pass
        _write_lock(out, pid=sleeper.pid, host=host, started="now", started_epoch=time.time() + 3600)
        with pytest.raises(GridBusy, match=f"PID {sleeper.pid}"):
            with grid_lock(out):
                pass
    finally:
        sleeper.kill()
        sleeper.wait()


# --- grid folders without machine paths --------------------------------------------------------


def _files_naming(folder: Path, *needles: str) -> list[str]:
    hits = []
    for p in folder.rglob("*"):
        if p.is_file() and p.suffix != ".pt":
            text = p.read_bytes().decode("utf-8", errors="replace")
            if any(n in text for n in needles):
                hits.append(p.relative_to(folder).as_posix())
    return hits


def test_a_grid_folder_holds_no_path_of_the_machine(data, grid):
    assert _files_naming(grid, str(data), str(grid.parent), REPO) == []
    cell = grid / "cells" / GLOBAL_F1
    rows = list(csv.DictReader((cell / "predictions.csv").open()))
    assert all(not os.path.isabs(r["image"]) and (Path(data) / r["image"]).is_file() for r in rows)
    for name in ("config.json", "metrics.json", "split.json"):
        assert json.loads((cell / name).read_text())["data"]["root"] == DATA_PLACEHOLDER
    assert json.loads((grid / "grid.json").read_text())["data"] == DATA_PLACEHOLDER
    assert json.loads((grid / "report.json").read_text())["options"]["data"] == DATA_PLACEHOLDER


def _age(out: Path, root: str) -> None:
    """Turn a grid into what an older hfcn-bench wrote: absolute data paths, no records."""
    for cell in (out / "cells").iterdir():
        (cell / RECORD).unlink()
        for name in ("config.json", "metrics.json", "split.json"):
            obj = json.loads((cell / name).read_text())
            obj["data"]["root"] = root
            (cell / name).write_text(json.dumps(obj, indent=1) + "\n")
        text = (cell / "predictions.csv").read_text()
        rows = list(csv.DictReader(io.StringIO(text)))
        for r in rows:
            r["image"] = f"{root}/{r['image']}"
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        (cell / "predictions.csv").write_text(buf.getvalue())
    g = json.loads((out / "grid.json").read_text())
    (out / "grid.json").write_text(json.dumps({**g, "data": root}, indent=1) + "\n")


def test_report_only_converts_an_older_grids_cells_in_place(data, grid, tmp_path):
    out = _copy(grid, tmp_path)
    _age(out, str(data))
    assert len(_files_naming(out, str(data))) == 4 * 4 + 1  # every cell's 4 records, and grid.json
    assert all(not check_cell(c).recorded for c in (out / "cells").iterdir())
    rep, warned = _report_only(data, out)
    assert warned == [] and rep["summary"]["done"] == 4
    assert _files_naming(out, str(data), str(tmp_path)) == []
    for cell in (out / "cells").iterdir():
        assert check_cell(cell).recorded
        for name in ("config.json", "metrics.json", "split.json", "predictions.csv"):
            assert (cell / name).read_text() == (grid / "cells" / cell.name / name).read_text(), (cell.name, name)
    original = json.loads((grid / "report.json").read_text())
    assert rep["table3"] == original["table3"] and rep["paired"] == original["paired"]


def test_make_portable_replaces_the_root_as_a_whole_path(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    root = "/srv/data"
    (run_dir / "metrics.json").write_text(
        json.dumps(
            {
                "data": {"root": root},
                "skipped": [f"{root}/a.jpg: ROI 1/1/0 could not be loaded", "/srv/database/x.jpg stays"],
            }
        )
    )
    (run_dir / "predictions.csv").write_text("output,key,image\nmain,1/1/0,/srv/data/raw/a.jpg\n")
    assert sorted(make_portable(run_dir, root)) == ["metrics.json", "predictions.csv"]
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["data"]["root"] == DATA_PLACEHOLDER and recorded_root(m["data"]) is None
    assert m["skipped"] == ["<data>/a.jpg: ROI 1/1/0 could not be loaded", "/srv/database/x.jpg stays"]
    assert (run_dir / "predictions.csv").read_text() == "output,key,image\nmain,1/1/0,raw/a.jpg\n"
    assert make_portable(run_dir, root) == []  # idempotent


def test_a_portable_cell_is_evaluated_with_the_data_named(data, grid):
    """A cell names no data folder any more: evaluating it needs --data (one clear error
    without), and with it the run's own data is found and checked by its fingerprint."""
    from hfcn_bench.errors import HfcnError
    from hfcn_bench.protocol import read_run
    from hfcn_bench.runs.evaluation import load_run_data

    run_folder = read_run(grid / "cells" / GLOBAL_F1)
    with pytest.raises(HfcnError, match="names no data folder") as err:
        load_run_data(run_folder)
    assert err.value.hint == "pass --data DIR"
    ds = load_run_data(run_folder, data)
    assert ds.fingerprint == run_folder.manifest.fingerprint


def test_dry_run_counts_a_damaged_cell_as_left_to_run(data, grid, tmp_path, monkeypatch):
    from hfcn_bench.reproduce import runner as R

    out = _copy(grid, tmp_path)
    (out / "cells" / GLOBAL_F1 / "metrics.json").write_text("{}")
    fixed = {"step_s": 1.0, "batches_per_epoch": 1, "epochs": 1, "data_s": 0.0, "data_epoch_s": 0.0}
    monkeypatch.setattr(
        R, "estimate_costs", lambda cells, ds, opts: {c.key: {**fixed, "compute_s": 1, "estimate_s": 1} for c in cells}
    )
    plan = reproduce(dataclasses.replace(_opts(data, out), dry_run=True))
    assert {c["key"]: c["done"] for c in plan["cells"]}[GLOBAL_F1] is False
    assert plan["remaining_s"] == 1


def _finished_run(tmp_path, root: str) -> Path:
    from hfcn_bench.protocol.runfolder import sha256_file

    d = tmp_path / "run"
    d.mkdir()
    (d / "split.json").write_text(json.dumps({"data": {"root": root}, "splits": []}))
    header = {"status": "finished", "data": {"root": root}, "integrity": {"split.json": sha256_file(d / "split.json")}}
    (d / "config.json").write_text(json.dumps(header))
    return d


def test_making_a_run_portable_reseals_what_its_record_vouched_for(tmp_path):
    """The conversion rewrites split.json: a split the run's integrity record still vouched for
    gets its new digest; one edited before the conversion keeps the stale digest and is refused."""
    from hfcn_bench.errors import HfcnError
    from hfcn_bench.protocol.portable import DATA_PLACEHOLDER, make_portable
    from hfcn_bench.protocol.runfolder import check_integrity

    root = str(tmp_path / "ddti")
    d = _finished_run(tmp_path, root)
    assert "split.json" in make_portable(d, root)
    assert DATA_PLACEHOLDER in (d / "split.json").read_text()
    check_integrity(d, json.loads((d / "config.json").read_text()))

    (tmp_path / "t").mkdir()
    tampered = _finished_run(tmp_path / "t", root)
    split = json.loads((tampered / "split.json").read_text())
    split["splits"] = [{"edited": True}]
    (tampered / "split.json").write_text(json.dumps(split))
    make_portable(tampered, root)
    with pytest.raises(HfcnError, match="split.json was changed"):
        check_integrity(tampered, json.loads((tampered / "config.json").read_text()))
