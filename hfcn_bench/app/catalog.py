"""The runs an app serves: one run folder, or every run folder under a folder of runs (a
reproduction grid, a ``runs/`` directory), each loaded once and reused across requests.

A request names a run by its name in the catalog (its path relative to the folder given), never
by a path, so a client cannot make the server read arbitrary folders; and what the server says
about a run names its files by that name too (:meth:`Catalog.relative`), never by the server's
absolute path. A listed folder that does
not hold a usable model (an interrupted run, a deleted or damaged model file, a foreign
``config.json``) stays listed; choosing it gives the reason as a clean error.

Fitted models are loaded on first use and kept for the ``max_loaded`` most recently used runs.
Each loaded run carries a lock that serialises its predictions: the models hold per-call state
(HFCN's crop-window generator, Grad-CAM's forward hook, torch's thread count set for the call),
and on a CPU the forward passes would compete for the same cores anyway. The web queue still
runs uploads, decoding and drawing of other requests concurrently.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import HfcnError

__all__ = ["Catalog", "LoadedRun", "find_runs"]

HEADER = "config.json"
# how deep to look for run folders under --run: a grid's cells/<cell>/ is two levels down
MAX_DEPTH = 3


def find_runs(root: str | Path, max_depth: int = MAX_DEPTH) -> dict[str, Path]:
    """``{name: folder}`` of the run folders at or under ``root``: ``root`` itself when it holds
    a ``config.json``, else every folder down to ``max_depth`` levels that does (a run's own
    sub-folders, such as ``fold0/`` or ``external/``, are not searched)."""
    root = Path(root).expanduser()
    if not root.exists():
        raise HfcnError(f"{root}: no such folder", hint="give --run a run folder or a folder of runs")
    if not root.is_dir():
        raise HfcnError(f"{root} is not a folder", hint="give --run a run folder or a folder of runs")
    if (root / HEADER).is_file():
        return {root.resolve().name: root.resolve()}
    found: dict[str, Path] = {}
    seen: set[tuple[int, int]] = set()

    def walk(folder: Path, depth: int) -> None:
        try:
            st = folder.stat()
        except OSError:
            return
        if (st.st_dev, st.st_ino) in seen:  # a symlink loop
            return
        seen.add((st.st_dev, st.st_ino))
        try:
            children = sorted(p for p in folder.iterdir() if p.is_dir())
        except OSError:
            return
        for child in children:
            if (child / HEADER).is_file():
                found[child.relative_to(root).as_posix()] = child.resolve()
            elif depth < max_depth:
                walk(child, depth + 1)

    walk(root, 1)
    if not found:
        raise HfcnError(
            f"{root} holds no run folder (no {HEADER} in it or in its sub-folders down to {max_depth} levels)",
            hint="give --run the --out folder of `hfcn-bench train`, or a folder of such folders",
        )
    return found


@dataclass
class LoadedRun:
    """A run read and its fitted models loaded: ``run`` (protocol.RunFolder), ``models``
    (``[(fold, Fitted)]``), ``lock`` (hold it while predicting)."""

    name: str
    run: object
    models: list
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def system(self) -> str:
        return self.run.system

    @property
    def label_rule(self) -> str:
        rule = self.run.manifest.label_rule
        # folder datasets record "folder"; an image from a user is read like an image input
        return rule if rule != "folder" else "tirads"


class Catalog:
    """The runs under ``root`` (see the module docstring)."""

    def __init__(self, root: str | Path, device: str = "cpu", max_loaded: int = 4, checkpoint: str = "best"):
        self.root = Path(root).expanduser()
        self.runs = find_runs(self.root)
        self.device = device
        self.checkpoint = checkpoint
        self.max_loaded = max(1, int(max_loaded))
        self._loaded: OrderedDict[str, LoadedRun] = OrderedDict()
        self._loading = threading.Lock()
        self._default: str | None = None

    @property
    def names(self) -> list[str]:
        return list(self.runs)

    @property
    def default(self) -> str:
        """The run a page opens with (and a request without a run name gets): the first, by
        name, whose models load; the first listed when none does. Models are loaded until one
        succeeds, so that a broken run listed first does not become the default."""
        if self._default is None:
            for name in self.names:
                try:
                    self.load(name)
                except HfcnError:
                    continue
                self._default = name
                break
            else:
                self._default = self.names[0]
        return self._default

    def path(self, name: str | None) -> Path:
        """The folder of run ``name`` (the default run for an empty name)."""
        name = (name or "").strip() or self.default
        if name not in self.runs:
            shown = ", ".join(self.names[:10]) + (f" and {len(self.names) - 10} more" if len(self.names) > 10 else "")
            raise HfcnError(f"unknown run {name!r}: choose one of {shown}")
        return self.runs[name]

    def read(self, name: str | None):
        """The run folder's header and manifest (``protocol.RunFolder``)."""
        from ..protocol import read_run

        return read_run(self.path(name))

    def load(self, name: str | None) -> LoadedRun:
        """Run ``name`` with its fitted models, loaded once (clean :class:`HfcnError` when the
        folder holds no usable model)."""
        name = (name or "").strip() or self.default
        path = self.path(name)
        with self._loading:
            hit = self._loaded.get(name)
            if hit is not None:
                self._loaded.move_to_end(name)
                return hit
            try:
                loaded = self._load(name, path)
            except HfcnError as exc:
                hint = getattr(exc, "hint", None)
                raise HfcnError(
                    self.relative(f"run {name} has no usable model: {exc}"), hint=hint and self.relative(hint)
                ) from None
            except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
                # a damaged file that the run folder's own checks did not name
                raise HfcnError(self.relative(f"run {name} has no usable model: {type(exc).__name__}: {exc}")) from None
            self._loaded[name] = loaded
            while len(self._loaded) > self.max_loaded:
                self._loaded.popitem(last=False)
            return loaded

    def _load(self, name: str, path: Path) -> LoadedRun:
        from ..protocol import read_run
        from ..runs import fitted_models

        run = read_run(path)
        models = fitted_models(run, self.checkpoint, self.device)
        return LoadedRun(name, run, models)

    def relative(self, text: str) -> str:
        """``text`` with the server's absolute paths of the runs written relative to the catalog
        root, as the runs are named (``grid/cells/a/best.pt``, not ``/srv/runs/grid/...``)."""
        if not text:
            return text
        root = Path(os.path.abspath(self.root))
        # a catalog of one run names it by the folder's own name: paths are relative to its parent
        base = [root.parent] if (root / HEADER).is_file() else [root]
        real = Path(os.path.realpath(root))
        base.append(real.parent if (root / HEADER).is_file() else real)
        for b in sorted({str(x) for x in base}, key=len, reverse=True):
            if b != os.sep:
                text = text.replace(b + os.sep, "")
        return text

    def describe(self) -> str:
        where = os.fspath(self.root)
        return f"{len(self.runs)} run(s) under {where}" if len(self.runs) > 1 else f"run {where}"
