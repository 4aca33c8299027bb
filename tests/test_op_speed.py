"""The op-speed report's arithmetic, on measured rows of a tiny shape and on hand-made rows:
GB/s and the device peak, and the issue's speed checks (which rows they read, what passes)."""

from __future__ import annotations

import pytest

from hfcn_bench.bench import op_speed
from hfcn_bench.bench.op_speed import GPU_SHAPE, PAPER_SHAPE, op_speed_checks, peak_bandwidth

TINY = op_speed.OpShape(batch=2, channels=4, height=8, width=8, alpha=0.6, out=8)


def test_cpu_rows_have_bandwidth_but_no_peak(monkeypatch):
    monkeypatch.delenv("HFCN_PEAK_GBPS", raising=False)
    rows = op_speed.measure_op_speed(
        shapes=(TINY,), methods=["fused", "naive", "floor"], threads=(1,), min_run_time=0.01, image_multicrop_shapes=()
    )
    ok = [r for r in rows if r["status"] == "ok"]
    assert ok
    moved = (2 * 4 * 8 * 8 + 2 * 5 * 4 * 8 * 8) * 4  # x + y, float32
    for r in ok:
        assert r["peak_gbps"] is None and "pct_of_peak" not in r
        factor = 2 if r["direction"] == "forward+backward" else 1
        assert r["gbps"] == pytest.approx(factor * moved / r["median_s"] / 1e9)


def test_peak_override_and_cpu(monkeypatch):
    from hfcn_bench.errors import HfcnError

    monkeypatch.setenv("HFCN_PEAK_GBPS", "3350")
    assert peak_bandwidth("cuda") == (3350.0, "HFCN_PEAK_GBPS")  # read before any device property
    value, how = peak_bandwidth("cpu")  # the CPU has no peak, override or not
    assert value is None and "memory floor" in how
    for bad in ("fast", "0", "-5"):
        monkeypatch.setenv("HFCN_PEAK_GBPS", bad)
        with pytest.raises(HfcnError, match="HFCN_PEAK_GBPS must be a positive number"):
            peak_bandwidth("cuda")


def _row(shape, method, direction, threads, median_s, device="cpu", **kw):
    return {
        "shape": shape.label,
        "method": method,
        "direction": direction,
        "threads": threads,
        "median_s": median_s,
        "device": device,
        "status": "ok",
        **kw,
    }


def test_cpu_checks_use_the_issue_minimums():
    rows = [
        _row(PAPER_SHAPE, "fused", "forward", 1, 1.0),
        _row(PAPER_SHAPE, "naive", "forward", 1, 9.0),
        _row(PAPER_SHAPE, "floor", "forward", 1, 0.45),
        _row(PAPER_SHAPE, "fused", "forward+backward", 1, 2.0),
        _row(PAPER_SHAPE, "naive", "forward+backward", 1, 15.0),  # 7.5x: short of 8
        _row(PAPER_SHAPE, "fused", "forward", 2, 0.55),
        _row(PAPER_SHAPE, "naive", "forward", 2, 5.0),
        _row(PAPER_SHAPE, "floor", "forward", 2, 0.3),
        _row(PAPER_SHAPE, "fused", "forward+backward", 2, 1.0),
        _row(PAPER_SHAPE, "naive", "forward+backward", 2, 8.0),
    ]
    by = {c["check"]: c for c in op_speed_checks(rows)}
    assert (
        by["forward speed-up vs naive (1 thread)"]["passed"]
        and by["forward speed-up vs naive (1 thread)"]["minimum"] == 8.0
    )
    assert by["forward time / memory floor (1 thread)"]["passed"] is False  # 2.22x the floor
    assert by["forward+backward speed-up vs naive (1 thread)"]["passed"] is False
    assert by["fused forward+backward, 2 threads vs 1"]["value"] == pytest.approx(2.0)
    assert (
        by["fused forward+backward, 2 threads vs 1"]["passed"]
        and by["fused forward+backward, 2 threads vs 1"]["minimum"] == 1.8
    )
    reported = by["fused forward, 2 threads vs 1 (reported: memory-bound)"]
    assert reported["value"] == pytest.approx(1 / 0.55) and reported["minimum"] is None and reported["passed"] is None
    assert not any("bandwidth" in name for name in by)


def test_cuda_checks_read_the_bandwidth_on_the_gpu_shape():
    rows = [
        _row(
            GPU_SHAPE,
            "fused",
            "forward",
            1,
            1e-4,
            device="cuda:0",
            gbps=2500.0,
            peak_gbps=3350.0,
            pct_of_peak=100 * 2500 / 3350,
        ),
        _row(PAPER_SHAPE, "fused", "forward", 1, 1e-5, device="cuda:0"),
        _row(PAPER_SHAPE, "naive", "forward", 1, 1e-4, device="cuda:0"),
    ]
    checks = op_speed_checks(rows)
    bw = next(c for c in checks if "bandwidth" in c["check"])
    assert bw["value"] == pytest.approx(2500 / 3350) and bw["minimum"] == 0.70 and bw["passed"]
    rows[0]["pct_of_peak"] = 50.0
    assert next(c for c in op_speed_checks(rows) if "bandwidth" in c["check"])["passed"] is False


@pytest.mark.parametrize("device, limit", [("cpu", 1.3), ("cuda", 1.1)])
def test_bfc_step_limit_by_device(device, limit):
    from hfcn_bench.bench.compare import model_cost_checks

    rows = [
        {"mode": "none", "train_ratio": 1.0},
        {"mode": "bfc", "train_ratio": 1.2},
        {"mode": "image", "train_ratio": 5.0},
    ]
    bfc = model_cost_checks(rows, device)[0]
    assert bfc["limit"] == limit and bfc["passed"] is (1.2 <= limit)
