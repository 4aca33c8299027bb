"""The one epoch loop (hfcn_bench.engine): its batching, last-batch and best-epoch rules, and
bit-exact resume of every kind of network it trains (the pyramid network, the segmenter, the
detector), not only HFCN's."""

from __future__ import annotations

import math

import pytest
import torch

from hfcn_bench.checkpoint import load_checkpoint
from hfcn_bench.data import split_train_test
from hfcn_bench.engine import LoopSettings, batch_starts, better, epoch_order, fit_loop

pytest.importorskip("sklearn")

from hfcn_bench.runs import train_run  # noqa: E402
from hfcn_bench.systems import get_system  # noqa: E402


def test_batches_and_the_last_batch_rule():
    assert batch_starts(33, 16) == [0, 16]  # a lone last sample joins the previous batch
    assert batch_starts(34, 16) == [0, 16, 32]
    assert batch_starts(1, 16) == [0]
    assert torch.equal(epoch_order(3, 2, 10), epoch_order(3, 2, 10))
    assert not torch.equal(epoch_order(3, 2, 10), epoch_order(3, 3, 10))


def test_best_epoch_rule():
    assert better([0.7], None) and better([0.8], [0.7]) and not better([0.7], [0.7])  # ties: the first
    assert better([0.7, -0.2], [0.7, -0.3])  # then the second entry (lower loss)
    assert better([0.1], [math.nan]) and not better([math.nan], [0.1])  # NaN counts as -inf
    assert not better(None, [0.5])


class _Task:
    """A linear model on fixed data whose validation score is scripted."""

    def __init__(self, model, scores):
        self.model, self.scores = model, scores
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(17, 3, generator=g), torch.randint(0, 2, (17,), generator=g)
        self.n = 17
        self.sizes = []

    def start_epoch(self, epoch):
        self.model.train()

    def step(self, rows, epoch):
        self.sizes.append(len(rows))
        loss = torch.nn.functional.cross_entropy(self.model(self.x[rows]), self.y[rows])
        return loss, float(len(rows)), float(len(rows))

    def validate(self, epoch):
        return [self.scores[epoch]], {"val": self.scores[epoch]}

    def generators(self):
        return {}


def test_loop_keeps_the_first_best_epoch_and_folds_a_lone_last_sample(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    task = _Task(model, [0.5, 0.9, 0.9, 0.7])
    res = fit_loop(
        model, task, LoopSettings(epochs=4, batch_size=16, lr=0.1, seed=0), config={"k": 1}, ckpt_dir=tmp_path
    )
    assert res.best_epoch == 2 and [r["best"] for r in res.history] == [True, True, False, False]
    assert task.sizes == [17] * 4  # 17 items, batch 16: one batch of 17, none of 1
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["epoch"] == 2 and best["extra"]["final"] is True
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in best["model"].items())
    assert res.resumed_from is None
    # Resuming the finished stage (last.pt dropped) trains nothing: all four epochs came from
    # the earlier run, whatever the best epoch was.
    (tmp_path / "last.pt").unlink()
    again = fit_loop(
        torch.nn.Linear(3, 2),
        _Task(model, [0.5, 0.9, 0.9, 0.7]),
        LoopSettings(epochs=4, batch_size=16, lr=0.1, seed=0),
        config={"k": 1},
        ckpt_dir=tmp_path,
        resume=True,
    )
    assert again.best_epoch == 2 and again.resumed_from == 4 and len(again.history) == 4


@pytest.fixture(scope="module")
def ds(phantom_ds):
    return phantom_ds


class _Killed(Exception):
    pass


def _weights(path):
    return load_checkpoint(path)["model"]


@pytest.mark.parametrize(
    "system, stage, config",
    [
        ("mccnn_spp", "epoch", {"trunk": "paper", "image_size": 32, "epochs": 3, "threads": 1}),
        (
            "two_stage",
            "seg_epoch",
            {
                "frame_size": (48, 64),
                "unet_base": 4,
                "unet_depth": 2,
                "seg_epochs": 3,
                "seg_batch": 4,
                "image_size": 32,
                "epochs": 1,
                "rf_trees": 10,
                "threads": 1,
            },
        ),
        (
            "mccnn_cascade",
            "det_epoch",
            {"trunk": "paper", "image_size": 32, "epochs": 1, "frame_size": (48, 64), "det_epochs": 3, "threads": 1},
        ),
    ],
)
def test_killed_comparator_resumes_bit_exactly(system, stage, config, ds, tmp_path):
    """Kill a network of a comparator after its second epoch, resume: the weights end exactly
    where an uninterrupted run's do (batch order, augmentation draws, dropout state, optimizer)."""
    split = split_train_test(ds, test_fraction=0.25, seed=0)
    cfg = get_system(system).configure("smoke", config)
    straight = train_run(system, cfg, ds, [split], out_dir=tmp_path / "straight", n_boot=10)

    def kill(kind, done, total, info):
        if kind == stage and done == 2:
            raise _Killed

    with pytest.raises(_Killed):
        train_run(system, cfg, ds, [split], out_dir=tmp_path / "killed", n_boot=10, progress=kill)
    folder = {"epoch": "classifier", "seg_epoch": "segmenter", "det_epoch": "detector"}[stage]
    assert load_checkpoint(tmp_path / "killed" / folder / "last.pt")["epoch"] == 2  # killed mid-stage
    resumed = train_run(system, cfg, ds, [split], out_dir=tmp_path / "killed", n_boot=10, resume=True)
    for stage_dir in ("classifier", "segmenter", "detector"):
        a, b = tmp_path / "straight" / stage_dir / "best.pt", tmp_path / "killed" / stage_dir / "best.pt"
        if not a.exists():
            continue
        wa, wb = _weights(a), _weights(b)
        assert set(wa) == set(wb)
        for k in wa:
            assert torch.equal(wa[k], wb[k]), (stage_dir, k)
    assert resumed["auc"] == straight["auc"] and resumed["threshold"] == straight["threshold"]
