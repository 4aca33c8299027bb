"""``hfcn-bench app``: a local Gradio web app to classify one thyroid nodule with any run.

Modules, one concept each: :mod:`.inputs` (uploads: images, DICOM via :mod:`.dicom`, DDTI case
XMLs), :mod:`.catalog` (the runs served, loaded once), :mod:`.classify` (the classify functions,
free of any web framework), :mod:`.card` (the model card), :mod:`.picture` (what the page
draws) and :mod:`.page` (the ``gr.Blocks`` page, its named API endpoints and the server).
Gradio is imported only by :mod:`.page`, so the rest works (and is tested) without it.
"""

from .catalog import Catalog, find_runs
from .classify import Classifier, Outcome

__all__ = ["Catalog", "Classifier", "Outcome", "find_runs", "build_app", "serve"]


def build_app(*args, **kwargs):
    from .page import build_app as _build

    return _build(*args, **kwargs)


def serve(*args, **kwargs):
    from .page import serve as _serve

    return _serve(*args, **kwargs)
