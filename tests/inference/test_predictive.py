import matplotlib
import numpy as np
import pytest
import torch

from bayesdyn import LatentSDE, posterior_predictive
from bayesdyn._validation import BayesdynValueError
from bayesdyn.data import Scaler
from tests.common import lattice_ou, ragged_batch

matplotlib.use("Agg")


def model(D=2):
    torch.manual_seed(0)
    return LatentSDE(D, latent_dim=2, hidden_dim=8, context_dim=3, dt=0.2, diffusion_hidden_dim=4)


@pytest.mark.parametrize("per_series", [False, True])
def test_shapes_and_regions(per_series):
    batch = ragged_batch(3, 5, 2)
    q = torch.tensor([0.1, 1.0, 2.5, 4.0])
    if per_series:
        q = q.expand(3, -1) + torch.arange(3).unsqueeze(-1) * 0.05
    tr = posterior_predictive(model(), batch, q, num_samples=10, chunk_size=4, seed=0)
    assert tr.latent.shape == (10, 3, 4, 2)
    assert tr.observations.shape == (10, 3, 4, 2)
    assert tr.quantiles([0.05, 0.5, 0.95]).shape == (3, 3, 4, 2)
    assert tr.mean().shape == tr.std().shape == (3, 4, 2)
    df = tr.to_dataframe(levels=(0.9,))
    assert len(df) == 3 * 4 * 2
    assert set(df["region"]) == {"interpolation", "forecast"}
    assert (df["lower_0.9"] <= df["median"]).all() and (df["median"] <= df["upper_0.9"]).all()
    last = batch.times.gather(1, (batch.lengths - 1).unsqueeze(-1)).squeeze(-1)
    assert torch.equal(tr.last_observed, last)


def test_seed_makes_draws_reproducible_and_chunks_are_independent():
    batch = ragged_batch(2, 4, 2)
    m = model()
    q = torch.tensor([0.5, 3.0])
    a = posterior_predictive(m, batch, q, num_samples=8, chunk_size=4, seed=3)
    b = posterior_predictive(m, batch, q, num_samples=8, chunk_size=4, seed=3)
    assert torch.equal(a.observations, b.observations)
    assert not torch.equal(a.observations[:4], a.observations[4:])


def test_inverse_transform_and_plot(tmp_path):
    series, _ = lattice_ou(num_series=3, num_obs=6, t1=1.0, spacing=0.1, seed=1)
    scaled, scaler = series.standardize()
    tr = posterior_predictive(model(1), scaled, np.linspace(0, 2, 9), num_samples=20, seed=0)
    back = tr.inverse_transform(scaler)
    assert torch.allclose(
        back.observations, tr.observations * float(scaler.std[0]) + float(scaler.mean[0])
    )
    assert isinstance(Scaler.from_state_dict(scaler.state_dict()), Scaler)
    fig = back.plot(data=series, level=0.8)
    fig.savefig(tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 5000
    assert len(fig.axes) == 3


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(num_samples=0), "num_samples must be a positive integer; got 0"),
        (dict(times=torch.zeros(0)), r"times must have shape \[Q\] or \[B, Q\] with Q >= 1"),
        (dict(times=torch.tensor([-5.0, 1.0])), "t0 must not exceed|earliest"),
    ],
)
def test_bad_arguments(kw, match):
    batch = ragged_batch(2, 4, 2)
    m = LatentSDE(2, latent_dim=2, hidden_dim=8, context_dim=3, dt=0.2, t0=0.0)
    args = dict(times=torch.tensor([1.0]), num_samples=4)
    args.update(kw)
    with pytest.raises(BayesdynValueError, match=match):
        posterior_predictive(m, batch, **args)
