"""torch Dataset over ROI samples: crop, resize, optional augmentation and normalisation."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .collection import LoadedDataset
from .rois import Sample, load_roi, parse_context

__all__ = ["RoiDataset", "IMAGENET_MEAN", "IMAGENET_STD", "AUGMENT_POLICIES"]

# Augmentation policies (``RoiDataset(policy=...)``). "basic": a horizontal flip, a shift and
# +-10 % brightness/contrast (what every earlier run used, bit for bit). "strong": the
# geometric augmentation of Buda et al. (Radiology 2019) kept small enough for ultrasound: a
# flip, rotations up to +-10 degrees, scale 0.85-1.15, the same shift, and +-20 %
# brightness/contrast. Rotations this small leave "taller than wide" (an aspect ratio above
# 1, a TI-RADS cue) almost untouched; vertical flips would not (depth runs downwards).
AUGMENT_POLICIES: dict[str, dict[str, float]] = {
    "basic": {"rotate_deg": 0.0, "scale": 0.0, "jitter": 0.1},
    "strong": {"rotate_deg": 10.0, "scale": 0.15, "jitter": 0.2},
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class RoiDataset(Dataset):
    """Nodule ROIs as tensors, for training and evaluation.

    ``ds[i]`` is ``(image, label, i)``: ``image`` (Tensor[3, size, size], float32) in [0, 1],
    or normalised with ``normalize=(mean, std)`` / ``"imagenet"``; ``label`` 0 benign / 1
    malignant (-1 for an unlabelled sample being predicted); ``i`` the sample index (to map
    predictions back to ``samples[i].case_id``).

    ROIs are cropped and resized once and cached as uint8 (~150 KB each at 224: DDTI's
    ~470 ROIs take ~70 MB); ``cache=False`` re-reads the frame every time.

    ``augment=True`` applies, per item, the ``policy`` of :data:`AUGMENT_POLICIES`: "basic" (the
    default) a horizontal flip (p = 0.5), a shift of up to ``max_shift`` of the size and a
    brightness/contrast change of up to +-10 %, no vertical flips or rotations (depth runs
    downwards in ultrasound, and "taller than wide" is a malignancy cue that large rotations
    would fake); "strong" adds rotations up to +-10 degrees and scale changes of +-15 % (one
    bilinear resampling, border pixels repeated) and +-20 % brightness/contrast. The random
    draws depend only on (``seed``, epoch, index), so a run is reproducible whatever the number
    of DataLoader workers; call ``set_epoch`` each epoch to get new draws.

    ``context`` grows every ROI box before cropping (``"0"``, ``"10%"``, ``"0.2"``, ``"32px"``:
    :func:`~hfcn_bench.data.rois.context_box`), so the crop holds the nodule's surroundings.
    """

    def __init__(
        self,
        samples: Sequence[Sample] | LoadedDataset,
        size: int = 224,
        letterbox: bool = False,
        augment: bool = False,
        normalize: str | tuple | None = None,
        cache: bool = True,
        seed: int = 0,
        max_shift: float = 0.06,
        policy: str = "basic",
        context: str | float = "0",
    ):
        self.samples = list(samples.samples if isinstance(samples, LoadedDataset) else samples)
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        rules = {s.label_rule for s in self.samples}
        if len(rules) > 1:
            raise ValueError(f"samples mix label rules {sorted(rules)}; load them with one rule")
        self.label_rule = rules.pop() if rules else None
        self.size = int(size)
        self.letterbox = bool(letterbox)
        self.augment = bool(augment)
        self.cache = bool(cache)
        self.seed = int(seed)
        self.max_shift = float(max_shift)
        if policy not in AUGMENT_POLICIES:
            raise ValueError(f"unknown augmentation policy {policy!r}; known: {', '.join(AUGMENT_POLICIES)}")
        self.policy = policy
        parse_context(context)  # a bad setting fails here, not at the first item
        self.context = context
        self.epoch = 0
        if normalize == "imagenet":
            normalize = (IMAGENET_MEAN, IMAGENET_STD)
        if normalize is not None:
            mean, std = normalize
            self._mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
            self._std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        else:
            self._mean = self._std = None
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> list[int]:
        return [s.label for s in self.samples]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def roi_array(self, i: int) -> np.ndarray:
        """The resized ROI of sample ``i`` as uint8 (size, size, 3), before augmentation."""
        arr = self._cache.get(i)
        if arr is None:
            arr = np.asarray(load_roi(self.samples[i], self.size, self.letterbox, self.context), dtype=np.uint8)
            if self.cache:
                self._cache[i] = arr
        return arr

    def _augment(self, x: np.ndarray, i: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch, i])
        if rng.uniform() < 0.5:
            x = x[:, ::-1]
        s = int(round(self.max_shift * self.size))
        if s > 0:
            dy, dx = (int(v) for v in rng.integers(-s, s + 1, size=2))
            # Edge padding, not zeros: a black band would be a new, label-free edge to learn.
            x = np.pad(x, ((s, s), (s, s), (0, 0)), mode="edge")[
                s + dy : s + dy + self.size, s + dx : s + dx + self.size
            ]
        c, b = rng.uniform(0.9, 1.1, size=2)
        mean = x.mean()
        return np.clip((x - mean) * c + mean * b, 0.0, 1.0)

    def _augment_strong(self, x: np.ndarray, i: int) -> torch.Tensor:
        """Flip, rotation, scale and shift as one affine resampling, then brightness/contrast."""
        p = AUGMENT_POLICIES[self.policy]
        rng = np.random.default_rng([self.seed, self.epoch, i])
        flip = -1.0 if rng.uniform() < 0.5 else 1.0
        angle = math.radians(rng.uniform(-p["rotate_deg"], p["rotate_deg"]))
        scale = rng.uniform(1.0 - p["scale"], 1.0 + p["scale"])
        tx, ty = rng.uniform(-self.max_shift, self.max_shift, size=2) * 2.0  # in [-1, 1] grid units
        c, b = rng.uniform(1.0 - p["jitter"], 1.0 + p["jitter"], size=2)
        cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
        # output -> input grid map: flip, then rotate/zoom about the centre, then shift
        theta = torch.tensor([[cos * flip, -sin, tx], [sin * flip, cos, ty]], dtype=torch.float32)
        t = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]
        grid = F.affine_grid(theta[None], list(t.shape), align_corners=False)
        t = F.grid_sample(t, grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
        mean = t.mean()
        return ((t - mean) * float(c) + mean * float(b)).clamp(0.0, 1.0)

    def __getitem__(self, i: int):
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} samples")
        i = i % len(self)
        x = self.roi_array(i).astype(np.float32) / 255.0
        if self.augment and self.policy != "basic":
            t = self._augment_strong(x, i)
        else:
            if self.augment:
                x = self._augment(x, i)
            t = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32))
        if self._mean is not None:
            t = (t - self._mean) / self._std
        label = self.samples[i].label
        return t, -1 if label is None else int(label), i
