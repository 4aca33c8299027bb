"""Grad-CAM (systems/gradcam.py): the map equals its definition on a model whose gradients are
known in closed form, leaves a shared model's parameter gradients alone, and explains the CNN
comparators (MC-CNN's pyramid network alone and behind its detector, the two-stage system's
ResNet-18) on the very ROI tensor their prediction uses; their pictures draw."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from hfcn_bench.systems.gradcam import gradcam, gradcam_map


class _GapHead(nn.Module):
    """conv -> global average pool -> fixed linear score: d score / d A_c = v_c / (h w)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.v = nn.Parameter(torch.randn(6))

    def forward(self, x):
        return (self.conv(x).mean(dim=(2, 3)) * self.v).sum(dim=1)


def test_the_map_is_grad_cam_by_definition_and_touches_no_parameter_gradient():
    model = _GapHead()
    x = torch.randn(1, 3, 9, 7)
    out, cam, hw = gradcam(model, model.conv, x, lambda o: o[0])
    with torch.no_grad():
        a = model.conv(x)[0].numpy()
    weights = model.v.detach().numpy() / (9 * 7)
    want = np.maximum((weights[:, None, None] * a).sum(0), 0)
    want = want / want.max()
    assert hw == (9, 7) and cam.shape == (9, 7) and cam.dtype == np.float32
    np.testing.assert_allclose(cam, want, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        assert float(out) == pytest.approx(float(model(x)))
    assert all(p.grad is None for p in model.parameters())


def test_a_score_that_nothing_raises_gives_a_zero_map_not_nan():
    feat = torch.ones(4, 3, 3)
    assert np.array_equal(gradcam_map(feat, -torch.ones(4, 3, 3)), np.zeros((3, 3), np.float32))


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    from hfcn_bench.data import load_dataset
    from hfcn_bench.data.synthetic import write_synthetic_ddti

    root = write_synthetic_ddti(tmp_path_factory.mktemp("gc") / "ddti", n_cases=12, seed=3)
    return load_dataset(root, warn=False).samples


@pytest.mark.parametrize(
    "name, over",
    [
        ("mccnn_spp", {"epochs": 1}),
        ("mccnn_cascade", {"epochs": 1, "det_epochs": 1}),
        ("two_stage", {"epochs": 1, "seg_epochs": 1, "rf_trees": 10}),
    ],
)
def test_cnn_comparators_explain_the_roi_they_classify(name, over, samples):
    from hfcn_bench.bench.figures import figure_rgb, prediction_figure
    from hfcn_bench.runs import Prediction
    from hfcn_bench.systems import get_system
    from hfcn_bench.systems import roi_classifier as RC

    system = get_system(name)
    cfg = system.configure("smoke", {"threads": 1, **over})
    fitted = system.fit(samples, cfg)
    s = samples[0]
    clf = fitted.models["classifier"]
    # training leaves gradients in the parameters; explaining must not change them
    before = [None if p.grad is None else p.grad.clone() for p in clf.parameters()]
    info = system.explain(fitted, s)
    # the ROI tensor is the one prediction uses: the same P(malignant)
    assert info["prob"] == pytest.approx(float(RC.predict_rois(clf, [s], cfg, []).prob[0]), abs=1e-6)
    cam = np.asarray(info["cam"])
    assert cam.shape == info["feature_hw"] and np.isfinite(cam).all() and cam.min() >= 0 and cam.max() <= 1
    assert info["roi"].shape == (256, 256, 3) and "trunk" in info["cam_of"]
    for p, g in zip(clf.parameters(), before):
        assert (p.grad is None and g is None) or torch.equal(p.grad, g)
    pred = Prediction(s, info["prob"], 0.5, {"main": info["prob"]}, {}, info, tuple(s.bbox))
    fig = prediction_figure(pred, f"{name} test")
    assert len(fig.axes) == 2 and "Grad-CAM" in fig.axes[1].get_title()
    assert figure_rgb(fig).shape[2] == 3
