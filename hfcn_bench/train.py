"""The old import path of HFCN's training code, kept so that ``from hfcn_bench.train import ...``
keeps working: the code lives in :mod:`hfcn_bench.systems.hfcn_training`, beside the other
systems. New code imports it from there."""

from .systems.hfcn_training import (
    PRESETS,
    RoiTensors,
    TrainConfig,
    TrainResult,
    fit,
    model_from_checkpoint,
    predict,
    preset_config,
)

__all__ = [
    "PRESETS",
    "TrainConfig",
    "TrainResult",
    "preset_config",
    "fit",
    "predict",
    "model_from_checkpoint",
    "RoiTensors",
]
