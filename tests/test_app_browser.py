"""`hfcn-bench app` in a real browser: Playwright drives Debian's chromium (``.ci/run`` installs
it; skipped with the reason when none is found). The page opens with the notice and the model
card, an image is uploaded, the box is drawn by clicking two corners on the frame and typed,
Classify shows the probability the API gives, a bad upload shows its message, every request
the page makes goes to this machine, and a screenshot is saved.

``HFCN_APP_RUN=RUN`` serves that run instead of the smoke one, and ``HFCN_APP_SCREENSHOT=PATH``
keeps the screenshot there (how docs/figures/app.png is made; see the README)."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("gradio")
pytest.importorskip("gradio_client")
sync_api = pytest.importorskip("playwright.sync_api")

import apptools  # noqa: E402

CHROMIUM = apptools.chromium()
pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="no chromium browser found (.ci/run installs Debian's chromium with "
        "apt-get; or set HFCN_CHROMIUM to a Chromium executable)",
    ),
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    given = os.environ.get("HFCN_APP_RUN")
    return Path(given) if given else apptools.trained_run(tmp_path_factory)


@pytest.fixture(scope="module")
def server(run_dir):
    with apptools.serving(run_dir) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        # an empty profile of our own; launch_persistent_context is how Playwright takes one
        ctx = p.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=apptools.CHROMIUM_ARGS,
            viewport={"width": 1360, "height": 900},
        )
        try:
            yield ctx
        finally:
            ctx.close()


@pytest.fixture()
def page(browser, server):
    pg = browser.new_page()
    pg.requests = []
    pg.on("request", lambda r: pg.requests.append(r.url))
    pg.goto(server)
    pg.wait_for_selector("#classify", timeout=60_000)
    yield pg
    pg.close()


@pytest.fixture(scope="module")
def frame(run_dir, tmp_path_factory):
    """A frame of the run's own test cases and its annotated nodule box."""
    from hfcn_bench.data import load_dataset
    from hfcn_bench.protocol import read_run

    run = read_run(run_dir)
    ds = load_dataset(run.manifest.data["root"], warn=False)
    test = set(run.manifest.splits[0].test)
    s = next(s for s in ds.samples if s.case_id in test and s.roi_kind == "outline")
    return Path(s.image_path), s.bbox


def _click_frame_pixel(pg, x, y):
    """Click frame pixel (x, y) on the preview, placing it as the page maps clicks back
    (the image is scaled to fit its box and centred)."""
    img = pg.locator("#preview img")
    box = img.bounding_box()
    nw, nh = img.evaluate("el => [el.naturalWidth, el.naturalHeight]")
    r = min(box["width"] / nw, box["height"] / nh, 1)
    ox, oy = (box["width"] - nw * r) / 2, (box["height"] - nh * r) / 2
    img.click(position={"x": ox + (x + 0.5) * r, "y": oy + (y + 0.5) * r})


def _save_png(data: bytes, path: Path) -> None:
    """The screenshot as a 256-colour PNG: a third of the bytes of the full-colour one, which
    matters for a picture kept in the repository (docs/figures/app.png)."""
    import io

    from PIL import Image

    im = Image.open(io.BytesIO(data)).convert("RGB")
    im.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)


def _result_prob(pg) -> float:
    pg.wait_for_function(
        "() => /P\\(malignant\\) = [0-9.]+/.test(document.querySelector('#result').innerText)", timeout=120_000
    )
    return float(re.search(r"P\(malignant\) = ([0-9.]+)", pg.locator("#result").inner_text()).group(1))


def test_classify_one_nodule_in_the_browser(page, server, frame, tmp_path):
    from gradio_client import Client, handle_file

    img, (x0, y0, x1, y1) = frame
    assert "not a medical device" in page.locator("#notice").inner_text()
    page.wait_for_function("() => document.querySelector('#card').innerText.includes('fingerprint')", timeout=60_000)
    card = page.locator("#card").inner_text()
    assert "TI-RADS" in card and "Validation" in card
    page.locator("#image-file input[type=file]").set_input_files(str(img))
    page.wait_for_selector("#preview img", timeout=60_000)
    # the box drawn on the image: two clicks at opposite corners fill the box field
    _click_frame_pixel(page, x0, y0)
    page.wait_for_timeout(300)
    _click_frame_pixel(page, x1 - 1, y1 - 1)
    box_field = page.locator("#box textarea, #box input").first
    page.wait_for_function(
        "() => /^\\d+,\\d+,\\d+,\\d+$/.test((document.querySelector('#box textarea') || "
        "document.querySelector('#box input')).value)",
        timeout=30_000,
    )
    drawn = [int(v) for v in box_field.input_value().split(",")]
    assert all(abs(a - b) <= 2 for a, b in zip(drawn, (x0, y0, x1, y1))), drawn
    # ...and typed: the exact annotated box
    typed = f"{x0},{y0},{x1},{y1}"
    box_field.fill(typed)
    page.locator("#classify").click()
    shown = _result_prob(page)
    want = Client(server, verbose=False).predict(handle_file(str(img)), typed, api_name="/classify")
    assert 0 <= shown <= 1 and shown == pytest.approx(want["prob"], abs=5e-4)
    assert want["label"] in page.locator("#result").inner_text()
    page.wait_for_selector("#picture img", timeout=60_000)
    page.wait_for_timeout(500)
    shot = Path(os.environ.get("HFCN_APP_SCREENSHOT") or tmp_path / "app.png")
    shot.parent.mkdir(parents=True, exist_ok=True)
    _save_png(page.screenshot(full_page=True), shot)
    assert shot.stat().st_size > 20_000
    outside = sorted(
        {
            u
            for u in page.requests
            if not re.match(r"^(https?|wss?)://127\.0\.0\.1[:/]", u) and not u.startswith(("data:", "blob:"))
        }
    )
    assert not outside, outside


def test_a_bad_upload_says_why_in_the_page(page, tmp_path):
    bad = tmp_path / "letter.txt"
    bad.write_text("not an ultrasound image\n")
    page.locator("#image-file input[type=file]").set_input_files(str(bad))
    page.wait_for_function(
        "() => document.querySelector('#upload-info').innerText.includes('not an image')", timeout=60_000
    )
    assert "letter.txt" in page.locator("#upload-info").inner_text()
    # Classify with it: the result box says why, and no probability is shown
    page.locator("#classify").click()
    page.wait_for_function(
        "() => document.querySelector('#result').innerText.includes('Not classified')", timeout=60_000
    )
    assert "not an image" in page.locator("#result").inner_text()
