"""One registry of systems: HFCN (``hfcn``) and the comparators of the literature, as peers.

Every system has a configuration dataclass, named presets, ``fit`` on a split's training
cases, ``predict`` on samples, and ``save``/``load`` of its fitted state
(:class:`~hfcn_bench.systems.base.System`). Training, evaluation, prediction, comparison and
ranking are the same code for all of them (:mod:`hfcn_bench.runs`), so they are scored on the
same case-level splits with the same metrics, intervals and majority baseline.

Typical use::

    from hfcn_bench.data import load_dataset, kfold
    from hfcn_bench.runs import train_run
    from hfcn_bench.systems import get_system

    ds = load_dataset("path/to/ddti/raw", label_rule="tirads")
    cfg = get_system("shape_rf").configure("quick", {"n_estimators": 500})
    report = train_run("shape_rf", cfg, ds, kfold(ds, k=5, seed=0), out_dir="runs/shape_rf")

Adding a system is one module with a :class:`System` subclass and one line below.
"""

from __future__ import annotations

from ..errors import HfcnError
from .base import Fitted, Output, System
from .hfcn import HFCNSystem
from .mccnn import MCCNNSPP, MCCNNCascade
from .shape_rf import ShapeRF
from .transfer import TransferSystem
from .two_stage import TwoStage

__all__ = ["SYSTEMS", "System", "Fitted", "Output", "get_system", "available_systems", "resolve_names"]

SYSTEMS: dict[str, System] = {
    s.name: s
    for s in (
        HFCNSystem(),
        ShapeRF(),
        TransferSystem("svm", "SVM (RBF)"),
        TransferSystem("rf", "Random Forest"),
        TransferSystem("softmax", "softmax (multinomial logistic) head"),
        MCCNNSPP(),
        MCCNNCascade(),
        TwoStage(),
    )
}


def available_systems() -> tuple[str, ...]:
    """Registered names, HFCN first, then the comparators alphabetically."""
    return ("hfcn",) + tuple(sorted(n for n in SYSTEMS if n != "hfcn"))


def get_system(name: str) -> System:
    if name not in SYSTEMS:
        raise HfcnError(
            f"unknown system {name!r}; known systems: {', '.join(available_systems())}",
            hint="or 'all' for every registered system",
        )
    return SYSTEMS[name]


def resolve_names(names) -> list[str]:
    """System names as a user gives them (``all`` = every registered system); unknown names
    are an error naming them."""
    out: list[str] = []
    for n in names:
        for name in available_systems() if n == "all" else (n,):
            get_system(name)
            if name not in out:
                out.append(name)
    return out
