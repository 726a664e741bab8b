"""Pyro models: path and event distributions, networks and the ready-made ``LatentSDE``."""

from .base import AbstractSDE, FunctionalSDE
from .filter_encoder import FilterEncoder
from .jumps import GaussianJumpNet, JumpDiffusionPath, JumpPath, JumpRateNet
from .latent_jump_sde import (
    EVENTS_SITE,
    JUMPS_SITE,
    EventGrid,
    LatentJumpSDE,
    LatentJumpSDEConfig,
)
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
    release_kernel_buffers,
)
from .point_process import TemporalPointProcess
from .sde_path import SDEPath

__all__ = [
    "EVENTS_SITE",
    "JUMPS_SITE",
    "MLP",
    "OBS_SITE",
    "PATH_SITE",
    "PRED_SITE",
    "Z0_SITE",
    "AbstractSDE",
    "DiagonalDiffusion",
    "DriftNet",
    "EventGrid",
    "FilterEncoder",
    "FirstKEncoder",
    "FunctionalSDE",
    "GRUEncoder",
    "GaussianDecoder",
    "GaussianJumpNet",
    "JumpDiffusionPath",
    "JumpPath",
    "JumpRateNet",
    "LatentJumpSDE",
    "LatentJumpSDEConfig",
    "LatentSDE",
    "LatentSDEConfig",
    "SDEPath",
    "StudentTDecoder",
    "TemporalPointProcess",
    "release_kernel_buffers",
]
