"""Pyro models: path distributions, networks and the ready-made ``LatentSDE``."""

from .base import AbstractSDE, FunctionalSDE
from .filter_encoder import FilterEncoder
from .latent_sde import (
    OBS_SITE,
    PATH_SITE,
    PRED_SITE,
    Z0_SITE,
    LatentSDE,
    LatentSDEConfig,
)
from .nets import (
    MLP,
    DiagonalDiffusion,
    DriftNet,
    FirstKEncoder,
    GaussianDecoder,
    GRUEncoder,
    StudentTDecoder,
)
from .sde_path import SDEPath

__all__ = [
    "MLP",
    "OBS_SITE",
    "PATH_SITE",
    "PRED_SITE",
    "Z0_SITE",
    "AbstractSDE",
    "DiagonalDiffusion",
    "DriftNet",
    "FilterEncoder",
    "FirstKEncoder",
    "FunctionalSDE",
    "GRUEncoder",
    "GaussianDecoder",
    "LatentSDE",
    "LatentSDEConfig",
    "SDEPath",
    "StudentTDecoder",
]
