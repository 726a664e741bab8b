"""Inference: the path ELBO, the SVI loop, posterior predictives, saving and loading."""

from .elbo import PathELBO
from .fit import FitResult, fit, load_checkpoint, save_checkpoint
from .io import load_model, save_model
from .kalman import KalmanResult, LinearGaussianSDE, kalman_filter
from .predictive import Trajectories, posterior_predictive

__all__ = [
    "FitResult",
    "KalmanResult",
    "LinearGaussianSDE",
    "PathELBO",
    "Trajectories",
    "fit",
    "kalman_filter",
    "load_checkpoint",
    "load_model",
    "posterior_predictive",
    "save_checkpoint",
    "save_model",
]
