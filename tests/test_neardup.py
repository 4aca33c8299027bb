"""Near-duplicate detection (``hfcn_bench.data.neardup`` and ``hfcn-bench data overlap``) on
synthetic phantom frames, plus one real-data check (DDTI against LES3BDD) when both are set."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from clitools import run
from PIL import Image

from hfcn_bench.data import neardup as nd
from hfcn_bench.data import write_synthetic_ddti
from hfcn_bench.data.neardup import (
    BANDS,
    KINDS,
    find_groups,
    find_images,
    find_overlap,
    hash_images,
    phash,
    window_boxes,
    window_hashes,
)
from hfcn_bench.data.report import DataWarning


def _jpeg(im: Image.Image, q: int = 90) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=q)
    return buf.getvalue()


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    return write_synthetic_ddti(tmp_path_factory.mktemp("neardup") / "ddti", n_cases=8, seed=3)


# every transformation: (B name, source frame index, expected class, how it is made)
VARIANTS = {
    "q50.jpg": (0, "re-encoded", lambda im: _jpeg(im, 50)),
    "half.jpg": (1, "resized", lambda im: _jpeg(im.resize((im.width * 6 // 10, im.height * 6 // 10), Image.BILINEAR))),
    "crop.jpg": (
        2,
        "cropped",
        lambda im: _jpeg(im.crop((70, 10, 70 + round(im.width * 0.85), 10 + round(im.height * 0.9)))),
    ),
    "gain.jpg": (
        3,
        "brightness/contrast",
        lambda im: _jpeg(Image.fromarray(np.clip(np.asarray(im, np.float32) * 1.12 + 15, 0, 255).astype(np.uint8))),
    ),
    "grey.png": (4, "grey/rgb", lambda im: _png(im.convert("L"))),
    "pixels.png": (5, "identical-pixels", lambda im: _png(im)),
}


@pytest.fixture(scope="module")
def sets(phantoms, tmp_path_factory):
    """A: the phantom frames plus a dual-view frame (frames 6 and 7 side by side); B: one
    copy per transformation, the left pane of the dual frame, and a byte copy."""
    base = tmp_path_factory.mktemp("sets")
    a_dir, b_dir = base / "A", base / "B"
    frames = find_images(phantoms)
    (a_dir / "frames").mkdir(parents=True)
    for p in frames:
        shutil.copy(p, a_dir / "frames" / p.name)
    ims = [Image.open(p).convert("RGB") for p in frames]
    dual = Image.new("RGB", (ims[6].width * 2, ims[6].height))
    dual.paste(ims[6], (0, 0))
    dual.paste(ims[7], (ims[6].width, 0))
    (a_dir / "dual.jpg").write_bytes(_jpeg(dual, 95))
    (b_dir / "copies").mkdir(parents=True)
    truth = {}
    for name, (i, kind, make) in VARIANTS.items():
        (b_dir / "copies" / name).write_bytes(make(ims[i]))
        truth[f"copies/{name}"] = (f"frames/{frames[i].name}", kind)
    pane = Image.open(a_dir / "dual.jpg").convert("RGB").crop((0, 0, ims[6].width, ims[6].height))
    (b_dir / "pane.jpg").write_bytes(_jpeg(pane))
    truth["pane.jpg"] = ("dual.jpg", "pane")
    shutil.copy(frames[8], b_dir / "same-bytes.jpg")
    truth["same-bytes.jpg"] = (f"frames/{frames[8].name}", "identical-file")
    return a_dir, b_dir, frames, truth


@pytest.fixture(scope="module")
def indexes(sets):
    a_dir, b_dir, _, _ = sets
    return hash_images(find_images(a_dir), root=a_dir), hash_images(find_images(b_dir), root=b_dir)


def test_phash_equals_imagehash_bit_for_bit(phantoms):
    imagehash = pytest.importorskip("imagehash")
    for p in find_images(phantoms)[:4]:
        im = Image.open(p)
        assert phash(im) == int(str(imagehash.phash(im)), 16), p.name
        grey = im.convert("L")
        assert phash(np.asarray(grey)) == int(str(imagehash.phash(grey)), 16)
    # every window hash of a 64x64 thumbnail is imagehash.phash of that crop
    thumb = Image.open(find_images(phantoms)[0]).convert("L").resize((nd.HASH_SIDE, nd.HASH_SIDE), Image.BILINEAR)
    hashes = window_hashes(np.asarray(thumb))
    boxes = np.rint(window_boxes() * nd.HASH_SIDE).astype(int)
    assert len(hashes) == len(boxes) and tuple(boxes[0]) == (0, 0, nd.HASH_SIDE, nd.HASH_SIDE)
    for h, box in zip(hashes, boxes):
        assert int(h) == int(str(imagehash.phash(thumb.crop(tuple(box)))), 16), box


def test_multi_index_join_finds_every_pair_within_the_pigeonhole_radius():
    rng = np.random.default_rng(0)
    e = rng.integers(0, 2**63, size=3000, dtype=np.int64).astype(np.uint64) * np.uint64(2) + np.uint64(1)
    q = e[:400].copy()
    for k in range(q.size):  # plant BANDS - 1 flipped bits at random places
        for bit in rng.choice(64, size=BANDS - 1, replace=False):
            q[k] ^= np.uint64(1) << np.uint64(bit)
    qi, ei, d = nd._join(q, e, radius=BANDS - 1)
    brute = np.bitwise_count(q[:, None] ^ e[None, :])
    want = set(zip(*np.nonzero(brute <= BANDS - 1)))
    assert want >= {(k, k) for k in range(q.size)}
    assert set(zip(qi.tolist(), ei.tolist())) == want
    assert (d == brute[qi, ei]).all()


def test_each_transformation_is_found_and_named(sets, indexes):
    _, _, _, truth = sets
    ia, ib = indexes
    assert not ia.errors and not ib.errors
    matches = find_overlap(ia, ib)
    found = {}
    for m in matches:
        assert 0.0 <= m.score <= 1.0 and m.kind in KINDS and 0 <= m.hamming <= 64
        found.setdefault(m.b, {})[m.a] = m
    for b_name, (a_name, kind) in truth.items():
        assert a_name in found.get(b_name, {}), f"{b_name} not matched to {a_name}: {found.get(b_name)}"
        assert found[b_name][a_name].kind == kind, (b_name, found[b_name][a_name])
    crop = found["copies/crop.jpg"]["frames/" + sets[2][2].name]
    assert crop.within == "a" and crop.box[0] > 0.05 and (crop.box[2] - crop.box[0]) < 0.95
    pane = found["pane.jpg"]["dual.jpg"]
    assert pane.box[2] <= 0.55  # the left half
    gain = found["copies/gain.jpg"]["frames/" + sets[2][3].name]
    assert gain.gain > 1.05 and gain.offset > 5


def test_distinct_frames_are_not_matched(sets, indexes):
    """Different cases, and different frames of one case (the phantoms have cases with 2-3
    frames of the same anatomy): no group inside the originals, and no copy matches a frame
    it does not come from (the frames of the dual view aside)."""
    _, _, frames, truth = sets
    ia, ib = indexes
    only_frames = [i for i, n in enumerate(ia.names) if n.startswith("frames/")]
    sub = nd.HashIndex(
        ia.root,
        [ia.names[i] for i in only_frames],
        ia.sizes[only_frames],
        [ia.modes[i] for i in only_frames],
        [ia.sha256[i] for i in only_frames],
        [ia.pixels[i] for i in only_frames],
        ia.hashes[only_frames],
        ia.thumbs[only_frames],
        ia.thumbs_128[only_frames],
        ia.thumbs_64[only_frames],
    )
    cases = {p.stem.rsplit("_", 1)[0] for p in frames}
    assert len(cases) < len(frames)  # some case has several frames
    assert find_groups(sub) == []
    legit = {b: {a} for b, (a, _) in truth.items()}
    legit["pane.jpg"].add(f"frames/{frames[6].name}")
    for m in find_overlap(ia, ib):
        assert m.a in legit[m.b], m


def test_groups_inside_one_set(sets):
    a_dir, b_dir, frames, truth = sets
    index = hash_images(find_images(b_dir) + [a_dir / "frames" / frames[0].name, a_dir / "frames" / frames[8].name])
    groups = find_groups(index)
    names = [sorted(Path(n).name for n in g.members) for g in groups]
    assert sorted(["q50.jpg", frames[0].name]) in names
    assert sorted(["same-bytes.jpg", frames[8].name]) in names
    for g in groups:
        assert len(g.members) >= 2 and g.matches and all(m.a in g.members and m.b in g.members for m in g.matches)


def test_a_corrupt_image_is_reported_by_name_and_the_rest_is_hashed(phantoms, tmp_path):
    frames = find_images(phantoms)[:3]
    for p in frames:
        shutil.copy(p, tmp_path / p.name)
    (tmp_path / "cut.jpg").write_bytes(frames[0].read_bytes()[:900])
    (tmp_path / "notes.jpg").write_text("not an image")
    (tmp_path / "masks").mkdir()
    shutil.copy(frames[0], tmp_path / "masks" / frames[0].name)  # masks are not images to compare
    shutil.copy(frames[0], tmp_path / "x_mask.jpg")
    paths = find_images(tmp_path)
    assert sorted(p.name for p in paths) == sorted([p.name for p in frames] + ["cut.jpg", "notes.jpg"])
    with pytest.warns(DataWarning) as caught:
        index = hash_images(paths, root=tmp_path)
    assert sorted(index.names) == sorted(p.name for p in frames)
    bad = dict(index.errors)
    assert set(bad) == {"cut.jpg", "notes.jpg"} and all(bad.values())
    text = " ".join(str(w.message) for w in caught)
    assert "cut.jpg" in text and "notes.jpg" in text


def test_progress_and_bad_arguments(indexes):
    ia, ib = indexes
    seen = []
    find_overlap(ia, ib, progress=lambda done, total: seen.append((done, total)))
    assert seen and seen[-1][0] == seen[-1][1]
    with pytest.raises(ValueError, match="threshold"):
        find_overlap(ia, ib, threshold=1.5)
    empty = hash_images([])
    assert len(empty) == 0 and find_overlap(empty, ib) == [] and find_groups(empty) == []


# ------------------------------------------------------------------------------------------
# the command line


def test_cli_overlap_two_folders_json(sets):
    a_dir, b_dir, _, truth = sets
    rc, text = run(["data", "overlap", str(a_dir), str(b_dir), "--json"])
    assert rc == 0, text
    out = json.loads(text)
    assert out["a"]["images"] == len(find_images(a_dir)) and out["b"]["images"] == len(find_images(b_dir))
    twins = {m["b"]: {t["a"]: t for t in m["twins"]} for m in out["images"]}
    for b_name, (a_name, kind) in truth.items():
        assert twins[b_name][a_name]["kind"] == kind
    assert out["summary"]["b_with_twin"] == len(truth)
    assert str(Path(a_dir).resolve()) not in json.dumps(out["images"])  # names are relative


def test_cli_overlap_table_and_groups(sets):
    a_dir, b_dir, _, _ = sets
    rc, text = run(["data", "overlap", str(a_dir), str(b_dir)])
    assert rc == 0, text
    assert "pane.jpg" in text and "dual.jpg" in text and "pane" in text
    assert f"{len(sets[3])} of {len(find_images(b_dir))} images of B" in text
    rc, text = run(["data", "overlap", str(b_dir), "--json", "--threshold", "0.9"])
    assert rc == 0, text
    out = json.loads(text)
    assert out["threshold"] == 0.9 and out["groups"] == []  # the copies come from different frames
    rc, text = run(["data", "overlap", str(b_dir)])
    assert rc == 0 and "no near-duplicates" in text


def test_cli_overlap_pictures_show_each_pair_beyond_identical_bytes_as_thumbnails(sets, tmp_path):
    a_dir, b_dir, _, truth = sets
    rc, text = run(["data", "overlap", str(a_dir), str(b_dir), "--json", "--pictures", str(tmp_path / "p")])
    assert rc == 0, text
    out = json.loads(text)
    pairs = [(m["b"], t) for m in out["images"] for t in m["twins"] if t["kind"] != "identical-file"]
    assert len(out["pictures"]) == len(pairs) >= len(truth) - 1  # all but the byte copy
    assert sorted(p.name for p in (tmp_path / "p").glob("*.png")) == sorted(out["pictures"])
    assert any(n.endswith("__copies-crop.png") for n in out["pictures"])  # named by the pair
    for name in out["pictures"]:
        with Image.open(tmp_path / "p" / name) as im:  # two thumbnails of <= 160 px, not full frames
            assert im.width <= 2 * 160 + 60 and im.height < 300
    (tmp_path / "file").write_text("x")
    rc, text = run(["data", "overlap", str(a_dir), "--pictures", str(tmp_path / "file")])
    assert rc == 1 and "--pictures" in text and "is a file" in text


def test_cli_overlap_errors_are_one_clear_line(tmp_path, phantoms):
    rc, text = run(["data", "overlap", str(tmp_path / "missing")])
    assert rc == 1 and "does not exist" in text and "Traceback" not in text
    rc, text = run(["data", "overlap", str(tmp_path)])
    assert rc == 1 and "no images" in text
    rc, text = run(["data", "overlap", str(phantoms), "--threshold", "2"])
    assert rc == 1 and "threshold" in text and "Traceback" not in text


def test_cli_overlap_reports_unreadable_files(tmp_path, phantoms):
    for p in find_images(phantoms)[:2]:
        shutil.copy(p, tmp_path / p.name)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    rc, text = run(["data", "overlap", str(tmp_path)])
    assert rc == 0 and "broken.png" in text
    rc, text = run(["data", "overlap", str(tmp_path), "--json"])
    out = json.loads(text)
    assert [e["image"] for e in out["a"]["errors"]] == ["broken.png"]


# ------------------------------------------------------------------------------------------
# real data: DDTI against LES3BDD


def _area_means(img: np.ndarray, boxes: np.ndarray, n: int = 24) -> np.ndarray:
    """(len(boxes), n * n) means of an n x n grid of cells over each box (fractions x0, y0,
    x1, y1) of a grey image, from its integral image: plain area averaging."""
    h, w = img.shape
    ii = np.zeros((h + 1, w + 1))
    ii[1:, 1:] = img.cumsum(0).cumsum(1)
    k = np.arange(n + 1) / n
    xs = np.rint((boxes[:, 0, None] + (boxes[:, 2] - boxes[:, 0])[:, None] * k) * w).astype(int)  # (B, n + 1)
    ys = np.rint((boxes[:, 1, None] + (boxes[:, 3] - boxes[:, 1])[:, None] * k) * h).astype(int)
    x0, x1 = xs[:, None, :-1], np.maximum(xs[:, None, 1:], xs[:, None, :-1] + 1)
    y0, y1 = ys[:, :-1, None], np.maximum(ys[:, 1:, None], ys[:, :-1, None] + 1)
    sums = ii[y1, x1] - ii[y0, x1] - ii[y1, x0] + ii[y0, x0]
    return (sums / ((x1 - x0) * (y1 - y0))).reshape(len(boxes), -1)


def _reference_twins(ddti: list[Path], les: list[Path]) -> tuple[dict, np.ndarray]:
    """For each LES3BDD image, its best normalised correlation with any DDTI frame over a
    brute-force grid of windows of the frame (sides 1.0, 0.9, 0.8 and 0.7 of it along each
    axis, every 0.05, and its two halves), each averaged to 24x24 cells: a pixel criterion
    computed without the index or any of its code."""

    def unit(a: np.ndarray) -> np.ndarray:
        a = a - a.mean(axis=1, keepdims=True)
        return a / np.sqrt((a * a).sum(axis=1, keepdims=True) + 1e-6)

    grey = lambda p: np.asarray(Image.open(p).convert("L"), np.float64)  # noqa: E731
    queries = unit(np.concatenate([_area_means(grey(p), np.array([[0.0, 0.0, 1.0, 1.0]])) for p in les]))
    spans = [(0.0, 1.0)] + [(s, s + f) for f in (0.9, 0.8, 0.7) for s in np.arange(0, 1 - f + 1e-9, 0.05)]
    boxes = np.array([(x0, y0, x1, y1) for x0, x1 in spans for y0, y1 in spans] + [(0, 0, 0.5, 1), (0.5, 0, 1, 1)])
    best = np.full(len(les), -1.0)
    arg = np.zeros(len(les), int)
    for k, p in enumerate(ddti):
        c = (queries @ unit(_area_means(grey(p), boxes)).T).max(axis=1)
        better = c > best
        best[better], arg[better] = c[better], k
    return {les[i]: ddti[arg[i]] for i in range(len(les))}, best


@pytest.mark.ddti
@pytest.mark.skipif(
    not os.environ.get("HFCN_LES3BDD_DIR"), reason="HFCN_LES3BDD_DIR is not set (LES3BDD not available)"
)
@pytest.mark.skipif(
    not os.environ.get("HFCN_DDTI_DIR"), reason="HFCN_DDTI_DIR is not set (real DDTI files not available)"
)
def test_real_ddti_against_les3bdd():
    ddti_root, les_root = Path(os.environ["HFCN_DDTI_DIR"]), Path(os.environ["HFCN_LES3BDD_DIR"])
    rc, text = run(["data", "overlap", str(ddti_root), str(les_root), "--json"])
    assert rc == 0, text[-2000:]
    out = json.loads(text)
    found = {m["b"]: {t["a"] for t in m["twins"]} for m in out["images"]}
    ddti, les = find_images(ddti_root), find_images(les_root)
    best_frame, best = _reference_twins(ddti, les)
    # The reference's scores split cleanly (measured): 315 images correlate >= 0.99 with a
    # DDTI frame, the others (other scanners) < 0.9; 0.95 sits in that gap.
    ref = {p.relative_to(les_root).as_posix() for p, s in zip(les, best) if s >= 0.95}
    assert ref, "the reference found no DDTI copy in LES3BDD"
    hit = ref & set(found)
    recall = len(hit) / len(ref)
    false = set(found) - ref
    assert recall >= 0.99, f"recall {recall:.3f}: missed {sorted(ref - set(found))[:10]}"
    assert len(false) <= max(1, len(les) // 1000), f"matched without a pixel twin: {sorted(false)[:10]}"
    # the twin named is the reference's best frame, or a copy of it (DDTI holds identical frames)
    by_name = {p.relative_to(ddti_root).as_posix(): p for p in ddti}
    for b in hit:
        twin = best_frame[les_root / b].relative_to(ddti_root).as_posix()
        same = {a for a in found[b] if by_name[a].read_bytes() == by_name[twin].read_bytes()} or found[b] & {twin}
        assert same, f"{b}: reference twin {twin}, found {sorted(found[b])}"
