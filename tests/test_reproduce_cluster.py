"""``reproduce`` on Ray beyond one process: the local engine's own instance, whatever cluster
Ray's temp folder names, and a real two-node cluster on loopback (``ray start --head`` and a
worker with ``--address``, token authentication as Ray 2.60 needs it) whose worker node is
killed between two epochs of a cell: the lost cell is retried on the other node in the same run,
resuming from the checkpoints its lost attempt left, the report counts the retry, and every
cell's numbers equal a local run's.

Every Ray process here is started with a temp folder of its own (``RAY_TMPDIR``), so nothing
touches another Ray on the machine; teardown kills exactly the process sessions its
``ray start`` commands opened (``ray stop --force`` would stop every Ray instance of the user on
the machine, other jobs' included)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import hfcn_bench
from hfcn_bench.data import write_synthetic_ddti
from hfcn_bench.reproduce import ReproduceOptions, build_cells, build_configs, reproduce

ray = pytest.importorskip("ray")

REPO = str(Path(hfcn_bench.__file__).resolve().parent.parent)
# 4 cells of the quick preset (8 epochs of a few tenths of a second on 120 phantom cases, so a
# node can be killed between two epochs of a cell): Global and BFC alone (alpha 0.6), 2 folds.
GRID = ["--table", "3", "--alphas", "0.6", "--folds", "2", "--preset", "quick", "--n-boot", "30"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_synthetic_ddti(tmp_path_factory.mktemp("cluster") / "ddti", n_cases=120, seed=0)


@pytest.fixture(scope="module")
def local_grid(data, tmp_path_factory):
    """The same grid in this process, without Ray: the numbers every engine must give."""
    out = tmp_path_factory.mktemp("local") / "g"
    opts = ReproduceOptions(
        table="3", data=str(data), folds=2, preset="quick", engine="local", out=str(out), n_boot=30, alphas=(0.6,)
    )
    reproduce(opts)
    return out


def _short_tmp() -> str:
    # Ray's unix sockets live under its temp folder: a socket path must stay under ~107 bytes.
    return tempfile.mkdtemp(prefix="hr", dir="/tmp")


def _env(tmp: str, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        RAY_TMPDIR=tmp,
        RAY_USAGE_STATS_ENABLED="0",
        PYTHONPATH=os.pathsep.join([REPO, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]),
        PYTHONUNBUFFERED="1",
        COLUMNS="200",
    )
    env.update(extra)
    return env


def _cli(args, out, env) -> list[str]:
    return [sys.executable, "-m", "hfcn_bench", "reproduce", *GRID, *args, "--out", str(out)]


def _same_numbers(a: Path, b: Path) -> None:
    for cell in build_cells(build_configs("3", alphas=(0.6,)), 2):
        ma = json.loads((a / "cells" / cell.key / "metrics.json").read_text())
        mb = json.loads((b / "cells" / cell.key / "metrics.json").read_text())
        assert (ma["auc"], ma["threshold"], ma["metrics"]["ci"]) == (mb["auc"], mb["threshold"], mb["metrics"]["ci"])
        pa = (a / "cells" / cell.key / "predictions.csv").read_text()
        assert pa == (b / "cells" / cell.key / "predictions.csv").read_text(), cell.key
    ra, rb = (json.loads((d / "report.json").read_text()) for d in (a, b))
    assert ra["table3"] == rb["table3"] and ra["paired"] == rb["paired"]


def test_the_local_engine_starts_its_own_instance_beside_a_stale_cluster_address(data, local_grid, tmp_path):
    """Ray's address file names a cluster `ray start` left (long gone); RAY_ADDRESS names it
    too. A plain ray.init(num_cpus=...) would try to join it ("When connecting to an existing
    cluster, num_cpus and num_gpus must not be provided"); the grid starts its own instance."""
    tmp = _short_tmp()
    try:
        with socket.socket() as s:  # a port nobody listens on: the stale cluster
            s.bind(("127.0.0.1", 0))
            stale = f"127.0.0.1:{s.getsockname()[1]}"
        address_file = Path(tmp) / "ray" / "ray_current_cluster"
        address_file.parent.mkdir(parents=True)
        address_file.write_text(stale)
        env = _env(tmp, RAY_ADDRESS=stale)
        probe = subprocess.run(
            [sys.executable, "-c", "from ray._common.utils import get_ray_address_file as f; print(f(None))"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert probe.stdout.strip() == str(address_file), "Ray reads its address file elsewhere: the test is void"
        out = tmp_path / "g"
        done = subprocess.run(
            _cli(["--data", str(data), "--workers", "1"], out, env),
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        rep = json.loads((out / "report.json").read_text())
        assert rep["run"]["engine"] == "ray" and rep["run"]["address"] == "local instance"
        assert rep["summary"]["done"] == 4
        assert address_file.read_text() == stale  # left as it was
        _same_numbers(out, local_grid)
    finally:
        _kill_ray_of(tmp)
        shutil.rmtree(tmp, ignore_errors=True)


# --- a real two-node cluster on loopback ---------------------------------------------------


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """``(parent pid, session id)`` of a process, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[1]), int(fields[3])
    except (OSError, IndexError, ValueError):
        return None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _kill_sessions(sids: set[int]) -> None:
    """SIGKILL every process of the given sessions (the ones our `ray start`s opened)."""
    for pid in _pids():
        st = _proc_stat(pid)
        if st and st[1] in sids and pid != os.getpid():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def _kill_ray_of(tmp: str) -> None:
    """SIGKILL the Ray processes whose command line names our own temp folder (a local
    instance a killed driver left behind), never another Ray's."""
    for pid in _pids():
        if pid != os.getpid() and tmp in _cmdline(pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_start(ray_exe: str, args: list[str], env: dict) -> tuple[int, subprocess.CompletedProcess]:
    """Run one `ray start` in a session of its own; returns (its session id, its result)."""
    proc = subprocess.Popen(
        [ray_exe, "start", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        text, _ = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        proc.kill()
        text, _ = proc.communicate()
    return proc.pid, subprocess.CompletedProcess(proc.args, proc.returncode, text.decode(errors="replace"), "")


@pytest.fixture
def two_node_cluster():
    """A head and a worker node, one CPU each, on this machine's loopback, with token
    authentication (RAY_AUTH_MODE=token and the token in RAY_AUTH_TOKEN on both nodes and the
    driver, as on a real cluster). Skips with Ray's own words where it cannot start."""
    ray_exe = Path(sys.executable).with_name("ray")
    if not ray_exe.is_file():
        found = shutil.which("ray")
        if not found:
            pytest.skip("no `ray` command beside this Python or on PATH: a cluster cannot be started")
        ray_exe = Path(found)
    tmp = _short_tmp()
    env = _env(tmp, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    sids: set[int] = set()
    port, worker_port = _free_port(), _free_port()
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--disable-usage-stats"]
    try:
        sid, head = _ray_start(
            str(ray_exe),
            [
                "--head",
                "--port",
                str(port),
                "--include-dashboard",
                "false",
                "--dashboard-agent-listen-port",
                str(_free_port()),
                *common,
            ],
            env,
        )
        sids.add(sid)
        if head.returncode != 0:
            pytest.skip(f"Ray cannot start a head node here: {head.stdout[-600:]}")
        sid, worker = _ray_start(
            str(ray_exe),
            [
                "--address",
                f"127.0.0.1:{port}",
                "--node-manager-port",
                str(worker_port),
                "--dashboard-agent-listen-port",
                str(_free_port()),
                *common,
            ],
            env,
        )
        sids.add(sid)
        if worker.returncode != 0:
            pytest.skip(f"Ray cannot start a worker node here: {worker.stdout[-600:]}")
        yield {"address": f"127.0.0.1:{port}", "env": env, "worker_sid": sid, "worker_port": worker_port}
    finally:
        _kill_sessions(sids)
        _kill_ray_of(tmp)
        shutil.rmtree(tmp, ignore_errors=True)


def _worker_raylet(cluster) -> int | None:
    for pid in _pids():
        st = _proc_stat(pid)
        if st and st[1] == cluster["worker_sid"] and f"--node_manager_port={cluster['worker_port']}" in _cmdline(pid):
            return pid
    return None


def _node_id(raylet: int) -> str:
    import re

    found = re.search(r"--node[_-]id=([0-9a-f]{16,})", _cmdline(raylet))
    assert found, "the worker raylet's command line names no node id"
    return found.group(1)


def _training_on(out: Path, node: str) -> str | None:
    """A cell whose attempt on ``node`` has finished an epoch (so it left a checkpoint) and is
    still going; read from the cells' logs, where each attempt names its Ray node."""
    for log in sorted((out / "cells").glob("*/cell.log")):
        lines = log.read_text().splitlines()
        starts = [i for i, line in enumerate(lines) if f"on Ray node {node}" in line]
        if starts:
            after = lines[starts[-1] + 1 :]
            if any(line.startswith("epoch ") for line in after) and not any(
                line.startswith(("finished", "interrupted")) for line in after
            ):
                return log.parent.name
    return None


@pytest.mark.slow
def test_a_cell_lost_with_its_node_is_retried_on_the_other_node(data, local_grid, two_node_cluster, tmp_path):
    cluster = two_node_cluster
    raylet = _worker_raylet(cluster)
    assert raylet is not None, "the worker node's raylet was not found"
    out = tmp_path / "g"
    log = open(tmp_path / "driver.log", "w")
    args = ["--data", str(data), "--address", cluster["address"], "--workers", "2", "--threads", "1"]
    driver = subprocess.Popen(_cli(args, out, cluster["env"]), env=cluster["env"], stdout=log, stderr=subprocess.STDOUT)
    worker_node, killed_cell = _node_id(raylet), None
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 300 and driver.poll() is None and killed_cell is None:
            killed_cell = _training_on(out, worker_node) if (out / "cells").is_dir() else None
            time.sleep(0.02)
        assert killed_cell is not None, "no cell trained on the worker node: " + (tmp_path / "driver.log").read_text()
        os.kill(raylet, signal.SIGKILL)  # the worker node dies between two epochs of a cell
        rc = driver.wait(timeout=600)
    finally:
        if driver.poll() is None:
            driver.kill()
        log.close()
    text = (tmp_path / "driver.log").read_text()
    assert rc == 0, text[-4000:]
    rep = json.loads((out / "report.json").read_text())
    assert rep["summary"]["done"] == rep["summary"]["cells"] == 4 and rep["summary"]["failed"] == 0, text[-4000:]
    assert rep["run"]["retries"] >= 1 and rep["summary"]["retried"] >= 1
    retried = [c for c in rep["cells"] if c.get("retries")]
    assert retried and all(c["status"] == "done" and c["lost"] for c in retried)
    assert killed_cell in {c["key"] for c in retried}
    assert any("NodeDiedError" in why or "WorkerCrashedError" in why for c in retried for why in c["lost"])
    # the lost attempt left checkpoints; the retry resumed from them on the other node
    log = (out / "cells" / killed_cell / "cell.log").read_text().splitlines()
    first = next(i for i, line in enumerate(log) if f"on Ray node {worker_node}" in line)
    again = [line for line in log[first + 1 :] if "(resume) on Ray node" in line]
    assert again and worker_node not in again[-1], log
    assert "Retries:" in (out / "report.md").read_text()
    assert "retried after a lost node or worker" in text
    _same_numbers(out, local_grid)
