"""The Gradio page and its API: ``gr.Blocks`` whose named endpoints serve the page, scripts
(``gradio_client``) and the tests with the same functions.

Endpoints (``Client(url).predict(..., api_name=...)``):

* ``/classify`` ``(image file, box "x0,y0,x1,y1", run="")`` -> dict with ``prob``, ``label``,
  ``threshold`` and, for HFCN, ``global_prob``, ``crop_prob``, ``crop_probs`` (see
  :meth:`.classify.Classifier.classify`);
* ``/classify_case`` ``(case XML, [frame images], frame=None, region=0, run="")`` -> the same
  dict plus the case's TI-RADS, for a DDTI case read by the project's own reader;
* ``/model_card`` ``(run="")`` -> the run's model card as a dict.

Bad input raises ``gr.Error`` with the message (a toast on the page, an ``AppError`` in
``gradio_client``); the page also keeps the last message in its result box. No stack trace is
sent to a client; an unexpected failure is logged on the server and reported in one line.

Local only: the server binds to 127.0.0.1 unless told otherwise, Gradio's telemetry and
version check are off (``GRADIO_ANALYTICS_ENABLED=False`` before Gradio is imported, and
``analytics_enabled=False``), huggingface_hub is offline (``HF_HUB_OFFLINE=1``), the
default theme's fonts are served by the app itself, there is
no share link, no server-side rendering process, no monitoring page and no run history.
The queue runs at most ``concurrency`` requests of each endpoint at once and holds at most
``queue_size`` waiting ones.
"""

# No ``from __future__ import annotations`` here: Gradio injects gr.Request and gr.SelectData by
# the annotation *objects* of the callbacks defined inside build_app, where ``gr`` is local.
import logging
import os
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

from ..errors import HfcnError
from .card import NOTICE, card_markdown
from .classify import Classifier, Outcome
from .inputs import MAX_UPLOAD_MB, limits_text, read_frame
from .picture import draw_preview, make_preview, result_markdown, result_picture

__all__ = ["build_app", "serve", "DEFAULT_CONCURRENCY", "DEFAULT_QUEUE_SIZE"]

log = logging.getLogger("hfcn_bench.app")

# Two workers per endpoint: a CPU box serves one forward pass at a time per run (the catalog's
# lock) while a second request decodes, draws or waits on it; more only adds memory.
DEFAULT_CONCURRENCY = 2
DEFAULT_QUEUE_SIZE = 64
# Sessions whose state (the uploaded frame at preview size, the last result) the server keeps.
SESSION_CAPACITY = 100

CSS = """
#result h2 { margin-bottom: 0.2em; }
#notice { border-left: 4px solid #d97706; padding-left: 0.6em; }
"""


def _gradio():
    # Telemetry must be off before gradio is imported: its import and Blocks() read the variable.
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    # huggingface_hub (imported by gradio) would otherwise fetch an "agent registry" from
    # huggingface.co for its request headers; the app never needs the Hub.
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import gradio as gr
    except ImportError:
        raise HfcnError("the app needs gradio", hint="pip install 'hfcn-bench[app]'") from None
    return gr


def _upload_name(path) -> str | None:
    """The original file name of an upload (Gradio keeps it as the last path part)."""
    return None if not path else Path(str(path)).name


class _Page:
    """The page's callbacks over a :class:`Classifier` (one instance per app)."""

    def __init__(self, classifier: Classifier, gr):
        self.c = classifier
        self.gr = gr
        self._errors: OrderedDict[str, str] = OrderedDict()

    # -- errors --------------------------------------------------------------------------------
    @contextmanager
    def clean_errors(self, request=None):
        """Known errors become ``gr.Error(message)``; anything else is logged here and reported
        in one line. The message is remembered for the session's result box."""
        gr = self.gr
        try:
            yield
        except gr.Error as exc:
            self._remember(request, str(exc.message if hasattr(exc, "message") else exc))
            raise
        except HfcnError as exc:
            msg = self.c.catalog.relative(str(exc) + (f" (hint: {exc.hint})" if getattr(exc, "hint", None) else ""))
            self._remember(request, msg)
            raise gr.Error(msg, title="Cannot classify", print_exception=False) from None
        except Exception as exc:  # noqa: BLE001 - the server keeps serving whatever happened
            log.exception("unexpected error in the app")
            msg = self.c.catalog.relative(
                f"internal error ({type(exc).__name__}: {str(exc)[:300]}); the server log has the details"
            )
            self._remember(request, msg)
            raise gr.Error(msg, title="Internal error", print_exception=False) from None

    def _remember(self, request, msg: str) -> None:
        key = getattr(request, "session_hash", None)
        if key:
            self._errors[key] = msg
            while len(self._errors) > SESSION_CAPACITY:
                self._errors.popitem(last=False)

    def last_error(self, request=None) -> str:
        key = getattr(request, "session_hash", None)
        msg = self._errors.pop(key, None) if key else None
        return f"### Not classified\n\n{msg}" if msg else "### Not classified"

    # -- endpoints -----------------------------------------------------------------------------
    def classify(self, image, box, run, request=None):
        with self.clean_errors(request):
            out = self.c.classify(run, image, box, name=_upload_name(image))
            return out.result, out

    def classify_case(self, xml, images, frame, region, run, request=None):
        with self.clean_errors(request):
            files = [(p, _upload_name(p)) for p in (images or [])]
            out = self.c.classify_case(run, xml, files, frame, region, xml_name=_upload_name(xml))
            return out.result, out

    def model_card(self, run: str = "") -> dict:
        """The model card of a run (the default run for an empty name) as a dict."""
        with self.clean_errors():
            return self.c.card(run)

    # -- page-only callbacks ---------------------------------------------------------------------
    def card_md(self, run):
        with self.clean_errors():
            return card_markdown(self.c.card(run))

    def show(self, outcome: Outcome):
        """Draw a finished classification of an image: result text, picture, the boxes on the
        preview (the given one and, for a cascade, the one it localised)."""
        with self.clean_errors():
            res = outcome.result
            # the frame that was classified (an API caller's upload never had a preview)
            view = outcome.view
            model_box = res["roi_box"] if res["roi_box"] != res["box"] else None
            return (result_markdown(res), result_picture(outcome), draw_preview(view, res["box"], model_box), view)

    def show_case(self, outcome: Outcome):
        """Draw a finished classification of a DDTI case: result text and picture."""
        with self.clean_errors():
            return result_markdown(outcome.result), result_picture(outcome)

    def on_upload(self, image, request=None):
        """A new upload: decode it for the preview (bad files are refused here already)."""
        if not image:
            return None, None, None, ""
        with self.clean_errors(request):
            frame = read_frame(image, _upload_name(image))
            view = make_preview(frame.rgb, frame.name)
            w, h = frame.size
            notes = "".join(f"\n\n- note: {n}" for n in frame.notes)
            msg = (
                f"{frame.name}: {frame.format}, {w}x{h} px. Click two opposite corners of the nodule on the "
                f"image, or type the box.{notes}"
            )
            return draw_preview(view), view, None, msg

    def on_click(self, view, corner, box, evt):
        """Two clicks on the preview make the box: the first sets a corner, the second the
        opposite one (frame pixels, exclusive ends, clamped to the frame)."""
        if view is None or evt is None or evt.index is None:
            return self.gr.skip(), corner, self.gr.skip()
        s = view["scale"]
        w, h = view["size"]
        x = min(max(int(round(evt.index[0] / s)), 0), w - 1)
        y = min(max(int(round(evt.index[1] / s)), 0), h - 1)
        if corner is None:
            return draw_preview(view, corner=(x, y)), (x, y), self.gr.skip()
        x0, y0 = corner
        new = (min(x0, x), min(y0, y), max(x0, x) + 1, max(y0, y) + 1)
        return draw_preview(view, box=new), None, ",".join(map(str, new))

    def on_box(self, view, box):
        """A typed box is drawn as soon as it parses; nothing is said about a half-typed one."""
        from ..runs import parse_box

        if view is None:
            return self.gr.skip()
        try:
            b = parse_box(box, view["size"]) if (box or "").strip() else None
        except HfcnError:
            b = None
        return draw_preview(view, box=b)


def build_app(classifier: Classifier, *, concurrency: int = DEFAULT_CONCURRENCY, queue_size: int = DEFAULT_QUEUE_SIZE):
    """The ``gr.Blocks`` app over ``classifier``'s runs (not launched; see :func:`serve`)."""
    gr = _gradio()
    page = _Page(classifier, gr)
    cat = classifier.catalog
    names = cat.names

    # gr.Request and gr.SelectData are injected by type annotation; these thin functions carry
    # them (the methods above stay framework-free in their signatures).
    def classify(image, box, run, request: gr.Request):
        return page.classify(image, box, run, request)

    def classify_case(xml, images, frame, region, run, request: gr.Request):
        return page.classify_case(xml, images, frame, region, run, request)

    def last_error(request: gr.Request):
        return page.last_error(request)

    def on_upload(image, request: gr.Request):
        return page.on_upload(image, request)

    def on_click(view, corner, box, evt: gr.SelectData):
        return page.on_click(view, corner, box, evt)

    def model_card(run: str = "") -> dict:
        """The model card of a run (the default run for an empty name)."""
        return page.model_card(run)

    with gr.Blocks(
        title="hfcn-bench: classify one thyroid nodule", analytics_enabled=False, delete_cache=(3600, 3600)
    ) as demo:
        gr.Markdown(
            "# hfcn-bench: classify one thyroid nodule\n\n"
            "P(malignant) of one nodule from a run trained with `hfcn-bench train`: HFCN (Song et al., IEEE "
            "Access 2020) or one of the comparator systems."
        )
        gr.Markdown(f"**{NOTICE}**", elem_id="notice")
        run = gr.Dropdown(
            names, value=cat.default, label="Run", visible=len(names) > 1, interactive=True, elem_id="run"
        )
        view = gr.State(None)
        corner = gr.State(None)
        outcome = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                with gr.Tab("Image + box", id="image-tab"):
                    image = gr.File(
                        label="Ultrasound image (PNG, JPEG or DICOM)", type="filepath", elem_id="image-file"
                    )
                    preview = gr.Image(
                        label="The frame: click two opposite corners of the nodule",
                        type="numpy",
                        interactive=False,
                        format="png",
                        elem_id="preview",
                        buttons=["fullscreen"],
                        show_label=False,
                    )
                    upload_info = gr.Markdown("", elem_id="upload-info")
                    box = gr.Textbox(
                        label="Nodule box x0,y0,x1,y1 (frame pixels; empty = the whole image)",
                        placeholder="e.g. 120,80,260,200",
                        elem_id="box",
                    )
                    go = gr.Button("Classify", variant="primary", elem_id="classify")
                with gr.Tab("DDTI case XML", id="case-tab"):
                    xml = gr.File(label="Case XML (N.xml)", type="filepath", elem_id="case-xml")
                    frames = gr.File(
                        label="Its frame images (N_1.jpg, N_2.jpg, ...)",
                        file_count="multiple",
                        type="filepath",
                        elem_id="case-frames",
                    )
                    with gr.Row():
                        frame_no = gr.Number(
                            None, label="Frame (empty: the first with an outline)", precision=0, elem_id="case-frame"
                        )
                        region_no = gr.Number(0, label="Outline within the frame", precision=0, elem_id="case-region")
                    go_case = gr.Button("Classify case", variant="primary", elem_id="classify-case")
                gr.Markdown(f"Limits: {limits_text()}.")
            with gr.Column(scale=1):
                result_md = gr.Markdown(
                    "Upload an image and give the nodule box, then press Classify.", elem_id="result"
                )
                picture = gr.Image(
                    label="What the model looked at",
                    type="numpy",
                    interactive=False,
                    format="png",
                    elem_id="picture",
                    buttons=["download", "fullscreen"],
                    show_label=False,
                )
                with gr.Accordion("The result as the API returns it (JSON)", open=False):
                    result_json = gr.JSON(label="Result", elem_id="result-json")
        with gr.Accordion("Model card", open=True):
            card = gr.Markdown("", elem_id="card")

        demo.load(page.card_md, [run], [card], api_visibility="private")
        run.change(page.card_md, [run], [card], api_visibility="private")
        up = image.change(on_upload, [image], [preview, view, corner, upload_info], api_visibility="private")
        up.failure(last_error, None, [upload_info], api_visibility="private")
        preview.select(on_click, [view, corner, box], [preview, corner, box], api_visibility="private")
        box.input(page.on_box, [view, box], [preview], api_visibility="private")

        # The API endpoints return the result dict only (a gr.State output is not part of the
        # API); the page draws from the state in a chained, private step.
        ev = go.click(classify, [image, box, run], [result_json, outcome], api_name="classify")
        ev.success(page.show, [outcome], [result_md, picture, preview, view], api_visibility="private")
        ev.failure(last_error, None, [result_md], api_visibility="private")
        ev = go_case.click(
            classify_case, [xml, frames, frame_no, region_no, run], [result_json, outcome], api_name="classify_case"
        )
        ev.success(page.show_case, [outcome], [result_md, picture], api_visibility="private")
        ev.failure(last_error, None, [result_md], api_visibility="private")
        gr.api(model_card, api_name="model_card")

    demo.queue(default_concurrency_limit=max(1, int(concurrency)), max_size=max(1, int(queue_size)), api_open=False)
    return demo


def serve(demo, host: str = "127.0.0.1", port: int = 7860, quiet: bool = True) -> str:
    """Start ``demo`` in a background thread and return its URL (``demo.close()`` stops it)."""
    _, url, _ = demo.launch(
        server_name=host,
        server_port=int(port),
        prevent_thread_lock=True,
        quiet=quiet,
        share=False,
        inbrowser=False,
        show_error=False,
        footer_links=["api"],
        run_history=False,
        enable_monitoring=False,
        max_file_size=f"{MAX_UPLOAD_MB}mb",
        ssr_mode=False,
        mcp_server=False,
        pwa=False,
        state_session_capacity=SESSION_CAPACITY,
        css=CSS,
    )
    return url
