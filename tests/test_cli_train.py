"""``hfcn-bench train | eval | predict`` end to end on tiny phantoms, against a captured console:
one code path for HFCN and the comparators, external validation, prediction from any run."""

from __future__ import annotations

import json
import shutil

import pytest
from clitools import run
from PIL import Image

from hfcn_bench import ops
from hfcn_bench.data import write_synthetic_ddti

TINY = ["--preset", "quick", "--image-size", "32", "--epochs", "1", "--threads", "1", "--n-boot", "30"]


@pytest.fixture(scope="module")
def data(phantoms):
    return phantoms


@pytest.fixture(scope="module")
def other(tmp_path_factory):
    """A second phantom set made with another seed: external data for the runs on ``data``."""
    return write_synthetic_ddti(tmp_path_factory.mktemp("cli-external") / "ddti", n_cases=16, seed=7)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    # the old form: HFCN's own flags, no --system
    out = tmp_path_factory.mktemp("cli-runs") / "r"
    rc, text = run(["train", "--data", str(data), "--out", str(out), "--crop", "bfc", *TINY])
    assert rc == 0, text
    return out, text


def test_train_prints_metrics_beside_the_baseline(trained):
    out, text = trained
    for needle in (
        "ROC-AUC",
        "PR-AUC",
        "F1 (eq. 12)",
        "specificity",
        "majority baseline",
        "95% CI",
        "confusion matrix",
        "decision threshold",
        "youden on validation",
        "epoch 1/1",
        "Brier score",
        "tirads rule",
        "TI-RADS proxy, not pathology",
        "run folder",
    ):
        assert needle in text, needle
    for name in (
        "config.json",
        "split.json",
        "best.pt",
        "last.pt",
        "history.json",
        "metrics.json",
        "predictions.csv",
        "fitted.json",
    ):
        assert (out / name).is_file(), name
    # the fused op really ran (not the pure-PyTorch fallback the parity rows would compare with)
    assert ops.backend() in ("cpp-cpu", "cuda")


@pytest.mark.parametrize("system", ["hfcn", "shape_rf"])
def test_train_any_system_with_its_preset(system, data, tmp_path):
    out = tmp_path / system
    rc, text = run(
        [
            "train",
            "--data",
            str(data),
            "--system",
            system,
            "--preset",
            "quick",
            "--threads",
            "1",
            "--n-boot",
            "30",
            "--out",
            str(out),
            *(["--set", "epochs=1", "--set", "image_size=32"] if system == "hfcn" else []),
        ]
    )
    assert rc == 0, text
    header = json.loads((out / "config.json").read_text())
    assert header["system"] == system and header["preset"] == "quick" and header["status"] == "finished"
    stored = json.loads((out / "metrics.json").read_text())
    # the console shows the report's own numbers
    assert f"{stored['auc']:.3f}" in text and f"{stored['metrics']['f1']:.3f}" in text


def test_two_stage_with_a_transunet_segmenter(data, tmp_path):
    # issue 25's acceptance command: the report names the segmenter and gives its Dice
    out = tmp_path / "ts"
    argv = ["train", "--data", str(data), "--system", "two_stage", "--set", "segmenter=transunet-small"]
    rc, text = run([*argv, "--preset", "smoke", "--n-boot", "20", "--out", str(out)])
    assert rc == 0, text
    rep = json.loads((out / "metrics.json").read_text())
    seg = rep["segmentation"]
    assert seg["segmenter"] == "transunet-small" and 0.0 <= seg["dice"] <= 1.0
    assert f"segmentation: segmenter transunet-small, frames {seg['frames']}, dice {seg['dice']:.3f}" in text
    assert "limitation: segmenter: transunet-small, a reduced TransUNet" in text
    assert json.loads((out / "config.json").read_text())["config"]["segmenter"] == "transunet-small"
    # eval rebuilds the TransUNet from the run's config and reproduces the report
    rc, again = run(["eval", "--run", str(out), "--n-boot", "20", "--out", str(tmp_path / "ev")])
    assert rc == 0, again
    assert f"dice {seg['dice']:.3f}" in again


def test_two_stage_refuses_a_cuda_segmenter_without_a_gpu_before_writing(data, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the no-GPU refusal cannot be exercised")
    out = tmp_path / "ts"
    rc, text = run(["train", "--data", str(data), "--system", "two_stage", "--set", "device=cuda", "--out", str(out)])
    assert rc == 1 and "device 'cuda' requested but torch sees no CUDA GPU" in text
    assert not out.exists()


def test_train_refuses_an_existing_run(trained, data):
    out, _ = trained
    rc, text = run(["train", "--data", str(data), "--out", str(out), *TINY])
    assert rc == 1 and "already holds a finished run" in text and "--force" in text


def test_resume_extends_a_run_and_refuses_other_settings(data, tmp_path):
    out = tmp_path / "r"
    assert run(["train", "--data", str(data), "--out", str(out), *TINY])[0] == 0
    rc, text = run(["train", "--out", str(out), "--resume", "--lr", "0.5"])
    assert rc == 1 and "lr" in text and "--resume keeps the run's settings" in text
    rc, text = run(["train", "--out", str(out), "--resume", "--epochs", "2", "--n-boot", "30"])
    assert rc == 0, text
    assert "resuming" in text and "epoch 2/2" in text and "epoch 1/2" not in text
    hist = json.loads((out / "history.json").read_text())["history"]
    assert [r["epoch"] for r in hist] == [1, 2]
    rc, text = run(["train", "--out", str(tmp_path / "nothing"), "--resume"])
    assert rc == 1 and "nothing to resume" in text


def test_eval_reproduces_the_training_report(trained, tmp_path):
    out, _ = trained
    rc, text = run(["eval", "--run", str(out), "--json"])
    assert rc == 0, text
    report = json.loads(text)
    stored = json.loads((out / "metrics.json").read_text())
    assert report["external"] is False
    assert report["auc"] == stored["auc"] and report["threshold"] == stored["threshold"]
    assert report["metrics"]["confusion_matrix"] == stored["metrics"]["confusion_matrix"]
    rc, text = run(["eval", "--run", str(out), "--per-case", "mean", "--out", str(tmp_path / "ev")])
    assert rc == 0, text
    assert "cases; malignant = positive" in text and "level: case-mean" in text
    assert json.loads((tmp_path / "ev" / "eval_report.json").read_text())["level"] == "case-mean"


def test_eval_on_another_dataset_is_external_validation(trained, other, tmp_path):
    out, _ = trained
    rc, text = run(["eval", "--run", str(out), "--data", str(other), "--json", "--out", str(tmp_path / "ext")])
    assert rc == 0, text
    rep = json.loads(text)
    stored = json.loads((out / "metrics.json").read_text())
    assert rep["external"] is True and isinstance(rep["metrics"]["auc"], float)
    assert rep["threshold"] == pytest.approx(stored["threshold"])  # never re-tuned
    assert 0 < rep["prevalence"]["training"] < 1 and 0 < rep["prevalence"]["external"] < 1
    for name in ("eval_report.json", "eval_report.md", "eval_report.csv", "reliability.png"):
        assert (tmp_path / "ext" / name).is_file(), name
    md = (tmp_path / "ext" / "eval_report.md").read_text()
    assert "external validation" in md and "Prevalence" in md and "TI-RADS proxy" in md
    rc, text = run(["eval", "--run", str(out), "--data", str(other)])
    assert rc == 0 and "prevalence (malignant share of ROIs): training" in text


def test_eval_refuses_an_external_set_holding_training_images(trained, data, other, tmp_path):
    out, _ = trained
    leaky = tmp_path / "leaky"
    shutil.copytree(other, leaky)
    train_cases = json.loads((out / "split.json").read_text())["splits"][0]["train"]
    src = sorted((data / "raw_jpg").glob(f"{train_cases[0]}_*.jpg"))[0]
    (leaky / "raw_jpg" / "2_1.jpg").write_bytes(src.read_bytes())
    rc, text = run(["eval", "--run", str(out), "--data", str(leaky)])
    text = " ".join(text.split())  # the console wraps long temporary paths
    assert rc == 1 and "training images" in text and "raw_jpg/2_1.jpg" in text
    assert f"training case {train_cases[0]}" in text and "--allow-overlap" in text
    rc, text = run(["eval", "--run", str(out), "--data", str(leaky), "--allow-overlap", "--json"])
    assert rc == 0 and json.loads(text)["overlap"]


def test_predict_xml_and_image_with_pictures(trained, data, tmp_path):
    out, _ = trained
    pics = tmp_path / "pics"
    xml = data / "xml" / "3.xml"
    img = sorted((data / "raw_jpg").glob("*.jpg"))[0]
    rc, text = run(["predict", "--run", str(out), str(xml), str(img), "--out", str(pics), "--json"])
    assert rc == 0, text
    res = json.loads(text)
    assert not res["errors"] and len(res["rows"]) >= 2
    kinds = {r["kind"] for r in res["rows"]}
    assert "outline" in kinds and "whole image" in kinds
    for r in res["rows"]:
        assert 0.0 <= r["prob"] <= 1.0 and len(r["crop_probs"]) == 5
        # the fused probability is eq. 1 of its parts (w = 0.5)
        assert r["prob"] == pytest.approx(0.5 * r["global_prob"] + 0.5 * r["crop_prob"], abs=1e-5)
        with Image.open(r["png"]) as im:
            assert im.format == "PNG" and im.width > 300
    rc, text = run(
        [
            "predict",
            "--run",
            str(out),
            str(xml),
            str(tmp_path / "missing.jpg"),
            str(data / "synthetic.json"),
            "--no-png",
        ]
    )
    assert rc == 1
    assert "P(malignant) per ROI" in text and "3.xml" in text
    assert "missing.jpg: no such file" in text and "synthetic.json: not a case XML or an image" in text


def test_kfold_training_and_the_mean_of_its_fold_models(data, other, tmp_path):
    out = tmp_path / "cv"
    rc, text = run(["train", "--data", str(data), "--out", str(out), "--folds", "3", *TINY])
    assert rc == 0, text
    assert "3 folds" in text and "pooled out-of-fold" in text and "mean ± sd" in text
    rc, text = run(["eval", "--run", str(out), "--json"])
    assert rc == 0, text
    assert json.loads(text)["kind"] == "kfold"
    rc, text = run(["eval", "--run", str(out), "--data", str(other), "--json"])
    rep = json.loads(text)
    assert rc == 0 and rep["models"] == 3 and "mean P(malignant) of the 3 fold models" in rep["ensemble"]
    # the ensemble's threshold is the mean of the folds'
    fold_thr = [f["threshold"] for f in json.loads((out / "metrics.json").read_text())["folds"]]
    assert rep["threshold"] == pytest.approx(sum(fold_thr) / 3)
    rc, text = run(["predict", "--run", str(out), str(data / "xml" / "3.xml"), "--no-png"])
    assert rc == 0, text
    rc, text = run(["predict", "--run", str(out), "--fold", "1", str(data / "xml" / "3.xml"), "--no-png"])
    assert rc == 0, text
    rc, text = run(["predict", "--run", str(out), "--fold", "7", str(data / "xml" / "3.xml"), "--no-png"])
    assert rc == 1 and "has folds 0..2, not 7" in text


def test_train_system_scores_a_comparator_on_the_same_split(data, tmp_path):
    out = tmp_path / "sys"
    code, text = run(
        [
            "train",
            "--data",
            str(data),
            "--system",
            "shape_rf",
            "--set",
            "n_estimators=20",
            "--threads",
            "1",
            "--n-boot",
            "20",
            "--out",
            str(out),
        ]
    )
    assert code == 0, text
    assert "shape_rf on held-out cases" in text and "limitation:" in text
    rep = json.loads((out / "metrics.json").read_text())
    assert rep["system"]["name"] == "shape_rf" and rep["system_config"]["n_estimators"] == 20
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["system"] == "shape_rf" and cfg["data"]["fingerprint"] == rep["data"]["fingerprint"]
    # the split is the one `train` gives HFCN with the same seed and test fraction
    from hfcn_bench.data import load_dataset, read_manifest, split_train_test

    ds = load_dataset(data)
    split = split_train_test(ds, test_fraction=0.25, seed=0)
    assert read_manifest(out / "split.json").splits[0].test == split.test
    assert rep["n_cases"] == len(split.test)


def test_set_works_for_hfcn_too_and_every_field_is_settable(data, tmp_path):
    out = tmp_path / "h"
    code, text = run(
        [
            "train",
            "--data",
            str(data),
            *TINY,
            "--set",
            "loss_reduction=sum",
            "--set",
            "letterbox=true",
            "--eval-batch-size",
            "8",
            "--out",
            str(out),
        ]
    )
    assert code == 0, text
    cfg = json.loads((out / "config.json").read_text())["config"]
    assert (cfg["loss_reduction"], cfg["letterbox"], cfg["eval_batch_size"]) == ("sum", True, 8)


def test_train_refuses_hfcn_flags_for_others_and_bad_overrides(data, tmp_path):
    code, text = run(["train", "--data", str(data), "--system", "shape_rf", "--epochs", "3", "--out", str(tmp_path)])
    assert code == 1 and "--epochs sets HFCN's training, not shape_rf's" in text and "n_estimators" in text
    code, text = run(["train", "--data", str(data), "--set", "det_epochs=3", "--out", str(tmp_path / "a")])
    assert code == 1 and "hfcn has no field 'det_epochs'" in text
    code, text = run(
        ["train", "--data", str(data), "--system", "shape_rf", "--set", "trees=3", "--out", str(tmp_path / "b")]
    )
    assert code == 1 and "shape_rf has no field 'trees'" in text
    code, text = run(
        [
            "train",
            "--data",
            str(data),
            "--system",
            "shape_rf",
            "--set",
            "n_estimators=abc",
            "--out",
            str(tmp_path / "b"),
        ]
    )
    assert code == 1 and "n_estimators expects an integer, got 'abc'" in text
    code, text = run(["train", "--data", str(data), "--system", "yolo", "--out", str(tmp_path / "c")])
    assert code == 1 and "unknown system 'yolo'" in text and "mccnn_cascade" in text
    code, text = run(
        ["train", "--data", str(data), "--system", "shape_rf", "--preset", "paper", "--out", str(tmp_path / "d")]
    )
    assert code == 1 and "shape_rf has no preset 'paper'" in text


def test_weights_flag_loads_a_local_state_dict(data, tmp_path):
    import torch
    import torchvision

    path = tmp_path / "effnet.pt"
    torch.save(torchvision.models.efficientnet_b0(weights=None).state_dict(), path)
    out = tmp_path / "svm"
    code, text = run(
        [
            "train",
            "--data",
            str(data),
            "--system",
            "transfer_svm",
            "--set",
            "backbone=efficientnet_b0",
            "--set",
            "image_size=32",
            "--threads",
            "1",
            "--n-boot",
            "20",
            "--weights",
            str(path),
            "--out",
            str(out),
        ]
    )
    assert code == 0, text
    rep = json.loads((out / "metrics.json").read_text())
    assert rep["system_config"]["weights"] == str(path)
    assert any(f"trunk weights from {path}" in lim for lim in rep["limitations"])
    assert not any("randomly initialised" in lim for lim in rep["limitations"])
    # a file that is not there is one clear error naming it, before any training
    code, text = run(
        [
            "train",
            "--data",
            str(data),
            "--system",
            "transfer_svm",
            "--weights",
            str(tmp_path / "no.pt"),
            "--out",
            str(tmp_path / "a"),
        ]
    )
    assert code == 1 and "no.pt" in text and "not found" in text


def test_hfcn_accepts_weights(data, tmp_path):
    import torch

    from hfcn_bench.models import build_backbone

    torch.manual_seed(3)
    path = tmp_path / "paper.pt"
    torch.save(build_backbone("paper").state_dict(), path)
    out = tmp_path / "w"
    code, text = run(["train", "--data", str(data), *TINY, "--weights", str(path), "--out", str(out)])
    assert code == 0, text
    assert json.loads((out / "config.json").read_text())["config"]["weights"] == str(path)
    assert any("backbone weights from" in lim for lim in json.loads((out / "metrics.json").read_text())["limitations"])


def test_weights_flag_is_refused_where_there_is_no_trunk(data, tmp_path):
    code, text = run(
        ["train", "--data", str(data), "--system", "shape_rf", "--weights", "w.pt", "--out", str(tmp_path / "a")]
    )
    assert code == 1 and "shape_rf has no pretrained trunk" in text and "transfer_svm" in text


def test_eval_refuses_near_duplicates_of_training_images(trained, data, tmp_path):
    """The external set is the training set in disguise: its frames re-encoded at JPEG quality
    75, cropped to 90 % and renumbered (a folder-format copy). Byte checks miss every one of
    them; the near-duplicate check names the files and their training twins."""
    out, _ = trained
    train_cases = json.loads((out / "split.json").read_text())["splits"][0]["train"]
    frames = [p for c in train_cases[:6] for p in sorted((data / "raw_jpg").glob(f"{c}_*.jpg"))]
    disguised = tmp_path / "disguised"
    for i, src in enumerate(frames):
        im = Image.open(src).convert("RGB")
        w, h = im.size
        dx, dy = round(w * 0.05), round(h * 0.05)
        folder = disguised / ("benign" if i % 2 else "malignant")
        folder.mkdir(parents=True, exist_ok=True)
        im.crop((dx, dy, w - dx, h - dy)).save(folder / f"img{900 + i}.jpg", quality=75)
    rc, text = run(["eval", "--run", str(out), "--data", str(disguised)])
    text = " ".join(text.split())
    assert rc == 1 and "near-duplicates" in text and "--allow-overlap" in text, text
    assert f"{len(frames)} image(s)" in text and "0 with the same bytes" in text
    rc, text = run(["eval", "--run", str(out), "--data", str(disguised), "--allow-overlap", "--json"])
    assert rc == 0, text
    rep = json.loads(text)
    assert len(rep["overlap"]) == len(frames)
    for i, src in enumerate(frames):  # each file named with its own training twin
        name = f"{'benign' if i % 2 else 'malignant'}/img{900 + i}.jpg"
        assert any(
            o.startswith(f"{name} (near-duplicate of training image raw_jpg/{src.name}:") for o in rep["overlap"]
        )


def test_an_overlapping_external_result_carries_its_overlap_count_everywhere(trained, data, tmp_path):
    """``eval --allow-overlap`` on a set holding training images (2 byte copies, 3 disguised
    copies, 3 other images): the report, ``rank`` (table, JSON, Markdown) and the
    model card all say how many of its images are training images, not just its AUC."""
    from hfcn_bench.app.card import card_markdown, model_card

    out, _ = trained
    train_cases = json.loads((out / "split.json").read_text())["splits"][0]["train"]
    frames = [p for c in train_cases for p in sorted((data / "raw_jpg").glob(f"{c}_*.jpg"))][:5]
    others = sorted(write_synthetic_ddti(tmp_path / "o", n_cases=6, seed=11).glob("raw_jpg/*.jpg"))[:3]
    mixed = tmp_path / "mixed"
    for i, src in enumerate(frames + others):
        folder = mixed / ("benign" if i % 2 else "malignant")
        folder.mkdir(parents=True, exist_ok=True)
        im = Image.open(src).convert("RGB")
        if i < 2 or i >= 5:
            shutil.copy(src, folder / f"x{i}.jpg")
        else:
            w, h = im.size
            im.crop((w // 20, h // 20, w - w // 20, h - h // 20)).save(folder / f"x{i}.jpg", quality=75)
    rc, text = run(["eval", "--run", str(out), "--data", str(mixed), "--allow-overlap", "--out", str(tmp_path / "ev")])
    text = " ".join(text.split())
    assert rc == 0, text
    note = "5 of 8 external images are training images of the run (2 same bytes, 3 near-duplicates)"
    assert note in text
    rep = json.loads((tmp_path / "ev" / "eval_report.json").read_text())
    assert rep["overlap_count"] == {"images": 5, "same_bytes": 2, "near_duplicates": 3, "of": 8}
    md = (tmp_path / "ev" / "eval_report.md").read_text()
    assert f"**Overlap: {note}" in md and md.index("Overlap") < md.index("| output |")
    assert "5" == (tmp_path / "ev" / "eval_report.csv").read_text().splitlines()[1].split(",")[-1]

    rc, text = run(["rank", str(tmp_path / "ev"), "--out", str(tmp_path / "rank")], width=400)
    assert rc == 0 and note in text, text
    ranked = json.loads((tmp_path / "rank" / "rank.json").read_text())
    (row,) = ranked["rows"]
    assert row["overlap"] == 5 and note in row["note"]
    assert "5 external image(s) are training images of its run" in (tmp_path / "rank" / "rank.md").read_text()

    card = model_card(out)
    (ext,) = [e for e in card["external"] if e["fingerprint"] == rep["data"]["fingerprint"]]
    assert ext["overlap"] == 5 and ext["auc"] == rep["auc"]
    assert f"**Overlap: {note}" in card_markdown(card)
