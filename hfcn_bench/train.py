"""The old import path of HFCN's training code, kept so that ``from hfcn_bench.train import ...``
keeps working: the code lives in :mod:`hfcn_bench.systems.hfcn_training`, beside the other
systems. New code imports it from there."""

from .systems.hfcn_training import *  # noqa: F403 - the whole public API, re-exported
from .systems.hfcn_training import __all__  # noqa: F401
