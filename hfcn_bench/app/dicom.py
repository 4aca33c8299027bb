"""One DICOM frame as the 8-bit RGB picture a radiologist's viewer would show, read with pydicom.

Clinics export ultrasound as DICOM, whose pixel values only mean something together with the
header. What is honoured here (DICOM PS3.3 C.7.6.3 and C.11):

* **Photometric interpretation.** ``MONOCHROME2`` (0 is black) is shown as is; ``MONOCHROME1``
  (0 is *white*) is inverted after windowing, or a model trained on MONOCHROME2-like frames
  would see a negative; ``YBR_FULL``/``YBR_FULL_422`` (how JPEG-compressed ultrasound is
  usually stored) are converted to RGB (by pydicom's decoding); ``PALETTE COLOR`` indices go through the file's
  colour tables; ``RGB`` is used as is.
* **Windowing.** A monochrome frame with a Window Center/Width is mapped with the LINEAR VOI
  function of C.11.2.1.2.1 (after the modality rescale); one with a VOI LUT sequence through
  that LUT; without either, frames of more than 8 bits are stretched from their minimum to
  their maximum (what viewers do), 8-bit ones are left alone.
* **Multi-frame files** (cine loops): only the first frame is decoded (``pixel_array(...,
  index=0)`` reads just that frame from disk), and the result says so.
* **Size.** Rows x Columns are checked against the same pixel cap as images
  (``data.rois.MAX_IMAGE_PIXELS``) before any pixel is decoded.
* **Deflated files** (Deflated Explicit VR Little Endian) are inflated by pydicom when the file
  is read; their pixels are decoded from that dataset, not from the file on disk.
* **Values that are not numbers.** A modality rescale or a window that makes a pixel NaN or
  infinite (``RescaleSlope`` = NaN, say) is refused: a viewer would show a black frame, and a
  model would classify it. A palette whose colour tables are not 8 or 16 bits per entry is
  refused with what its descriptor says.

Anything else (another colour model, a compressed transfer syntax no installed decoder reads,
a file that is not DICOM or holds no image) is an :class:`HfcnError` naming the file and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.rois import MAX_IMAGE_PIXELS
from ..errors import HfcnError

__all__ = ["DicomFrame", "is_dicom", "read_dicom", "SUPPORTED_PHOTOMETRIC"]

SUPPORTED_PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422", "PALETTE COLOR")


@dataclass
class DicomFrame:
    """``rgb``: uint8 [H, W, 3]; ``info``: what was read (photometric interpretation, frame
    count, transfer syntax, modality); ``notes``: what a user should know about the reading."""

    rgb: np.ndarray
    info: dict
    notes: list[str] = field(default_factory=list)


def is_dicom(path: str | Path) -> bool:
    """A DICOM Part 10 file: the 128-byte preamble followed by ``DICM``."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def read_dicom(path: str | Path, name: str | None = None, max_pixels: int = MAX_IMAGE_PIXELS) -> DicomFrame:
    """The first frame of a DICOM file as 8-bit RGB (see the module docstring); ``name`` is
    how messages call the file (an upload's own name, not its server path)."""
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError:
        raise HfcnError("reading DICOM needs pydicom", hint="pip install hfcn-bench[app]") from None
    name = name or Path(path).name
    try:
        # Large elements (the pixel data) stay on disk until a frame is asked for; a deflated
        # file is inflated in memory, so nothing of it can be read later from its offsets.
        ds = pydicom.dcmread(path, defer_size=None if _deflated(path) else "256 KB", force=not is_dicom(path))
    except InvalidDicomError as exc:
        raise HfcnError(f"{name}: not a DICOM file ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds on damaged files
        raise HfcnError(f"{name}: not a readable DICOM file ({type(exc).__name__}: {_first_line(exc)})") from None
    if "PixelData" not in ds:
        kind = ds.get("SOPClassUID")
        what = f" (SOP class {kind.name})" if kind is not None and hasattr(kind, "name") else ""
        raise HfcnError(f"{name}: this DICOM file holds no image (no Pixel Data element){what}")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        pi = str(ds.PhotometricInterpretation).strip().upper()
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError) as exc:
        raise HfcnError(f"{name}: damaged DICOM image header ({_first_line(exc)})") from None
    if rows < 1 or cols < 1:
        raise HfcnError(f"{name}: DICOM image of {cols}x{rows} pixels")
    if rows * cols > max_pixels:
        raise HfcnError(
            f"{name}: refused: {cols}x{rows} = {rows * cols / 1e6:.1f} megapixels exceeds the "
            f"{max_pixels / 1e6:.0f}-megapixel cap (decompression-bomb guard)"
        )
    if pi not in SUPPORTED_PHOTOMETRIC:
        raise HfcnError(
            f"{name}: unsupported DICOM photometric interpretation {pi!r} (supported: "
            f"{', '.join(SUPPORTED_PHOTOMETRIC)})"
        )
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    ts_name = getattr(ts, "name", str(ts)) if ts is not None else "unknown"
    from pydicom.pixels import pixel_array

    try:
        # From the path pydicom reads just the asked frame; a file without the Part 10 preamble
        # (read with force above) is decoded from the dataset instead.
        src = path if is_dicom(path) and not getattr(ts, "is_deflated", False) else ds
        arr = pixel_array(src, index=0 if frames > 1 else None)
    except Exception as exc:  # noqa: BLE001 - a missing decoder plugin, a truncated frame, bad values
        raise HfcnError(
            f"{name}: cannot decode the DICOM pixel data (transfer syntax {ts_name}): {_first_line(exc)}"
        ) from None
    notes: list[str] = []
    try:
        rgb = _to_rgb(arr, ds, pi, notes)
    except HfcnError as exc:
        raise HfcnError(f"{name}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - inconsistent header values (LUT sizes, bit depths)
        raise HfcnError(f"{name}: cannot display this DICOM frame ({type(exc).__name__}: {_first_line(exc)})") from None
    if frames > 1:
        notes.insert(0, f"{name} is a multi-frame DICOM ({frames} frames): the first frame was classified")
    info = {
        "format": "dicom",
        "photometric": pi,
        "frames": frames,
        "frame_used": 0,
        "transfer_syntax": ts_name,
        "modality": str(ds.get("Modality", "")) or None,
        "width": cols,
        "height": rows,
    }
    return DicomFrame(rgb, info, notes)


def _to_rgb(arr: np.ndarray, ds, pi: str, notes: list[str]) -> np.ndarray:
    from pydicom.pixels import apply_color_lut

    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)) or 8)
    if pi.startswith("MONOCHROME"):
        if arr.ndim != 2:
            raise HfcnError(f"{pi} frame of shape {arr.shape}: expected one sample per pixel")
        grey = _window(arr, ds, bits, notes)
        if pi == "MONOCHROME1":
            # MONOCHROME1: the minimum value is displayed white.
            grey = 255 - grey
            notes.append("MONOCHROME1 DICOM (low values are white): inverted for display")
        return np.repeat(grey[..., None], 3, axis=2)
    if pi == "PALETTE COLOR":
        lut_bits = _palette_bits(ds)
        rgb = apply_color_lut(arr, ds)
        notes.append("PALETTE COLOR DICOM: expanded through its colour tables")
        return _scale_to_8bit(rgb, lut_bits)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise HfcnError(f"{pi} frame of shape {arr.shape}: expected three samples per pixel")
    if pi.startswith("YBR"):
        # pixel_array (raw=False) has converted YBR_FULL(_422) to RGB already, for native and
        # JPEG-compressed data alike
        notes.append(f"{pi} DICOM: converted to RGB")
    return _scale_to_8bit(arr, bits)


def _window(arr: np.ndarray, ds, bits: int, notes: list[str]) -> np.ndarray:
    """A monochrome frame as 8-bit grey: modality rescale, then the VOI window or LUT (see the
    module docstring)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    # A rescale field that is NaN or infinite is refused even where pydicom would skip the
    # rescale (it applies one only with both fields present): the header says the pixels mean
    # nothing. (A field that does not parse as a number is left to pydicom.)
    rescale = {k: _first(ds.get(k)) for k in ("RescaleSlope", "RescaleIntercept") if k in ds}
    if not all(v is None or np.isfinite(v) for v in rescale.values()):
        raise HfcnError(
            "a modality rescale that is not finite, NaN or infinity ("
            + ", ".join(f"{k} {v}" for k, v in rescale.items())
            + ")"
        )
    values = apply_modality_lut(arr, ds).astype(np.float64)
    if not np.isfinite(values).all():
        slope, intercept = ds.get("RescaleSlope", "absent"), ds.get("RescaleIntercept", "absent")
        raise HfcnError(
            "pixel values that are not finite numbers (NaN or infinity) after the modality rescale "
            f"(RescaleSlope {slope}, RescaleIntercept {intercept})"
        )
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if not all(v is None or np.isfinite(v) for v in (center, width)):
        raise HfcnError(f"a window that is not a finite number (WindowCenter {center}, WindowWidth {width})")
    if center is not None and width is not None and width >= 1:
        # LINEAR VOI function, DICOM PS3.3 C.11.2.1.2.1
        y = (
            np.clip(((values - (center - 0.5)) / (width - 1) + 0.5), 0.0, 1.0)
            if width > 1
            else (values > center - 0.5).astype(np.float64)
        )
        return np.round(y * 255).astype(np.uint8)
    if "VOILUTSequence" in ds:
        values = apply_voi_lut(arr, ds).astype(np.float64)
        notes.append("monochrome DICOM: mapped through its VOI LUT")
    elif bits <= 8 and "RescaleSlope" not in ds and "RescaleIntercept" not in ds:
        return np.clip(values, 0, 255).astype(np.uint8)
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    if "VOILUTSequence" not in ds:
        notes.append(f"{bits}-bit monochrome DICOM without a window: stretched from its minimum to its maximum")
    return np.round((values - lo) / (hi - lo) * 255).astype(np.uint8)


def _palette_bits(ds) -> int:
    """Bits per entry of a PALETTE COLOR frame's colour tables, checked before they are used
    (a descriptor of 0 or 33 bits would otherwise surface as a NumPy type error)."""
    bits = set()
    for colour in ("Red", "Green", "Blue"):
        desc = ds.get(f"{colour}PaletteColorLookupTableDescriptor")
        try:
            values = [int(v) for v in desc]
        except (TypeError, ValueError):
            values = []
        if len(values) != 3:
            raise HfcnError(f"PALETTE COLOR DICOM without a usable {colour} colour table descriptor ({desc!r})")
        if values[2] not in (8, 16):
            raise HfcnError(
                f"PALETTE COLOR DICOM whose {colour} colour table descriptor says {values[2]} bits per entry "
                "(DICOM allows 8 or 16)"
            )
        data = ds.get(f"{colour}PaletteColorLookupTableData")
        entries = values[0] or 2**16  # 0 stands for 65536 entries
        if data is not None and len(data) * 8 / entries not in (8, 16):
            raise HfcnError(
                f"PALETTE COLOR DICOM whose {colour} colour table holds {len(data)} bytes for the {entries} entries "
                "its descriptor says (DICOM allows 8 or 16 bits per entry)"
            )
        bits.add(values[2])
    return max(bits)


def _deflated(path) -> bool:
    """Whether a Part 10 file's meta header names the Deflated Explicit VR Little Endian transfer
    syntax (read from the meta header alone)."""
    try:
        from pydicom.filereader import read_file_meta_info

        uid = read_file_meta_info(path).get("TransferSyntaxUID")
    except Exception:  # noqa: BLE001 - not a Part 10 file: dcmread says what is wrong with it
        return False
    return bool(getattr(uid, "is_deflated", False))


def _scale_to_8bit(arr: np.ndarray, bits: int) -> np.ndarray:
    if arr.dtype == np.uint8 or bits <= 8:
        return np.clip(arr, 0, 255).astype(np.uint8)
    return np.round(arr.astype(np.float64) / (2**bits - 1) * 255).clip(0, 255).astype(np.uint8)


def _first(value) -> float | None:
    """A DICOM number that may be multi-valued (several windows): the first one."""
    if value is None:
        return None
    try:
        if isinstance(value, (list, tuple)) or hasattr(value, "__len__") and not isinstance(value, str):
            value = list(value)[0] if len(value) else None
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
