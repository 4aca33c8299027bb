"""Workflows over the system registry: train any system and write its run folder, score a
finished run on its own held-out cases or on external data, predict new inputs. The CLI, the
benchmark report, the reproduction grid and the app all go through these."""

from .evaluation import evaluate_run, fitted_models, load_run_data, overlap_with_training
from .prediction import Prediction, image_sample, parse_box, predict_inputs, predict_samples, read_inputs
from .training import check_trainable, fit_split, load_fitted, train_run

__all__ = [
    "Prediction",
    "check_trainable",
    "evaluate_run",
    "fit_split",
    "fitted_models",
    "image_sample",
    "load_fitted",
    "load_run_data",
    "overlap_with_training",
    "parse_box",
    "predict_inputs",
    "predict_samples",
    "read_inputs",
    "train_run",
]
