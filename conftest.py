"""Root pytest configuration: ``pytest`` runs the fast tests in tests/; ``pytest --benchmark``
runs the pytest-benchmark suites in bench/ instead (they are never part of the plain run)."""

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


def pytest_ignore_collect(collection_path, config):
    path = Path(collection_path).resolve()
    benchmarking = config.getoption("--benchmark")
    inside = lambda root: path == root or root in path.parents  # noqa: E731
    if inside(BENCH_DIR) and not benchmarking:
        return True
    if inside(TESTS_DIR) and benchmarking:
        return True
    return None
