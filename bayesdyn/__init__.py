"""bayesdyn: Bayesian dynamics on irregular time series.

Latent neural SDEs as Pyro models, trained by variational inference, with posterior
predictive trajectories (interpolation and forecasts) and calibration diagnostics.
"""

from importlib.metadata import PackageNotFoundError, version

from ._validation import enable_validation
from .data import IrregularBatch, IrregularTimeSeries, Scaler
from .diagnostics import calibration_table
from .inference import (
    PathELBO,
    Trajectories,
    fit,
    load_model,
    posterior_predictive,
    save_model,
)
from .models import AbstractSDE, FunctionalSDE, LatentSDE, LatentSDEConfig, SDEPath

try:
    __version__ = version("bayesdyn")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0+unknown"

__all__ = [
    "AbstractSDE",
    "FunctionalSDE",
    "IrregularBatch",
    "IrregularTimeSeries",
    "LatentSDE",
    "LatentSDEConfig",
    "PathELBO",
    "SDEPath",
    "Scaler",
    "Trajectories",
    "__version__",
    "calibration_table",
    "enable_validation",
    "fit",
    "load_model",
    "posterior_predictive",
    "save_model",
]
