"""Fused boundary-feature-cropping + bilinear upsampling for HFCN.

``crop_resize(x, boxes, size)`` is the op; ``torch.ops.hfcn_bench.crop_resize`` is the same op
as registered with torch (visible to ``torch.compile``) once the extension is loaded;
``crop_resize_reference`` is the slicing + ``F.interpolate`` oracle; ``boundary_boxes`` and
``random_boxes`` give the paper's BFC and RFC windows.
"""

from ._extension import backend, csrc_dir, extension_error, load_extension
from .boxes import boundary_boxes, check_boxes, random_boxes, window_size
from .crop_resize import CropResizeFunction, crop_resize, raise_device_box_error
from .reference import crop_resize_reference, normalize_size, slice_resize

__all__ = [
    "CropResizeFunction",
    "backend",
    "boundary_boxes",
    "check_boxes",
    "crop_resize",
    "raise_device_box_error",
    "crop_resize_reference",
    "csrc_dir",
    "extension_error",
    "load_extension",
    "normalize_size",
    "random_boxes",
    "slice_resize",
    "window_size",
]
