"""Auxiliary TI-RADS descriptor heads (issue 22, item 2): masked cross-entropy, heads that never
reach the prediction, their AUCs in the report, and predictions that do not depend on the
descriptors written in the case files."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from clitools import run

from hfcn_bench.data.descriptors import DESCRIPTOR_FIELDS, DESCRIPTORS
from hfcn_bench.errors import HfcnError
from hfcn_bench.models import build_model, descriptor_loss
from hfcn_bench.protocol.descriptors import descriptor_aucs
from hfcn_bench.systems.hfcn_training import preset_config

HEADS = tuple(len(v) for v in DESCRIPTORS.values())


def test_masked_cross_entropy_counts_only_known_rows():
    torch.manual_seed(0)
    logits = [torch.randn(5, 3, requires_grad=True) for _ in range(2)]
    targets = torch.tensor([[0, -1], [2, -1], [-1, -1], [1, -1], [-1, -1]])
    loss = descriptor_loss(logits, targets)
    # head 1 has no known row: the mean is over head 0 alone
    want = F.cross_entropy(logits[0][[0, 1, 3]], torch.tensor([0, 2, 1]))
    assert torch.allclose(loss, want)
    loss.backward()
    assert logits[0].grad[[2, 4]].abs().sum() == 0 and logits[1].grad.abs().sum() == 0
    both = torch.tensor([[0, 1], [2, -1], [-1, 0], [1, 2], [-1, -1]])
    got = descriptor_loss(logits, both)
    h0 = F.cross_entropy(logits[0][[0, 1, 3]], torch.tensor([0, 2, 1]))
    h1 = F.cross_entropy(logits[1][[0, 2, 3]], torch.tensor([1, 0, 2]))
    assert torch.allclose(got, (h0 + h1) / 2)
    summed = descriptor_loss(logits, both, reduction="sum")
    assert torch.allclose(summed, (h0 * 3 + h1 * 3) / 2)
    none = descriptor_loss(logits, torch.full((5, 2), -1))
    assert float(none.detach()) == 0.0 and none.requires_grad
    with pytest.raises(HfcnError, match=r"\[B, 2\]"):
        descriptor_loss(logits, torch.zeros(5, 3, dtype=torch.long))


def test_heads_never_reach_the_prediction():
    torch.manual_seed(0)
    m = build_model(backbone="paper", crop="bfc", input_size=32, descriptor_classes=HEADS).eval()
    x = torch.randn(3, 3, 32, 32)
    out = m(x)
    assert [t.shape for t in out.descriptor_logits] == [(3, k) for k in HEADS]
    with torch.no_grad():
        for p in m.descriptor_heads.parameters():
            p.add_(torch.randn_like(p))
    out2 = m(x)
    assert torch.equal(out.prob, out2.prob)
    assert not torch.equal(out.descriptor_logits[0], out2.descriptor_logits[0])
    plain = build_model(backbone="paper", crop="bfc", input_size=32)
    assert plain.descriptor_heads is None and plain(x).descriptor_logits is None
    # image crops: the heads read the global image's map only
    img = build_model(backbone="paper", crop="image", input_size=32, descriptor_classes=HEADS).eval()
    assert img(x).descriptor_logits[3].shape == (3, 3)


def test_config_adds_heads_only_when_weighted():
    assert preset_config("smoke").model_config().descriptor_classes == ()
    assert preset_config("smoke", aux_descriptors=0.5).model_config().descriptor_classes == HEADS
    with pytest.raises(HfcnError, match="aux_descriptors"):
        preset_config("smoke", aux_descriptors=-1.0)


def test_head_auc_is_per_category_on_known_rows():
    t = np.array([[2, 0], [0, -1], [2, 1], [1, -1], [-1, 0]])
    probs = {"composition": np.array([[0.1, 0.1, 0.8], [0.9, 0, 0.1], [0.2, 0.2, 0.6], [0.3, 0.4, 0.3], [1, 0, 0]])}
    out = descriptor_aucs(t, probs)
    c = out["composition"]
    assert c["rows"] == 4 and c["per_class"]["cystic-spongiform"]["positives"] == 2
    assert c["per_class"]["cystic-spongiform"]["auc"] == 1.0 and c["per_class"]["solid"]["auc"] == 1.0
    assert set(out) == {"composition"}


def _strip_descriptors(folder):
    for xml in (folder / "xml").glob("*.xml"):
        text = xml.read_text()
        for name in DESCRIPTOR_FIELDS:
            text = re.sub(rf"<{name}>[^<]*</{name}>", f"<{name}></{name}>", text)
        xml.write_text(text)


@pytest.fixture(scope="module")
def aux_run(phantoms, tmp_path_factory):
    out = tmp_path_factory.mktemp("aux") / "R"
    rc, text = run(
        ["train", "--data", str(phantoms), "--system", "hfcn", "--preset", "smoke"]
        + ["--set", "aux_descriptors=0.5", "--threads", "1", "--n-boot", "50", "--out", str(out)]
    )
    assert rc == 0, text
    return out, text


def test_acceptance_train_reports_descriptor_head_aucs(aux_run):
    out, text = aux_run
    assert "descriptor heads" in text and "calcifications" in text
    metrics = json.loads((out / "metrics.json").read_text())
    heads = metrics["descriptors"]
    assert set(heads) == set(DESCRIPTOR_FIELDS)
    assert set(heads["calcifications"]["per_class"]) == {"none", "macro", "micro"}
    assert any(h["auc"] is not None for h in heads.values())
    history = json.loads((out / "history.json").read_text())["history"]
    assert set(history[0]["val_descriptor_auc"]) == set(DESCRIPTOR_FIELDS)


def _predict_with_and_without_descriptors(run_dir, phantoms, tmp_path, n: int) -> tuple[dict, dict]:
    """``predict`` rows (by case, frame, region) of the first ``n`` phantom XMLs, as written and
    with every descriptor field emptied."""
    stripped = tmp_path / "stripped"
    shutil.copytree(phantoms, stripped)
    _strip_descriptors(stripped)
    assert "<calcifications></calcifications>" in next((stripped / "xml").glob("*.xml")).read_text()
    names = sorted(p.name for p in (phantoms / "xml").glob("*.xml"))[:n]
    rows = {}
    for where in (phantoms, stripped):
        rc, text = run(
            ["predict", "--run", str(run_dir), "--no-png", "--json"] + [str(where / "xml" / n) for n in names],
            width=400,
        )
        assert rc == 0, text
        rows[where] = {(r["case_id"], r["frame"], r["region"]): r for r in json.loads(text)["rows"]}
    a, b = rows[phantoms], rows[stripped]
    assert a and a.keys() == b.keys()
    return a, b


def test_predictions_do_not_read_the_descriptors(aux_run, phantoms, tmp_path):
    out, _ = aux_run
    a, b = _predict_with_and_without_descriptors(out, phantoms, tmp_path, 6)
    for k in a:
        assert a[k]["prob"] == b[k]["prob"]  # bitwise: the same float
        assert a[k]["descriptor_calcifications"] == b[k]["descriptor_calcifications"]


def test_default_run_has_no_descriptor_heads(phantoms, tmp_path):
    rc, text = run(
        ["train", "--data", str(phantoms), "--preset", "smoke", "--threads", "1", "--n-boot", "20"]
        + ["--out", str(tmp_path / "R")]
    )
    assert rc == 0, text
    assert "descriptors" not in json.loads((tmp_path / "R" / "metrics.json").read_text())
    assert "descriptor heads" not in text


# ---------------------------------------------------------------------------------------------
# the comparators' trained networks: MC-CNN's pyramid network, the two-stage ResNet-18, a
# fine-tuned transfer trunk

COMPARATORS = {
    "mccnn_spp": [],
    "two_stage": [],
    "transfer_svm": ["--set", "finetune_layers=2", "--set", "epochs=2"],
}


def _find(obj, key):
    """Every value stored under ``key`` anywhere in a JSON tree."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from ([v] if k == key else _find(v, key))
    elif isinstance(obj, list):
        for v in obj:
            yield from _find(v, key)


@pytest.fixture(scope="module", params=sorted(COMPARATORS))
def comparator_aux_run(request, phantoms, tmp_path_factory):
    system = request.param
    out = tmp_path_factory.mktemp(f"aux-{system}") / "R"
    rc, text = run(
        ["train", "--data", str(phantoms), "--system", system, "--preset", "smoke"]
        + ["--set", "aux_descriptors=0.5", *COMPARATORS[system], "--threads", "1", "--n-boot", "30"]
        + ["--out", str(out)]
    )
    assert rc == 0, text
    return system, out, text


def test_comparators_train_descriptor_heads_and_report_them(comparator_aux_run):
    system, out, text = comparator_aux_run
    assert "auxiliary TI-RADS descriptor heads (loss weight 0.5)" in text
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["descriptors"]) == set(DESCRIPTOR_FIELDS)
    assert any(h["auc"] is not None for h in metrics["descriptors"].values())
    # every epoch's history row has each head's validation AUC
    rows = [r for h in _find(metrics, "history") for r in h if "val_descriptor_auc" in r]
    assert rows and all(set(r["val_descriptor_auc"]) == set(DESCRIPTOR_FIELDS) for r in rows)


def test_comparators_predict_without_reading_the_descriptors(comparator_aux_run, phantoms, tmp_path):
    system, out, _ = comparator_aux_run
    a, b = _predict_with_and_without_descriptors(out, phantoms, tmp_path, 5)
    for k in a:
        assert a[k]["prob"] == b[k]["prob"]
        assert a[k]["descriptor_margins"] == b[k]["descriptor_margins"]


def test_comparator_heads_leave_the_malignancy_output_alone():
    from hfcn_bench.systems import mccnn, transfer, two_stage

    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    mc = mccnn.MCCNNConfig(**mccnn.SMOKE, aux_descriptors=0.5)
    ts = two_stage.TwoStageConfig(**two_stage.SMOKE, aux_descriptors=0.5)
    blocks, dim = transfer.build_trunk("efficientnet_lite0", "imagenet", 0)
    nets = [mccnn.build_mccnn(mc), two_stage.build_classifier(ts), transfer._FineTuned(blocks, dim, HEADS)]
    for net in nets:
        net.eval()
        logits, desc = net.forward_all(x)
        assert [d.shape for d in desc] == [(2, k) for k in HEADS]
        assert torch.equal(logits, net(x))
        with torch.no_grad():
            for p in net.descriptor_heads.parameters():
                p.add_(1.0)
        assert torch.equal(net(x), logits)
    # without the weight, no heads: the network (and its checkpoint keys) is the one before heads
    plain = mccnn.build_mccnn(mccnn.MCCNNConfig(**mccnn.SMOKE))
    assert plain.descriptor_heads is None and not any("descriptor" in k for k in plain.state_dict())
    assert plain.forward_all(x)[1] is None


def test_comparator_configs_check_the_weight():
    from hfcn_bench.systems import mccnn, transfer

    with pytest.raises(HfcnError, match="aux_descriptors"):
        mccnn.MCCNNConfig(aux_descriptors=-0.5).validate()
    with pytest.raises(HfcnError, match="fine-tuned trunk"):
        transfer.TransferConfig(aux_descriptors=0.5).validate()
    transfer.TransferConfig(aux_descriptors=0.5, finetune_layers=1).validate()


def test_runs_without_heads_record_and_order_what_they_did_before():
    """A checkpoint written before the field existed resumes (the loop compares every recorded
    config key), and MC-CNN's parameters keep their order (an optimizer's state is matched by
    position): trunk, pyramid, classifier."""
    from hfcn_bench.systems import descriptor_aux as DA
    from hfcn_bench.systems import mccnn

    assert DA.loop_config({"lr": 1e-3, "aux_descriptors": 0.0}) == {"lr": 1e-3}
    assert DA.loop_config({"lr": 1e-3, "aux_descriptors": 0.5}) == {"lr": 1e-3, "aux_descriptors": 0.5}
    names = [n.split(".")[0] for n, _ in mccnn.build_mccnn(mccnn.MCCNNConfig(**mccnn.SMOKE)).named_parameters()]
    assert list(dict.fromkeys(names)) == ["trunk", "spm", "fc"]
    with_heads = mccnn.build_mccnn(mccnn.MCCNNConfig(**mccnn.SMOKE, aux_descriptors=0.5))
    assert list(dict.fromkeys(n.split(".")[0] for n, _ in with_heads.named_parameters())) == [
        "trunk",
        "spm",
        "fc",
        "descriptor_heads",
    ]
