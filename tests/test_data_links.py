"""Cases linked by near-duplicate images (``hfcn_bench.data.links``): a frame of one case saved
again under another case (re-encoded at JPEG quality 75, cropped to 90 %, renamed) makes the two
cases one split unit, as a byte-identical copy does; the manifest records why, ``data check``
reports it, ``data holdout`` and the k-fold splits keep the pair on one side, and the search is
cached by content."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
from clitools import run
from PIL import Image

from hfcn_bench.data import (
    given_split,
    kfold,
    load_dataset,
    read_manifest,
    split_train_test,
    write_manifest,
    write_synthetic_ddti,
)
from hfcn_bench.data import links as links_mod
from hfcn_bench.data import neardup as nd
from hfcn_bench.data.holdout import write_holdout
from hfcn_bench.errors import HfcnError

N_PAIRS = 6


def _load(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_dataset(path, **kw)


def _disguise(src: Path, dst: Path, keep_size: bool) -> None:
    """``src`` cropped to 90 % of each side and saved as JPEG quality 75 at ``dst`` (resized back
    to its own size when ``keep_size``: a DDTI case's outline then still fits its frame)."""
    im = Image.open(src).convert("RGB")
    w, h = im.size
    dx, dy = round(w * 0.05), round(h * 0.05)
    out = im.crop((dx, dy, w - dx, h - dy))
    if keep_size:
        out = out.resize((w, h), Image.BILINEAR)
    dst.parent.mkdir(parents=True, exist_ok=True)
    out.save(dst, "JPEG", quality=75)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """DDTI-format phantoms where, for each of ``N_PAIRS`` pairs of cases of one class, frame 1 of
    the second case is a disguised copy of frame 1 of the first (no byte is shared)."""
    root = write_synthetic_ddti(tmp_path_factory.mktemp("links") / "ddti", n_cases=40, seed=0, unlabelled_fraction=0)
    truth = json.loads((root / "synthetic.json").read_text())["cases"]
    malignant = lambda c: truth[c]["tirads"] not in ("2", "3")  # noqa: E731
    free = sorted(truth, key=int)
    pairs = []
    while len(pairs) < N_PAIRS:
        a = free.pop(0)
        b = next(c for c in free if malignant(c) == malignant(a) and len(truth[c]["frames"]) >= 2)
        free.remove(b)
        _disguise(root / "raw_jpg" / f"{a}_1.jpg", root / "raw_jpg" / f"{b}_1.jpg", keep_size=True)
        pairs.append(tuple(sorted((a, b), key=int)))
    return root, pairs


def test_disguised_copies_link_their_cases_and_the_load_says_why(planted):
    root, pairs = planted
    ds = _load(root)
    assert sorted(ds.links()) == sorted(pairs)
    nd_links = ds.near_duplicates["links"]
    assert sorted(tuple(sorted(p["cases"], key=int)) for p in nd_links) == sorted(pairs)
    assert all(p["kind"] in nd.KINDS and p["score"] >= nd.DEFAULT_THRESHOLD for p in nd_links)
    warts = {w.file: w for w in ds.report.warts_of("linked-cases")}
    for a, b in pairs:
        w = warts[f"{a}.xml, {b}.xml"]
        assert "near-duplicate images" in w.message and f"raw_jpg/{a}_1.jpg" in w.message
        assert f"raw_jpg/{b}_1.jpg" in w.message and "share image bytes" not in w.message
        assert len({s.unit for s in ds.samples if s.case_id in (a, b)}) == 1
    assert ds.describe()["near_duplicate_links"] == N_PAIRS
    # without the search only byte-identical copies link cases: here none
    off = _load(root, link_near_duplicates=False)
    assert off.links() == [] and off.near_duplicates is None
    assert not off.report.warts_of("linked-cases")


def test_kfold_and_train_test_splits_keep_near_duplicates_on_one_side(planted):
    root, pairs = planted
    ds, off = _load(root), _load(root, link_near_duplicates=False)
    split_apart = 0
    for seed in range(8):
        for linked, data in ((True, ds), (False, off)):
            folds = kfold(data, k=5, seed=seed)
            tt = split_train_test(data, test_fraction=0.25, seed=seed)
            for a, b in pairs:
                same_fold = [f.fold for f in folds if a in f.test] == [f.fold for f in folds if b in f.test]
                same_side = (a in tt.test) == (b in tt.test)
                if linked:
                    assert same_fold and same_side, (seed, a, b)
                else:
                    split_apart += (not same_fold) + (not same_side)
    assert split_apart > 0  # the data would leak without the links


def test_the_manifest_records_the_links_and_why(planted, tmp_path):
    root, pairs = planted
    ds = _load(root)
    write_manifest(tmp_path / "split.json", ds, kfold(ds, k=5, seed=0))
    m = read_manifest(tmp_path / "split.json")
    assert sorted(tuple(g) for g in m.links) == sorted(pairs)
    assert m.near_duplicates["threshold"] == nd.DEFAULT_THRESHOLD
    assert sorted(tuple(sorted(p["cases"], key=int)) for p in m.near_duplicates["links"]) == sorted(pairs)
    write_manifest(tmp_path / "off.json", _load(root, link_near_duplicates=False), kfold(ds, k=5, seed=0))
    assert read_manifest(tmp_path / "off.json").near_duplicates is None


def test_data_check_reports_the_near_duplicate_links(planted):
    root, pairs = planted
    rc, text = run(["data", "check", str(root)], width=400)
    assert rc == 0, text
    assert "linked-cases" in text and "near-duplicate images" in text
    assert f"{N_PAIRS} group(s) of linked cases; {N_PAIRS} case pair(s) linked by near-duplicate images" in text
    rc, text = run(["data", "check", str(root), "--json"])
    rep = json.loads(text)
    assert sorted(tuple(g) for g in rep["links"]) == sorted(pairs)
    assert len(rep["near_duplicates"]["links"]) == N_PAIRS
    rc, text = run(["data", "check", str(root), "--json", "--no-near-duplicate-links"])
    rep = json.loads(text)
    assert rep["links"] == [] and rep["near_duplicates"] is None


def test_data_holdout_keeps_near_duplicates_on_one_side(planted, tmp_path):
    root, pairs = planted
    rc, text = run(["data", "holdout", str(root), "--out", str(tmp_path / "h"), "--fraction", "0.3"], width=400)
    assert rc == 0, text
    assert f"{N_PAIRS} case pair(s) linked by near-duplicate images" in text
    held = {p.stem for p in (tmp_path / "h" / "holdout" / "xml").glob("*.xml")}
    dev = {p.stem for p in (tmp_path / "h" / "development" / "xml").glob("*.xml")}
    assert held and dev and not held & dev
    for a, b in pairs:
        assert (a in held) == (b in held), (a, b)
    # the library call the command makes, over seeds: never apart with links, apart without
    ds, off = _load(root), _load(root, link_near_duplicates=False)
    apart = 0
    for seed in range(6):
        on = write_holdout(ds, tmp_path / f"on{seed}", fraction=0.3, seed=seed)
        assert all((a in on["holdout"]) == (b in on["holdout"]) for a, b in pairs), seed
        plain = split_train_test(off, test_fraction=0.3, seed=seed)
        apart += sum((a in plain.test) != (b in plain.test) for a, b in pairs)
    assert apart > 0


def test_folder_format_links_a_disguised_copy_across_its_own_split(tmp_path):
    """A study-style set (train/ and test/ class folders, each file a case) whose test/ holds a
    disguised copy of a train/ image: linked, and the dataset's own split warns about it."""
    frames = nd.find_images(write_synthetic_ddti(tmp_path / "src", n_cases=10, seed=5))
    root = tmp_path / "study"
    for i, p in enumerate(frames[:12]):
        side = "train" if i < 8 else "test"
        cls = "benin" if i % 2 else "malin"
        (root / side / cls).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, root / side / cls / f"img{i}.jpg")
    _disguise(frames[0], root / "test" / "malin" / "renamed.jpg", keep_size=False)
    ds = _load(root, classes="benin=benign,malin=malignant")
    assert ds.links() == [("test/malin/renamed", "train/malin/img0")]
    (link,) = ds.near_duplicates["links"]
    assert sorted(link["images"]) == ["test/malin/renamed.jpg", "train/malin/img0.jpg"]
    assert link["kind"] == "cropped"
    with pytest.warns(UserWarning, match="lie on both sides"):
        given_split(ds)
    for seed in range(4):
        (holder,) = [f for f in kfold(ds, k=3, seed=seed) if "train/malin/img0" in f.test]
        assert "test/malin/renamed" in holder.test


def test_a_second_load_reads_the_search_from_the_cache(planted, tmp_path, monkeypatch):
    root, pairs = planted
    monkeypatch.setenv("HFCN_CACHE_DIR", str(tmp_path / "cache"))
    first = _load(root)
    assert first.near_duplicates["cached"] is False
    (entry,) = (tmp_path / "cache" / "neardup").glob("*.json")

    def no_hashing(*args, **kwargs):
        raise AssertionError("hashed again")

    monkeypatch.setattr(nd, "hash_images", no_hashing)
    again = _load(root)
    assert again.near_duplicates["cached"] is True and sorted(again.links()) == sorted(pairs)
    assert again.near_duplicates["links"] == first.near_duplicates["links"]
    monkeypatch.undo()
    monkeypatch.setenv("HFCN_CACHE_DIR", str(tmp_path / "cache"))
    # a damaged entry is searched again and rewritten, not trusted
    entry.write_text('{"format": "hfcn-bench/neardup-pairs", "pairs": [["x", "y", "cropped", 1.0]]}')
    fixed = _load(root)
    assert fixed.near_duplicates["cached"] is False and sorted(fixed.links()) == sorted(pairs)
    assert json.loads(entry.read_text())["pairs"] != [["x", "y", "cropped", 1.0]]


def test_other_images_are_another_cache_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("HFCN_CACHE_DIR", str(tmp_path / "cache"))
    root = write_synthetic_ddti(tmp_path / "ddti", n_cases=8, seed=1)
    assert _load(root).near_duplicates["cached"] is False
    assert _load(root).near_duplicates["cached"] is True
    frame = sorted((root / "raw_jpg").glob("*.jpg"))[0]
    Image.open(frame).convert("RGB").save(frame, "JPEG", quality=60)  # same picture, new bytes
    assert _load(root).near_duplicates["cached"] is False
    assert len(list((tmp_path / "cache" / "neardup").glob("*.json"))) == 2


def test_an_unwritable_cache_is_a_warning_naming_it_and_the_load_goes_on(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("HFCN_CACHE_DIR", str(blocker))
    root = write_synthetic_ddti(tmp_path / "ddti", n_cases=8, seed=1)
    with pytest.warns(UserWarning, match=r"cannot write its cache .*not-a-folder.*HFCN_CACHE_DIR"):
        ds = load_dataset(root, warn=False)
    assert ds.near_duplicates is not None and ds.samples


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("HFCN_CACHE_DIR", str(tmp_path / "mine"))
    assert links_mod.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("HFCN_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert links_mod.cache_dir() == tmp_path / "xdg" / "hfcn-bench"


def test_a_grid_made_before_near_duplicate_links_is_not_resumed_with_other_folds(tmp_path):
    from hfcn_bench.reproduce.runner import _check_grid

    base = {"data_fingerprint": "f", "label_rule": "tirads", "preset": "cpu", "folds": 5, "seed": 0}
    (tmp_path / "grid.json").write_text(json.dumps(base))  # written before links were recorded
    _check_grid(tmp_path, {**base, "links": [], "near_duplicate_links": 0})  # nothing new: resumed
    with pytest.raises(HfcnError, match="before cases were linked by near-duplicate images"):
        _check_grid(tmp_path, {**base, "links": [["1", "2"]], "near_duplicate_links": 1})
    (tmp_path / "grid.json").write_text(json.dumps({**base, "links": [["1", "2"]]}))
    _check_grid(tmp_path, {**base, "links": [["1", "2"]], "near_duplicate_links": 1})
    with pytest.raises(HfcnError, match="kept other cases together"):
        _check_grid(tmp_path, {**base, "links": [["1", "2"], ["3", "4"]], "near_duplicate_links": 2})


def test_train_records_the_links_in_split_json_and_the_flag_turns_them_off(planted, tmp_path):
    pytest.importorskip("sklearn")
    root, pairs = planted
    common = ["train", "--data", str(root), "--system", "shape_rf", "--set", "n_estimators=10", "--folds", "3"]
    rc, text = run([*common, "--n-boot", "10", "--out", str(tmp_path / "on"), "--json"])
    assert rc == 0, text
    on = json.loads((tmp_path / "on" / "split.json").read_text())
    assert sorted(tuple(g) for g in on["links"]) == sorted(pairs) and len(on["near_duplicates"]["links"]) == N_PAIRS
    for fold in on["splits"]:
        assert all((a in fold["test"]) == (b in fold["test"]) for a, b in pairs)
    rc, text = run([*common, "--n-boot", "10", "--out", str(tmp_path / "off"), "--no-near-duplicate-links", "--json"])
    assert rc == 0, text
    off = json.loads((tmp_path / "off" / "split.json").read_text())
    assert off["links"] == [] and off["near_duplicates"] is None
