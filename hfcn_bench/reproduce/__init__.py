"""``hfcn-bench reproduce``: the paper's Tables 3 and 4 under case-level cross-validation, as a
grid of cached cells (each an ordinary run folder) run in-process or on Ray, and the report
that sets the paper's figures beside ours."""

from .grid import Cell, Config, build_cells, build_configs
from .lock import GridBusy
from .record import GridWarning
from .runner import PRESETS, ReproduceOptions, estimate_costs, plan, reproduce

__all__ = [
    "Cell",
    "Config",
    "GridBusy",
    "GridWarning",
    "PRESETS",
    "ReproduceOptions",
    "build_cells",
    "build_configs",
    "estimate_costs",
    "plan",
    "reproduce",
]
