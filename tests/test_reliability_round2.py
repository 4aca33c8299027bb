"""The second round of an adversarial user's probes (issue 26): each numbered failure of the
issue that this file covers has one regression test here, named by its item number, and the
bounded fuzz tests of the app's box parser and of the DICOM reader's header-driven branches."""

from __future__ import annotations

import json
import os
import shutil
import warnings

import pytest
from clitools import run
from PIL import Image

from hfcn_bench.data import load_dataset, write_synthetic_ddti

SMOKE = ["--preset", "smoke", "--threads", "1", "--n-boot", "20"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_synthetic_ddti(tmp_path_factory.mktemp("round2") / "ddti", n_cases=20, seed=2)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("round2-runs") / "r"
    rc, text = run(["train", "--data", str(data), "--out", str(out), *SMOKE])
    assert rc == 0, text
    return out


def _files(folder) -> int:
    return sum(len(f) for _, _, f in os.walk(folder))


def _folder_set(root, n_per_class=4, size=(40, 40)):
    """A benign/ + malignant/ folder dataset of distinct grey images."""
    for k, cls in enumerate(("benign", "malignant")):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            Image.new("L", size, 20 + 100 * k + 10 * i).save(root / cls / f"{cls[0]}{i}.png")
    return root


# -- item 1: `data holdout --force` never removes a folder that holds its input ------------------


def test_item1_holdout_force_never_deletes_its_own_input(data, tmp_path):
    ho = tmp_path / "ho"
    rc, text = run(["data", "holdout", str(data), "--out", str(ho)])
    assert rc == 0, text
    before = _files(ho)
    rc, text = run(["data", "holdout", str(ho / "development"), "--out", str(ho), "--force"])
    assert rc == 1 and "overlap" in text and "delete the input" in text and "Traceback" not in text, text
    assert _files(ho) == before
    # --out inside the dataset: its parts would be written into the input
    fs = _folder_set(tmp_path / "fs")
    rc, text = run(["data", "holdout", str(fs), "--out", str(fs), "--force"])
    assert rc == 1 and "overlap" in text, text
    assert sorted(p.name for p in fs.iterdir()) == ["benign", "malignant"]


# -- item 14: an empty part is an error; a bad frame is named, never a partial copy --------------


def test_item14_holdout_refuses_an_empty_part_and_survives_a_symlink_loop(data, tmp_path):
    two = _folder_set(tmp_path / "two", n_per_class=1)
    rc, text = run(["data", "holdout", str(two), "--out", str(tmp_path / "h2")])
    assert rc == 1 and "holdout part empty" in text and "2 labelled case(s)" in text, text
    assert not (tmp_path / "h2").exists()
    # a symlink loop among the frames: named, left out, and the rest is copied
    root = tmp_path / "ddti"
    shutil.copytree(data, root)
    os.symlink("9_9.jpg", root / "raw_jpg" / "9_9.jpg")
    out = tmp_path / "h"
    rc, text = run(["data", "holdout", str(root), "--out", str(out)])
    assert rc == 0 and "raw_jpg/9_9.jpg" in text and "not copied" in text, text
    assert sorted(p.name for p in out.iterdir()) == ["development", "holdout"]  # no staging folder left
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parts = [load_dataset(out / p) for p in ("development", "holdout")]
        whole = load_dataset(root)
    assert sum(len(p) for p in parts) == len(whole)
    # a copy that fails mid-way leaves nothing behind, so a plain rerun is not blocked
    from hfcn_bench.data import holdout as H

    calls = {"n": 0}
    real = H.shutil.copy2

    def flaky(src, dst):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(src, dst)

    H.shutil.copy2 = flaky
    try:
        rc, text = run(["data", "holdout", str(data), "--out", str(tmp_path / "h3")])
        assert rc == 130, text
    finally:
        H.shutil.copy2 = real
    assert not (tmp_path / "h3").exists()
    rc, text = run(["data", "holdout", str(data), "--out", str(tmp_path / "h3")])
    assert rc == 0, text


@pytest.fixture(scope="module")
def external(tmp_path_factory):
    """Another phantom set: an external set for the runs trained on ``data``."""
    return write_synthetic_ddti(tmp_path_factory.mktemp("round2-ext") / "ext", n_cases=8, seed=11)


def _copy(run_dir, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(run_dir, dst)
    return dst


# -- item 5: records of different checkpoints never overwrite each other; --out needs --force ----


def test_item5_eval_records_per_checkpoint_and_refuses_a_full_out(trained, external, tmp_path):
    run_dir = _copy(trained, tmp_path)
    o1, o2 = tmp_path / "o1", tmp_path / "o2"
    rc, text = run(["eval", "--run", str(run_dir), "--data", str(external), "--out", str(o1)])
    assert rc == 0, text
    (best,) = list((run_dir / "external").iterdir())
    best_report = (best / "eval_report.json").read_text()
    mine = (o1 / "eval_report.json").read_text()
    rc, text = run(["eval", "--run", str(run_dir), "--data", str(external), "--checkpoint", "last", "--out", str(o1)])
    assert rc == 1 and "is not empty" in text and "--force" in text, text
    assert (o1 / "eval_report.json").read_text() == mine
    rc, text = run(["eval", "--run", str(run_dir), "--data", str(external), "--checkpoint", "last", "--out", str(o2)])
    assert rc == 0, text
    records = sorted(p.name for p in (run_dir / "external").iterdir())
    assert records == [best.name, best.name + "-last"]
    assert (best / "eval_report.json").read_text() == best_report
    last = json.loads((run_dir / "external" / (best.name + "-last") / "eval_report.json").read_text())
    assert last["checkpoint"] == "last" and json.loads(best_report)["checkpoint"] == "best"
    from hfcn_bench.app.card import card_markdown, model_card

    card = model_card(run_dir)
    assert sorted(e["checkpoint"] for e in card["external"]) == ["best", "last"]
    assert "(last weights)" in card_markdown(card)
    rc, text = run(
        ["eval", "--run", str(run_dir), "--data", str(external), "--checkpoint", "last", "--out", str(o1), "--force"]
    )
    assert rc == 0 and json.loads((o1 / "eval_report.json").read_text())["checkpoint"] == "last", text


# -- item 6: train --force over a run removes the old model's records and pictures ---------------


def test_item6_train_force_leaves_nothing_of_the_old_model(trained, data, external, tmp_path):
    run_dir = _copy(trained, tmp_path)
    rc, text = run(["eval", "--run", str(run_dir), "--data", str(external)])
    assert rc == 0, text
    rc, text = run(["predict", "--run", str(run_dir), str(data / "xml" / "1.xml")])
    assert rc == 0 and any((run_dir / "predictions").iterdir()), text
    (run_dir / "notes.txt").write_text("the user's own file")
    rc, text = run(["train", "--data", str(data), "--out", str(run_dir), *SMOKE, "--seed", "3", "--force"])
    assert rc == 0, text
    assert not (run_dir / "external").exists() and not (run_dir / "predictions").exists()
    assert (run_dir / "notes.txt").read_text() == "the user's own file"
    from hfcn_bench.app.card import model_card

    card = model_card(run_dir)
    assert card["external"] == [] and card["config"]["seed"] == 3


# -- item 8: hand edits to split.json and fitted.json are refused, naming the file --------------


def test_item8_edited_split_and_fitted_records_are_refused(trained, data, external, tmp_path):
    from hfcn_bench.app.card import model_card

    def edit(run_dir, name, change):
        obj = json.loads((run_dir / name).read_text())
        change(obj)
        (run_dir / name).write_text(json.dumps(obj, indent=1))

    def move_a_training_case(m):
        m["splits"][0]["test"].append(m["splits"][0]["train"].pop(0))

    def relabel(m):
        m["label_rule"] = "mccnn"

    def fixed_threshold(f):
        f["threshold_rule"] = "fixed"
        for p in f["threshold_predictions"].values():
            p["prob"] = [0.0 for _ in p["prob"]]

    xml = str(data / "xml" / "1.xml")
    for i, (name, change) in enumerate(
        (("split.json", move_a_training_case), ("split.json", relabel), ("fitted.json", fixed_threshold))
    ):
        run_dir = tmp_path / f"r{i}"
        shutil.copytree(trained, run_dir)
        edit(run_dir, name, change)
        for argv in (
            ["eval", "--run", str(run_dir)],
            ["eval", "--run", str(run_dir), "--data", str(external)],
            ["predict", "--run", str(run_dir), xml, "--no-png"],
        ):
            rc, text = run(argv)
            assert rc == 1 and f"{name} was changed after the run finished" in text, (name, argv, text)
        assert "was changed" in model_card(run_dir)["status"]
    # an untouched copy is read as before
    rc, text = run(["eval", "--run", str(_copy(trained, tmp_path))])
    assert rc == 0, text


# -- DICOM: items 9 and 17, and a fuzz test of the reader's header-driven branches ---------------


def _grey(rows=40, cols=50):
    import numpy as np

    return (np.arange(rows * cols) % 251).reshape(rows, cols).astype(np.uint8)


def test_item9_a_dicom_whose_rescale_is_nan_is_refused(trained, tmp_path):
    pytest.importorskip("pydicom")
    import apptools

    from hfcn_bench.app import Catalog, Classifier
    from hfcn_bench.errors import HfcnError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's own note on the invalid DS value
        nan = apptools.write_dicom(tmp_path / "nan.dcm", _grey(), "MONOCHROME2", RescaleSlope="NaN", RescaleIntercept=0)
    ok = apptools.write_dicom(tmp_path / "ok.dcm", _grey(), "MONOCHROME2", RescaleSlope=1, RescaleIntercept=0)
    classifier = Classifier(Catalog(trained))
    assert 0 <= classifier.classify(None, ok, "5,5,45,35").result["prob"] <= 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's own note on the invalid DS value
        with pytest.raises(HfcnError) as err:
            classifier.classify(None, nan, "5,5,45,35")
    assert "nan.dcm" in str(err.value) and "not finite" in str(err.value) and "RescaleSlope" in str(err.value)
    # the same for a floating-point TIFF holding NaN
    import numpy as np

    a = _grey().astype(np.float32)
    a[3, 4] = np.nan
    Image.fromarray(a, mode="F").save(tmp_path / "nan.tif")
    with pytest.raises(HfcnError) as err:
        classifier.classify(None, tmp_path / "nan.tif", "5,5,45,35")
    assert "nan.tif" in str(err.value) and "not finite" in str(err.value)


def test_item17_deflated_dicom_is_read_and_a_bad_palette_is_named(tmp_path):
    pytest.importorskip("pydicom")
    import apptools
    import numpy as np
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    from hfcn_bench.app.inputs import read_frame
    from hfcn_bench.errors import HfcnError

    g = _grey()
    plain = read_frame(apptools.write_dicom(tmp_path / "plain.dcm", g, "MONOCHROME2"))
    deflated = read_frame(
        apptools.write_dicom(tmp_path / "deflated.dcm", g, "MONOCHROME2", syntax=DeflatedExplicitVRLittleEndian)
    )
    assert np.array_equal(deflated.rgb, plain.rgb) and np.array_equal(plain.rgb[..., 0], g)
    assert deflated.info["transfer_syntax"] == "Deflated Explicit VR Little Endian"
    table = (np.arange(256, dtype="<u2") * 257).tobytes()
    for desc, needle in (([256, 0, 0], "says 0 bits per entry"), ([0, 0, 16], "holds 512 bytes for the 65536")):
        tags = {f"{c}PaletteColorLookupTableDescriptor": desc for c in ("Red", "Green", "Blue")}
        tags.update({f"{c}PaletteColorLookupTableData": table for c in ("Red", "Green", "Blue")})
        path = apptools.write_dicom(tmp_path / "palette.dcm", g, "PALETTE COLOR", **tags)
        with pytest.raises(HfcnError) as err:
            read_frame(path)
        text = str(err.value)
        assert "palette.dcm" in text and "PALETTE COLOR" in text and needle in text, text
        assert "uint" not in text and "NumPy" not in text


def _fuzz_dicom(path, pi, bits, rows, cols, frames, syntax, slope, intercept, center, width, palette, cut):
    import apptools
    import numpy as np

    rng = np.random.default_rng(rows * 31 + cols)
    samples = 3 if pi in ("RGB", "YBR_FULL") else 1
    shape = (rows, cols, 3) if samples == 3 else (rows, cols)
    if frames:
        shape = (frames, *shape)
    arr = rng.integers(0, 2 ** min(bits, 8), size=shape)
    tags = {}
    for name, value in (
        ("RescaleSlope", slope),
        ("RescaleIntercept", intercept),
        ("WindowCenter", center),
        ("WindowWidth", width),
    ):
        if value is not None:
            tags[name] = value
    if palette is not None:
        entries, first, nbits = palette
        table = rng.integers(0, 65535, size=max(entries, 1)).astype("<u2").tobytes()
        for c in ("Red", "Green", "Blue"):
            tags[f"{c}PaletteColorLookupTableDescriptor"] = [entries, first, nbits]
            tags[f"{c}PaletteColorLookupTableData"] = table
    if cut is not None:
        full = arr.astype(np.uint8 if bits <= 8 else "<u2").tobytes()
        tags["PixelData"] = full[: min(cut, len(full))] or b"\0\0"
    return apptools.write_dicom(path, arr, pi, bits=bits, frames=frames, syntax=syntax, **tags)


try:
    from hypothesis import HealthCheck, example, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - hypothesis is in the test extra
    given = None

if given is not None:
    _SYNTAXES = st.sampled_from(
        ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99"]  # explicit, implicit, deflated
    )

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(
        pi=st.sampled_from(["MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "PALETTE COLOR", "HSV"]),
        bits=st.sampled_from([1, 8, 12, 16]),
        rows=st.integers(1, 9),
        cols=st.integers(1, 9),
        frames=st.one_of(st.none(), st.integers(1, 3)),
        syntax=_SYNTAXES,
        slope=st.sampled_from([None, "1", "0", "-2.5", "NaN", "inf", "1e300"]),
        intercept=st.sampled_from([None, "0", "-1024", "NaN"]),
        center=st.sampled_from([None, "128", "NaN", "-inf", "40"]),
        width=st.sampled_from([None, "256", "1", "0", "NaN"]),
        palette=st.sampled_from([None, (256, 0, 16), (256, 0, 8), (0, 0, 16), (4, 0, 0), (256, 0, 33), (2, 5, 16)]),
        cut=st.sampled_from([None, None, 0, 1, 7]),
    )
    # found by this fuzz: a NaN RescaleIntercept without a RescaleSlope, which pydicom skips
    @example(
        pi="MONOCHROME1",
        bits=1,
        rows=1,
        cols=1,
        frames=None,
        syntax="1.2.840.10008.1.2.1",
        slope=None,
        intercept="NaN",
        center=None,
        width=None,
        palette=None,
        cut=None,
    )
    def test_fuzzed_dicom_headers_give_a_frame_or_one_clear_error(
        tmp_path_factory, pi, bits, rows, cols, frames, syntax, slope, intercept, center, width, palette, cut
    ):
        """Whatever the header says, the reader returns an 8-bit RGB frame of the declared size or
        raises HfcnError naming the file; never another exception (items 9, 17)."""
        pytest.importorskip("pydicom")
        from hfcn_bench.app.inputs import read_frame
        from hfcn_bench.errors import HfcnError

        path = tmp_path_factory.mktemp("dcm") / "fuzz.dcm"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _fuzz_dicom(path, pi, bits, rows, cols, frames, syntax, slope, intercept, center, width, palette, cut)
            try:
                f = read_frame(path)
            except HfcnError as exc:
                text = str(exc)
                assert "fuzz.dcm" in text and "Traceback" not in text and "NumPy" not in text, text
                return
        assert f.rgb.dtype.name == "uint8" and f.rgb.shape == (rows, cols, 3)
        # a rescale or window that is not a number never gives a (black) frame to classify
        odd = {"NaN", "inf", "-inf"}
        assert not (pi.startswith("MONOCHROME") and odd & {slope, intercept, center, width}), f.info


# -- item 12: the box parser reads plain numbers only, and never overflows ----------------------


@pytest.mark.parametrize(
    "text, needle",
    [
        ("inf,0,300,250", "'inf' is not a pixel coordinate"),
        ("10,10,100,100" + "7" * 400, "is not a pixel coordinate"),
        ("10,10,100,100 " + "7" * 400, "expected four numbers"),
        ("1_50,0,300,250", "'1_50' is not a pixel coordinate"),
        ("1e2,0,300,250", "'1e2' is not a pixel coordinate"),
        ("nan,0,30,25", "'nan' is not a pixel coordinate"),
    ],
)
def test_item12_the_box_parser_refuses_what_is_not_a_plain_number(trained, tmp_path, text, needle):
    from hfcn_bench.app import Catalog, Classifier
    from hfcn_bench.errors import HfcnError

    img = tmp_path / "frame.png"
    Image.new("L", (400, 300), 90).save(img)
    with pytest.raises(HfcnError) as err:
        Classifier(Catalog(trained)).classify(None, img, text)
    assert needle in str(err.value) and len(str(err.value)) < 300, str(err.value)


_PLAIN_BOX = r"[\s,]*(?:[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[\s,]+){3}[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[\s,]*"

if given is not None:
    _PART = st.one_of(
        st.integers(-50, 150).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.text("0123456789_.eE+-xINFnaf ", max_size=14),
        st.text(min_size=1, max_size=3),
    )

    @settings(max_examples=200, deadline=None)
    @given(
        text=st.one_of(
            st.tuples(st.sampled_from([",", " ", ", ", ",,"]), st.lists(_PART, max_size=6)).map(
                lambda t: t[0].join(t[1])
            ),
            st.text(max_size=80),
        )
    )
    def test_fuzzed_box_text_gives_a_box_inside_the_image_or_one_clear_error(text):
        """Item 12: whatever is typed, a valid box or an HfcnError; only plain numbers pass."""
        import re

        from hfcn_bench.data.rois import MIN_ROI_SIDE
        from hfcn_bench.errors import HfcnError
        from hfcn_bench.runs import parse_box

        try:
            x0, y0, x1, y1 = parse_box(text, (100, 80))
        except HfcnError as exc:
            assert "box " in str(exc) and len(str(exc)) < 300
            return
        assert re.fullmatch(_PLAIN_BOX, text), text
        assert 0 <= x0 < x1 <= 100 and 0 <= y0 < y1 <= 80
        assert min(x1 - x0, y1 - y0) >= MIN_ROI_SIDE


# -- item 13: an image used whole must be as large as a box; tiny images are a wart -------------


def test_item13_tiny_images_are_refused_whole_and_skipped_by_the_folder_loader(trained, tmp_path):
    from hfcn_bench.app import Catalog, Classifier
    from hfcn_bench.errors import HfcnError

    dot = tmp_path / "dot.jpg"
    Image.new("RGB", (1, 1), (90, 90, 90)).save(dot)
    with pytest.raises(HfcnError) as err:
        Classifier(Catalog(trained)).classify(None, dot, "")
    assert "dot.jpg is 1x1 px" in str(err.value) and "8 px" in str(err.value)
    strip = tmp_path / "strip.png"
    Image.new("L", (3, 500), 90).save(strip)
    rc, text = run(["predict", "--run", str(trained), str(strip), "--no-png"])
    assert rc == 1 and "strip.png is 3x500 px" in text, text
    fs = _folder_set(tmp_path / "fs")
    Image.new("L", (1, 1), 7).save(fs / "benign" / "dot.png")
    Image.new("L", (3, 500), 9).save(fs / "malignant" / "strip.png")
    rc, text = run(["data", "check", str(fs), "--json"])
    assert rc == 0, text
    tiny = [w["file"] for w in json.loads(text)["warts"] if w["kind"] == "tiny-roi"]
    assert sorted(tiny) == ["benign/dot.png", "malignant/strip.png"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = load_dataset(fs)
    assert len(ds) == 8 and all(min(s.frame_size) >= 8 for s in ds.samples)


# -- item 18: the app names run files relative to its catalog root ------------------------------


def test_item18_app_errors_name_runs_relative_to_the_catalog(trained, tmp_path):
    from hfcn_bench.app import Catalog, Classifier
    from hfcn_bench.errors import HfcnError

    root = tmp_path / "served"
    shutil.copytree(trained, root / "grid" / "broken")
    (root / "grid" / "broken" / "best.pt").unlink()
    shutil.copytree(trained, root / "good")
    img = tmp_path / "frame.png"
    Image.new("L", (60, 50), 90).save(img)
    classifier = Classifier(Catalog(root))
    with pytest.raises(HfcnError) as err:
        classifier.classify("grid/broken", img, "")
    text = str(err.value) + str(err.value.hint or "")
    assert "grid/broken/best.pt" in text and str(tmp_path) not in text, text
    status = classifier.card("grid/broken")["status"]
    assert "grid/broken/best.pt" in status and str(tmp_path) not in status
    # a catalog of one run names its files by the run folder's own name
    one = Classifier(Catalog(root / "grid" / "broken"))
    with pytest.raises(HfcnError) as err:
        one.classify(None, img, "")
    assert "broken/best.pt" in str(err.value) and str(tmp_path) not in str(err.value)
    # and what reaches a client through the page says the same
    gr = pytest.importorskip("gradio")
    from hfcn_bench.app.page import _Page

    page = _Page(classifier, gr)
    with pytest.raises(gr.Error) as err:
        with page.clean_errors():
            raise HfcnError(f"{root / 'good' / 'metrics.json'} is damaged", hint=f"retrain {root / 'good'}")
    assert str(tmp_path) not in str(err.value) and "good/metrics.json is damaged" in str(err.value)


# -- item 15: folder format: hidden folders are not cases; whatever is not read is reported -----


def test_item15_hidden_folders_are_ignored_and_skipped_files_reported(tmp_path):
    fs = _folder_set(tmp_path / "fs")
    ck = fs / "benign" / ".ipynb_checkpoints"
    ck.mkdir()
    shutil.copy(fs / "benign" / "b0.png", ck / "b0.png")  # the same bytes, sorted first
    case = fs / "benign" / "patient7"
    (case / "deeper").mkdir(parents=True)
    Image.new("L", (40, 40), 222).save(case / "a.png")
    Image.new("L", (40, 40), 223).save(case / "deeper" / "c.png")
    for f in (
        case / "scan.dcm",
        fs / "malignant" / "scan.dcm",
        fs / "benign" / "notes.txt",
        fs / "benign" / ".DS_Store",
    ):
        f.write_bytes(b"\0" * 200)
    rc, text = run(["data", "check", str(fs), "--json"])
    assert rc == 0, text
    warts = {(w["kind"], w["file"]) for w in json.loads(text)["warts"]}
    assert warts == {
        ("ignored-folder", "benign/.ipynb_checkpoints/"),
        ("ignored-folder", "benign/patient7/deeper/"),
        ("skipped-file", "benign/patient7/scan.dcm"),
        ("skipped-file", "malignant/scan.dcm"),
        ("skipped-file", "benign/notes.txt"),
        ("skipped-file", "benign/.DS_Store"),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = load_dataset(fs)
    assert not any(".ipynb" in s.case_id or ".ipynb" in str(s.image_path) for s in ds.samples)
    assert any(s.image_path == fs / "benign" / "b0.png" for s in ds.samples)
    assert len(ds) == 9


# -- item 16: predict never draws over the picture of another input of the same name ------------


def test_item16_predict_keeps_the_pictures_of_earlier_inputs_of_the_same_name(trained, data, tmp_path):
    a, b, pics = tmp_path / "a", tmp_path / "b", tmp_path / "pics"
    a.mkdir(), b.mkdir()
    src = sorted((data / "raw_jpg").glob("*.jpg"))
    shutil.copy(src[0], a / "1_1.jpg")
    shutil.copy(src[1], b / "1_1.jpg")

    def predict(img):
        rc, text = run(["predict", "--run", str(trained), str(img), "--out", str(pics), "--json"])
        assert rc == 0, text
        out = json.loads(text)
        return out["rows"][0]["png"], out["notes"]

    first, _ = predict(a / "1_1.jpg")
    before = open(first, "rb").read()
    second, notes = predict(b / "1_1.jpg")
    assert second != first and os.path.basename(second) == "1_1_0~2.png"
    assert open(first, "rb").read() == before
    assert any("holds the picture of another input" in n and "1_1_0~2.png" in n for n in notes)
    again, _ = predict(a / "1_1.jpg")  # a rerun of the same input replaces its own picture
    assert again == first and sorted(p.name for p in pics.iterdir()) == ["1_1_0.png", "1_1_0~2.png"]


# -- item 10: on a one-class external set, specificity is undefined, as ROC-AUC is --------------


def test_item10_specificity_on_a_one_class_set_is_undefined(trained, tmp_path):
    mal = write_synthetic_ddti(tmp_path / "mal", n_cases=6, seed=13, malignant_fraction=1.0, unlabelled_fraction=0.0)
    rc, text = run(["eval", "--run", str(trained), "--data", str(mal), "--json"])
    assert rc == 0, text
    rep = json.loads(text)
    assert rep["prevalence"]["external"] == 1.0
    assert rep["metrics"]["specificity"] is None and rep["auc"] is None
    assert rep["majority_baseline"]["specificity"] is None
    assert rep["metrics"]["recall"] is not None  # defined: there are malignant ROIs
    rc, text = run(["eval", "--run", str(trained), "--data", str(mal)])
    assert rc == 0, text
    (spec,) = [line for line in text.splitlines() if line.strip("│ ").startswith("specificity")]
    assert "—" in spec and "0.000" not in spec, spec


# -- item 11: every option is checked before any work, in one error -----------------------------


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["train", "--n-boot", "0"], "--n-boot 0: the case bootstrap needs at least 1 resample"),
        (["train", "--folds", "100"], "--folds 100: the data has 19 labelled case(s)"),
        (["train", "--seed", "-1"], "--seed -1: a seed is a whole number"),
        (["train", "--set", "seed=-4"], "seed -4: a seed is a whole number"),
        (["train", "--test-fraction", "nan"], "--test-fraction nan"),
        (["train", "--margin", "nan"], "margin must be a finite number >= 0"),
        (["reproduce", "--n-boot", "0"], "--n-boot 0: the case bootstrap needs at least 1 resample"),
        (["reproduce", "--folds", "100"], "--folds 100: the data has 19 labelled case(s)"),
        (["reproduce", "--seeds", "1,-3"], "--seeds -3: a seed is a whole number"),
        (["reproduce", "--threads", "0"], "--threads and --workers must be at least 1"),
        (["reproduce", "--gpus-per-cell", "-1"], "--gpus-per-cell -1.0"),
        (["eval", "--n-boot", "0"], "--n-boot 0: the case bootstrap needs at least 1 resample"),
        (["compare", "--n-boot", "0"], "--n-boot 0: the case bootstrap needs at least 1 resample"),
        (["compare", "--folds", "100"], "--folds 100: the data has 19 labelled case(s)"),
        (["holdout", "--seed", "-1"], "--seed -1: a seed is a whole number"),
        (["holdout", "--fraction", "1"], "--fraction 1.0: a share of the cases"),
        (["synth", "--seed", "-1"], "--seed -1: a seed is a whole number"),
    ],
)
def test_item11_bad_options_are_one_upfront_error(trained, data, tmp_path, argv, needle):
    out = tmp_path / "out"
    cmd, rest = argv[0], argv[1:]
    full = {
        "train": ["train", "--data", str(data), "--out", str(out), "--preset", "smoke", "--threads", "1"],
        "reproduce": [
            "reproduce",
            *("--data", str(data), "--preset", "smoke", "--engine", "local", "--table", "3"),
            *("--alphas", "0.6", "--backbones", "paper", "--out", str(out), "--json"),
        ],
        "eval": ["eval", "--run", str(trained), "--out", str(out)],
        "compare": ["compare", "--data", str(data), "--preset", "smoke", "--out", str(out)],
        "holdout": ["data", "holdout", str(data), "--out", str(out)],
        "synth": ["data", "synth", "--cases", "4", "--out", str(out)],
    }[cmd]
    if cmd == "reproduce" and "--folds" not in rest:
        rest = [*rest, "--folds", "2"]
    rc, text = run([*full, *rest])
    assert rc == 1 and needle in text and "Traceback" not in text, text
    assert text.count("error") == 1, text  # one error, not one per cell
    assert not out.exists()  # nothing trained, written or left marked "running"
