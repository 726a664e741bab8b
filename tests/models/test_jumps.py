"""JumpDiffusionPath: exact mixture density, Merton convergence, Poisson jump counts, Pyro use."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy import stats

from bayesdyn._validation import BayesdynTypeError, BayesdynValueError
from bayesdyn.data import merton_log_density
from bayesdyn.models import (
    FunctionalSDE,
    GaussianJumpNet,
    JumpDiffusionPath,
    JumpRateNet,
    SDEPath,
)
from tests.conftest import TEST_FAILURE_RATE

MERTON = dict(mu=0.1, sigma=0.3, jump_rate=1.5, jump_mean=0.4, jump_std=0.25)


def _merton_path_dist(z0, grid, p=MERTON):
    sde = FunctionalSDE(lambda t, z: torch.full_like(z, p["mu"]), p["sigma"], state_dim=1)
    return JumpDiffusionPath(
        sde,
        z0,
        grid,
        jump_rate=p["jump_rate"],
        jump_size=(torch.tensor([p["jump_mean"]]), torch.tensor([p["jump_std"]])),
    )


def test_log_prob_equals_loop_oracle_with_state_dependent_jumps():
    torch.manual_seed(1)
    L = 2
    rate = JumpRateNet(L, 8, init_rate=0.8)
    size = GaussianJumpNet(L, 8, init_loc=0.3, init_scale=0.4)
    with torch.no_grad():  # make both depend on the state
        rate.net[0].weight.normal_()
        rate.net[-1].weight.normal_(std=0.5)
        size.net[-1].weight.normal_(std=0.3)
    sde = FunctionalSDE(lambda t, z: -z + 0.1 * t, lambda t, z: 0.2 + 0.1 * z.tanh().abs(), L)
    grid = torch.tensor([0.0, 0.1, 0.25, 0.3, 0.7, 1.0])
    d = JumpDiffusionPath(sde, torch.zeros(3, L), grid, jump_rate=rate, jump_size=size)
    path = d.sample()
    assert path.shape == (3, 6, L)
    lp = d.log_prob(path)
    with torch.no_grad():
        for b in range(3):
            total = 0.0
            for k in range(5):
                t, h = grid[k], float(grid[k + 1] - grid[k])
                z = path[b, k]
                f, g = sde.drift_and_diffusion(t, z)
                lam = float(rate(t, z))
                loc, sc = size(t, z)
                dz = (path[b, k + 1] - z).numpy()
                mean0 = (f * h).numpy()
                sd0 = (g * math.sqrt(h)).numpy()
                sd1 = np.sqrt(sd0**2 + sc.numpy() ** 2)
                p0 = math.exp(-lam * h) * np.prod(stats.norm.pdf(dz, mean0, sd0))
                p1 = (1 - math.exp(-lam * h)) * np.prod(
                    stats.norm.pdf(dz, mean0 + loc.numpy(), sd1)
                )
                total += math.log(p0 + p1)
            assert float(lp[b]) == pytest.approx(total, rel=1e-10)


def test_transition_density_converges_to_merton_poisson_mixture():
    # One step of length h: the two-component mixture against the closed-form Poisson mixture.
    # The mixture misplaces the mass of "two or more jumps", P(N >= 2) ~ (lambda h)^2 / 2, so
    # the L1 distance shrinks like h^2.
    x = np.linspace(-4.0, 4.0, 8001)
    hs = [0.4, 0.2, 0.1, 0.05]
    errs = []
    for h in hs:
        d = _merton_path_dist(torch.zeros(x.size, 1), torch.tensor([0.0, h]))
        value = torch.stack([torch.zeros(x.size, 1), torch.tensor(x).unsqueeze(-1)], -2)
        mix = np.exp(d.log_prob(value).numpy())
        exact = np.exp(merton_log_density(x, 0.0, h, **MERTON))
        errs.append(np.trapezoid(np.abs(mix - exact), x))
    errs = np.array(errs)
    assert (np.diff(errs) < 0).all()
    slope = np.polyfit(np.log(hs), np.log(errs), 1)[0]
    # Leading term (lambda h)^2 with a relative correction O(lambda h) <= 0.6: order within 0.25.
    assert abs(slope - 2.0) < 0.25
    assert errs[-1] < 0.01


def test_sampled_endpoint_matches_merton_law():
    # 200 steps over T = 1: the discretised chain's law differs from Merton's by O(dt), far
    # below what 4000 samples can resolve (KS critical value ~0.03 at the test level).
    torch.manual_seed(2)
    T = 1.0
    d = _merton_path_dist(torch.zeros(4000, 1), torch.linspace(0.0, T, 201))
    xs = d.sample()[:, -1, 0].numpy()
    n = np.arange(40)[:, None]
    p = MERTON
    cdf = (
        stats.poisson.pmf(n, p["jump_rate"] * T)
        * stats.norm.cdf(
            (xs - p["mu"] * T - n * p["jump_mean"])
            / np.sqrt(p["sigma"] ** 2 * T + n * p["jump_std"] ** 2)
        )
    ).sum(0)
    assert stats.kstest(cdf, "uniform").pvalue > TEST_FAILURE_RATE


def _count_pvalue(counts: np.ndarray, mean: float) -> float:
    """Chi-square goodness of fit of counts to Poisson(mean), bins pooled to expected >= 5."""
    n = counts.size
    edges = [0]
    k = 0
    while True:
        # grow bins left to right until each has expected count >= 5
        lo = k
        while stats.poisson.cdf(k, mean) - stats.poisson.cdf(lo - 1, mean) < 5 / n:
            k += 1
        edges.append(k + 1)
        k += 1
        if stats.poisson.sf(k - 1, mean) < 10 / n:
            break
    edges[-1] = 10**6
    obs = np.histogram(counts, bins=edges)[0]
    probs = np.diff(stats.poisson.cdf(np.array(edges) - 1, mean))
    probs[-1] = stats.poisson.sf(edges[-2] - 1, mean)
    return stats.chisquare(obs, probs / probs.sum() * n).pvalue


def test_jump_counts_are_poisson_with_integrated_rate():
    # Time-varying rate lambda(t) = 1 + 0.5 sin(t) on [0, 4]: counts ~ Poisson(int lambda dt).
    # With dt = 0.002 the per-step Bernoulli(1 - exp(-lambda dt)) sum has mean within
    # lambda^2 dt T / 2 ~ 0.01 of the Poisson mean, below the test's resolution (sd/sqrt(n) ~0.05).
    torch.manual_seed(3)
    T = 4.0
    sde = FunctionalSDE(lambda t, z: torch.zeros_like(z), 0.1, 1)

    def rate(t, z):
        return (1.0 + 0.5 * torch.sin(torch.as_tensor(t))).expand(z.shape[:-1]).unsqueeze(-1)

    d = JumpDiffusionPath(
        sde,
        torch.zeros(2000, 1),
        torch.linspace(0.0, T, 2001),
        jump_rate=rate,
        jump_size=(torch.zeros(1), torch.ones(1)),
    )
    jp = d.sample_with_jumps()
    counts = jp.jumps.sum(-1).numpy()
    mean = T + 0.5 * (1 - math.cos(T))
    assert _count_pvalue(counts, mean) > TEST_FAILURE_RATE
    # Negative control: a 15% wrong mean is rejected.
    assert _count_pvalue(counts, 1.15 * mean) < TEST_FAILURE_RATE
    # jump sizes are zero exactly where there was no jump
    assert bool((jp.sizes[~jp.jumps] == 0).all())


def test_rate_and_jump_size_are_learnable_by_maximum_likelihood():
    torch.manual_seed(4)
    true = dict(MERTON, jump_rate=2.0, jump_mean=1.0, jump_std=0.2, sigma=0.1)
    T, dt = 100.0, 0.02
    grid = torch.arange(0.0, T + dt / 2, dt)
    path = _merton_path_dist(torch.zeros(1, 1), grid, true).sample()
    raw = torch.zeros(3, requires_grad=True)  # log rate, loc, log scale
    sde = FunctionalSDE(lambda t, z: torch.full_like(z, true["mu"]), true["sigma"], 1)
    opt = torch.optim.Adam([raw], lr=0.05)
    for _ in range(300):
        d = JumpDiffusionPath(
            sde,
            torch.zeros(1, 1),
            grid,
            jump_rate=lambda t, z: raw[0].exp().expand(z.shape[:-1]).unsqueeze(-1),
            jump_size=lambda t, z: (raw[1].expand_as(z), raw[2].exp().expand_as(z)),
        )
        opt.zero_grad()
        (-d.log_prob(path).sum()).backward()
        opt.step()
    lam_hat = float(raw[0].detach().exp())
    # MLE of a Poisson rate from ~200 jumps: standard error sqrt(lambda / T).
    assert abs(lam_hat - 2.0) < stats.norm.ppf(1 - TEST_FAILURE_RATE / 2) * math.sqrt(2.0 / T)
    # Jump mean from ~200 jumps of sd 0.2: standard error ~0.015, so 0.1 is about 7 SE.
    assert float(raw[1].detach()) == pytest.approx(1.0, abs=0.1)


def test_works_as_pyro_site_with_sdepath_guide():
    grid = torch.linspace(0.0, 1.0, 11)
    sde = FunctionalSDE(lambda t, z: -z, 0.3, 1)

    def model():
        with pyro.plate("series", 3, dim=-1):
            z0 = pyro.sample("z0", dist.Normal(torch.zeros(1), 1.0).to_event(1))
            return pyro.sample(
                "z",
                JumpDiffusionPath(
                    sde, z0, grid, jump_rate=0.5, jump_size=(torch.zeros(1), torch.ones(1))
                ),
            )

    def guide():
        loc = pyro.param("loc", torch.zeros(1))
        with pyro.plate("series", 3, dim=-1):
            z0 = pyro.sample("z0", dist.Normal(loc, 1.0).to_event(1))
            return pyro.sample("z", SDEPath(sde, z0, grid))

    tr = pyro.poutine.trace(model).get_trace()
    assert tr.nodes["z"]["value"].shape == (3, 11, 1)
    loss = pyro.infer.Trace_ELBO().differentiable_loss(model, guide)
    assert torch.isfinite(loss)
    loss.backward()
    assert pyro.param("loc").grad is not None


def test_bad_inputs():
    sde = FunctionalSDE(lambda t, z: -z, 0.3, 1)
    grid = torch.linspace(0.0, 1.0, 5)
    size = (torch.zeros(1), torch.ones(1))
    with pytest.raises(
        BayesdynValueError, match=r"jump_rate must be finite and positive; got \[-1.0\]"
    ):
        JumpDiffusionPath(sde, torch.zeros(1), grid, jump_rate=-1.0, jump_size=size)
    with pytest.raises(BayesdynTypeError, match="jump_rate must be a positive number"):
        JumpDiffusionPath(sde, torch.zeros(1), grid, jump_rate="1", jump_size=size)
    with pytest.raises(BayesdynValueError, match="jump_size scale must be finite and positive"):
        JumpDiffusionPath(sde, torch.zeros(1), grid, jump_rate=1.0, jump_size=(0.0, -1.0))
    with pytest.raises(BayesdynTypeError, match="jump_size must be a callable"):
        JumpDiffusionPath(sde, torch.zeros(1), grid, jump_rate=1.0, jump_size=1.0)
    with pytest.raises(BayesdynValueError, match="z0 has 2 latent dims"):
        JumpDiffusionPath(sde, torch.zeros(2), grid, jump_rate=1.0, jump_size=size)
    with pytest.raises(
        BayesdynValueError, match=r"one grid \[U\] shared by the batch; got shape \(2, 5\)"
    ):
        JumpDiffusionPath(sde, torch.zeros(2, 1), grid.expand(2, 5), jump_rate=1.0, jump_size=size)
    bad_rate = JumpDiffusionPath(
        sde, torch.zeros(1), grid, jump_rate=lambda t, z: -torch.ones_like(z), jump_size=size
    )
    with pytest.raises(BayesdynValueError, match=r"jump_rate\(t, z\) must be finite and positive"):
        bad_rate.sample()
    wrong_shape = JumpDiffusionPath(
        sde, torch.zeros(1), grid, jump_rate=lambda t, z: torch.ones(3), jump_size=size
    )
    with pytest.raises(BayesdynValueError, match=r"must return shape \[..., 1\]"):
        wrong_shape.log_prob(torch.zeros(5, 1))
