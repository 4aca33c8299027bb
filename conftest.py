"""Root pytest configuration: ``pytest`` runs the fast tests in tests/; ``pytest --benchmark``
runs the pytest-benchmark suites in bench/ instead (they are never part of the plain run)."""

import os
import shutil
import tempfile
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent / "bench"
TESTS_DIR = Path(__file__).resolve().parent / "tests"


def pytest_addoption(parser):
    parser.addoption(
        "--benchmark",
        action="store_true",
        default=False,
        help="run the pytest-benchmark suites in bench/ (not the tests); combine with "
        "--benchmark-json/--benchmark-compare as usual",
    )


def pytest_configure(config):
    # Dataset loads cache their near-duplicate search (hfcn_bench.data.links): a test session
    # keeps that cache in a temporary folder of its own, not in the user's ~/.cache.
    if not os.environ.get("HFCN_CACHE_DIR"):
        config._hfcn_cache_dir = tempfile.mkdtemp(prefix="hfcn-test-cache-")
        os.environ["HFCN_CACHE_DIR"] = config._hfcn_cache_dir


def pytest_unconfigure(config):
    made = getattr(config, "_hfcn_cache_dir", None)
    if made:
        shutil.rmtree(made, ignore_errors=True)
        os.environ.pop("HFCN_CACHE_DIR", None)


def pytest_ignore_collect(collection_path, config):
    path = Path(collection_path).resolve()
    benchmarking = config.getoption("--benchmark")
    inside = lambda root: path == root or root in path.parents  # noqa: E731
    if inside(BENCH_DIR) and not benchmarking:
        return True
    if inside(TESTS_DIR) and benchmarking:
        return True
    return None
