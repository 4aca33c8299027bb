"""bench/gpu_check.sh, the one prepared GPU check, is right before any GPU is seen: its syntax,
its argument handling, and a clear failure (before anything is installed) with no GPU."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.sh"


def _run(*args, env=None, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_syntax():
    r = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("args", [(), ("a", "b"), ("--bogus",)])
def test_usage_errors_exit_2(args):
    r = _run(*args)
    assert r.returncode == 2 and "usage: bash bench/gpu_check.sh OUT_DIR" in r.stderr


def test_help():
    r = _run("--help")
    assert r.returncode == 0 and "usage:" in r.stderr


def test_bad_budget(tmp_path):
    import os

    r = _run(str(tmp_path / "out"), env={**os.environ, "HFCN_GPU_CHECK_BUDGET_S": "ten"})
    assert r.returncode == 2 and "HFCN_GPU_CHECK_BUDGET_S must be a whole number" in r.stderr


@pytest.mark.skipif(
    torch.cuda.is_available() or shutil.which("nvidia-smi") is not None,
    reason="a GPU (or nvidia-smi) is present: the no-GPU path cannot be exercised",
)
def test_no_gpu_fails_clearly_before_installing(tmp_path):
    out = tmp_path / "out"
    r = _run(str(out))
    assert r.returncode == 2
    assert "no CUDA GPU visible" in r.stderr
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("gpu_check: FAILED: no CUDA GPU") and str(out) in last
    assert (out / "summary.txt").read_text().strip() == last
    assert not (out / "venv").exists()  # nothing installed
