"""bayesdyn: Bayesian dynamics on irregular time series.

Latent neural SDEs as Pyro models, trained by variational inference, with posterior
predictive trajectories (interpolation and forecasts) and calibration diagnostics.
"""

from importlib.metadata import PackageNotFoundError, version

from ._validation import enable_validation
from .data import (
    EventBatch,
    IrregularBatch,
    IrregularTimeSeries,
    JumpBatch,
    Scaler,
    load_point_process,
)
from .diagnostics import calibration_table, to_inference_data
from .inference import (
    Ensemble,
    EventForecast,
    FilterState,
    LinearGaussianSDE,
    ParticleFilter,
    PathELBO,
    Trajectories,
    fit,
    fit_ensemble,
    forecast_events,
    kalman_filter,
    load_model,
    posterior_predictive,
    save_model,
)
from .models import (
    AbstractSDE,
    FunctionalSDE,
    JumpDiffusionPath,
    LatentJumpSDE,
    LatentJumpSDEConfig,
    LatentSDE,
    LatentSDEConfig,
    SDEPath,
    TemporalPointProcess,
)

try:
    __version__ = version("bayesdyn")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0+unknown"

__all__ = [
    "AbstractSDE",
    "Ensemble",
    "EventBatch",
    "EventForecast",
    "FilterState",
    "FunctionalSDE",
    "IrregularBatch",
    "IrregularTimeSeries",
    "JumpBatch",
    "JumpDiffusionPath",
    "LatentJumpSDE",
    "LatentJumpSDEConfig",
    "LatentSDE",
    "LatentSDEConfig",
    "LinearGaussianSDE",
    "ParticleFilter",
    "PathELBO",
    "SDEPath",
    "Scaler",
    "TemporalPointProcess",
    "Trajectories",
    "__version__",
    "calibration_table",
    "enable_validation",
    "fit",
    "fit_ensemble",
    "forecast_events",
    "kalman_filter",
    "load_model",
    "load_point_process",
    "posterior_predictive",
    "save_model",
    "to_inference_data",
]
