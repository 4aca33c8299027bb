"""pytest-benchmark suite for the statistics every report computes (run with ``pytest
--benchmark``): the case bootstrap of ROC-AUC at DDTI's size. Nothing here asserts a time."""

from __future__ import annotations

import numpy as np

from hfcn_bench import metrics as M


def test_bootstrap_auc(benchmark):
    rng = np.random.default_rng(0)
    y = (rng.random(500) < 0.8).astype(int)
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1)
    cases = rng.integers(0, 300, 500)
    benchmark.group = "case bootstrap, 500 ROIs of 300 cases, 1000 resamples"
    point, low, high = benchmark(M.bootstrap_ci, y, p, cases, M.roc_auc, n_boot=1000, seed=0)
    assert low <= point <= high
