"""``hfcn-bench compare`` end to end on tiny settings (the "smoke" preset), its report files,
``--against`` and every error path."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from clitools import run
from PIL import Image

from hfcn_bench.bench import compare as compare_mod
from hfcn_bench.bench.report import compare_reports, load_report
from hfcn_bench.data import write_synthetic_ddti
from hfcn_bench.errors import HfcnError


def run_cli(*argv: str) -> tuple[int, str]:
    return run(argv, width=160)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    return write_synthetic_ddti(tmp_path_factory.mktemp("phantoms"), n_cases=24, seed=1)


@pytest.fixture(scope="module")
def first_report(tmp_path_factory, phantoms) -> Path:
    out = tmp_path_factory.mktemp("report")
    code, text = run_cli(
        "compare", "--preset", "smoke", "--data", str(phantoms), "--threads", "1", "--n-boot", "50", "--out", str(out)
    )
    assert code == 0, text
    return out


def test_smoke_report_has_every_section_and_file(first_report):
    report = json.loads((first_report / "report.json").read_text())
    assert report["errors"] == []
    env = report["environment"]
    # the built extension (the fused rows would otherwise compare the fallback with itself)
    assert env["extension_backend"] in ("cpp-cpu", "cuda") and env["torch"] == torch.__version__
    assert report["data"]["fingerprint"] and report["data"]["label_rule"] == "tirads"

    speed = report["op_speed"]["rows"]
    methods = {r["method"] for r in speed}
    assert {"fused", "naive", "grid_sample", "floor"} <= methods
    fused = [r for r in speed if r["method"] == "fused"]
    assert {r["direction"] for r in fused} == {"forward", "backward", "forward+backward"}
    for r in fused:
        assert r["status"] == "ok" and r["parity_ok"] and r["median_s"] > 0 and r["speedup"] > 0
        assert r["max_abs_err"] <= 1e-5 and r["memory_method"]
    assert report["op_speed"]["checks"]

    model = report["model_cost"]["rows"]
    assert [r["mode"] for r in model] == ["none", "bfc", "bfc-naive", "image"]
    assert next(r for r in model if r["mode"] == "none")["train_ratio"] == pytest.approx(1.0)
    assert next(r for r in model if r["mode"] == "image")["backbone_passes"] == 6
    assert any(c["check"].startswith("bfc training step / none") for c in report["model_cost"]["checks"])

    rows = report["metrics"]["rows"]
    assert [r["crop"] for r in rows] == ["none", "rfc", "bfc", "image"]  # image crops by default (Table 5)
    ratio = {r["mode"]: r["train_ratio"] for r in model}
    for r in rows:
        assert 0.0 <= r["auc"] <= 1.0 and 0.0 <= r["f1"] <= 1.0
        assert bool(r["paper"]) is (r["crop"] != "image")  # the paper's Table 4 row quoted beside ours
        # the model section's training-step ratio of the same run beside the row it costs (rfc: not timed
        # by the smoke preset)
        assert r["train_cost"] == (ratio.get(r["crop"]) if r["crop"] != "rfc" else None)
    paired = {p["comparison"]: p for p in report["metrics"]["paired"]}
    assert list(paired) == ["BFC (alpha 0.6) - Image", "RFC (alpha 0.6) - Image", "Image - Global"]
    by_crop = {r["crop"]: r for r in rows}
    assert len({p["n_rois"] for p in paired.values()}) == 1 and paired["Image - Global"]["n_rois"] > 0
    for p in paired.values():
        assert -1.0 <= p["diff"] <= 1.0 and 0.0 <= p["delong_p"] <= 1.0
    # the paired difference is the difference of the two rows' own AUCs (same ROIs, same split)
    assert paired["Image - Global"]["diff"] == pytest.approx(by_crop["image"]["auc"] - by_crop["none"]["auc"], abs=1e-9)
    assert report["metrics"]["baseline"][0]["auc"] == 0.5

    for name in ("report.md", "op_speed_rows.csv", "op_speed_checks.csv", "model_cost_rows.csv", "metrics_rows.csv"):
        assert (first_report / name).stat().st_size > 0
    with open(first_report / "metrics_rows.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 4
    md = (first_report / "report.md").read_text()
    assert "## Op speed" in md and "## Paper metrics" in md and "IEEE Access" in md
    assert "## Feature vs image cropping" in md and "| paper | BFC (alpha 0.6) - Image |" in md
    for fig in report["figures"]:
        with Image.open(fig) as im:
            assert im.size[0] > 100
    assert {Path(f).name for f in report["figures"]} >= {
        "speed_forward.png",
        "roc.png",
        "model_train_step.png",
        "roofline.png",
    }


def test_smoke_report_has_floors_and_copy_bandwidth(first_report):
    report = json.loads((first_report / "report.json").read_text())
    speed = report["op_speed"]
    floors = {r["direction"] for r in speed["rows"] if r["method"] == "floor" and r["status"] == "ok"}
    assert floors == {"forward", "backward", "forward+backward"}
    (copy,) = speed["copy"]  # one thread count asked for
    assert copy["threads"] == 1 and copy["gbps"] > 0
    for r in speed["rows"]:
        if r["status"] == "ok" and r.get("gbps"):
            assert r["floor_ratio"] > 0 and r["copy_gbps"] == copy["gbps"]
    names = {c["check"] for c in speed["checks"]}
    for direction in ("forward", "backward"):
        assert any(n.startswith(f"{direction} time / its floor") for n in names)
    assert (first_report / "op_speed_copy.csv").stat().st_size > 0


def test_against_prints_ratios(first_report, tmp_path, phantoms):
    code, text = run_cli(
        "compare",
        "--preset",
        "smoke",
        "--only",
        "speed",
        "--threads",
        "1",
        "--out",
        str(tmp_path),
        "--against",
        str(first_report / "report.json"),
    )
    assert code == 0, text
    assert "Against the earlier report" in text
    report = json.loads((tmp_path / "report.json").read_text())
    rows = report["against"]["rows"]
    assert rows and all(r["verdict"] in ("regression", "improvement", "same") for r in rows)
    assert any(r["figure"] == "median ms" for r in rows)


def test_compare_reports_flags_regressions():
    old = {
        "op_speed": {
            "rows": [
                {"shape": "s", "method": "fused", "direction": "forward", "threads": 1, "median_s": 1.0, "speedup": 8.0}
            ]
        }
    }
    new = {
        "op_speed": {
            "rows": [
                {"shape": "s", "method": "fused", "direction": "forward", "threads": 1, "median_s": 2.0, "speedup": 8.1}
            ]
        }
    }
    by_fig = {r["figure"]: r for r in compare_reports(new, old)}
    assert by_fig["median ms"]["verdict"] == "regression" and by_fig["median ms"]["ratio"] == 2.0
    assert by_fig["vs naive"]["verdict"] == "same"


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--backbones", "alexnet"], "unknown backbone 'alexnet'; known: "),
        (["--data", "/nonexistent/ddti"], "--data /nonexistent/ddti: no such folder"),
        (["--preset", "huge"], "unknown preset 'huge'"),
        (["--only", "speed,colours"], "unknown section"),
        (["--threads", "0"], "threads must be positive integers"),
        (["--folds", "1"], "--folds must be at least 2 (or 0 for one 3:1 split), got 1"),
        (["--against", "/nonexistent/report.json"], "no such report"),
    ],
)
def test_error_paths_print_one_line_and_exit_nonzero(argv, message, tmp_path):
    code, text = run_cli("compare", "--preset", "smoke", "--out", str(tmp_path), *argv)
    assert code == 1
    assert "error:" in text and message in text.replace("\n", " ")
    assert "Traceback" not in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")
def test_cuda_asked_but_absent(tmp_path):
    code, text = run_cli("compare", "--preset", "smoke", "--device", "cuda", "--out", str(tmp_path))
    assert code == 1 and "no CUDA GPU is available" in text and "hint:" in text


def test_bad_against_file(tmp_path):
    bad = tmp_path / "report.json"
    bad.write_text("{not json")
    code, text = run_cli("compare", "--preset", "smoke", "--against", str(bad), "--out", str(tmp_path / "o"))
    assert code == 1 and "not a JSON report" in text


def test_failing_section_keeps_earlier_results(tmp_path):
    """Nothing usable in --data: the metrics section fails with its reason, the speed section
    measured before it is still in report.json, and the exit code says something failed."""
    empty = tmp_path / "empty"
    (empty / "benign").mkdir(parents=True)
    (empty / "malignant").mkdir()
    out = tmp_path / "out"
    code, text = run_cli(
        "compare",
        "--preset",
        "smoke",
        "--only",
        "speed,metrics",
        "--threads",
        "1",
        "--data",
        str(empty),
        "--out",
        str(out),
    )
    assert code == 1
    report = load_report(out)
    assert report["op_speed"]["rows"], "the speed section must survive the metrics failure"
    assert len(report["errors"]) == 1 and report["errors"][0].startswith("metrics:")
    assert "error:" in text


def test_interrupt_writes_partial_report(tmp_path, monkeypatch):
    written = []

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(compare_mod, "_model_section", boom)
    opts = compare_mod.CompareOptions(preset="smoke", threads=(1,), only=("speed", "model"))
    with pytest.raises(KeyboardInterrupt):
        compare_mod.run_compare(opts, on_section=lambda r: written.append(json.loads(json.dumps(r, default=str))))
    assert written[0]["op_speed"]["rows"]
    assert written[-1]["errors"] == ["model: interrupted"]


def test_comparator_systems_join_the_metrics_table(tmp_path, phantoms):
    code, text = run_cli(
        "compare",
        "--preset",
        "smoke",
        "--only",
        "metrics",
        "--crops",
        "none",
        "--systems",
        "shape_rf",
        "--data",
        str(phantoms),
        "--n-boot",
        "50",
        "--out",
        str(tmp_path),
    )
    assert code == 0, text
    rows = json.loads((tmp_path / "report.json").read_text())["metrics"]["rows"]
    assert [r["system"] for r in rows] == ["HFCN", "shape_rf"]
    shape = rows[1]
    assert 0.0 <= shape["auc"] <= 1.0 and shape["f1_ci"]


def test_cascade_systems_pool_folds_with_variants_and_localisation(tmp_path, phantoms):
    code, text = run_cli(
        "compare",
        "--preset",
        "smoke",
        "--only",
        "metrics",
        "--crops",
        "none",
        "--systems",
        "mccnn_cascade",
        "--folds",
        "2",
        "--data",
        str(phantoms),
        "--n-boot",
        "20",
        "--out",
        str(tmp_path),
    )
    assert code == 0, text
    rows = json.loads((tmp_path / "report.json").read_text())["metrics"]["rows"]
    assert [r["system"] for r in rows] == ["HFCN", "mccnn_cascade", "mccnn_cascade/annotated_roi"]
    # HFCN and the comparator are scored on the same 2 folds, pooled the same way
    assert all("2-fold case-level CV" in r["protocol"] for r in rows)
    assert rows[1]["localisation"].startswith("detector AP50 ") and "frames" in rows[1]["localisation"]
    assert "annotated" in rows[2]["localisation"]


def test_a_failing_comparator_keeps_the_other_rows(monkeypatch):
    from hfcn_bench import systems

    def boom(*a, **k):
        raise HfcnError("no outline here", hint="use DDTI")

    monkeypatch.setattr(systems.SYSTEMS["shape_rf"], "fit", boom)
    opts = compare_mod.CompareOptions(
        preset="smoke", threads=(1,), only=("metrics",), crops=("none",), systems=("shape_rf", "mccnn_spp"), n_boot=20
    )
    with pytest.warns(RuntimeWarning, match="comparator shape_rf failed: HfcnError: no outline here"):
        report = compare_mod.run_compare(opts)
    rows = report["metrics"]["rows"]
    assert [r["system"] for r in rows] == ["HFCN", "shape_rf", "mccnn_spp"]
    assert rows[1]["error"] == "HfcnError: no outline here (hint: use DDTI)" and "auc" not in rows[1]
    assert rows[2]["auc"] is not None and report["errors"] == []


def test_unknown_system_lists_the_known_ones(tmp_path):
    code, text = run_cli("compare", "--preset", "smoke", "--systems", "mc-cnn-v9", "--out", str(tmp_path))
    assert code == 1 and "unknown system 'mc-cnn-v9'; known systems: " in text and "shape_rf" in text
