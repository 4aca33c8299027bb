"""``hfcn-bench reproduce``: the grid of cached cells on a local 2-worker Ray instance and
in-process, at smoke settings: the cache, resume after a killed cell, an error row from a
failing cell, Ctrl-C and SIGTERM (the real command on its own Ray instance), and the two engines
giving the same numbers per cell."""

from __future__ import annotations

import csv
import json
import shutil
import time

import pytest
from clitools import default_sigint, run

from hfcn_bench.reproduce import ReproduceOptions, build_cells, build_configs, reproduce
from hfcn_bench.reproduce import cells as C

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def data(phantoms):
    return phantoms


@pytest.fixture(scope="module")
def ray_instance():
    """A local Ray instance of 2 CPUs shared by this module's tests (started once: seconds);
    its own, whatever cluster Ray's temp folder names (as the grid's engine starts it)."""
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        object_store_memory=100 * 1024 * 1024,
    )
    yield
    ray.shutdown()


def _opts(data, out, **kw):
    base = dict(
        table="3",
        data=str(data),
        folds=2,
        preset="smoke",
        workers=2,
        threads=1,
        engine="ray",
        out=str(out),
        n_boot=30,
        alphas=(0.6, 0.8),
    )
    return ReproduceOptions(**{**base, **kw})


def test_the_grid_of_the_tables():
    t3 = {c.key for c in build_configs("3")}
    assert t3 == {
        "paper-bfc-a0.5-w0",
        "paper-bfc-a0.6-w0",
        "paper-bfc-a0.7-w0",
        "paper-bfc-a0.8-w0",
        "paper-bfc-a0.9-w0",
        "paper-global",
    }
    t4 = {c.key for c in build_configs("4")}
    assert t4 == {
        f"{b}-{k}" for b in ("paper", "efficientnet_lite0") for k in ("global", "rfc-a0.6-w0.5", "bfc-a0.6-w0.5")
    }
    both = build_configs("all")
    t5 = {c.key for c in build_configs("5")}
    assert len(both) == len(t3 | t4 | t5)  # Global is shared, once
    assert next(c for c in both if c.key == "paper-global").tables == ("3", "4", "5")
    assert len(build_cells(both, 5)) == 5 * len(both)


def test_grid_on_ray_caches_its_cells(data, tmp_path, ray_instance):
    out = tmp_path / "g"
    t0 = time.perf_counter()
    rc, text = run(
        [
            "reproduce",
            "--table",
            "3",
            "--preset",
            "smoke",
            "--folds",
            "2",
            "--workers",
            "2",
            "--data",
            str(data),
            "--out",
            str(out),
            "--alphas",
            "0.6,0.8",
            "--n-boot",
            "30",
        ]
    )
    first = time.perf_counter() - t0
    assert rc == 0, text
    md = (out / "report.md").read_text()
    # the paper's Table 3 beside ours, the paired differences, the engine
    assert "95.03" in md and "93.88" in md and "89.50" in md
    assert "## Paired differences in ROC-AUC" in md and "DeLong" in md and "BFC alone (alpha 0.6) - Global" in md
    assert "Engine: `ray`" in md
    rep = json.loads((out / "report.json").read_text())
    assert rep["summary"]["done"] == rep["summary"]["cells"] == 6 and rep["summary"]["failed"] == 0
    assert all(isinstance(c["best_epoch"], int) and c["cell_s"] > 0 for c in rep["cells"])
    # each cell names where it ran (a grid may be resumed elsewhere or run on a cluster)
    # with the instruction set its CPU kernels were dispatched for (one CPU name covers AVX2 and
    # AVX-512 machines, whose floating-point results differ)
    import torch

    from hfcn_bench.bench.report import _cpu_model

    host = f"{_cpu_model()} ({torch.backends.cpu.get_cpu_capability()} kernels)"
    assert {c["host"] for c in rep["cells"]} == {host} and f"{host}: 6 cell(s)" in md
    for r in rep["table3"]:
        assert r["done"] and 0 <= r["auc"] <= 1 and r["auc_ci"][0] <= r["auc"] <= r["auc_ci"][1]
        # the pooled decisions are each cell's own (prob >= its fold threshold), not prob >= 0
        rows = [
            row
            for d in sorted((out / "cells").glob(f"{r['config']}-f*"))
            for row in csv.DictReader((d / "predictions.csv").open())
            if row["output"] == "main"
        ]
        hits = [int(float(row["prob"]) >= float(row["threshold"])) == int(row["label"]) for row in rows]
        assert r["accuracy"] == pytest.approx(sum(hits) / len(hits))
    assert (out / "alpha_curve.png").is_file() and (out / "paired_differences.png").is_file()
    for cell in build_cells(build_configs("3", alphas=(0.6, 0.8)), 2):
        assert C.cell_done(out / "cells" / cell.key)
    t0 = time.perf_counter()
    rc, text = run(
        [
            "reproduce",
            "--table",
            "3",
            "--preset",
            "smoke",
            "--folds",
            "2",
            "--workers",
            "2",
            "--data",
            str(data),
            "--out",
            str(out),
            "--alphas",
            "0.6,0.8",
            "--n-boot",
            "30",
        ]
    )
    again = time.perf_counter() - t0
    assert rc == 0, text
    rep2 = json.loads((out / "report.json").read_text())
    assert {c["status"] for c in rep2["cells"]} == {"cached"}
    assert again < first  # nothing ran the second time (a generous bound: no cell was trained)
    assert rep2["table3"] == rep["table3"]
    # a grid folder is for one protocol: another preset is refused
    rc, text = run(
        ["reproduce", "--table", "3", "--preset", "cpu", "--folds", "2", "--data", str(data), "--out", str(out)]
    )
    assert rc == 1 and "holds a grid with preset = 'smoke'" in text


def test_local_and_ray_give_the_same_numbers(data, tmp_path, ray_instance):
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    reproduce(_opts(data, local, engine="local", alphas=(0.6,)))
    reproduce(_opts(data, on_ray, engine="ray", alphas=(0.6,)))
    for cell in build_cells(build_configs("3", alphas=(0.6,)), 2):
        a = json.loads((local / "cells" / cell.key / "metrics.json").read_text())
        b = json.loads((on_ray / "cells" / cell.key / "metrics.json").read_text())
        assert a["auc"] == b["auc"] and a["threshold"] == b["threshold"] and a["metrics"]["ci"] == b["metrics"]["ci"]
        assert (local / "cells" / cell.key / "predictions.csv").read_text() == (
            on_ray / "cells" / cell.key / "predictions.csv"
        ).read_text()


class _Killed(KeyboardInterrupt):
    pass


def test_a_killed_cell_resumes_to_the_uninterrupted_numbers(data, tmp_path, monkeypatch):
    from hfcn_bench.systems import hfcn_training as T

    cell = build_cells(build_configs("3", alphas=(0.6,)), 2)[0]

    def spec(out):
        return C.cell_spec(
            cell,
            out,
            data=str(data),
            label_rule="tirads",
            preset="smoke",
            seed=0,
            threads=1,
            device="cpu",
            n_boot=30,
            overrides={"epochs": 3},
        )

    straight = C.run_cell(spec(tmp_path / "a"))
    assert straight["status"] == "done"
    real = T._HFCNTask.validate
    calls = {"n": 0}

    def dies_after_two(self, epoch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise _Killed  # Ctrl-C during the third epoch
        return real(self, epoch)

    monkeypatch.setattr(T._HFCNTask, "validate", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        C.run_cell(spec(tmp_path / "b"))
    monkeypatch.undo()
    cell_dir = tmp_path / "b" / "cells" / cell.key
    assert not C.cell_done(cell_dir) and any(cell_dir.glob("**/last.pt"))
    resumed = C.run_cell(spec(tmp_path / "b"))
    assert resumed["status"] == "done" and "(resume)" in (cell_dir / "cell.log").read_text()
    a = json.loads((tmp_path / "a" / "cells" / cell.key / "metrics.json").read_text())
    b = json.loads((cell_dir / "metrics.json").read_text())
    assert a["auc"] == b["auc"] and a["threshold"] == b["threshold"]
    assert not any(cell_dir.glob("**/last.pt"))  # a finished cell keeps best.pt only
    # The resumed cell's time counts the killed run's epochs too, not only its last run's total.
    assert C.cell_seconds(a) == (a["timings"]["total_s"], False)
    training = b["folds"][0]["training"]
    secs, was_resumed = C.cell_seconds(b)
    assert was_resumed and training["resumed_from"] == 2 and len(training["history"]) == 3
    assert secs == pytest.approx(b["timings"]["total_s"] + sum(h["seconds"] for h in training["history"][:2]))


def test_a_resumed_cells_time_adds_the_epochs_earlier_runs_trained():
    history = [{"epoch": e, "seconds": 10.0 * e} for e in (1, 2, 3, 4)]

    def metrics(resumed_from):
        return {
            "timings": {"total_s": 7.0},
            "folds": [{"training": {"resumed_from": resumed_from, "history": history}}],
        }

    assert C.cell_seconds(metrics(None)) == (7.0, False)
    assert C.cell_seconds(metrics(3)) == (7.0 + 10 + 20 + 30, True)  # killed after epoch 3
    assert C.cell_seconds(metrics(4)) == (7.0 + 100, True)  # killed after training, before scoring
    assert C.cell_seconds({"timings": {}}) == (None, False)


def test_a_failing_cell_is_an_error_row_and_the_grid_goes_on(data, tmp_path, monkeypatch):
    out = tmp_path / "g"
    from hfcn_bench import runs  # run_cell imports it when it runs: the patched one in-process

    orig = runs.train_run

    def flaky(system, cfg, ds, splits, out_dir=None, **kw):
        if "a0.6" in str(out_dir) and str(out_dir).endswith("f1"):
            raise RuntimeError("disk on fire")
        return orig(system, cfg, ds, splits, out_dir=out_dir, **kw)

    monkeypatch.setattr(runs, "train_run", flaky)
    rep = reproduce(_opts(data, out, engine="local"))
    bad = [c for c in rep["cells"] if c["status"] == "error"]
    assert [c["key"] for c in bad] == ["paper-bfc-a0.6-w0-f1"]
    assert bad[0]["error"] == "RuntimeError: disk on fire" and bad[0]["log"].endswith("cell.log")
    assert "disk on fire" in (out / "cells" / "paper-bfc-a0.6-w0-f1" / "cell.log").read_text()
    assert rep["summary"]["done"] == 5 and rep["summary"]["failed"] == 1
    md = (out / "report.md").read_text()
    assert "error: RuntimeError: disk on fire (log:" in md
    monkeypatch.undo()
    rep = reproduce(_opts(data, out, engine="local"))  # the next run retries it
    assert rep["summary"]["done"] == 6 and not (out / "cells" / "paper-bfc-a0.6-w0-f1" / "error.json").exists()


def _interrupt_at(kind: str, n: int):
    """A progress callback (or engine event hook) that raises ``KeyboardInterrupt``, as Ctrl-C
    does, at the n-th event of ``kind`` ("start" or "result")."""
    seen = []

    def on_event(k, spec, res):
        if k == kind:
            seen.append(spec["key"])
            if len(seen) == n:
                raise KeyboardInterrupt

    return on_event


def test_ctrl_c_stops_and_the_next_run_goes_on(data, tmp_path):
    out = tmp_path / "g"
    with pytest.raises(KeyboardInterrupt):
        reproduce(_opts(data, out, engine="local"), progress=_interrupt_at("result", 2))
    rep = json.loads((out / "report.json").read_text())
    assert rep["run"]["interrupted"] and rep["summary"]["done"] == 2
    # --report-only: the report of what is finished, nothing trained
    import dataclasses

    rep = reproduce(dataclasses.replace(_opts(data, out, engine="local"), report_only=True))
    assert rep["summary"]["done"] == 2 and rep["summary"]["pending"] == 4
    assert sum(C.cell_done(out / "cells" / c["key"]) for c in rep["cells"]) == 2
    assert "--report-only" in (out / "report.md").read_text()
    rep = reproduce(_opts(data, out, engine="local"))
    assert rep["summary"]["done"] == 6
    assert sum(c["status"] == "cached" for c in rep["cells"]) == 2


@pytest.fixture
def interrupts_handled():
    """For one test, SIGINT raises KeyboardInterrupt (Python's default, which a test run started
    from a background shell lacks: there SIGINT is ignored) and so does SIGTERM."""
    import signal

    def term(signum, frame):
        raise KeyboardInterrupt

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, term)
    yield
    for s, h in before.items():
        signal.signal(s, h if h is not None else signal.SIG_DFL)


def test_a_second_ctrl_c_waits_for_the_report_of_the_finished_cells(data, tmp_path, monkeypatch, interrupts_handled):
    """Ctrl-C stops the grid; a second one arriving while the report is written (its figures
    take a moment) is held until the report is out, then stops the command as the first did."""
    import os
    import signal

    from hfcn_bench.reproduce import report as R

    out = tmp_path / "g"
    write = R.write_report

    written = []

    def signalled_write(rep, folder):
        os.kill(os.getpid(), signal.SIGINT)  # delivered now, as the write begins
        written.extend(write(rep, folder))
        return written

    monkeypatch.setattr(R, "write_report", signalled_write)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        reproduce(_opts(data, out, engine="local"), progress=_interrupt_at("result", 1))
    rep = json.loads((out / "report.json").read_text())
    assert rep["run"]["interrupted"] and rep["summary"]["done"] == 1
    assert {p.name for p in written} >= {"report.json", "report.md"}
    assert signal.getsignal(signal.SIGINT) is before


def test_interrupts_are_deferred_once_and_ignored_ones_stay_ignored(interrupts_handled):
    import os
    import signal

    from hfcn_bench.reproduce.engines import interrupts_deferred

    steps = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            steps.append("finished")
    assert steps == ["finished"]
    with pytest.raises(KeyboardInterrupt):  # a second one means it: raised at once
        with interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
            steps.append("not reached")
    assert steps == ["finished"]
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_dry_run_prices_every_cell(data, tmp_path):
    rc, text = run(
        [
            "reproduce",
            "--table",
            "4",
            "--backbones",
            "paper",
            "--preset",
            "smoke",
            "--folds",
            "2",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "d"),
            "--dry-run",
        ]
    )
    assert rc == 0, text
    assert "paper-global-f0" in text and "paper-bfc-a0.6-w0.5-f1" in text and "h of cell time in all" in text
    assert "input pipeline" in text
    assert not (tmp_path / "d" / "cells").exists()


def test_the_estimate_adds_the_input_pipeline_to_the_steps(data, tmp_path, monkeypatch):
    from hfcn_bench.bench import model_cost
    from hfcn_bench.reproduce import runner as R

    cells, _, ds = R.plan(_opts(data, tmp_path / "e", table="4", backbones=("paper",), dry_run=True))
    dc = R.measure_data_cost(ds.samples, 32)
    assert set(dc) == {"decode_s", "augment_s", "tensor_s"} and all(v > 0 for v in dc.values())
    # The arithmetic, on fixed per-ROI costs: 100 ROIs, 60 trained on, 5 epochs.
    fixed = {"decode_s": 1.0, "augment_s": 0.1, "tensor_s": 0.01}
    assert R.pipeline_seconds(fixed, 100, 60, 5, True, True) == pytest.approx((100 + 5 * 6 + 40 * 0.01, 6))
    assert R.pipeline_seconds(fixed, 100, 60, 5, False, True) == pytest.approx((100 + 100 * 0.01, 0))
    assert R.pipeline_seconds(fixed, 100, 60, 5, False, False) == pytest.approx((100 + 1 + 60 * 1.01, 0))
    # ...and each cell's estimate is its steps plus that pipeline.
    monkeypatch.setattr(R, "measure_data_cost", lambda *a, **k: fixed)
    monkeypatch.setattr(model_cost, "measure_train_step", lambda *a, **k: {"train_median_s": 2.0})
    n = len(ds)
    for preset, augment in (("smoke", False), ("quick", True)):
        costs = R.estimate_costs(cells, ds, _opts(data, tmp_path / "e", preset=preset))
        for c in costs.values():
            fit = n * (1 - 1 / 2) * 0.8  # 2 folds, 20 % of the training cases held out for validation
            want, per_epoch = R.pipeline_seconds(fixed, n, fit, c["epochs"], augment, True)
            assert c["data_s"] == pytest.approx(want) and c["data_epoch_s"] == pytest.approx(per_epoch)
            assert c["estimate_s"] == pytest.approx(c["compute_s"] + want) and c["step_s"] == 2.0
        assert (c["data_epoch_s"] > 0) == augment


def test_bad_options_are_one_line(data, tmp_path):
    (tmp_path / "file").write_text("x")
    for argv, needle in (
        (["--folds", "1"], "--folds must be at least 2"),
        (["--backbones", "lenet"], "unknown backbone 'lenet'"),
        (["--alphas", "1.5"], "alpha must be in (0, 1]"),
    ):
        rc, text = run(["reproduce", "--data", str(data), "--out", str(tmp_path / "x"), *argv])
        assert rc == 1 and needle in text and "Traceback" not in text
    rc, text = run(["reproduce", "--data", str(data), "--out", str(tmp_path / "file")])
    assert rc == 1 and "is a file, not a folder" in text
    shutil.rmtree(tmp_path / "x", ignore_errors=True)


def _grid_cmd(data, out):
    import sys
    from pathlib import Path

    exe = shutil.which("hfcn-bench") or str(Path(sys.executable).with_name("hfcn-bench"))
    # 18 smoke cells (5 alphas and Global x 3 folds): long enough to be stopped mid-grid
    return [
        exe,
        "reproduce",
        "--table",
        "3",
        "--preset",
        "smoke",
        "--folds",
        "3",
        "--workers",
        "2",
        "--data",
        str(data),
        "--out",
        str(out),
        "--n-boot",
        "20",
    ]


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_a_signal_stops_the_ray_grid_cleanly_and_the_next_run_goes_on(data, tmp_path, how):
    """The real command on its own local Ray instance: Ctrl-C (SIGINT to the whole process group,
    as a terminal sends it) or SIGTERM (to the driver, as a scheduler does) once a cell has
    finished. It exits 130 within seconds, keeps the finished cells and writes the report of
    them; the same command then finishes the grid without retraining them."""
    import os
    import signal
    import subprocess

    out = tmp_path / "g"
    log = open(tmp_path / "run.log", "w")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "250"}
    proc = subprocess.Popen(
        _grid_cmd(data, out),
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
        preexec_fn=default_sigint,
    )
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 180 and proc.poll() is None:
            if any(C.cell_done(d) for d in (out / "cells").glob("*")):
                break
            time.sleep(0.2)
        assert proc.poll() is None, (tmp_path / "run.log").read_text()[-2000:]
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    text = (tmp_path / "run.log").read_text()
    assert rc == 130, text[-2000:]
    assert "interrupted" in text and "run the same command again" in text
    rep = json.loads((out / "report.json").read_text())
    finished = {c["key"] for c in rep["cells"] if c["status"] in ("done", "cached")}
    assert rep["run"]["interrupted"] and 1 <= len(finished) < 18
    assert finished == {d.name for d in (out / "cells").glob("*") if C.cell_done(d)}
    if how == "ctrl-c":
        done = subprocess.run(_grid_cmd(data, out), capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        rep = json.loads((out / "report.json").read_text())
        assert rep["summary"]["done"] == 18
        assert {c["key"] for c in rep["cells"] if c["status"] == "cached"} >= finished


class _FakeRay:
    """Just enough of Ray for the engine's interrupt path: ``ref1`` has ended (its reply is in),
    the others are still running; Ctrl-C arrives as the second cell starts."""

    def __init__(self, initialized=False):
        self.cancelled, self.calls, self.n, self.initialized = [], [], 0, initialized
        self.exceptions = type("E", (), {})

    def is_initialized(self):
        return self.initialized

    def init(self, address=None, **kw):
        self.calls.append(("init", address))

    def shutdown(self, wait_for_processes=False):
        self.calls.append(("shutdown", wait_for_processes))

    def remote(self, **kw):
        return lambda fn: type("T", (), {"remote": staticmethod(self._submit)})

    def _submit(self, spec, submitted):
        self.n += 1
        return f"ref{self.n}"

    def cluster_resources(self):
        return {"CPU": 3}

    def wait(self, refs, num_returns=1, timeout=None):
        ended = [r for r in refs if r == "ref1"][:num_returns]
        return ended, [r for r in refs if r not in ended]

    def cancel(self, ref, force=False):
        assert force  # a cell's task is stopped mid-epoch; it resumes from its checkpoints
        self.cancelled.append(ref)


@pytest.mark.parametrize(
    "initialized, address, cancelled",
    [
        # Its own local instance: ray.shutdown() stops the workers. A cancel there raced the
        # reply of a worker Ctrl-C had already stopped (a RAY_CHECK in Ray's driver, exit 1).
        (False, None, []),
        # A cluster, or an instance the caller owns: what is still running is cancelled, what
        # has already ended (ref1) is not.
        (False, "10.0.0.1:6379", ["ref2"]),
        (True, None, ["ref2"]),
    ],
)
def test_an_interrupted_ray_grid_cancels_only_what_still_runs_elsewhere(monkeypatch, initialized, address, cancelled):
    import sys

    from hfcn_bench.reproduce import engines

    fake = _FakeRay(initialized)
    monkeypatch.setitem(sys.modules, "ray", fake)
    specs = [{"key": f"c{i}"} for i in range(3)]
    with pytest.raises(KeyboardInterrupt):
        engines.run_ray(specs, _interrupt_at("start", 2), workers=3, threads=1, address=address)
    assert fake.cancelled == cancelled
    # An instance the caller started is the caller's to shut down; our own one is waited for.
    shutdowns = [c for c in fake.calls if c[0] == "shutdown"]
    assert shutdowns == ([] if initialized else [("shutdown", address is None)])
    assert [c for c in fake.calls if c[0] == "init"] == ([] if initialized else [("init", address or "local")])
