"""Where the cells run: in this process (``local``) or as Ray tasks (``ray``).

Ray core tasks rather than Ray Tune: the grid is fixed and cached on disk (a cell is a run
folder), nothing is searched or stopped early, and a cell is a pure function of its spec, so
plain ``ray.remote`` tasks with their CPU (and GPU-fraction) requirements are all the
scheduling it needs; Tune would add its own trial folders, checkpoint format and result
reporting beside the protocol's run folders.

Both engines call :func:`~.cells.run_cell` on the same specs and report every result through
``on_result``; the driver owns progress and the report. ``KeyboardInterrupt`` stops cleanly:
the Ray engine shuts its own local instance down (which stops its workers), or, on a cluster
or an instance the caller started, cancels what is queued and running; cells left half-done
resume on the next run.

Without ``--address`` the Ray engine starts an instance of its own (``address="local"``),
whatever else runs on the machine: a plain ``ray.init()`` would join the cluster a ``ray start``
last recorded in Ray's temp folder (``ray_current_cluster``), running or long gone. On a
cluster, a cell whose task is lost with its worker or node (the task itself never failed) is
submitted again, up to ``retries`` times, in the same run: Ray places it on a node still alive
and the cell resumes from the checkpoints its lost attempt left on the shared folder. Each
result says how many times its cell was retried and why.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager

from ..errors import HfcnError
from .cells import cell_log, run_cell

__all__ = ["ENGINES", "DEFAULT_RETRIES", "run_local", "run_ray", "terminate_as_interrupt", "interrupts_deferred"]

ENGINES = ("ray", "local")
DEFAULT_RETRIES = 2
# Ray's errors for a task lost with its process or node (not an error of the cell itself).
_LOST = ("WorkerCrashedError", "NodeDiedError", "LocalRayletDiedError", "ObjectLostError")

OnEvent = Callable[[str, dict, dict | None], None]  # (event: "start" | "result", spec, result)


@contextmanager
def terminate_as_interrupt():
    """SIGTERM (a batch scheduler's time limit, ``kill``) stops the grid as Ctrl-C does: queued
    and running cells are stopped, finished ones kept, the report written, and the next run
    resumes. Yields ``rearm()``: ``ray.init`` installs a SIGTERM handler of its own (it exits),
    so the Ray engine calls it once its instance is up; on leaving, the handler from before
    (before Ray's too) is restored. Only the main thread may set handlers; elsewhere nothing
    changes."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return

    def stop(signum, frame):
        raise KeyboardInterrupt

    before = signal.getsignal(signal.SIGTERM)

    def rearm():
        signal.signal(signal.SIGTERM, stop)

    rearm()
    try:
        yield rearm
    finally:
        # None: the handler before was not set from Python.
        signal.signal(signal.SIGTERM, before if before is not None else signal.SIG_DFL)


@contextmanager
def interrupts_deferred():
    """Ctrl-C or SIGTERM while the block runs (building and writing the report of the finished
    cells) is held until the block ends and then raised as ``KeyboardInterrupt``, so a stop
    never leaves the report half written. A second one during the block raises at once: whoever
    presses Ctrl-C twice means it. A signal this process ignores (a background job's SIGINT)
    stays ignored. Only the main thread may set handlers; elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []

    def hold(signum, frame):
        if got:
            raise KeyboardInterrupt
        got.append(signum)

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    held = [s for s, h in before.items() if h is not signal.SIG_IGN]
    for s in held:
        signal.signal(s, hold)
    try:
        yield
    finally:
        for s in held:
            signal.signal(s, before[s] if before[s] is not None else signal.SIG_DFL)
    if got:
        raise KeyboardInterrupt


def run_local(specs: list[dict], on_event: OnEvent, **_) -> dict:
    """One cell after the other in this process."""
    for spec in specs:
        on_event("start", spec, None)
        t = time.perf_counter()
        res = run_cell(spec)
        res["driver_s"] = time.perf_counter() - t
        on_event("result", spec, res)
    return {"engine": "local", "workers": 1}


def run_ray(
    specs: list[dict],
    on_event: OnEvent,
    *,
    workers: int,
    threads: int,
    address: str | None = None,
    gpus_per_cell: float = 0.0,
    retries: int = DEFAULT_RETRIES,
) -> dict:
    """The cells as Ray tasks, each asking for ``threads`` CPUs (and ``gpus_per_cell`` GPUs).

    ``address=None`` starts a local instance of its own sized ``workers * threads`` CPUs;
    ``"auto"`` or ``HOST:PORT`` joins a running cluster (started with ``ray start --head`` /
    ``ray start --address=HOST:PORT``), whose nodes must all see the data and output paths. A
    cell lost with its worker or node is submitted again up to ``retries`` times."""
    try:
        import ray
    except ImportError:
        raise HfcnError("--engine ray needs the ray package", hint="pip install ray, or use --engine local") from None
    started = not ray.is_initialized()
    with terminate_as_interrupt() as rearm:
        try:
            if started:
                kw = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
                if address is None:
                    import os
                    import sys

                    # The workers import this package as the driver does (a checkout on PYTHONPATH).
                    kw.update(
                        num_cpus=workers * threads,
                        num_gpus=None if gpus_per_cell else 0,
                        object_store_memory=200 * 1024 * 1024,
                        runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}},
                    )
                    # "local": a new instance, never the cluster Ray's address file names.
                    ray.init(address="local", **kw)
                else:
                    _join(ray, address, kw)
                rearm()
            return _run_tasks(
                ray,
                specs,
                on_event,
                workers=workers,
                threads=threads,
                address=address,
                gpus_per_cell=gpus_per_cell,
                retries=retries,
                # Our own instance stops its workers in ray.shutdown() below; cancelling them
                # first races Ray's own bookkeeping when Ctrl-C has already stopped a worker
                # (its reply and the cancel both end the task: a RAY_CHECK in the driver, exit 1).
                cancel=not (started and address is None),
            )
        finally:
            if started:
                # Our own instance: wait until its processes are gone, so that a run started
                # right after this one (the grid lock is released next) finds no worker of ours.
                ray.shutdown(wait_for_processes=address is None)


def _join(ray, address: str, kw: dict) -> None:
    """Connect to the cluster at ``address``; a refused token is one clear error."""
    try:
        ray.init(address=address, **kw)
    except Exception as exc:  # noqa: BLE001 - Ray's connection errors have no common base
        auth = type(exc).__name__ == "AuthenticationError" or "auth" in str(exc).lower()
        raise HfcnError(
            f"could not join the Ray cluster at {address}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}",
            hint="with token authentication (Ray's default for clusters), set RAY_AUTH_MODE=token and the cluster's "
            "token (RAY_AUTH_TOKEN, or the file ~/.ray/auth_token / RAY_AUTH_TOKEN_PATH) here as on every node"
            if auth
            else "check that `ray start --head` runs there and this machine reaches it (ray status --address ...)",
        ) from None


def _lost(ray, exc: BaseException) -> bool:
    kinds = tuple(getattr(ray.exceptions, name) for name in _LOST if hasattr(ray.exceptions, name))
    return isinstance(exc, kinds)


def _run_tasks(ray, specs, on_event, *, workers, threads, address, gpus_per_cell, retries, cancel=True) -> dict:
    # Ray's own retries stay off: a lost cell is resubmitted here, so the report can count it.
    task = ray.remote(num_cpus=threads, num_gpus=gpus_per_cell, max_retries=0)(_timed_cell)
    pending: dict = {}
    queue = list(specs)
    lost: dict[str, list[str]] = {}  # key -> why each earlier attempt of this run was lost
    # Submit what can run now plus a little more, so progress says what is running.
    slots = max(1, int(ray.cluster_resources().get("CPU", workers * threads) // threads))

    def submit():
        while queue and len(pending) < slots:
            spec = queue.pop(0)
            pending[task.remote(spec, time.time())] = (spec, time.perf_counter())
            on_event("start", spec, None)

    try:
        submit()
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in done:
                spec, t_submit = pending.pop(ref)
                why = lost.setdefault(spec["key"], [])
                try:
                    res = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a worker that died: retried, then an error row
                    text = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
                    if _lost(ray, exc) and len(why) < retries:
                        why.append(text)
                        queue.insert(0, spec)  # first in line: Ray places it on a node still alive
                        continue
                    res = {
                        "key": spec["key"],
                        "status": "error",
                        "wall_s": 0.0,
                        "error": f"the Ray task failed: {text}",
                        "log": cell_log(spec["key"]),
                    }
                res["retries"], res["lost"] = len(why), list(why)
                res["driver_s"] = time.perf_counter() - t_submit
                on_event("result", spec, res)
            submit()
    except KeyboardInterrupt:
        if cancel:  # a cluster (or an instance the caller owns) keeps running what is not cancelled
            # Only what has not visibly ended: this narrows the race with a task's reply described
            # above (a reply already on its way can still meet the cancel), it does not close it.
            ended = set(ray.wait(list(pending), num_returns=len(pending), timeout=0)[0]) if pending else set()
            for ref in pending:
                if ref not in ended:
                    ray.cancel(ref, force=True)
        raise
    return {
        "engine": "ray",
        "workers": workers,
        "address": address or "local instance",
        "retries": sum(len(v) for v in lost.values()),
        "max_retries": retries,
    }


def _timed_cell(spec: dict, submitted: float) -> dict:
    """``run_cell`` plus when the worker picked it up (the queue wait is not Ray's overhead) and
    on which Ray node it ran (also in the cell's log, attempt by attempt)."""
    import ray

    picked = time.time()
    node = ray.get_runtime_context().get_node_id()
    res = run_cell({**spec, "where": f"Ray node {node}"})
    res["queued_s"] = max(0.0, picked - submitted)
    res["node"] = node
    return res
