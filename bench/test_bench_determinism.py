"""Why two trainings of one cell differ (run with ``pytest --benchmark bench/test_bench_determinism.py``).

One small HFCN training (the paper CNN with BFC on 24 phantom cases at 64 px, 3 epochs of the
quick preset, seed 0, one 3:1 case split) is repeated in fresh processes that differ in one
thing each, and every run's test probabilities are compared with the first's:

- ``rerun``: the same command again, same machine, same thread count;
- ``deterministic``: the same with ``torch.use_deterministic_algorithms(True)``;
- ``threads-2``: 2 torch threads instead of 1 (reductions split differently);
- ``isa-avx2``: the CPU kernels torch and oneDNN would pick on a CPU without AVX-512
  (``ATEN_CPU_CAPABILITY=avx2``, ``ONEDNN_MAX_CPU_ISA=AVX2``), i.e. another machine of the same
  "AMD EPYC" name but an older generation. Only measured where the CPU has AVX-512.

The summary (bit-identical or not, the largest and mean probability change, the AUC change)
goes to ``docs/results/determinism/summary.{json,md}``. Nothing here asserts a time; it asserts
that a same-machine rerun is bit-identical, which the reproduction grid relies on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hfcn_bench.data import write_synthetic_ddti

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results" / "determinism"

TRAIN = r"""
import json, sys, time
import torch
if sys.argv[3] == "1":
    torch.use_deterministic_algorithms(True)
from hfcn_bench.data import load_dataset, split_train_test
from hfcn_bench.runs import train_run
from hfcn_bench.systems import get_system

ds = load_dataset(sys.argv[1], warn=False)
cfg = get_system("hfcn").configure(
    "quick", {"backbone": "paper", "crop": "bfc", "image_size": 64, "epochs": 3, "threads": int(sys.argv[2])}, seed=0
)
out = {}
t0 = time.perf_counter()
rep = train_run("hfcn", cfg, ds, [split_train_test(ds, test_fraction=0.25, seed=0)], n_boot=20, predictions_out=out)
print(json.dumps({"keys": out["keys"], "scores": out["scores"].tolist(), "auc": rep["auc"],
                  "seconds": time.perf_counter() - t0,
                  "capability": torch.backends.cpu.get_cpu_capability()}))
"""


def _avx512() -> bool:
    try:
        return "avx512f" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


VARIANTS = {
    "reference": ({}, 1, False),
    "rerun": ({}, 1, False),
    "deterministic": ({}, 1, True),
    "threads-2": ({}, 2, False),
    "isa-avx2": ({"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}, 1, False),
}


def _run(data: Path, env: dict, threads: int, deterministic: bool) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", TRAIN, str(data), str(threads), "1" if deterministic else "0"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.benchmark(group="determinism")
def test_what_moves_a_retrained_cell(benchmark, tmp_path):
    data = write_synthetic_ddti(tmp_path / "ddti", n_cases=24, seed=0)
    runs = {}
    t0 = time.perf_counter()
    for name, (env, threads, det) in VARIANTS.items():
        if name == "isa-avx2" and not _avx512():
            continue
        runs[name] = _run(data, env, threads, det)
    benchmark.extra_info["wall_s"] = time.perf_counter() - t0
    ref = runs["reference"]
    rows = {}
    for name, r in runs.items():
        if name == "reference":
            continue
        assert r["keys"] == ref["keys"], name
        a, b = np.asarray(ref["scores"]), np.asarray(r["scores"])
        d = np.abs(a - b)
        rows[name] = {
            "bit_identical": bool(np.array_equal(a, b)),
            "max_abs_change": float(d.max()),
            "mean_abs_change": float(d.mean()),
            "auc_change": float(r["auc"] - ref["auc"]),
            "cpu_capability": r["capability"],
            "seconds": round(r["seconds"], 1),
        }
    summary = {
        "command": "pytest --benchmark bench/test_bench_determinism.py",
        "setup": "paper CNN + BFC, 24 phantom cases, 64 px, 3 epochs (quick preset), seed 0, one 3:1 case split",
        "reference_capability": ref["capability"],
        "reference_seconds": round(ref["seconds"], 1),
        "test_rois": len(ref["keys"]),
        "variants": rows,
    }
    benchmark.extra_info.update(summary)
    _write(summary)
    # what the grid relies on: the same machine, threads and seed give the same bits
    assert rows["rerun"]["bit_identical"], rows["rerun"]
    assert rows["deterministic"]["bit_identical"], rows["deterministic"]
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)


def _write(s: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "summary.json").write_text(json.dumps(s, indent=1) + "\n", encoding="utf-8")
    lines = [
        "# What moves a retrained cell",
        "",
        f"`{s['command']}`: {s['setup']}; the reference run used the `{s['reference_capability']}` CPU kernels "
        f"({s['reference_seconds']} s). Each variant is a fresh process changing one thing; its test "
        f"probabilities ({s['test_rois']} ROIs) are compared with the reference run's.",
        "",
        "| variant | bit-identical | largest change | mean change | AUC change | CPU kernels |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in s["variants"].items():
        lines.append(
            f"| {name} | {'yes' if r['bit_identical'] else 'no'} | {r['max_abs_change']:.2g} | "
            f"{r['mean_abs_change']:.2g} | {r['auc_change']:+.3f} | {r['cpu_capability']} |"
        )
    (RESULTS / "summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
