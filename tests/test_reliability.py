"""An adversarial user's probes, each one clear line (a traceback only with --debug) and never
a silent wrong result: damaged model files, impossible outlines, symlink loops, output paths
that are files, failed starts, clashing output names, one-class data, bad --set and --weights
values, stray temporary files, interrupted runs; and a fuzz test of the DDTI reader."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import warnings

import pytest
import torch
from clitools import run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from hfcn_bench.data import load_dataset, write_synthetic_ddti

SMOKE = ["--preset", "smoke", "--threads", "1", "--n-boot", "20"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_synthetic_ddti(tmp_path_factory.mktemp("probes") / "ddti", n_cases=20, seed=2)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("probe-runs") / "r"
    rc, text = run(["train", "--data", str(data), "--out", str(out), *SMOKE])
    assert rc == 0, text
    return out


def _copy(run_dir, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(run_dir, dst)
    return dst


def test_flipped_bytes_in_best_pt_are_refused_by_eval_and_predict(trained, data, tmp_path):
    run_dir = _copy(trained, tmp_path)
    raw = bytearray((run_dir / "best.pt").read_bytes())
    for i in range(len(raw) // 3, len(raw) // 3 + 2000):
        raw[i] ^= 0xFF
    (run_dir / "best.pt").write_bytes(bytes(raw))
    rc, text = run(["eval", "--run", str(run_dir)])
    assert rc == 1 and "best.pt" in text and "damaged" in text and "Traceback" not in text
    assert "--checkpoint last" in text and "retrain" in text
    rc, text = run(["predict", "--run", str(run_dir), str(data / "xml" / "1.xml"), "--no-png"])
    assert rc == 1 and "best.pt" in text and "damaged" in text


def test_an_outline_far_outside_its_frame_is_not_predicted(trained, data, tmp_path):
    root = tmp_path / "ddti"
    shutil.copytree(data, root)
    xml = root / "xml" / "4.xml"
    text = xml.read_text()
    start, end = text.index("<svg>") + 5, text.index("</svg>")
    region = [
        {
            "points": [{"x": x, "y": y} for x, y in ((900, 700), (980, 700), (980, 760))],
            "annotation": {},
            "regionType": "freehand",
        }
    ]
    xml.write_text(text[:start] + json.dumps(region) + text[end:])
    rc, out = run(["predict", "--run", str(trained), str(xml), "--no-png", "--json"])
    res = json.loads(out) if rc == 0 else None
    if res is None:  # every ROI of the case was that outline: an error naming it
        assert "outline-outside-frame" in out and "4.xml" in out
    else:
        assert any("outline-outside-frame" in n and "4.xml" in n for n in res["notes"])
        assert all(r["frame"] != 1 for r in res["rows"])


def test_a_symlink_loop_among_the_frames_does_not_stop_training(data, tmp_path):
    root = tmp_path / "ddti"
    shutil.copytree(data, root)
    os.symlink("9_9.jpg", root / "raw_jpg" / "9_9.jpg")
    xml = root / "xml" / "9.xml"
    xml.write_text(xml.read_text().replace("</case>", "<mark><image>9</image><svg></svg></mark></case>"))
    rc, text = run(["data", "check", str(root)])
    assert rc == 0 and "raw_jpg/9_9.jpg" in text and "Traceback" not in text
    rc, text = run(["train", "--data", str(root), "--out", str(tmp_path / "r"), *SMOKE])
    assert rc == 0, text


@pytest.mark.parametrize("cmd", ["train", "predict", "compare", "rank", "synth", "eval", "reproduce"])
def test_an_output_path_that_is_a_file_is_one_clear_line(cmd, trained, data, tmp_path):
    f = tmp_path / "taken"
    f.write_text("not a folder")
    argv = {
        "train": ["train", "--data", str(data), "--out", str(f), *SMOKE],
        "predict": ["predict", "--run", str(trained), str(data / "xml" / "1.xml"), "--out", str(f)],
        "compare": ["compare", "--preset", "smoke", "--only", "metrics", "--out", str(f)],
        "rank": ["rank", str(trained), "--out", str(f)],
        "synth": ["data", "synth", "--out", str(f), "--cases", "10"],
        "eval": ["eval", "--run", str(trained), "--out", str(f)],
        "reproduce": ["reproduce", "--data", str(data), "--preset", "smoke", "--out", str(f)],
    }[cmd]
    rc, text = run(argv)
    assert rc == 1 and "is a file" in text and "Traceback" not in text, text
    assert f.read_text() == "not a folder"


def test_a_failed_start_does_not_block_a_plain_rerun(data, tmp_path):
    out = tmp_path / "r"
    if not torch.cuda.is_available():
        rc, text = run(["train", "--data", str(data), "--out", str(out), "--device", "cuda", *SMOKE])
        assert rc == 1 and "no CUDA GPU" in text
    # a start that failed after the header was written (killed before its first epoch)
    out.mkdir(exist_ok=True)
    (out / "config.json").write_text(json.dumps({"format": "hfcn-bench/run", "version": 2, "status": "running"}))
    rc, text = run(["train", "--data", str(data), "--out", str(out), *SMOKE])
    assert rc == 0, text


def test_predict_never_overwrites_its_own_pictures(trained, data, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    src = sorted((data / "raw_jpg").glob("*.jpg"))
    shutil.copy(src[0], a / "1_1.jpg")
    shutil.copy(src[1], b / "1_1.jpg")
    rc, text = run(
        [
            "predict",
            "--run",
            str(trained),
            str(a / "1_1.jpg"),
            str(b / "1_1.jpg"),
            "--out",
            str(tmp_path / "pics"),
            "--json",
        ]
    )
    assert rc == 0, text
    rows = json.loads(text)["rows"]
    pngs = [r["png"] for r in rows]
    assert len(rows) == 2 and len(set(pngs)) == 2 and all(os.path.isfile(p) for p in pngs)
    assert {r["input"] for r in rows} == {str(a / "1_1.jpg"), str(b / "1_1.jpg")}


def test_one_class_data_refuses_to_train(tmp_path):
    (tmp_path / "data" / "benign").mkdir(parents=True)
    for i in range(6):
        Image.new("L", (40, 40), 30 * i).save(tmp_path / "data" / "benign" / f"{i}.png")
    rc, text = run(["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "r"), *SMOKE])
    assert rc == 1 and "no malignant ROI" in text and "both classes" in text
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "content, needle",
    [
        (lambda p: torch.save({"a": 1, "b": [2, 3]}, p), "does not hold a state dict"),
        (lambda p: torch.save([torch.ones(2)], p), "does not hold a state dict"),
        (lambda p: p.write_text("hello, not weights"), "cannot read weights file"),
        (lambda p: p.write_bytes(pickle.dumps(print)), "cannot read weights file"),
    ],
)
def test_bad_weights_files_are_one_line_without_dangerous_advice(content, needle, data, tmp_path):
    path = tmp_path / "w.pt"
    content(path)
    rc, text = run(["train", "--data", str(data), "--out", str(tmp_path / "r"), *SMOKE, "--weights", str(path)])
    assert rc == 1 and needle in text and "w.pt" in text and "Traceback" not in text
    assert "weights_only=False" not in text


def test_stray_temp_files_of_a_killed_write_are_removed_by_the_next_run(trained, tmp_path):
    run_dir = _copy(trained, tmp_path)
    stray = [run_dir / ".last.pt.k3j2h1.tmp", run_dir / ".metrics.json.x9y8.tmp"]
    for p in stray:
        p.write_bytes(b"half a file")
    rc, text = run(["train", "--out", str(run_dir), "--resume", "--n-boot", "20"])
    assert rc == 0, text
    assert not any(p.exists() for p in stray)


def test_eval_and_rank_say_a_run_stopped_before_its_last_epoch(data, tmp_path):
    out = tmp_path / "r"

    class Stop(Exception):
        pass

    from hfcn_bench.data import split_train_test
    from hfcn_bench.runs import train_run
    from hfcn_bench.systems import hfcn_training as T

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = load_dataset(data)

    def stop_at_two(kind, done, total, info):
        if kind == "epoch" and done == 2:
            raise Stop

    with pytest.raises(Stop):
        train_run(
            "hfcn",
            T.preset_config("smoke", epochs=6, threads=1),
            ds,
            [split_train_test(ds, 0.25, seed=0)],
            out_dir=out,
            progress=stop_at_two,
        )
    for argv in (["eval", "--run", str(out)], ["rank", str(out)]):
        rc, text = run(argv)
        assert rc == 1 and "did not finish training (stopped training at epoch 2 of 6)" in text, text
        assert "--resume" in text


# ---------------------------------------------------------------------------------------------
# fuzz: whatever the bytes, the reader reports, never raises, and names every file it skipped


@pytest.fixture(scope="module")
def fuzz_base(tmp_path_factory):
    return write_synthetic_ddti(tmp_path_factory.mktemp("fuzz") / "ddti", n_cases=4, seed=5)


_MUTATIONS = st.sampled_from(["truncate", "flip", "entity", "huge", "negative", "garbage"])


def _mutate(data: bytes, how: str, pos: float, is_xml: bool) -> bytes:
    i = max(1, int(len(data) * pos))
    if how == "truncate":
        return data[:i]
    if how == "flip":
        b = bytearray(data)
        for k in range(i, min(len(b), i + 64)):
            b[k] ^= 0xA5
        return bytes(b)
    if how == "entity" and is_xml:
        return (
            b'<?xml version="1.0"?><!DOCTYPE case [<!ENTITY x SYSTEM "file:///etc/passwd">'
            b'<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
            + data.replace(b"<number>", b"<number>&x;&b;", 1)
        )
    if how == "huge" and is_xml:
        return data.replace(b'"x": ', b'"x": 99999999999999999999', 3)
    if how == "negative" and is_xml:
        return data.replace(b'"y": ', b'"y": -', 5)
    return data[:i] + bytes(range(256)) * 2 + data[i:]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=st.sampled_from(["1.xml", "2.xml", "1_1.jpg", "3_1.jpg"]), how=_MUTATIONS, pos=st.floats(0.05, 0.95))
def test_fuzzed_files_never_crash_the_reader(fuzz_base, tmp_path_factory, target, how, pos):
    root = tmp_path_factory.mktemp("case") / "ddti"
    shutil.copytree(fuzz_base, root)
    is_xml = target.endswith(".xml")
    path = root / ("xml" if is_xml else "raw_jpg") / target
    path.write_bytes(_mutate(path.read_bytes(), how, pos, is_xml))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clean = load_dataset(fuzz_base)
        ds = load_dataset(root)  # must not raise
    rel = f"{'xml' if is_xml else 'raw_jpg'}/{target}"
    case = target.split(".")[0].split("_")[0]
    lost = {s.key for s in clean.samples if s.case_id == case} - {s.key for s in ds.samples if s.case_id == case}
    if lost:  # whatever of the case went missing is accounted for by a wart naming the file
        assert any(w.file == rel for w in ds.report.warts), (how, [w.to_dict() for w in ds.report.warts])
    assert "passwd" not in json.dumps([s.to_dict() for s in ds.samples])  # no external entity resolved
