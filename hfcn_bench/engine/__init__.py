"""The one epoch loop every trained network of hfcn-bench goes through (see :mod:`.loop`)."""

from .loop import (
    OPTIMIZERS,
    RESUMABLE,
    SCHEDULES,
    LoopResult,
    LoopSettings,
    Task,
    batch_starts,
    better,
    device_of,
    epoch_order,
    fit_loop,
    torch_threads,
)

__all__ = [
    "OPTIMIZERS",
    "RESUMABLE",
    "SCHEDULES",
    "LoopResult",
    "LoopSettings",
    "Task",
    "batch_starts",
    "better",
    "device_of",
    "epoch_order",
    "fit_loop",
    "torch_threads",
]
