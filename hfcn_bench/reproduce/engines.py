"""Where the cells run: in this process (``local``) or as Ray tasks (``ray``).

Ray core tasks rather than Ray Tune: the grid is fixed and cached on disk (a cell is a run
folder), nothing is searched or stopped early, and a cell is a pure function of its spec, so
plain ``ray.remote`` tasks with their CPU (and GPU-fraction) requirements are all the
scheduling it needs; Tune would add its own trial folders, checkpoint format and result
reporting beside the protocol's run folders.

Both engines call :func:`~.cells.run_cell` on the same specs and report every result through
``on_result``; the driver owns progress and the report. ``KeyboardInterrupt`` stops cleanly:
the Ray engine cancels what is queued and running and shuts its local instance down; cells
left half-done resume on the next run.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager

from ..errors import HfcnError
from .cells import run_cell

__all__ = ["ENGINES", "run_local", "run_ray", "terminate_as_interrupt"]

ENGINES = ("ray", "local")

OnEvent = Callable[[str, dict, dict | None], None]  # (event: "start" | "result", spec, result)


@contextmanager
def terminate_as_interrupt():
    """SIGTERM (a batch scheduler's time limit, ``kill``) stops the grid as Ctrl-C does: queued
    and running cells are cancelled, finished ones kept, the report written, and the next run
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
) -> dict:
    """The cells as Ray tasks, each asking for ``threads`` CPUs (and ``gpus_per_cell`` GPUs).

    ``address=None`` starts a local instance sized ``workers * threads`` CPUs; ``"auto"`` or
    ``HOST:PORT`` joins a running cluster (started with ``ray start --head`` /
    ``ray start --address=HOST:PORT``), whose nodes must all see the data and output paths."""
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
                    ray.init(**kw)
                else:
                    ray.init(address=address, **kw)
                rearm()
            return _run_tasks(
                ray, specs, on_event, workers=workers, threads=threads, address=address, gpus_per_cell=gpus_per_cell
            )
        finally:
            if started:
                ray.shutdown()


def _run_tasks(ray, specs, on_event, *, workers, threads, address, gpus_per_cell) -> dict:
    task = ray.remote(num_cpus=threads, num_gpus=gpus_per_cell, max_retries=0)(_timed_cell)
    pending: dict = {}
    queue = list(specs)
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
                try:
                    res = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a worker that died: an error row
                    res = {
                        "key": spec["key"],
                        "status": "error",
                        "wall_s": 0.0,
                        "error": f"the Ray task failed: {type(exc).__name__}: {str(exc)[:300]}",
                        "log": spec["out"] + "/cell.log",
                    }
                res["driver_s"] = time.perf_counter() - t_submit
                on_event("result", spec, res)
            submit()
    except KeyboardInterrupt:
        for ref in list(pending):
            ray.cancel(ref, force=True)
        raise
    return {"engine": "ray", "workers": workers, "address": address or "local instance"}


def _timed_cell(spec: dict, submitted: float) -> dict:
    """``run_cell`` plus when the worker picked it up (the queue wait is not Ray's overhead)."""
    picked = time.time()
    res = run_cell(spec)
    res["queued_s"] = max(0.0, picked - submitted)
    return res
