"""pytest-benchmark suite: what a training step of each HFCN variant costs (paper backbone,
batch 16, 224 x 224, CPU), and the crop op alone on the feature map it crops.

Run with ``pytest --benchmark bench/test_bench_model.py`` (add ``--benchmark-min-rounds=3`` for a
quick look, ``--benchmark-json`` to keep the numbers). Nothing here asserts a time: the ratios
are reported by ``hfcn_bench.bench.model_cost.compare_model_costs``. The models of every variant
share one set of weights, and each fused variant is checked against its naive twin before it is
timed.

The variants run one after another here, so load from other processes can favour one of them;
``compare_model_costs`` interleaves them. On a small VM, set ``OMP_WAIT_POLICY=PASSIVE`` (or one
thread): libgomp's default wait policy slowed small kernels, hence the naive crop, 10-80x there.
"""

from __future__ import annotations

import pytest
import torch

from hfcn_bench import ops
from hfcn_bench.bench.model_cost import MODES, PAPER_SGD, check_parity, mode_config
from hfcn_bench.models import HFCNConfig, build_model, hfcn_loss
from hfcn_bench.models.hfcn import naive_crop_resize

BATCH, SIZE = 16, 224
TRAIN_MODES = ("none", "rfc", "bfc", "bfc-naive", "image")


@pytest.fixture(scope="module")
def weights():
    torch.manual_seed(0)
    return build_model(HFCNConfig(crop="none", input_size=SIZE)).state_dict()


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(BATCH, 3, SIZE, SIZE, generator=g), torch.arange(BATCH) % 2


def _model(mode, weights):
    m = build_model(mode_config(mode, HFCNConfig(input_size=SIZE)))
    m.load_state_dict(weights)
    return m


@pytest.mark.parametrize("mode", TRAIN_MODES)
def test_train_step(benchmark, mode, weights, batch):
    x, y = batch
    model = _model(mode, weights)
    crop, impl = MODES[mode]
    if crop != "none" and impl == "fused":
        check_parity(model, _model(f"{mode}-naive", weights), x[:2])
    opt = torch.optim.SGD(model.parameters(), **PAPER_SGD)
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        hfcn_loss(model(x), y).backward()
        opt.step()

    step()  # warm-up: oneDNN primitives, allocator
    benchmark.group = f"train-step paper {BATCH}x{SIZE}"
    benchmark.extra_info.update(mode=mode, crop_backend=model.crop_backend, threads=torch.get_num_threads())
    benchmark(step)


@pytest.mark.parametrize("mode", TRAIN_MODES)
def test_inference(benchmark, mode, weights, batch):
    x, _ = batch
    model = _model(mode, weights).eval()

    def forward():
        with torch.inference_mode():
            return model(x)

    forward()
    benchmark.group = f"inference paper {BATCH}x{SIZE}"
    benchmark.extra_info.update(mode=mode, crop_backend=model.crop_backend, threads=torch.get_num_threads())
    benchmark(forward)


@pytest.mark.parametrize("impl", ["fused", "naive"])
def test_crop_op_forward_backward(benchmark, impl):
    # The shape the BFC branch crops: 16 x 128 x 14 x 14, five windows of 8 x 8 back to 14 x 14.
    x = torch.randn(BATCH, 128, 14, 14, requires_grad=True)
    boxes = ops.boundary_boxes(14, 14, 0.6)
    rows = [tuple(r) for r in boxes.tolist()]
    grad = torch.randn(BATCH, 5, 128, 14, 14)
    if impl == "fused":
        if not ops.load_extension():
            pytest.skip(f"crop_resize extension not built: {ops.extension_error()}")
        fn = lambda: ops.CropResizeFunction.apply(x, boxes, 14, 14)  # noqa: E731
    else:
        fn = lambda: naive_crop_resize(x, rows, (14, 14))  # noqa: E731
    torch.testing.assert_close(
        ops.CropResizeFunction.apply(x, boxes, 14, 14) if ops.load_extension() else fn(),
        naive_crop_resize(x, rows, (14, 14)),
    )

    def run():
        x.grad = None
        fn().backward(grad)

    benchmark.group = f"crop op fwd+bwd {BATCH}x128x14x14, 5 BFC crops"
    benchmark.extra_info.update(impl=impl, backend=ops.backend() if impl == "fused" else "naive")
    benchmark(run)
