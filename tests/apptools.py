"""What the app's tests share: phantom data, small runs trained on it (once per test session:
this module is imported once, so its cache is shared by test_app.py and test_app_browser.py),
a server on a free loopback port, the browser to drive it, and DICOM files built with pydicom."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
from pathlib import Path

_CACHE: dict[str, Path] = {}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def phantoms(tmp_path_factory) -> Path:
    from hfcn_bench.data.synthetic import write_synthetic_ddti

    if "phantoms" not in _CACHE:
        _CACHE["phantoms"] = write_synthetic_ddti(tmp_path_factory.mktemp("app-phantoms") / "ddti", n_cases=24, seed=0)
    return _CACHE["phantoms"]


def trained_run(tmp_path_factory, system: str = "hfcn", overrides: dict | None = None) -> Path:
    """A run of ``system`` at its smoke setting on the phantoms (seconds), trained once."""
    from hfcn_bench.data import load_dataset
    from hfcn_bench.data.splits import split_train_test
    from hfcn_bench.runs import train_run
    from hfcn_bench.systems import get_system

    key = f"run:{system}:{json.dumps(overrides or {}, sort_keys=True)}"
    if key not in _CACHE:
        root = phantoms(tmp_path_factory)
        ds = load_dataset(root, warn=False)
        split = split_train_test(ds, test_fraction=0.25, seed=0)
        out = tmp_path_factory.mktemp(f"app-run-{system}") / system
        cfg = get_system(system).configure("smoke", {"threads": 1, **(overrides or {})})
        train_run(system, cfg, ds, [split], out_dir=out, n_boot=50, header={"preset": "smoke"})
        _CACHE[key] = out
    return _CACHE[key]


def runs_folder(tmp_path_factory) -> Path:
    """A folder of runs as ``--run`` may name it: a good HFCN run, an MC-CNN run (Grad-CAM on
    its trunk), a run whose model file is gone and one that never finished."""
    if "folder" in _CACHE:
        return _CACHE["folder"]
    hfcn = trained_run(tmp_path_factory)
    spp = trained_run(tmp_path_factory, "mccnn_spp", {"image_size": 32})
    base = tmp_path_factory.mktemp("app-runs")
    shutil.copytree(hfcn, base / "hfcn")
    shutil.copytree(spp, base / "mccnn_spp")
    shutil.copytree(hfcn, base / "a-missing-model")
    (base / "a-missing-model" / "best.pt").unlink()
    shutil.copytree(hfcn, base / "grid" / "unfinished")
    header = base / "grid" / "unfinished" / "config.json"
    obj = json.loads(header.read_text())
    obj["status"] = "running"
    header.write_text(json.dumps(obj))
    _CACHE["folder"] = base
    return base


@contextlib.contextmanager
def serving(root: Path, **kw):
    """The URL of the app over ``root``, served on a free loopback port while the block runs."""
    from hfcn_bench.app import Catalog, Classifier, build_app, serve

    demo = build_app(Classifier(Catalog(root)), **kw)
    try:
        yield serve(demo, host="127.0.0.1", port=free_port())
    finally:
        demo.close()


def write_dicom(path, pixels, photometric, bits=8, frames=None, syntax=None, **tags):
    """A DICOM Part 10 ultrasound file with ``pixels`` ([rows, cols], [rows, cols, 3] or
    [frames, rows, cols(, 3)]) stored uncompressed (or under ``syntax`` as given)."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        ExplicitVRLittleEndian,
        UltrasoundImageStorage,
        UltrasoundMultiFrameImageStorage,
        generate_uid,
    )

    arr = np.asarray(pixels)
    multi = frames is not None
    sop = UltrasoundMultiFrameImageStorage if multi else UltrasoundImageStorage
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax or ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = sop, meta.MediaStorageSOPInstanceUID, "US"
    shape = arr.shape[1:] if multi else arr.shape
    ds.Rows, ds.Columns = int(shape[0]), int(shape[1])
    ds.SamplesPerPixel = 3 if len(shape) == 3 else 1
    if ds.SamplesPerPixel == 3:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if bits <= 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, 0
    if multi:
        ds.NumberOfFrames = int(frames)
    for k, v in tags.items():
        setattr(ds, k, v)
    if "PixelData" not in tags:
        ds.PixelData = arr.astype(np.uint8 if bits <= 8 else "<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def chromium() -> str | None:
    """Debian's chromium (``.ci/run`` installs it), or ``$HFCN_CHROMIUM``."""
    for cand in (
        os.environ.get("HFCN_CHROMIUM"),
        "/usr/bin/chromium",
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
    ):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return cand
    return None


# Known to work here as root, in a network that refuses outbound connections: without the
# background-networking flags Chromium keeps trying (and failing) to reach Google's services.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
