"""Synthetic DDTI-format phantoms: deterministic, fast, read by the DDTI reader, with the
malignancy cues, label noise and warts they promise."""

from __future__ import annotations

import hashlib
import json
import time
import warnings

import numpy as np
import pytest
from PIL import Image, ImageDraw

from hfcn_bench.data import DataWarning, load_dataset, synthetic, write_synthetic_ddti
from hfcn_bench.data.rois import open_rgb
from hfcn_bench.data.synthetic import DIFFICULTIES, FRAME_SIZE, GENERATOR_VERSION, MIN_CASES_WITH_WARTS
from hfcn_bench.errors import HfcnError


def tree_digest(root) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "ds"
    start = time.perf_counter()
    write_synthetic_ddti(out, n_cases=40, seed=3)
    elapsed = time.perf_counter() - start
    truth = json.loads((out / "synthetic.json").read_text())
    return out, truth, elapsed


def test_forty_cases_are_fast(phantoms):
    # The brief asks for < 5 s; the bound leaves room for a loaded 2-core CI machine.
    assert phantoms[2] < 10.0


def test_layout_and_frames_match_ddti(phantoms):
    out, truth, _ = phantoms
    assert sorted(p.name for p in out.iterdir()) == ["raw_jpg", "synthetic.json", "xml"]
    assert len(list((out / "xml").glob("*.xml"))) == 40
    n_frames = sum(len(c["frames"]) for c in truth["cases"].values())
    jpgs = sorted((out / "raw_jpg").glob("*.jpg"))
    assert len(jpgs) == n_frames
    with Image.open(jpgs[0]) as im:
        assert im.size == FRAME_SIZE and im.mode == "RGB" and im.format == "JPEG"
    arr = np.asarray(open_rgb(jpgs[0]), dtype=np.int16)
    assert np.abs(arr[..., 0] - arr[..., 1]).max() <= 8  # grey content, like DDTI (JPEG chroma noise aside)


def test_same_seed_same_bytes_other_seed_other_bytes(phantoms, tmp_path):
    out, _, _ = phantoms
    again = write_synthetic_ddti(tmp_path / "again", n_cases=40, seed=3)
    assert tree_digest(again) == tree_digest(out)
    a = write_synthetic_ddti(tmp_path / "a", n_cases=3, seed=3)
    b = write_synthetic_ddti(tmp_path / "b", n_cases=3, seed=4)
    assert tree_digest(a)["raw_jpg/1_1.jpg"] != tree_digest(b)["raw_jpg/1_1.jpg"]


def test_read_by_the_ddti_reader_without_warts(phantoms):
    out, truth, _ = phantoms
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)  # a clean phantom set must raise no warning
        ds = load_dataset(out)
    assert ds.format == "ddti" and ds.report.warts == []
    assert ds.report.cases == 40
    assert ds.report.frames == sum(len(c["frames"]) for c in truth["cases"].values())
    expected_outlines = sum(f["outlines"] for c in truth["cases"].values() for f in c["frames"])
    assert ds.report.outlines == expected_outlines
    assert ds.report.dual_view_frames == sum(f["dual_view"] for c in truth["cases"].values() for f in c["frames"])
    assert ds.report.dual_view_frames > 0
    # Labels: TI-RADS from the class, no noise asked for -> reader label == true class.
    for s in ds.samples:
        assert s.label == (truth["cases"][s.case_id]["true_class"] == "malignant")
    unlabelled = [c for c, v in truth["cases"].items() if v["tirads"] == ""]
    assert ds.report.by_rule["tirads"].cases["excluded"] == len(unlabelled)
    assert {s.case_id for s in ds.samples}.isdisjoint(unlabelled)
    assert ds.report.by_rule["mccnn"].cases["excluded"] > len(unlabelled)  # 4a/4b dropped too
    # DDTI's vocabulary, spelling variants included, is all known to the reader.
    raw_margins = {c.raw["margins"] for c in ds.cases.values()}
    assert raw_margins & {"ill- defined", "ill defined", "well defined smooth", "well defined"}
    assert all(c.fields["tirads"] in (None, "2", "3", "4a", "4b", "4c", "5") for c in ds.cases.values())


def _roi_stats(sample):
    """(nodule/surround echo ratio, box height/width, bright-pixel fraction, fraction of pixels
    at least 60 grey levels above the nodule's median) of one outline."""
    img = np.asarray(open_rgb(sample.image_path).convert("L"), dtype=np.float32)
    mask_img = Image.new("L", sample.frame_size, 0)
    ImageDraw.Draw(mask_img).polygon(list(sample.polygon), fill=1)
    inside = np.asarray(mask_img, dtype=bool)
    x0, y0, x1, y1 = sample.bbox
    ring = np.zeros_like(inside)
    ring[max(y0 - 15, 0) : y1 + 15, max(x0 - 15, 0) : x1 + 15] = True
    ring[y0 - 3 : y1 + 3, x0 - 3 : x1 + 3] = False
    echo = img[inside].mean() / img[ring].mean()
    bright = (img[inside] > 225).mean()
    foci = (img[inside] > np.median(img[inside]) + 60).mean()
    return echo, (y1 - y0) / (x1 - x0), bright, foci


@pytest.fixture(scope="module")
def easy_phantoms(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth-easy") / "ds"
    write_synthetic_ddti(out, n_cases=40, seed=3, difficulty="easy")
    return out, json.loads((out / "synthetic.json").read_text())


def test_easy_phantoms_let_the_class_decide_the_cues(easy_phantoms):
    out, truth = easy_phantoms
    assert truth["difficulty"] == "easy" and "cues" not in truth["cases"]["1"]
    ds = load_dataset(out, warn=False)
    stats = {0: [], 1: []}
    for s in ds.samples:
        stats[s.label].append(_roi_stats(s))
    b, m = (np.array(stats[k]) for k in (0, 1))
    assert len(b) >= 8 and len(m) >= 8
    # Hypoechoic, taller than wide, microcalcifications -- on average, not for every nodule.
    assert np.median(m[:, 0]) < 0.75 < np.median(b[:, 0])
    assert np.median(m[:, 1]) > 1.0 > np.median(b[:, 1])
    assert m[:, 2].mean() > 3 * b[:, 2].mean()


def test_realistic_phantoms_render_each_recorded_cue(phantoms):
    # The realistic set records each case's cues; the image must show them, whatever the class.
    out, truth, _ = phantoms
    assert truth["difficulty"] == "realistic" and truth["version"] == GENERATOR_VERSION
    ds = load_dataset(out, warn=False)
    rows = [(truth["cases"][s.case_id]["cues"], s.label, _roi_stats(s)) for s in ds.samples]
    solid = [(c, st) for c, _, st in rows if c["composition"] == "solid"]
    echo = {k: np.median([st[0] for c, st in solid if c["echogenicity"] == k]) for k in ("hypo", "iso", "hyper")}
    assert echo["hypo"] < 0.85 < echo["iso"] < echo["hyper"], echo
    taller = np.array([c["taller_than_wide"] for c, _, _ in rows])
    aspect = np.array([st[1] for _, _, st in rows])
    assert np.median(aspect[taller]) > 1.0 > np.median(aspect[~taller])
    micro = np.array([c["microcalcifications"] > 0 for c, _ in solid])
    # Microcalcifications stand above the nodule's own speckle (not above a fixed grey level:
    # they are 12-19 dB brighter than the parenchyma, inside a 60 dB display range).
    foci = np.array([st[3] for _, st in solid])
    assert micro.sum() >= 3 and foci[micro].mean() > 3 * foci[~micro].mean()
    # On average the cancers still look like cancers: darker, more often taller than wide.
    label = np.array([lab for _, lab, _ in rows])
    ratio = np.array([st[0] for _, _, st in rows])
    assert np.median(ratio[label == 1]) < np.median(ratio[label == 0])
    assert taller[label == 1].mean() > taller[label == 0].mean()


def _cue_frequencies(malignant: bool, n: int = 3000) -> dict:
    looks = [synthetic._look(np.random.default_rng([99, i, malignant]), malignant, "realistic") for i in range(n)]
    return {
        "solid": np.mean([lk.cystic == "" for lk in looks]),
        "hypoechoic": np.mean([lk.echo_class in ("hypo", "marked") for lk in looks]),
        "irregular": np.mean([lk.margin in ("lobulated", "spiculated") for lk in looks]),
        "taller": np.mean([lk.taller for lk in looks]),
        "micro": np.mean([lk.micro > 0 for lk in looks]),
        "spongiform": np.mean([lk.cystic == "spongiform" for lk in looks]),
    }, looks


def test_realistic_cues_overlap_between_the_classes():
    # Each suspicious cue is several times more frequent in cancers, and none decides the class:
    # it is missing from a good share of cancers or present in some benign nodules.
    mal, mal_looks = _cue_frequencies(True)
    ben, ben_looks = _cue_frequencies(False)
    for cue in ("solid", "hypoechoic", "irregular", "taller", "micro"):
        odds = (mal[cue] / (1 - mal[cue])) / (ben[cue] / (1 - ben[cue]))
        assert 3 < odds < 40, (cue, mal[cue], ben[cue])
        assert mal[cue] < 0.9 and ben[cue] > 0.05, (cue, mal[cue], ben[cue])
    assert ben["spongiform"] > 0.1 > mal["spongiform"]

    # The best any reader of the cues can do: the likelihood ratio of the whole cue model
    # (look-alikes included) ranks the classes well short of perfectly.
    def llr(look):
        lm = lb = 0.0
        values = {
            "composition": look.cystic,
            "echo": look.echo_class,
            "margin": look.margin,
            "taller": look.taller,
            "micro": look.micro > 0,
            "comet": look.comet > 0,
            "macro": look.macro,
            "halo": look.halo,
        }
        for name, (pm, pb) in synthetic._CUES.items():
            v = values[name]
            qm, qb = (pm[v], pb[v]) if isinstance(pm, dict) else ((pm, pb) if v else (1 - pm, 1 - pb))
            lm, lb = lm + np.log(qm + 1e-9), lb + np.log(qb + 1e-9)
        am, ab = synthetic._LOOKALIKE
        return np.logaddexp(np.log(1 - am) + lm, np.log(am) + lb) - np.logaddexp(np.log(1 - ab) + lb, np.log(ab) + lm)

    from hfcn_bench.metrics import roc_auc

    scores = [llr(lk) for lk in mal_looks + ben_looks]
    ideal = roc_auc(np.r_[np.ones(len(mal_looks)), np.zeros(len(ben_looks))].astype(bool), scores)
    assert 0.82 < ideal < 0.93, ideal


def test_difficulties_differ_and_are_checked(tmp_path):
    a = write_synthetic_ddti(tmp_path / "real", n_cases=3, seed=5)
    b = write_synthetic_ddti(tmp_path / "easy", n_cases=3, seed=5, difficulty="easy")
    assert tree_digest(a)["raw_jpg/1_1.jpg"] != tree_digest(b)["raw_jpg/1_1.jpg"]
    assert json.loads((a / "synthetic.json").read_text())["difficulty"] == "realistic"
    with pytest.raises(HfcnError, match="difficulty"):
        write_synthetic_ddti(tmp_path / "bad", n_cases=3, difficulty="hard")


def test_realistic_frames_stay_fast():
    # A frame of either difficulty renders in about 10 ms on an idle core; the bound leaves
    # room for a loaded 2-core machine.
    rng = np.random.default_rng(0)
    for difficulty in DIFFICULTIES:
        looks = [synthetic._look(np.random.default_rng([0, i]), i % 2 == 0, difficulty) for i in range(10)]
        start = time.perf_counter()
        for look in looks:
            synthetic._render_frame(rng, look, False, 40)
        assert (time.perf_counter() - start) / len(looks) < 0.08, difficulty


def test_label_noise_flips_recorded_class_only(tmp_path):
    out = write_synthetic_ddti(tmp_path / "noisy", n_cases=40, seed=1, label_noise=0.3, unlabelled_fraction=0.0)
    truth = json.loads((out / "synthetic.json").read_text())
    ds = load_dataset(out, warn=False)
    flipped = {c for c, v in truth["cases"].items() if v["flipped"]}
    assert 4 <= len(flipped) <= 22  # Binomial(40, 0.3): mean 12, sd 2.9
    for s in ds.samples:
        true_malignant = truth["cases"][s.case_id]["true_class"] == "malignant"
        assert bool(s.label) == (true_malignant != (s.case_id in flipped))


def test_warts_are_injected_and_each_one_is_reported(tmp_path):
    out = write_synthetic_ddti(tmp_path / "warty", n_cases=MIN_CASES_WITH_WARTS + 2, seed=7, warts=True)
    truth = json.loads((out / "synthetic.json").read_text())
    with pytest.warns(DataWarning):
        ds = load_dataset(out)
    injected = {(w["kind"], w["case"], w.get("frame")) for w in truth["warts"]}
    assert {k for k, _, _ in injected} == {
        "truncated-outline",
        "empty-outline",
        "duplicate-outline",
        "duplicate-image",
        "missing-image",
        "unreadable-image",
        "malformed-xml",
    }
    reported = {(w.kind, w.case, w.frame) for w in ds.report.warts}
    # A duplicate pair may be resolved either way (the labelled copy is kept): match by group.
    for k, c, f in injected - {x for x in injected if x[0] == "duplicate-image"}:
        assert (k, c, f) in reported, (k, c, f)
    dup_groups = [
        {(c, f), (w["of"].split("_")[0], int(w["of"].split("_")[1]))}
        for w in truth["warts"]
        if w["kind"] == "duplicate-image"
        for c, f in [(w["case"], w["frame"])]
    ]
    dropped = {(w.case, w.frame) for w in ds.report.warts_of("duplicate-image")}
    conflicts = {(w.case, w.frame) for w in ds.report.warts_of("label-conflict")}
    for g in dup_groups:
        labels = {ds.cases[c].label for c, _ in g if ds.cases.get(c) is not None} - {None}
        if len(labels) > 1:  # the copy went to a case of the other class: both dropped, reported
            assert g <= conflicts and not g & dropped, g
        else:
            assert len(g & dropped) == 1, g
    cross = [g for g in dup_groups if len({c for c, _ in g}) == 2]
    # A copy shared by two cases either conflicts (two labels), or links the two cases into one
    # split unit, or links nothing because one of them keeps no sample (unlabelled, say).
    with_samples = {s.case_id for s in ds.samples}
    linked = [set(w.file.replace(".xml", "").split(", ")) for w in ds.report.warts_of("linked-cases")]
    assert cross
    for g in cross:
        cases = {c for c, _ in g}
        if len({ds.cases[c].label for c in cases} - {None}) > 1:
            continue
        if cases <= with_samples:
            assert any(cases <= group for group in linked), (g, linked)
            assert len({s.unit for s in ds.samples if s.case_id in cases}) == 1, g
        else:
            assert not any(cases <= group for group in linked), (g, linked)
    salvage = [w for w in ds.report.warts_of("truncated-outline") if w.action.startswith("salvaged")]
    assert len(salvage) == 1 and ds.report.usable


def test_arguments_are_checked(tmp_path):
    with pytest.raises(HfcnError, match="warts=True needs"):
        write_synthetic_ddti(tmp_path / "a", n_cases=3, warts=True)
    with pytest.raises(HfcnError, match="label_noise"):
        write_synthetic_ddti(tmp_path / "b", n_cases=3, label_noise=1.5)
    write_synthetic_ddti(tmp_path / "c", n_cases=2, seed=0)
    with pytest.raises(HfcnError, match="already holds"):
        write_synthetic_ddti(tmp_path / "c", n_cases=2, seed=1)
    write_synthetic_ddti(tmp_path / "c", n_cases=3, seed=1, overwrite=True)
    assert len(list((tmp_path / "c" / "xml").glob("*.xml"))) == 3


def test_small_sets_still_have_both_classes(tmp_path):
    out = write_synthetic_ddti(tmp_path / "tiny", n_cases=2, seed=11, unlabelled_fraction=0.0)
    truth = json.loads((out / "synthetic.json").read_text())
    assert sorted(v["true_class"] for v in truth["cases"].values()) == ["benign", "malignant"]


def test_ensure_synthetic_reuses_regenerates_and_protects(tmp_path):
    from hfcn_bench.data import ensure_synthetic
    from hfcn_bench.data.synthetic import DEFAULT_LABEL_NOISE

    out = ensure_synthetic(tmp_path / "default", n_cases=3, seed=0)
    first = tree_digest(out)
    stamp = (out / "xml" / "1.xml").stat().st_mtime_ns
    assert ensure_synthetic(out, n_cases=3, seed=0) == out
    assert (out / "xml" / "1.xml").stat().st_mtime_ns == stamp  # reused, not rewritten
    ensure_synthetic(out, n_cases=4, seed=0)  # other arguments: regenerated in place
    assert len(list((out / "xml").glob("*.xml"))) == 4 and tree_digest(out) != first
    manifest = json.loads((out / "synthetic.json").read_text())
    assert manifest["difficulty"] == "realistic" and manifest["label_noise"] == DEFAULT_LABEL_NOISE > 0
    # A set written by generator version 1 recorded neither version nor difficulty: replaced.
    old = {k: v for k, v in manifest.items() if k not in ("version", "difficulty")}
    (out / "synthetic.json").write_text(json.dumps(old))
    ensure_synthetic(out, n_cases=4, seed=0)
    assert json.loads((out / "synthetic.json").read_text())["version"] == GENERATOR_VERSION
    stamp = (out / "xml" / "1.xml").stat().st_mtime_ns
    ensure_synthetic(out, n_cases=4, seed=0, difficulty="easy")  # another difficulty: replaced
    assert json.loads((out / "synthetic.json").read_text())["difficulty"] == "easy"
    assert (out / "xml" / "1.xml").stat().st_mtime_ns != stamp
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "1.xml").write_text("<case/>")
    with pytest.raises(HfcnError, match="holds no phantoms"):
        ensure_synthetic(tmp_path / "real", n_cases=3)
    assert (tmp_path / "real" / "1.xml").read_text() == "<case/>"


def test_cli_synth_difficulty_and_default_label_noise(tmp_path):
    import io

    from rich.console import Console

    from hfcn_bench.cli import main
    from hfcn_bench.data.synthetic import DEFAULT_LABEL_NOISE

    def run(argv):
        buf = io.StringIO()
        return main(argv, console=Console(file=buf, width=160, force_terminal=False, color_system=None)), buf.getvalue()

    rc, text = run(["data", "synth", "--out", str(tmp_path / "e"), "--cases", "3", "--difficulty", "easy"])
    assert rc == 0 and "easy" in text, text
    truth = json.loads((tmp_path / "e" / "synthetic.json").read_text())
    assert truth["difficulty"] == "easy" and truth["label_noise"] == DEFAULT_LABEL_NOISE
    rc, text = run(["data", "synth", "--out", str(tmp_path / "r"), "--cases", "3", "--label-noise", "0"])
    truth = json.loads((tmp_path / "r" / "synthetic.json").read_text())
    assert rc == 0 and truth["difficulty"] == "realistic" and truth["label_noise"] == 0.0
    with pytest.raises(SystemExit) as exc:  # argparse rejects an unknown difficulty
        run(["data", "synth", "--out", str(tmp_path / "x"), "--cases", "3", "--difficulty", "hard"])
    assert exc.value.code == 2 and not (tmp_path / "x").exists()
