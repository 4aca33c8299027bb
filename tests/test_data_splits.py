"""Case-level splits: no case on both sides, stratified, deterministic; manifest round trip."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hfcn_bench.data import (
    Sample,
    kfold,
    load_dataset,
    read_manifest,
    split_train_test,
    verify_manifest,
    write_manifest,
    write_synthetic_ddti,
)
from hfcn_bench.data.splits import case_labels, write_json_atomic
from hfcn_bench.errors import HfcnError


def make_samples(cases: dict[str, tuple[int, int]]) -> list[Sample]:
    """cases: id -> (label, number of ROIs). Images are never opened by the split code."""
    out = []
    for cid, (label, n) in cases.items():
        for k in range(n):
            out.append(
                Sample(
                    cid, k + 1, Path(f"/nowhere/{cid}_{k + 1}.jpg"), None, (0, 0, 10, 10), label, "tirads", (560, 360)
                )
            )
    return out


case_tables = st.dictionaries(
    st.text("0123456789abc", min_size=1, max_size=4),
    st.tuples(st.integers(0, 1), st.integers(1, 4)),
    min_size=2,
    max_size=60,
)


@settings(max_examples=120, deadline=None)
@given(case_tables, st.integers(0, 2**31 - 1), st.sampled_from([0.2, 0.25, 0.3, 0.5]))
def test_train_test_keeps_cases_whole_and_stratifies(cases, seed, frac):
    samples = make_samples(cases)
    split = split_train_test(samples, test_fraction=frac, seed=seed)
    assert set(split.train).isdisjoint(split.test)
    assert set(split.train) | set(split.test) == set(cases)
    tr, te = split.indices(samples)
    assert sorted(tr + te) == list(range(len(samples)))
    side = {}
    for i in tr:
        side.setdefault(samples[i].case_id, set()).add("train")
    for i in te:
        side.setdefault(samples[i].case_id, set()).add("test")
    assert all(len(v) == 1 for v in side.values()), "a case has ROIs on both sides"
    for label in (0, 1):
        n = sum(1 for v in cases.values() if v[0] == label)
        n_test = sum(1 for c in split.test if cases[c][0] == label)
        want = round(n * frac)
        if n >= 2:
            want = min(max(want, 1), n - 1)
        assert n_test == want
    assert split_train_test(samples, test_fraction=frac, seed=seed) == split


@settings(max_examples=80, deadline=None)
@given(case_tables, st.integers(0, 2**31 - 1), st.integers(2, 6))
def test_kfold_partitions_cases(cases, seed, k):
    samples = make_samples(cases)
    if k > len(cases):
        with pytest.raises(HfcnError, match="folds need"):
            kfold(samples, k, seed)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small classes: "some test folds have none"
        folds = kfold(samples, k, seed)
    assert len(folds) == k and [f.fold for f in folds] == list(range(k))
    tests = [set(f.test) for f in folds]
    assert sum(len(t) for t in tests) == len(cases) and set().union(*tests) == set(cases)
    for f in folds:
        assert set(f.train).isdisjoint(f.test) and set(f.train) | set(f.test) == set(cases)
    sizes = [len(t) for t in tests]
    assert max(sizes) - min(sizes) <= 1
    for label in (0, 1):
        per_fold = [sum(1 for c in t if cases[c][0] == label) for t in tests]
        assert max(per_fold) - min(per_fold) <= 1


def test_seed_changes_the_split_and_order_is_stable():
    cases = {str(i): (i % 3 == 0, 1 + i % 2) for i in range(1, 81)}
    samples = make_samples({k: (int(v[0]), v[1]) for k, v in cases.items()})
    a, b = split_train_test(samples, seed=0), split_train_test(samples, seed=1)
    assert a.test != b.test
    # Removing a training case moves no other case (order comes from hash(seed, case id)).
    dropped = a.train[0]
    smaller = split_train_test([s for s in samples if s.case_id != dropped], seed=0)
    assert set(smaller.test) <= set(a.test) | {dropped} and len(set(a.test) ^ set(smaller.test)) <= 2


def test_case_label_and_selection():
    samples = make_samples({"1": (0, 2), "2": (1, 3), "3": (0, 1), "4": (1, 1)})
    assert case_labels(samples) == {"1": 0, "2": 1, "3": 0, "4": 1}
    split = split_train_test(samples, test_fraction=0.5, seed=5)
    train, test = split.select(samples)
    assert {s.case_id for s in train} == set(split.train) and {s.case_id for s in test} == set(split.test)
    assert len(train) + len(test) == len(samples)
    with pytest.raises(HfcnError, match="test_fraction"):
        split_train_test(samples, test_fraction=1.0)
    with pytest.raises(HfcnError, match="at least 2 cases"):
        split_train_test(make_samples({"1": (0, 3)}))
    with pytest.raises(HfcnError, match="k must be"):
        kfold(samples, 1)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = write_synthetic_ddti(tmp_path_factory.mktemp("split") / "ds", n_cases=16, seed=2, difficulty="easy")
    return root, load_dataset(root, warn=False)


def test_manifest_round_trip_and_verification(synth, tmp_path):
    root, ds = synth
    split = split_train_test(ds, seed=9)
    path = write_manifest(tmp_path / "m" / "split.json", ds, split)
    assert [p.name for p in path.parent.iterdir()] == ["split.json"]  # no temp file left behind
    obj = json.loads(path.read_text())
    assert obj["label_rule"] == "tirads" and obj["seed"] == 9 and obj["params"] == {"test_fraction": 0.25}
    assert obj["data"]["fingerprint"] == ds.fingerprint and obj["data"]["n_files"] == len(ds.files)
    m = read_manifest(path)
    assert m.splits == [split] and m.fingerprint == ds.fingerprint and m.label_rule == "tirads"
    verify_manifest(m, load_dataset(root, warn=False))

    with pytest.warns(UserWarning, match="benign case.* for 4 folds"):
        folds = kfold(ds, 4, seed=1)  # 3 benign cases among 16: one fold gets none
    m4 = read_manifest(write_manifest(tmp_path / "k.json", ds, folds))
    assert m4.method == "kfold" and m4.params == {"k": 4} and m4.splits == folds

    with pytest.raises(HfcnError, match="label rule"):
        verify_manifest(m, load_dataset(root, label_rule="mccnn", warn=False))


def test_manifest_names_the_changed_file(synth, tmp_path):
    root, ds = synth
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    m = read_manifest(write_manifest(tmp_path / "split.json", ds, split_train_test(ds, seed=0)))
    victim = ds.samples[0].image_path.name
    (copy / "raw_jpg" / victim).write_bytes((copy / "raw_jpg" / victim).read_bytes() + b"\0")
    with pytest.raises(HfcnError) as err:
        verify_manifest(m, load_dataset(copy, warn=False))
    assert "fingerprint differs" in str(err.value) and victim in err.value.hint


def test_manifest_errors(tmp_path, synth):
    _, ds = synth
    with pytest.raises(HfcnError, match="no split manifest"):
        read_manifest(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(HfcnError, match="not valid JSON"):
        read_manifest(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"format": "something else"}')
    with pytest.raises(HfcnError, match="not an hfcn-bench split manifest"):
        read_manifest(tmp_path / "other.json")
    foreign = split_train_test(make_samples({"x1": (0, 1), "x2": (1, 1)}))
    with pytest.raises(HfcnError, match="not in the dataset"):
        write_manifest(tmp_path / "f.json", ds, foreign)


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    p = write_json_atomic(tmp_path / "a.json", {"v": 1})
    with pytest.raises(TypeError):
        write_json_atomic(p, {"v": object()})
    assert json.loads(p.read_text()) == {"v": 1}
    assert [q.name for q in tmp_path.iterdir()] == ["a.json"]


@pytest.mark.ddti
@pytest.mark.skipif(
    not os.environ.get("HFCN_DDTI_DIR"), reason="HFCN_DDTI_DIR is not set (real DDTI files not available)"
)
def test_real_ddti_split_keeps_cases_whole():
    ds = load_dataset(os.environ["HFCN_DDTI_DIR"], warn=False)
    split = split_train_test(ds, seed=0)
    train, test = split.select(ds)
    assert {s.case_id for s in train}.isdisjoint({s.case_id for s in test})
    assert len(split.train) + len(split.test) == 298
    assert sum(1 for c in split.test if case_labels(ds)[c] == 0) == 13  # round(52 / 4)
    for fold in kfold(ds, 5, seed=0):
        tr, te = fold.select(ds)
        assert {s.case_id for s in tr}.isdisjoint({s.case_id for s in te})
