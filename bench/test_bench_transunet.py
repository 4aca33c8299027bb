"""pytest-benchmark suite: what TransUNet costs on the CPU, the paper's configuration
(``transunet``: R50 + ViT-B/16, ~105 M parameters) beside the reduced one the two-stage
system trains here (``transunet-small``, ~3 M), at 224 x 224 on 1 and 2 threads.

Run with ``pytest --benchmark bench/test_bench_transunet.py`` (``--benchmark-json FILE`` keeps
the numbers). Two kinds of row per configuration and thread count:

* ``forward``: inference (``eval`` mode, ``torch.inference_mode``) of a batch of 2 grey
  frames;
* ``train-step``: forward + the segmenter's loss (``segmentation_loss``: cross-entropy +
  Dice) against a mask + backward + an AdamW step, as the two-stage system trains it.

Before anything is timed, each network's output is checked: shape ``[2, 1, 224, 224]``, and at
2 threads the same logits as at 1 thread (parity across thread counts); a training step must
give a finite loss and move the weights. Nothing asserts a time: read the ratios (``transunet``
over ``transunet-small``, 1 thread over 2) within one run, on an otherwise idle machine when
the absolute numbers matter. On a small shared VM set ``OMP_WAIT_POLICY=PASSIVE``: with
libgomp's default wait policy the 2-thread rows ran 3-5x *slower* than 1 thread on this
project's loaded 2-core machine (``hfcn_bench.bench.model_cost`` says why). Every
configuration starts from the same seed. Rounds are fixed
(``pedantic``: 1 warm-up, 3 timed) so the full network's steps, seconds each, bound the run.
"""

from __future__ import annotations

import pytest
import torch

from hfcn_bench.models import TRANSUNET_CONFIGS, TransUNet
from hfcn_bench.systems.segmentation import segmentation_loss

BATCH, SIZE = 2, 224
CONFIGS = tuple(TRANSUNET_CONFIGS)  # transunet, transunet-small
THREADS = (1, 2)
ROUNDS = dict(rounds=3, warmup_rounds=1, iterations=1)


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 1, SIZE, SIZE, generator=g)
    # a nodule-sized disc per frame: the loss sees both classes, as on real frames
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    disc = ((yy - SIZE / 2) ** 2 + (xx - SIZE / 3) ** 2 < (SIZE / 6) ** 2).float()
    return x, disc.expand(BATCH, 1, SIZE, SIZE).contiguous()


@pytest.fixture(scope="module")
def states():
    """Each configuration's initial weights (seed 0), built once."""
    out = {}
    for name in CONFIGS:
        torch.manual_seed(0)
        out[name] = TransUNet(name, img_size=SIZE).state_dict()
    return out


@pytest.fixture(scope="module")
def reference(states, batch):
    """Each configuration's eval-mode logits on the batch at 1 thread: the parity target."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {}
        for name in CONFIGS:
            with torch.inference_mode():
                out[name] = _net(name, states).eval()(batch[0])
        return out
    finally:
        torch.set_num_threads(old)


@pytest.fixture
def threads(request):
    old = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(old)


def _net(name: str, states) -> TransUNet:
    net = TransUNet(name, img_size=SIZE)
    net.load_state_dict(states[name])
    return net


def _info(benchmark, name: str, net: TransUNet, threads: int) -> None:
    benchmark.extra_info.update(
        config=name,
        threads=threads,
        parameters=sum(p.numel() for p in net.parameters()),
        batch=BATCH,
        size=SIZE,
    )


@pytest.mark.parametrize("threads", THREADS, indirect=True)
@pytest.mark.parametrize("name", CONFIGS)
def test_forward(benchmark, name, threads, states, reference, batch):
    x, _ = batch
    net = _net(name, states).eval()

    def forward():
        with torch.inference_mode():
            return net(x)

    y = forward()
    assert y.shape == (BATCH, 1, SIZE, SIZE)
    torch.testing.assert_close(y, reference[name], rtol=1e-4, atol=1e-4)
    benchmark.group = f"TransUNet forward {BATCH}x1x{SIZE}x{SIZE}"
    _info(benchmark, name, net, threads)
    benchmark.pedantic(forward, **ROUNDS)


@pytest.mark.parametrize("threads", THREADS, indirect=True)
@pytest.mark.parametrize("name", CONFIGS)
def test_train_step(benchmark, name, threads, states, batch):
    x, mask = batch
    net = _net(name, states).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)  # the segmenter's optimiser
    losses = []

    def step():
        opt.zero_grad(set_to_none=True)
        loss = segmentation_loss(net(x), mask)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))

    before = net.segmentation_head.weight.detach().clone()
    step()
    assert torch.isfinite(torch.tensor(losses)).all() and not torch.equal(before, net.segmentation_head.weight)
    benchmark.group = f"TransUNet train step {BATCH}x1x{SIZE}x{SIZE} (AdamW)"
    _info(benchmark, name, net, threads)
    benchmark.pedantic(step, **ROUNDS)
    assert torch.isfinite(torch.tensor(losses)).all()
