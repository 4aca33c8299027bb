"""The lock of a grid folder: one ``reproduce`` run at a time trains into ``OUT``.

Two runs on one folder would train the same cells at once and each take the other's finished
cells for its own. So a run holds ``OUT/.lock``: the file names the holder (PID, host, start
time, command) and the holder keeps an exclusive ``flock`` on it while it runs, which the kernel
drops when the process ends, however it ends. A second run finds the flock taken and stops with
an error naming the holder.

A lock file whose flock is free was left by a run that died (``kill -9``, a crash, a lost
node). When its PID is gone from this host (or now belongs to a process started after the
lock was taken: a reused number) it is stale and taken over with a :class:`GridWarning`. One
written on another host is refused: only that host can tell whether its run still goes on,
and a file system shared between hosts may not carry ``flock`` across them.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import HfcnError
from .record import GridWarning

__all__ = ["LOCK", "GridBusy", "grid_lock"]

LOCK = ".lock"


class GridBusy(HfcnError):
    """Another run holds the grid folder's lock; ``holder`` is what its lock file says."""

    def __init__(self, path: Path, holder: dict | None, why: str = ""):
        self.holder = holder or {}
        h = self.holder
        who = (
            f"PID {h.get('pid')} on host {h.get('host')} (since {h.get('started')})"
            if h
            else "another process (its lock file is being written)"
        )
        hint = (
            f"wait for it to finish, or choose another --out; {why}"
            if why
            else "wait for it to finish (or stop it), or choose another --out"
        )
        super().__init__(f"{path.parent} is in use by another reproduce run: {who}", hint=hint)


def _read(fd: int) -> tuple[dict | None, bool]:
    """The lock file's holder record, and whether the file held anything at all."""
    os.lseek(fd, 0, os.SEEK_SET)
    raw = b""
    while chunk := os.read(fd, 65536):
        raw += chunk
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None, bool(raw.strip())
    return (obj if isinstance(obj, dict) else None), bool(raw.strip())


def _read_path(path: Path) -> dict | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return _read(fd)[0]
    finally:
        os.close(fd)


def _process_started(pid: int) -> float | None:
    """When process ``pid`` started (epoch seconds), from /proc; None where that cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])
        boot = next(
            float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line[:5] == "btime"
        )
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _holder_alive(holder: dict) -> bool:
    """Whether the process a lock record on *this* host names still runs (and is the same
    process: not a later one that was given its number)."""
    try:
        pid = int(holder["pid"])
    except (KeyError, TypeError, ValueError):
        return False
    if pid == os.getpid():
        return False  # we do not hold it yet: an earlier process had our number
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    started, since = _process_started(pid), holder.get("started_epoch")
    if started is not None and isinstance(since, (int, float)) and started > since + 2.0:
        return False  # the number was reused by a process younger than the lock
    return True


def _take_over(path: Path, old: dict | None, had_content: bool) -> None:
    """Decide about a lock file whose flock is free: warn and go on, or raise GridBusy."""
    if old is None:
        if had_content:
            warnings.warn(
                GridWarning(f"{path}: unreadable lock file of a run that is gone (no process holds it); taken over"),
                stacklevel=4,
            )
        return
    host = socket.gethostname()
    if old.get("host") != host:
        raise GridBusy(
            path,
            old,
            f"it was taken on another host, which alone can tell whether that run still goes on; if it does not, "
            f"remove {path}",
        )
    if _holder_alive(old):
        raise GridBusy(
            path,
            old,
            f"PID {old.get('pid')} still runs but holds no lock on the file; if it is no reproduce run, remove {path}",
        )
    warnings.warn(
        GridWarning(
            f"{path}: stale lock of PID {old.get('pid')} on {host} (since {old.get('started')}), whose process is "
            "gone; taken over (its cells are checked and resumed as usual)"
        ),
        stacklevel=4,
    )


@contextmanager
def grid_lock(out: str | os.PathLike) -> Iterator[dict]:
    """Hold ``OUT/.lock`` for the block (creating ``OUT``); yields the record written to it.
    Raises :class:`GridBusy` when another run holds it (see the module docstring)."""
    import fcntl

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise GridBusy(path, _read_path(path)) from None
        except OSError as exc:
            os.close(fd)
            raise HfcnError(
                f"{path}: the file system refuses a lock ({exc.strerror})",
                hint="put --out on a file system that supports flock (a local disk, NFS v4)",
            ) from None
        # The holder before us removes the file as it lets go: a lock on that removed file
        # guards nothing, so take the one now at the path.
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        _take_over(path, *_read(fd))
        now = time.time()
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now)),
            "started_epoch": now,
            "command": " ".join(["hfcn-bench", *sys.argv[1:]])[:500],
        }
        data = (json.dumps(me, indent=1) + "\n").encode("utf-8")
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        raise
    try:
        yield me
    finally:
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                os.unlink(path)
        except OSError:
            pass
        os.close(fd)
