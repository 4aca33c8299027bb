"""`hfcn-bench app` through its API with gradio_client: an app over runs trained on phantoms at
smoke settings. classify returns P(malignant) in [0, 1] and the very number the prediction
path gives; every bad input of issue 13 is refused with a clear message while the server keeps
serving; 20 concurrent requests all succeed, each with its own answer; DICOM (single and
multi-frame, MONOCHROME1, YBR, palette colour, windowed 16-bit) is read as the viewer shows it;
a DDTI case XML goes through the project's reader; the model card; nothing leaves the machine;
and the command itself (acceptance of issue 13)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio")
pytest.importorskip("gradio_client")
pydicom = pytest.importorskip("pydicom")

import apptools  # noqa: E402
from clitools import default_sigint  # noqa: E402
from clitools import run as cli  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from hfcn_bench.data.rois import MAX_IMAGE_PIXELS  # noqa: E402
from hfcn_bench.runs import image_sample, predict_inputs, predict_samples  # noqa: E402

# -- nothing may leave this machine: every connection and name lookup of this process (the
# server runs in it) is recorded while the app's server is up. Audit hooks cannot be removed,
# so the hook only records, and only while watching. The command's own process is audited the
# same way (AUDIT_SITE, in the acceptance test below).
_OUTBOUND: list[str] = []
_WATCH = {"on": False}
_LOCAL = {"127.0.0.1", "localhost", "::1", "0.0.0.0", "::"}


def _outside(event, args):
    """The host a connection or lookup goes to when it is not this machine, else None."""
    if event not in ("socket.connect", "socket.getaddrinfo"):
        return None
    if event == "socket.connect":
        addr = args[1]
        host = addr[0] if isinstance(addr, tuple) else None  # AF_UNIX paths are local
    else:
        host = args[0]
    if host is None:
        return None
    host = host.decode() if isinstance(host, bytes) else str(host)
    return None if host in _LOCAL or host.startswith("127.") else host


def _audit(event, args):
    if _WATCH["on"] and (host := _outside(event, args)):
        import traceback

        _OUTBOUND.append(f"{event} {host}\n" + "".join(traceback.format_stack(limit=40)))


sys.addaudithook(_audit)

# gradio 6.31's queue calls pandas options that pandas 3 deprecates (not ours to fix)
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return apptools.phantoms(tmp_path_factory)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return apptools.runs_folder(tmp_path_factory)


@pytest.fixture(scope="module")
def server(runs):
    import huggingface_hub.constants as hf

    # The app puts huggingface_hub (which gradio and gradio_client import) offline before it
    # imports gradio; this test process imported it earlier, through gradio_client, so the same
    # settings are made here. Nothing else is switched off: what the server does is recorded.
    hf.HF_HUB_OFFLINE = hf.HF_HUB_DISABLE_TELEMETRY = True
    _WATCH["on"] = True
    with apptools.serving(runs) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return Client(server, verbose=False)


@pytest.fixture(scope="module")
def frame(data):
    """A phantom frame and a box around its nodule (the annotated outline's box)."""
    from hfcn_bench.data import load_dataset

    ds = load_dataset(data, warn=False)
    s = next(s for s in ds.samples if s.roi_kind == "outline")
    return Path(s.image_path), ",".join(map(str, s.bbox))


def classify(client, img, box, run="hfcn"):
    return client.predict(handle_file(str(img)), box, run, api_name="/classify")


def expected_prob(run_dir, img, box):
    """What the prediction path itself (``hfcn-bench predict``'s) gives for this ROI."""
    rows, _ = predict_samples(run_dir, [image_sample(img, box)], explain=False)
    return rows[0].prob


# ---------------------------------------------------------------------------------------------
# classify


def test_classify_returns_the_prediction_paths_probability_and_hfcn_parts(client, runs, frame):
    img, box = frame
    res = classify(client, img, box)
    assert 0.0 <= res["prob"] <= 1.0
    assert res["label"] == ("malignant" if res["prob"] >= res["threshold"] else "benign")
    assert res["prob"] == pytest.approx(expected_prob(runs / "hfcn", img, box), abs=1e-6)
    # HFCN's parts: five BFC windows, and the fused probability is eq. 1 of its branches (w = 0.5)
    assert len(res["crop_probs"]) == 5 and all(0 <= p <= 1 for p in res["crop_probs"])
    assert res["prob"] == pytest.approx(0.5 * res["global_prob"] + 0.5 * res["crop_prob"], abs=1e-5)
    assert res["box"] == [int(v) for v in box.split(",")] and res["gradcam"] is True
    assert res["threshold"] == pytest.approx(json.loads((runs / "hfcn" / "metrics.json").read_text())["threshold"])
    assert "TI-RADS" in res["label_caveat"] and "not a medical device" in res["notice"]
    assert res["image"]["format"] == "JPEG" and res["run"] == "hfcn" and res["system"] == "hfcn"


def test_the_default_run_is_the_first_that_loads(client, frame):
    # "a-missing-model" sorts first but has no model; a request without a run gets hfcn
    img, box = frame
    res = client.predict(handle_file(str(img)), box, api_name="/classify")
    assert res["run"] == "hfcn"


def test_a_comparator_run_classifies_with_a_gradcam(client, runs, frame):
    img, box = frame
    res = classify(client, img, box, run="mccnn_spp")
    assert res["system"] == "mccnn_spp" and res["gradcam"] is True and "crop_probs" not in res
    assert res["prob"] == pytest.approx(expected_prob(runs / "mccnn_spp", img, box), abs=1e-6)


def test_an_empty_box_classifies_the_whole_image_and_says_so(client, frame):
    img, _ = frame
    res = classify(client, img, "")
    with Image.open(img) as im:
        assert res["box"] == [0, 0, im.width, im.height]
    assert any("whole image" in n for n in res["notes"])


def test_only_the_named_endpoints_are_public(client):
    api = client.view_api(return_format="dict", print_info=False)
    assert set(api["named_endpoints"]) == {"/classify", "/classify_case", "/model_card"}
    assert not api["unnamed_endpoints"]
    names = [p["parameter_name"] for p in api["named_endpoints"]["/classify"]["parameters"]]
    assert names[:2] == ["image", "box"]


# ---------------------------------------------------------------------------------------------
# bad input: a clear message, never a stack trace, and the server keeps serving


def _gif(tmp):
    p = tmp / "scan.gif"
    Image.new("RGB", (64, 64), (90, 90, 90)).save(p)
    return p


def _huge_png(tmp):
    # 48 megapixels declared by a 1-bit PNG of a few KB: refused from its header
    p = tmp / "huge.png"
    Image.new("1", (8000, 6000)).save(p)
    return p


def _truncated_jpeg(tmp, src):
    p = tmp / "cut.jpg"
    p.write_bytes(Path(src).read_bytes()[:600])
    return p


def _text(tmp):
    p = tmp / "notes.txt"
    p.write_text("this is not an image\n")
    return p


def _empty(tmp):
    p = tmp / "empty.png"
    p.write_bytes(b"")
    return p


@pytest.mark.parametrize(
    "make, box, message",
    [
        (_text, None, "not an image (PNG, JPEG, BMP, TIFF) or a DICOM file"),
        (_empty, None, "not an image"),
        (_gif, None, "GIF images are not supported"),
        (_huge_png, None, f"exceeds the {MAX_IMAGE_PIXELS / 1e6:.0f}-megapixel cap"),
        ("truncated", None, "cannot decode"),
        (None, "10,10,10,50", "is empty or inverted"),
        (None, "300,200,100,100", "is empty or inverted"),
        (None, "100,100,104,160", "its sides must be at least 8 px"),
        (None, "500,300,700,400", "lies outside the 560x360 image"),
        (None, "-5,10,100,100", "lies outside"),
        (None, "a,b,c,d", "expected four numbers"),
        (None, "10,20,30", "expected four numbers"),
    ],
    ids=[
        "text-file",
        "empty-file",
        "gif",
        "huge-image",
        "truncated-jpeg",
        "empty-box",
        "inverted-box",
        "tiny-box",
        "box-outside",
        "negative-box",
        "words-box",
        "three-numbers",
    ],
)
def test_bad_input_is_refused_cleanly_and_the_server_keeps_serving(client, frame, tmp_path, make, box, message):
    img, good_box = frame
    bad = img if make is None else _truncated_jpeg(tmp_path, img) if make == "truncated" else make(tmp_path)
    with pytest.raises(AppError) as err:
        classify(client, bad, box if box is not None else good_box)
    text = str(err.value)
    assert message in text, text
    assert "Traceback" not in text and "/tmp/gradio" not in text and str(tmp_path) not in text
    assert 0 <= classify(client, img, good_box)["prob"] <= 1


@pytest.mark.parametrize(
    "run, message",
    [
        ("a-missing-model", "run a-missing-model has no usable model"),
        ("grid/unfinished", "did not finish training"),
        # a run is named from the list, never by a path (the list itself refuses others)
        ("../../etc", "not in the list of choices"),
    ],
)
def test_a_run_without_a_model_is_a_clean_error(client, frame, run, message):
    img, box = frame
    with pytest.raises(AppError) as err:
        classify(client, img, box, run=run)
    assert message in str(err.value) and "Traceback" not in str(err.value)
    card = client.predict(run, api_name="/model_card") if not run.startswith("..") else None
    if card is not None:
        assert card["status"] != "ready" and "not a medical device" in card["notice"]
    assert 0 <= classify(client, img, box)["prob"] <= 1


def test_a_missing_image_is_a_clean_error(client, frame):
    _, box = frame
    with pytest.raises(AppError, match="no image given"):
        client.predict(None, box, "hfcn", api_name="/classify")


# ---------------------------------------------------------------------------------------------
# load


def test_twenty_concurrent_requests_all_succeed_each_with_its_own_answer(client, frame):
    img, _ = frame
    boxes = ["0,0,280,180", "280,0,560,180", "0,180,280,360", "280,180,560,360"]
    want = {b: classify(client, img, b)["prob"] for b in boxes}
    # the four boxes give different answers, so a mix-up between requests would show
    assert min(abs(a - b) for i, a in enumerate(want.values()) for b in list(want.values())[i + 1 :]) > 1e-6
    jobs = [
        (boxes[i % 4], client.submit(handle_file(str(img)), boxes[i % 4], "hfcn", api_name="/classify"))
        for i in range(20)
    ]
    results = [(b, job.result(timeout=300)) for b, job in jobs]
    assert len(results) == 20
    for b, res in results:
        assert res["box"] == [int(v) for v in b.split(",")] and res["prob"] == pytest.approx(want[b], abs=1e-7)


def test_twenty_clients_at_once_from_threads(server, frame):
    img, box = frame

    def one(_):
        return Client(server, verbose=False).predict(handle_file(str(img)), box, "hfcn", api_name="/classify")

    with ThreadPoolExecutor(max_workers=20) as pool:
        probs = [r["prob"] for r in pool.map(one, range(20))]
    assert len(probs) == 20 and len(set(round(p, 6) for p in probs)) == 1 and 0 <= probs[0] <= 1


# ---------------------------------------------------------------------------------------------
# DICOM


_dicom = apptools.write_dicom


@pytest.fixture(scope="module")
def grey(frame, tmp_path_factory):
    """The phantom frame's grey values and a PNG of exactly those pixels."""
    img, box = frame
    with Image.open(img) as im:
        g = np.asarray(im.convert("L"))
    png = tmp_path_factory.mktemp("grey") / "frame.png"
    Image.fromarray(g).save(png)
    return g, png, box


def test_dicom_reader_shows_what_a_viewer_shows(grey, tmp_path):
    from hfcn_bench.app.inputs import read_frame

    g, _, _ = grey
    want = np.repeat(g[..., None], 3, axis=2)
    cases = {
        "mono2": _dicom(tmp_path / "mono2.dcm", g, "MONOCHROME2"),
        "mono1": _dicom(tmp_path / "mono1.dcm", 255 - g, "MONOCHROME1"),
        # 12-bit values 16 g with the window that maps them back onto 0..255 exactly (LINEAR VOI)
        "window16": _dicom(
            tmp_path / "w16.dcm",
            g.astype(np.uint16) * 16,
            "MONOCHROME2",
            bits=12,
            WindowCenter=2040.5,
            WindowWidth=4081,
        ),
        "palette": _dicom(
            tmp_path / "pal.dcm",
            g,
            "PALETTE COLOR",
            RedPaletteColorLookupTableDescriptor=[256, 0, 16],
            GreenPaletteColorLookupTableDescriptor=[256, 0, 16],
            BluePaletteColorLookupTableDescriptor=[256, 0, 16],
            RedPaletteColorLookupTableData=(np.arange(256, dtype="<u2") * 257).tobytes(),
            GreenPaletteColorLookupTableData=(np.arange(256, dtype="<u2") * 257).tobytes(),
            BluePaletteColorLookupTableData=(np.arange(256, dtype="<u2") * 257).tobytes(),
        ),
        "multi": _dicom(tmp_path / "cine.dcm", np.stack([g, 255 - g, g // 2]), "MONOCHROME2", frames=3),
    }
    for name, path in cases.items():
        f = read_frame(path)
        assert f.format == "DICOM" and f.rgb.dtype == np.uint8, name
        assert np.array_equal(f.rgb, want), name
    assert any("MONOCHROME1" in n for n in read_frame(cases["mono1"]).notes)
    multi = read_frame(cases["multi"])
    assert multi.info["frames"] == 3 and any("3 frames" in n and "first frame" in n for n in multi.notes)
    # YBR_FULL: RGB stored as YCbCr (as JPEG-compressed ultrasound is) comes back as RGB
    from pydicom.pixels import convert_color_space

    rgb = np.asarray(Image.open(grey[1]).convert("RGB")).copy()
    rgb[..., 0] = np.clip(rgb[..., 0].astype(int) + 40, 0, 255)  # some colour, so the conversion matters
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    back = read_frame(_dicom(tmp_path / "ybr.dcm", ybr, "YBR_FULL"))
    assert np.abs(back.rgb.astype(int) - rgb.astype(int)).max() <= 2
    assert not np.array_equal(back.rgb, ybr)
    # ...and the usual clinical export: JPEG baseline, YBR_FULL_422 (4:2:2 chroma subsampling)
    import io

    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=95, subsampling=1)  # 1 = 4:2:2
    jpeg = read_frame(
        _dicom(
            tmp_path / "jpeg.dcm", rgb, "YBR_FULL_422", syntax=JPEGBaseline8Bit, PixelData=encapsulate([buf.getvalue()])
        )
    )
    pillow = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    assert jpeg.rgb.shape == rgb.shape and np.abs(jpeg.rgb.astype(int) - pillow.astype(int)).max() <= 3
    assert any("YBR_FULL_422" in n for n in jpeg.notes)


def test_dicom_through_the_api_gives_the_pngs_probability(client, grey, tmp_path):
    g, png, box = grey
    want = classify(client, png, box)["prob"]
    mono1 = classify(client, _dicom(tmp_path / "mono1.dcm", 255 - g, "MONOCHROME1"), box)
    assert mono1["prob"] == pytest.approx(want, abs=1e-6) and mono1["image"]["photometric"] == "MONOCHROME1"
    assert any("MONOCHROME1" in n for n in mono1["notes"])
    cine = classify(client, _dicom(tmp_path / "cine", np.stack([g, 255 - g]), "MONOCHROME2", frames=2), box)
    assert cine["prob"] == pytest.approx(want, abs=1e-6)
    assert cine["image"]["frames"] == 2 and cine["image"]["frame_used"] == 0
    assert any("multi-frame" in n and "first frame" in n for n in cine["notes"])


def test_bad_dicom_is_refused_cleanly(client, grey, tmp_path):
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLSLossless

    g, png, box = grey
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\0" * 128 + b"DICM" + np.random.default_rng(0).bytes(300))
    truncated = _dicom(tmp_path / "short.dcm", g, "MONOCHROME2", PixelData=g.tobytes()[:1000])
    cmyk = _dicom(tmp_path / "cmyk.dcm", np.zeros((20, 30, 3), np.uint8), "HSV")
    huge = _dicom(tmp_path / "huge.dcm", np.zeros((2, 2), np.uint8), "MONOCHROME2", PixelData=b"\0" * 4)
    ds = pydicom.dcmread(huge)
    ds.Rows, ds.Columns = 9000, 9000
    ds.save_as(huge, enforce_file_format=True)
    jpegls = _dicom(
        tmp_path / "jls.dcm",
        g,
        "MONOCHROME2",
        syntax=JPEGLSLossless,
        PixelData=encapsulate([b"\xff\xd8 not a jpeg-ls stream \xff\xd9"]),
    )
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sr = Dataset()
    sr.file_meta = FileMetaDataset()
    sr.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sr.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    sr.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    sr.Modality = "SR"
    report = tmp_path / "report.dcm"
    sr.save_as(report, enforce_file_format=True)
    for path, message in (
        (junk, "DICOM"),
        (truncated, "cannot decode the DICOM pixel data"),
        (cmyk, "unsupported DICOM photometric interpretation 'HSV'"),
        (huge, "81.0 megapixels exceeds the 40-megapixel cap"),
        (jpegls, "cannot decode the DICOM pixel data (transfer syntax JPEG-LS Lossless"),
        (report, "holds no image"),
    ):
        with pytest.raises(AppError) as err:
            classify(client, path, box)
        assert message in str(err.value) and path.name in str(err.value), (path.name, str(err.value))
        assert "Traceback" not in str(err.value)
    assert 0 <= classify(client, png, box)["prob"] <= 1


# ---------------------------------------------------------------------------------------------
# a DDTI case XML, read by the project's own reader


def test_a_case_xml_gives_what_predict_gives(client, runs, data):
    xml = data / "xml" / "10.xml"
    frames = sorted((data / "raw_jpg").glob("10_*.jpg"))
    items, errors, _ = predict_inputs(runs / "hfcn", [xml], explain=False)
    assert not errors and items
    want = items[0][1]
    res = client.predict(
        handle_file(str(xml)),
        [handle_file(str(f)) for f in frames],
        want.sample.frame,
        want.sample.region,
        "hfcn",
        api_name="/classify_case",
    )
    assert res["prob"] == pytest.approx(want.prob, abs=1e-6) and res["case_id"] == "10"
    assert res["frame"] == want.sample.frame and res["box"] == list(want.sample.bbox)
    assert res["tirads"] == want.sample.tirads and len(res["crop_probs"]) == 5
    # no frame given: the first frame with an outline
    first = client.predict(
        handle_file(str(xml)), [handle_file(str(f)) for f in frames], None, 0, "hfcn", api_name="/classify_case"
    )
    assert first["frame"] == min(r.sample.frame for _, r in items)


def test_bad_case_uploads_are_refused_cleanly(client, data, tmp_path):
    xml = data / "xml" / "10.xml"
    frames = [handle_file(str(f)) for f in sorted((data / "raw_jpg").glob("10_*.jpg"))]
    broken = tmp_path / "99.xml"
    broken.write_text("<?xml version='1.0'?><case><number>99</number><mark><svg>[{")
    for args, message in (
        ((handle_file(str(xml)), [], None, 0), "10_"),
        ((handle_file(str(xml)), frames, 7, 0), "no nodule outline in frame 7"),
        ((handle_file(str(xml)), frames, None, 5), "not 5"),
        ((handle_file(str(broken)), [], None, 0), "99.xml"),
        ((None, frames, None, 0), "no case XML given"),
    ):
        with pytest.raises(AppError) as err:
            client.predict(*args, "hfcn", api_name="/classify_case")
        text = str(err.value)
        assert message in text and "Traceback" not in text and "hfcn-app-case" not in text, text


# ---------------------------------------------------------------------------------------------
# the model card


def test_the_model_card_states_data_labels_metrics_and_external_validations(client, runs, tmp_path_factory):
    from hfcn_bench.data.synthetic import write_synthetic_ddti

    run = runs / "hfcn"
    header = json.loads((run / "config.json").read_text())
    card = client.predict("hfcn", api_name="/model_card")
    assert card["status"] == "ready" and card["system"] == "hfcn"
    assert card["training_data"]["fingerprint"] == header["data"]["fingerprint"]
    assert card["label_rule"] == "tirads" and "TI-RADS" in card["label_caveat"]
    metrics = json.loads((run / "metrics.json").read_text())
    v = card["validation"]
    assert v["auc"] == pytest.approx(metrics["auc"]) and v["accuracy_ci"] == [
        metrics["ci"]["accuracy"]["low"],
        metrics["ci"]["accuracy"]["high"],
    ]
    assert v["majority_baseline"]["accuracy"] == pytest.approx(metrics["majority_baseline"]["accuracy"])
    assert card["external"] == [] and "not a medical device" in card["notice"]
    # an external validation recorded by `hfcn-bench eval --data OTHER` appears on the card
    other = write_synthetic_ddti(tmp_path_factory.mktemp("app-external") / "ddti", n_cases=12, seed=5)
    rc, text = cli(["eval", "--run", str(run), "--data", str(other), "--n-boot", "50"])
    assert rc == 0, text
    card = client.predict("hfcn", api_name="/model_card")
    (ext,) = card["external"]
    report = json.loads(next((run / "external").glob("*/eval_report.json")).read_text())
    assert ext["fingerprint"] == report["data"]["fingerprint"] and ext["auc"] == pytest.approx(report["auc"])
    assert ext["n_rois"] == report["n_samples"]
    from hfcn_bench.app.card import card_markdown

    md = card_markdown(card)
    assert header["data"]["fingerprint"] in md and "External validation" in md and "not a medical device" in md
    assert str(ext["fingerprint"])[:12] in md


# ---------------------------------------------------------------------------------------------
# the command (issue 13's acceptance) and its refusals


def test_cli_refuses_a_folder_without_runs_and_a_run_without_a_model(runs, tmp_path):
    rc, text = cli(["app", "--run", str(tmp_path)])
    assert rc == 1 and "holds no run folder" in text and "Traceback" not in text
    rc, text = cli(["app", "--run", str(runs / "a-missing-model")])
    assert rc == 1 and "has no usable model" in text and "best.pt" in text
    rc, text = cli(["app", "--run", str(runs / "hfcn"), "--port", "0"])
    assert rc == 1 and "--port must be" in text


def test_the_command_serves_classifies_refuses_a_text_file_and_keeps_serving(runs, frame, tmp_path):
    img, box = frame
    port = apptools.free_port()
    # the real command in its own process, audited by a sitecustomize module: every lookup or
    # connection that leaves the machine is written to outbound.log
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(AUDIT_SITE.format(log=str(tmp_path / "outbound.log")))
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    log = open(tmp_path / "app.log", "w")
    exe = shutil.which("hfcn-bench") or str(Path(sys.executable).with_name("hfcn-bench"))
    proc = subprocess.Popen(
        [exe, "app", "--run", str(runs / "hfcn"), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        preexec_fn=default_sigint,
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        import httpx

        t0, up = time.monotonic(), False
        while time.monotonic() - t0 < 60 and proc.poll() is None:
            try:
                up = httpx.get(url, timeout=2).status_code == 200
            except httpx.HTTPError:
                up = False
            if up:
                break
            time.sleep(0.5)
        assert up, (tmp_path / "app.log").read_text()
        c = Client(url, verbose=False)
        res = c.predict(handle_file(str(img)), box, api_name="/classify")
        assert 0 <= res["prob"] <= 1
        with pytest.raises(AppError, match="not an image"):
            c.predict(handle_file(str(_text(tmp_path))), box, api_name="/classify")
        assert c.predict(handle_file(str(img)), box, api_name="/classify")["prob"] == pytest.approx(res["prob"])
        assert proc.poll() is None
    finally:
        proc.send_signal(2)  # Ctrl-C: the command stops the server and exits 0
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        log.close()
    out = (tmp_path / "app.log").read_text()
    assert rc == 0 and "serving run" in out and f"127.0.0.1:{port}" in out and "stopping the app" in out, out
    assert (tmp_path / "outbound.log").is_file(), "the audit hook did not load"
    assert (tmp_path / "outbound.log").read_text() == "audit on\n"


AUDIT_SITE = """
import sys

_LOCAL = {{"127.0.0.1", "localhost", "::1", "0.0.0.0", "::"}}
_LOG = open({log!r}, "a", buffering=1)
_LOG.write("audit on\\n")


def _hook(event, args):
    if event not in ("socket.connect", "socket.getaddrinfo"):
        return
    addr = args[1] if event == "socket.connect" else (args[0],)
    host = addr[0] if isinstance(addr, tuple) else None
    if isinstance(host, bytes):
        host = host.decode()
    if host is not None and host not in _LOCAL and not str(host).startswith("127."):
        _LOG.write(event + " " + str(host) + "\\n")


sys.addaudithook(_hook)
"""


def test_nothing_was_sent_outside_this_machine(client, frame):
    # runs last: every request above went through the in-process server with the hook watching
    img, box = frame
    assert 0 <= classify(client, img, box)["prob"] <= 1
    client.predict("hfcn", api_name="/model_card")
    assert _WATCH["on"] and not _OUTBOUND, _OUTBOUND[0]


def test_a_kfold_runs_card_states_the_fold_models_thresholds():
    """A k-fold run's pooled threshold is 0 on margins; the card states the fold models' own
    thresholds and their mean, the threshold a new image is held against."""
    from hfcn_bench.app.card import card_markdown

    card = {
        "run": "cv",
        "notice": "Research use only. This is not a medical device.",
        "status": "ready",
        "system": "hfcn",
        "training_data": {},
        "split": {"method": "kfold", "params": {"k": 2}},
        "label_rule": "tirads",
        "threshold": 0.0,
        "threshold_rule": "youden",
        "threshold_source": "validation",
        "fold_thresholds": [0.6, 0.8],
    }
    md = card_markdown(card)
    assert "**Decision threshold** 0.7000, the mean of the 2 fold models' own (0.600, 0.800" in md
    assert "0.0000" not in md
