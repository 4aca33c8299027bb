"""``hfcn-bench data synth|check`` against a captured rich console."""

from __future__ import annotations

import json
import os
import re

import pytest
from clitools import run


@pytest.fixture(scope="module")
def warty(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "warty"
    rc, text = run(
        [
            "data",
            "synth",
            "--out",
            str(out),
            "--cases",
            "12",
            "--seed",
            "4",
            "--warts",
            "--label-noise",
            "0.1",
            "--difficulty",
            "easy",
        ]
    )
    assert rc == 0, text
    return out, text


def test_synth_writes_ddti_layout(warty):
    out, text = warty
    assert (out / "xml").is_dir() and (out / "raw_jpg").is_dir() and (out / "synthetic.json").is_file()
    assert len(list((out / "xml").glob("*.xml"))) == 12
    assert "wrote 12 cases" in text and "warts injected: 9" in text and f"data check {out}" in text


def test_synth_refuses_to_overwrite_without_force(warty):
    out, _ = warty
    rc, text = run(["data", "synth", "--out", str(out), "--cases", "12", "--seed", "4"])
    assert rc == 1 and "already holds a dataset" in text and "--force" in text


def test_check_tables_list_counts_and_every_wart(warty):
    out, _ = warty
    rc, text = run(["data", "check", str(out)])
    assert rc == 0, text
    for needle in (
        "cases",
        "12 case file(s): 11 read, 1 skipped (malformed or duplicate id)",
        "labels per rule",
        "tirads (active)",
        "mccnn",
        "malformed-xml",
        "truncated-outline",
        "empty-outline",
        "duplicate-image",
        "missing-image",
        "unreadable-image",
        "duplicate-outline",
        "usable:",
    ):
        assert needle in text, needle
    # the 9 injected warts, plus the two cases the cross-case duplicate image links
    assert "10 warts handled" in text


def test_check_json_is_machine_readable(warty):
    out, _ = warty
    rc, text = run(["data", "check", str(out), "--json", "--label-rule", "mccnn"])
    assert rc == 0
    report = json.loads(text)
    assert report["label_rule"] == "mccnn" and report["cases"] == 11 and report["cases_skipped"] == 1
    assert len(report["fingerprint"]) == 64 and len(report["warts"]) == 9
    assert set(report["by_rule"]) == {"tirads", "mccnn"}
    assert report["samples"] == report["samples_by_label"]["benign"] + report["samples_by_label"]["malignant"]


def test_check_exit_code_is_1_when_nothing_is_usable(tmp_path):
    out = tmp_path / "unlabelled"
    assert run(["data", "synth", "--out", str(out), "--cases", "3", "--unlabelled-fraction", "1"])[0] == 0
    rc, text = run(["data", "check", str(out)])
    assert rc == 1 and "no usable labelled ROI" in text
    # The counts are still shown, so the user sees why: every case is excluded.
    assert re.search(r"tirads \(active\)\s*│\s*cases\s*│\s*0\s*│\s*0\s*│\s*3\s*│", text), text


def test_check_errors_are_one_clear_line(tmp_path, monkeypatch):
    rc, text = run(["data", "check", str(tmp_path / "missing")])
    assert rc == 1 and "does not exist" in text and "Traceback" not in text
    monkeypatch.delenv("HFCN_DDTI_DIR", raising=False)
    rc, text = run(["data", "check"])
    assert rc == 1 and "no dataset folder given" in text and "HFCN_DDTI_DIR" in text
    rc, text = run(["data", "check", str(tmp_path)])
    assert rc == 1 and "no DDTI case XMLs" in text


def test_data_without_action_prints_help():
    rc, text = run(["data"])
    assert rc == 2 and "synth" in text and "check" in text


@pytest.mark.ddti
@pytest.mark.skipif(
    not os.environ.get("HFCN_DDTI_DIR"), reason="HFCN_DDTI_DIR is not set (real DDTI files not available)"
)
def test_check_real_ddti():
    rc, text = run(["data", "check", "--json"])  # the folder comes from HFCN_DDTI_DIR
    assert rc == 0
    r = json.loads(text)
    assert (r["cases"], r["frames"]) == (390, 480)
    assert r["by_rule"]["tirads"]["cases"] == {"benign": 52, "malignant": 246, "excluded": 92}
    assert r["by_rule"]["mccnn"]["cases"] == {"benign": 52, "malignant": 86, "excluded": 252}
    assert r["wart_counts"]["truncated-outline"] == 8 and r["wart_counts"]["empty-outline"] == 6
    assert r["wart_counts"]["duplicate-image"] == 9


def test_holdout_writes_two_case_disjoint_datasets(warty, tmp_path):
    import warnings

    from hfcn_bench.data import load_dataset

    src, _ = warty
    rc, text = run(["data", "holdout", str(src), "--out", str(tmp_path / "h"), "--fraction", "0.3"])
    assert rc == 0, text
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = load_dataset(src)
        dev, hold = load_dataset(tmp_path / "h" / "development"), load_dataset(tmp_path / "h" / "holdout")
    a, b = set(dev.case_labels()), set(hold.case_labels())
    assert a and b and not a & b and a | b == set(whole.case_labels())
    assert set(hold.case_labels().values()) == {0, 1}  # stratified: both classes held out
    assert {s.key for s in dev.samples} | {s.key for s in hold.samples} == {s.key for s in whole.samples}
    rc, text = run(["data", "holdout", str(src), "--out", str(tmp_path / "h")])
    assert rc == 1 and "exists" in text and "--force" in text
