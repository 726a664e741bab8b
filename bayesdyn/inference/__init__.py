"""Inference: the path ELBO, the SVI loop, posterior predictives, saving and loading."""

from .elbo import PathELBO
from .ensemble import (
    Disagreement,
    Ensemble,
    EnsembleFitResult,
    ensemble_disagreement,
    fit_ensemble,
)
from .event_predictive import (
    EventForecast,
    EventLikelihood,
    event_log_likelihood,
    forecast_events,
)
from .fit import FitResult, average_after_for, fit, load_checkpoint, save_checkpoint
from .io import load_model, save_model
from .kalman import KalmanResult, LinearGaussianSDE, kalman_filter
from .particle import (
    AbstractStateSpace,
    FilterResult,
    ParticleFilter,
    SDEStateSpace,
    systematic_resample,
)
from .predictive import Trajectories, posterior_predictive
from .refine import RefineResult, refine_lbfgs
from .streaming import FilterState

__all__ = [
    "AbstractStateSpace",
    "Disagreement",
    "Ensemble",
    "EnsembleFitResult",
    "EventForecast",
    "EventLikelihood",
    "FilterResult",
    "FilterState",
    "FitResult",
    "KalmanResult",
    "LinearGaussianSDE",
    "ParticleFilter",
    "PathELBO",
    "RefineResult",
    "SDEStateSpace",
    "Trajectories",
    "average_after_for",
    "ensemble_disagreement",
    "event_log_likelihood",
    "fit",
    "fit_ensemble",
    "forecast_events",
    "kalman_filter",
    "load_checkpoint",
    "load_model",
    "posterior_predictive",
    "refine_lbfgs",
    "save_checkpoint",
    "save_model",
    "systematic_resample",
]
