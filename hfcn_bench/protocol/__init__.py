"""The evaluation protocol shared by every system, independent of any model: per-ROI
predictions, the threshold chosen on the training side, scoring with case-bootstrap intervals,
the majority baseline and calibration, k-fold pooling, and the versioned run folder."""

from .pooling import FoldResult, ensemble, fold_boot, kfold_protocol, mean_sd, pool_folds, pool_timings
from .predictions import UNKNOWN_LABEL, Predictions
from .runfolder import (FITTED_FORMAT, RUN_FORMAT, RUN_VERSION, RunFolder, check_reusable, fit_dir, has_state,
                        mark_finished, read_fitted, read_run, remove_stray_temps, sha256_file, verify_files,
                        write_fitted, write_header)
from .scoring import (AGGREGATES, THRESHOLD_RULES, calibration, choose_threshold, level_name, protocol_line,
                      roc_points, score_predictions)

__all__ = [
    "AGGREGATES", "FITTED_FORMAT", "RUN_FORMAT", "RUN_VERSION", "THRESHOLD_RULES", "UNKNOWN_LABEL", "FoldResult",
    "Predictions", "RunFolder", "calibration", "check_reusable", "choose_threshold", "ensemble", "fit_dir",
    "fold_boot", "has_state", "kfold_protocol", "level_name", "mark_finished", "mean_sd", "pool_folds",
    "pool_timings", "protocol_line", "read_fitted", "read_run", "remove_stray_temps", "roc_points",
    "score_predictions", "sha256_file", "verify_files", "write_fitted", "write_header",
]
