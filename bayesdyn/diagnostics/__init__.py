"""Diagnostics: forecast scores, calibration, ArviZ conversion and the HTML report.

``_arviz`` is the only module of bayesdyn that imports ArviZ. The forecast scores are listed
once, in ``metrics.__all__``, and re-exported from here.
"""

from . import metrics
from .inference_data import to_inference_data
from .lfo import rolling_origin
from .metrics import *  # noqa: F403  (the names of metrics.__all__)
from .report import save_run

__all__ = ["rolling_origin", "save_run", "to_inference_data"]
__all__ += metrics.__all__
