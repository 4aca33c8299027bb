"""Phantom datasets the test modules share: each is written once per session (not once per
module). They are read-only by convention: a test that changes files copies the set first
(``shutil.copytree``) or writes its own with ``make_phantoms`` into its ``tmp_path``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from hfcn_bench.data import load_dataset, write_synthetic_ddti

# the helpers shared by test modules (clitools, apptools) import as top-level modules
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def make_phantoms(tmp_path_factory):
    """``make_phantoms(n_cases, seed, **kw) -> Path``: a DDTI-format phantom set, written once per
    session for each distinct set of arguments."""
    cache: dict[tuple, Path] = {}

    def make(n_cases: int = 24, seed: int = 0, **kw) -> Path:
        key = (n_cases, seed, tuple(sorted(kw.items())))
        if key not in cache:
            tag = "".join(f"-{k}-{v}" for k, v in sorted(kw.items()))
            folder = tmp_path_factory.mktemp(f"phantoms-{n_cases}-{seed}{tag}")
            cache[key] = write_synthetic_ddti(folder / "ddti", n_cases=n_cases, seed=seed, **kw)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def phantoms(make_phantoms) -> Path:
    """The common set: 24 cases, seed 0, the default (realistic) difficulty."""
    return make_phantoms(24, 0)


@pytest.fixture(scope="session")
def easy_phantoms(make_phantoms) -> Path:
    """24 cases, seed 0, clean phantoms (``difficulty="easy"``): for tests that need learning."""
    return make_phantoms(24, 0, difficulty="easy")


@pytest.fixture(scope="session")
def phantom_ds(phantoms):
    """The common set loaded (tirads labels, no warning)."""
    return load_dataset(phantoms, warn=False)


@pytest.fixture(scope="session")
def easy_phantom_ds(easy_phantoms):
    """The clean set loaded (tirads labels, no warning)."""
    return load_dataset(easy_phantoms, warn=False)
