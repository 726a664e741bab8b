"""bayesdyn side of the latent SDE benchmark: model, batch and one training step.

Mirrors ``_reference_torchsde.py`` (same data, same architecture widths) so that
``bench_latent_sde.py`` compares like with like.  ``memory_probe`` has the same contract as
``_reference_torchsde.memory_probe`` and is used via ``_harness.peak_rss_in_subprocess``.
"""

from __future__ import annotations

import torch

try:
    from bayesdyn.data import IrregularBatch
except ImportError:  # the data package may not re-export it yet
    from bayesdyn.data._batch import IrregularBatch
from bayesdyn.inference.elbo import PathELBO
from bayesdyn.models import LatentSDE

NOISE_STD = 0.01  # the reference's fixed observation scale


def make_batch(ts: torch.Tensor, xs: torch.Tensor) -> IrregularBatch:
    """``ts [T]``, time-major ``xs [T, B, D]`` -> an all-observed batch ``[B, T, D]``."""
    values = xs.transpose(0, 1).contiguous()
    B, T, _ = values.shape
    times = ts.expand(B, T).contiguous()
    mask = torch.ones(values.shape, dtype=torch.bool)
    lengths = torch.full((B,), T, dtype=torch.long)
    return IrregularBatch(times, values, mask, lengths)


def make_model(
    data_size: int,
    latent: int,
    hidden: int,
    context: int,
    dt: float,
    step_rounding: str = "nearest",
) -> LatentSDE:
    """LatentSDE with the reference's widths: drift MLPs (2 x hidden, softplus), GRU encoder of
    width ``hidden``, per-dimension diffusion nets of width ``hidden``, linear decoder with a
    fixed observation scale of 0.01.

    ``step_rounding="nearest"`` gives the reference's number of Euler steps (torchsde steps by
    ``dt`` and interpolates at observation times: 200 steps on [0, 2]; we split each 0.0202 gap
    into 2 steps: 198). ``"ceil"``, the library default, keeps every step <= dt (297 steps)."""
    return LatentSDE(
        data_size,
        latent_dim=latent,
        hidden_dim=hidden,
        context_dim=context,
        encoder="gru",
        encoder_hidden_dim=hidden,
        diffusion_hidden_dim=hidden,
        decoder="gaussian",
        decoder_hidden_dim=0,
        obs_scale_init=NOISE_STD,
        learn_obs_scale=False,
        num_layers=2,
        activation="softplus",
        dt=dt,
        step_rounding=step_rounding,
        t0=0.0,
        # the reference's posterior drift reads only the GRU context: no extra inputs
        next_obs_features=False,
        bridge=False,
    )


def make_step_fn(model: LatentSDE, batch: IrregularBatch, lr: float = 1e-2):
    """One Adam training iteration (forward + backward + step) with :class:`PathELBO`."""
    import _harness  # benchmarks/ is on sys.path in benchmark scripts

    elbo = PathELBO()
    return _harness.adam_step_fn(
        model.parameters(), lambda: elbo.differentiable_loss(model.model, model.guide, batch), lr
    )


def memory_probe(seed: int = 0, step_rounding: str = "nearest", **config):
    """Build model + data and return a zero-argument training-step callable (see the
    reference's ``memory_probe``)."""
    import _harness

    c, ts, xs = _harness.probe_data(config, seed)
    torch.manual_seed(seed)
    arch = (c["data_size"], c["latent"], c["hidden"], c["context"], c["dt"])
    model = make_model(*arch, step_rounding=step_rounding)
    return make_step_fn(model, make_batch(ts, xs))
