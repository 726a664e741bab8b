"""The particle filter against the Kalman filter, its gradients against finite differences.

How the Monte Carlo tolerances are derived (fixed seeds throughout):

- The filter is vectorised over series, so a batch holding ``R`` copies of the same series runs
  ``R`` independent particle filters in one call. Their spread measures the Monte Carlo standard
  deviation ``s`` of every estimate (filtering mean, variance, quantile, log-evidence) directly,
  resampling effects included; the mean over copies has standard error ``s / sqrt(R)``.
- Each comparison is a two-sided t-test with ``R - 1`` degrees of freedom at level
  ``TEST_FAILURE_RATE / K`` (Bonferroni over the ``K`` comparisons of a test), so a correct
  filter fails a test with probability below ``TEST_FAILURE_RATE``.
- Particle estimates of filtering moments carry an ``O(1/N)`` bias, against the ``O(1/sqrt(N R))``
  standard error of the mean over copies: with ``N = 1000`` and ``R = 24`` it is below a fifth of
  a standard error, inside the t-threshold's margin.
- ``Z-hat`` (not ``log Z-hat``) is unbiased. For a log-normal ``Z-hat`` with log-variance ``s^2``,
  ``E[log Z-hat] = log Z - s^2 / 2``, so ``mean(log Z-hat) + s^2 / 2`` is compared with the Kalman
  log-likelihood.
- ESS: at the first observation the particles are independent draws from the prior predictive,
  and the delta method gives the variance of the weighted mean as ``P / ESS`` (Kong 1992; ``P``
  the filtering variance). The spread over copies must agree with it.

The Kalman filter runs with ``discretization="euler"`` on the same grid as the particles, so it
is the exact answer for the discretised model (no discretisation bias enters the comparison).
"""

import math

import numpy as np
import pyro.distributions as dist
import pytest
import torch
from scipy import stats

import bayesdyn
from bayesdyn.data import IrregularTimeSeries
from bayesdyn.inference import (
    LinearGaussianSDE,
    ParticleFilter,
    SDEStateSpace,
    kalman_filter,
    systematic_resample,
)
from bayesdyn.models import AbstractSDE, FunctionalSDE
from tests.conftest import TEST_FAILURE_RATE

DT = 0.05
R = 24  # independent filters per base series


def t_threshold(num_tests: int, dof: int = R - 1) -> float:
    return float(stats.t.ppf(1 - TEST_FAILURE_RATE / (2 * num_tests), dof))


def replicated(series: IrregularTimeSeries, copies: int = R) -> IrregularTimeSeries:
    """Each series repeated ``copies`` times (series-major: base b is rows b*R .. b*R+R-1)."""
    t, v, m = [], [], []
    for b in range(len(series)):
        t += [series.times[b]] * copies
        v += [series.values[b]] * copies
        m += [series.mask[b]] * copies
    return IrregularTimeSeries(t, v, m)


def simulate(lg: LinearGaussianSDE, times, masks=None, seed=0) -> IrregularTimeSeries:
    """Exact draws of the model at the given times (so the data are typical for the model)."""
    g = torch.Generator().manual_seed(seed)
    values = []
    for t in times:
        z = lg.init_mean + torch.linalg.cholesky(lg.init_cov) @ torch.randn(
            lg.state_dim, generator=g
        )
        prev, ys = lg.t0, []
        for ti in t:
            F, u, Q = lg.transition(torch.tensor(ti - prev))
            z = F @ z + u + torch.linalg.cholesky(Q) @ torch.randn(lg.state_dim, generator=g)
            eps = torch.randn(lg.obs_dim, generator=g)
            ys.append((lg.obs_matrix @ z + lg.obs_offset + lg.obs_scale * eps).numpy())
            prev = ti
        values.append(np.array(ys))
    return IrregularTimeSeries(times, values, masks)


def ou_data(num_series=2, n=12, r=0.2, seed=0, t1=4.0):
    rng = np.random.default_rng(seed)
    times = [np.sort(rng.uniform(0.05, t1, n)) for _ in range(num_series)]
    return simulate(LinearGaussianSDE.ou(1.0, 0.0, 0.5, r, t0=0.0), times, seed=seed)


def masked_2d_data(seed=1):
    rng = np.random.default_rng(seed)
    times, masks = [], []
    for n in (9, 5):
        times.append(np.sort(rng.uniform(0.05, 3.0, n)))
        m = rng.uniform(size=(n, 2)) > 0.3
        m[:, 0] |= ~m.any(-1)
        masks.append(m)
    return simulate(model_2d(), times, masks, seed=seed)


def model_2d(t0=0.0):
    return LinearGaussianSDE(
        drift_matrix=torch.tensor([[-1.0, 0.8], [-0.6, -0.5]]),
        drift_offset=torch.tensor([0.1, 0.0]),
        diffusion=torch.tensor([0.5, 0.4]),
        obs_matrix=torch.tensor([[1.0, 0.0], [0.5, 1.0]]),
        obs_offset=torch.zeros(2),
        obs_scale=torch.tensor([0.2, 0.3]),
        init_mean=torch.zeros(2),
        init_cov=torch.eye(2) * 0.3,
        t0=t0,
    )


def compare_with_kalman(res, kf, base: IrregularTimeSeries, levels, threshold=None):
    """t-statistics of the replicate means of every estimate against the Kalman filter."""
    stats_ = {}
    for b in range(len(base)):
        n = len(base.times[b])
        sl = slice(b * R, (b + 1) * R)
        m, P = kf.means[b * R, :n], kf.variances[b * R, :n]
        est = {
            "mean": (res.means[sl, :n], m),
            "var": (res.variances[sl, :n], P),
        }
        for j, q in enumerate(levels):
            est[f"q{q}"] = (res.quantiles[j, sl, :n], m + stats.norm.ppf(q) * P.sqrt())
        for name, (x, truth) in est.items():
            se = x.std(0) / math.sqrt(R)
            stats_.setdefault(name, []).append(((x.mean(0) - truth) / se).abs().max().item())
        lz = res.log_evidence[sl]
        s2 = lz.var()
        t_lz = (lz.mean() + s2 / 2 - kf.log_likelihood[b * R]) / (s2.sqrt() / math.sqrt(R))
        stats_.setdefault("log_evidence", []).append(abs(float(t_lz)))
    return {k: max(v) for k, v in stats_.items()}


@pytest.mark.parametrize("case", ["ou", "2d_masked"])
def test_bootstrap_filter_matches_kalman(case):
    if case == "ou":
        base, lg = ou_data(), LinearGaussianSDE.ou(1.0, 0.0, 0.5, 0.2, t0=0.0)
    else:
        base, lg = masked_2d_data(), model_2d()
    data = replicated(base)
    levels = (0.05, 0.5, 0.95)
    pf = ParticleFilter(lg.state_space(DT), 1000, quantiles=levels)
    res = pf.run(data, seed=0)
    kf = kalman_filter(lg, data, discretization="euler", dt=DT)
    t = compare_with_kalman(res, kf, base, levels)
    # comparisons: 5 estimates x rows x latent dims for the moments, 1 per base series for Z
    num = sum(len(x) for x in base.times) * lg.state_dim * (2 + len(levels)) + len(base)
    thr = t_threshold(num)
    assert max(t.values()) < thr, (t, thr)
    assert bool((res.ess >= 1).all() and (res.ess <= 1000 + 1e-9).all())
    # the O(1/N) bias argument needs a healthy ESS (variance bias ~ P/ESS, i.e. ~0.5 se at 50)
    assert float(res.ess.min()) > 50
    assert bool((res.num_resamples > 0).all())  # the test exercised resampling


def test_first_observation_error_matches_ess_prediction():
    base = ou_data(num_series=1, n=3, r=0.2)
    lg = LinearGaussianSDE.ou(1.0, 0.0, 0.5, 0.2, t0=0.0)
    data = replicated(base, 64)
    res = ParticleFilter(lg.state_space(DT), 200).run(data, seed=3)
    kf = kalman_filter(lg, data, discretization="euler", dt=DT)
    emp_sd = res.means[:, 0, 0].std()
    pred_sd = (kf.variances[0, 0, 0] / res.ess[:, 0].mean()).sqrt()
    # The sample sd of 64 copies has relative standard error 1/sqrt(2*63) = 0.089; 4 of them.
    assert abs(float(emp_sd / pred_sd) - 1) < 4 * 0.089, (float(emp_sd), float(pred_sd))


def test_wrong_model_is_detected():
    """Negative control: the same tolerance rejects a filter of a model with the wrong rate."""
    base = ou_data()
    data = replicated(base)
    truth = LinearGaussianSDE.ou(1.0, 0.0, 0.5, 0.2, t0=0.0)
    wrong = LinearGaussianSDE.ou(2.0, 0.0, 0.5, 0.2, t0=0.0)
    res = ParticleFilter(wrong.state_space(DT), 1000).run(data, seed=0)
    kf = kalman_filter(truth, data, discretization="euler", dt=DT)
    t = compare_with_kalman(res, kf, base, (0.05, 0.5, 0.95))
    num = sum(len(x) for x in base.times) * 5 + len(base)
    assert t["log_evidence"] > t_threshold(num) and t["var"] > t_threshold(num), t


# ---------------------------------------------------------------------------- guided proposal
class GuidedOU(AbstractSDE):
    r"""OU conditioned on its next observation (Doob h-transform with the exact OU transition):
    drift ``theta (mu - z) + sigma^2 d/dz log N(y_next; m(z, tau), v(tau) + r^2)``."""

    def __init__(self, segment, grid, theta, mu, sigma, r):
        super().__init__(1)
        B = segment.times.shape[0]
        nxt = torch.searchsorted(segment.times, grid.expand(B, -1).contiguous(), right=True)
        nxt = torch.minimum(nxt, (segment.lengths - 1).unsqueeze(-1))
        self.tau = torch.gather(segment.times, 1, nxt) - grid  # [B, U]
        self.y = torch.gather(segment.values[..., 0], 1, nxt)
        self.on = (self.tau > 0) & torch.gather(segment.mask[..., 0], 1, nxt)
        self.p = (theta, mu, sigma, r)

    def drift_and_diffusion(self, t, z):
        raise NotImplementedError  # only used on its grid, through step()

    def step(self, k, t, z):
        theta, mu, sigma, r = self.p
        tau = self.tau[:, k].unsqueeze(-1)
        e = torch.exp(-theta * tau)
        v = sigma**2 * (1 - e**2) / (2 * theta) + r**2
        score = e * (self.y[:, k].unsqueeze(-1) - mu - (z - mu) * e) / v
        f = theta * (mu - z) + torch.where(self.on[:, k].unsqueeze(-1), sigma**2 * score, 0.0)
        return f, torch.full_like(z, sigma)


def guided_ou_space(theta=1.0, mu=0.0, sigma=0.5, r=0.05):
    lg = LinearGaussianSDE.ou(theta, mu, sigma, r, t0=0.0)
    return lg, SDEStateSpace(
        lg.sde(),
        lg.initial(),
        lg.likelihood,
        dt=DT,
        t0=0.0,
        proposal=lambda seg, grid: GuidedOU(seg, grid, theta, mu, sigma, r),
    )


def test_guided_proposal_has_higher_ess_and_correct_weights():
    base = ou_data(num_series=1, n=10, seed=4)
    data = replicated(base)
    lg, space = guided_ou_space()
    kf = kalman_filter(lg, data, discretization="euler", dt=DT)
    boot = ParticleFilter(space, 500, "prior").run(data, seed=0)
    guided = ParticleFilter(space, 500, "guide", quantiles=(0.5,)).run(data, seed=0)
    # at equal particle count the guided filter keeps far more effective particles
    assert float(guided.ess.mean()) > 2 * float(boot.ess.mean()), (
        float(guided.ess.mean()),
        float(boot.ess.mean()),
    )
    # ... and its importance weights are right: it still matches the Kalman filter
    t = compare_with_kalman(guided, kf, base, (0.5,))
    assert max(t.values()) < t_threshold(len(base.times[0]) * 3 + 1), t
    # the guided log-evidence is also far less noisy
    assert float(guided.log_evidence.std()) < 0.5 * float(boot.log_evidence.std())


# ---------------------------------------------------------------------------- gradients
def ou_space_from(theta, sigma, r, guide_pull=None, init_scale=1.0):
    sde = FunctionalSDE(lambda t, z: -theta * z, lambda t, z: sigma.expand_as(z), 1)
    init = dist.Normal(torch.zeros(1), init_scale * torch.ones(1)).to_event(1)

    def lik(z):
        return dist.Normal(z, r.expand_as(z))

    proposal = None
    if guide_pull is not None:
        proposal = lambda seg, grid: FunctionalSDE(  # noqa: E731
            lambda t, z: -theta * z + guide_pull * (0.3 - z), lambda t, z: sigma.expand_as(z), 1
        )
    return SDEStateSpace(sde, init, lik, dt=0.1, t0=0.0, proposal=proposal)


@pytest.mark.parametrize("proposal", ["prior", "guide"])
def test_log_evidence_gradient_matches_finite_differences(proposal):
    """No resampling (ess_threshold=0): log Z-hat is a smooth function of the parameters under
    common random numbers (the seed), the IWAE bound; autograd must match finite differences."""
    data = IrregularTimeSeries([[0.3, 0.7, 1.0], [0.1, 0.9, 1.2]], [[0.2, -0.1, 0.4], [0.0, 0.3, -0.2]])  # fmt: skip

    def log_z(theta, sigma, r, pull):
        space = ou_space_from(theta, sigma, r, pull if proposal == "guide" else None)
        pf = ParticleFilter(space, 8, proposal, ess_threshold=0.0)
        return pf.log_evidence(data, seed=0)

    args = tuple(torch.tensor(v, requires_grad=True) for v in (0.8, 0.6, 0.3, 0.5))
    assert torch.autograd.gradcheck(log_z, args)


def test_gradient_flows_with_resampling():
    """With resampling, gradients stop at the ancestor indices (VSMC): still finite and nonzero."""
    data = IrregularTimeSeries([np.linspace(0.1, 2.0, 8)], [np.sin(np.linspace(0, 3, 8))])
    theta, sigma, r = (torch.tensor(v, requires_grad=True) for v in (0.8, 0.6, 0.1))
    pf = ParticleFilter(ou_space_from(theta, sigma, r), 16, ess_threshold=1.0)
    assert int(pf.run(data, seed=0).num_resamples.sum()) > 0
    pf.log_evidence(data, seed=0).sum().backward()
    for p in (theta, sigma, r):
        assert p.grad is not None and torch.isfinite(p.grad) and p.grad != 0


def test_vsmc_training_moves_towards_the_maximum_likelihood():
    """A few Adam steps on ParticleFilter.loss raise the exact (Kalman) likelihood."""
    rng = np.random.default_rng(5)
    times = [np.sort(rng.uniform(0.1, 3.0, 15)) for _ in range(6)]
    # simulate data from the truth with exact transitions
    values = []
    for t in times:
        x, prev, ys = rng.normal(0, math.sqrt(0.32)), 0.0, []
        for ti in t:
            a = math.exp(-(ti - prev))
            x = a * x + math.sqrt(0.32 * (1 - a * a)) * rng.normal()
            ys.append(x + 0.1 * rng.normal())
            prev = ti
        values.append(np.array(ys))
    data = IrregularTimeSeries(times, values)
    log_sigma = torch.tensor(math.log(0.2), requires_grad=True)

    def exact_ll():
        with torch.no_grad():
            s = log_sigma.exp()
            lg = LinearGaussianSDE.ou(1.0, 0.0, s, 0.1, init_var=s**2 / 2, t0=0.0)
            return float(kalman_filter(lg, data).log_likelihood.sum())

    before = exact_ll()
    opt = torch.optim.Adam([log_sigma], lr=0.15)
    for step in range(10):
        s = log_sigma.exp()
        space = ou_space_from(torch.tensor(1.0), s, torch.tensor(0.1), init_scale=s / math.sqrt(2))
        opt.zero_grad()
        ParticleFilter(space, 32).loss(data, seed=step).backward()
        opt.step()
    assert exact_ll() > before + 20, (before, exact_ll(), float(log_sigma.detach().exp()))
    assert 0.4 < float(log_sigma.detach().exp()) < 1.2


# ---------------------------------------------------------------------------- kernels
def test_systematic_resampling_copies_floor_or_ceil_of_n_w():
    g = torch.Generator().manual_seed(0)
    N, B = 50, 7
    w = torch.softmax(torch.randn(N, B, generator=g) * 2, 0)
    anc = systematic_resample(w, torch.rand(B, generator=g))
    assert anc.shape == (N, B) and anc.dtype == torch.long
    for b in range(B):
        counts = torch.bincount(anc[:, b], minlength=N).double()
        nw = N * w[:, b]
        assert bool(((counts == nw.floor()) | (counts == nw.ceil())).all())
    # u = 0 picks, for each n, the particle whose cumulative interval holds n / N
    w1 = torch.tensor([[0.1], [0.4], [0.5]])
    assert systematic_resample(w1, torch.zeros(1)).flatten().tolist() == [0, 1, 2]
    assert systematic_resample(w1, torch.full((1,), 0.9)).flatten().tolist() == [1, 2, 2]


# ---------------------------------------------------------------------------- LatentSDE
@pytest.fixture
def small_latent_sde():
    torch.manual_seed(0)
    return bayesdyn.LatentSDE(
        2, latent_dim=2, hidden_dim=8, context_dim=4, dt=0.1, encoder="filter"
    )


@pytest.mark.parametrize("encoder", ["gru", "filter"])
@pytest.mark.parametrize("proposal", ["prior", "guide"])
def test_latent_sde_shapes(proposal, encoder):
    torch.manual_seed(0)
    model = bayesdyn.LatentSDE(
        2, latent_dim=3, hidden_dim=8, context_dim=4, dt=0.1, encoder=encoder
    )
    from tests.common import ragged_batch

    batch = ragged_batch(B=3, T=6, D=2)
    res = ParticleFilter(model, 32, proposal).run(batch, seed=0)
    assert res.means.shape == (3, 6, 3) and res.variances.shape == (3, 6, 3)
    assert res.quantiles.shape == (3, 3, 6, 3) and res.obs_means.shape == (3, 6, 2)
    assert res.ess.shape == (3, 6) and res.log_evidence.shape == (3,)
    assert bool(torch.isfinite(res.log_evidence).all())
    assert bool((res.ess >= 1 - 1e-9).all() and (res.ess <= 32 + 1e-9).all())


def test_latent_sde_guide_and_bootstrap_estimate_the_same_evidence():
    """The guide's posterior SDE (encoder context, next-observation features, bridge term) is a
    valid proposal only with the right Euler density ratios: both filters estimate the same Z.

    An untrained guide's drift is an independent random network, so its importance weights
    degenerate within a few steps; the guide here is the prior drift plus random context and
    next-observation weights and a weak bridge term, a proposal that differs from the prior
    (the weights matter) but keeps a usable ESS.
    """
    torch.manual_seed(0)
    model = bayesdyn.LatentSDE(
        2, latent_dim=2, hidden_dim=8, context_dim=4, dt=0.1, encoder="filter", obs_scale_init=0.3
    )
    with torch.no_grad():
        pd, qd = model.prior_drift, model.post_drift
        qd.first.weight[:, :2] = pd.first.weight
        qd.first.bias.copy_(pd.first.bias)
        qd.rest.load_state_dict(pd.rest.state_dict())
        model.bridge_raw_beta.fill_(-3.0)  # beta = 0.05
    base = IrregularTimeSeries([[0.2, 0.5, 0.9]], [[[0.1, -0.2], [0.3, 0.0], [0.2, 0.1]]])
    data = replicated(base, 16)
    out = {}
    for proposal in ("prior", "guide"):
        res = ParticleFilter(model, 1000, proposal).run(data, seed=1)
        lz = res.log_evidence
        s2 = lz.var()
        out[proposal] = (float(lz.mean() + s2 / 2), float(s2.sqrt() / 4))  # mean, se (R=16)
        assert float(res.ess.min()) > 50
    (a, sa), (b, sb) = out["prior"], out["guide"]
    z = stats.norm.ppf(1 - TEST_FAILURE_RATE / 2)
    assert abs(a - b) < z * math.hypot(sa, sb), out


def test_latent_sde_log_evidence_is_differentiable(small_latent_sde):
    from tests.common import ragged_batch

    batch = ragged_batch(B=2, T=4, D=2)
    loss = ParticleFilter(small_latent_sde, 16, "guide").loss(batch, seed=0)
    loss.backward()
    grads = [p.grad for p in small_latent_sde.parameters() if p.grad is not None]
    assert grads and all(bool(torch.isfinite(g).all()) for g in grads)
    assert small_latent_sde.encoder.cell.weight_ih.grad.abs().sum() > 0  # the guide trains too


# ---------------------------------------------------------------------------- errors
def test_bad_arguments_are_named():
    space = LinearGaussianSDE.ou(1.0, 0.0, 0.5, 0.2).state_space(0.1)
    with pytest.raises(TypeError, match="model must be a LatentSDE or an AbstractStateSpace"):
        ParticleFilter("ou", 10)
    with pytest.raises(ValueError, match="num_particles must be >= 1; got 0"):
        ParticleFilter(space, 0)
    with pytest.raises(TypeError, match="num_particles must be an integer; got float"):
        ParticleFilter(space, 10.0)
    with pytest.raises(ValueError, match="proposal must be 'prior' or 'guide'; got 'optimal'"):
        ParticleFilter(space, 10, "optimal")
    with pytest.raises(ValueError, match="proposal='guide' needs a model with a proposal"):
        ParticleFilter(space, 10, "guide")
    with pytest.raises(ValueError, match=r"ess_threshold must lie in \[0, 1\]; got 1.5"):
        ParticleFilter(space, 10, ess_threshold=1.5)
    with pytest.raises(ValueError, match=r"quantiles must be probabilities in \[0, 1\]"):
        ParticleFilter(space, 10, quantiles=(0.5, 2.0))
    two = IrregularTimeSeries([[0.1, 0.2]], [[[0.0, 1.0], [1.0, 0.0]]])
    with pytest.raises(ValueError, match="values has 2 channels, the model expects 1"):
        ParticleFilter(space, 10).run(two)


def test_bad_state_space_is_named():
    sde = FunctionalSDE(lambda t, z: -z, 0.5, state_dim=2)
    init2 = dist.Normal(torch.zeros(2), 1.0).to_event(1)
    with pytest.raises(TypeError, match="sde must be a bayesdyn.models.AbstractSDE"):
        SDEStateSpace(lambda t, z: z, init2, lambda z: None, dt=0.1)
    with pytest.raises(ValueError, match=r"initial must have event shape \[2\].*got \[\]"):
        SDEStateSpace(sde, dist.Normal(0.0, 1.0), lambda z: None, dt=0.1)
    with pytest.raises(TypeError, match="likelihood\\(z\\) must return a Distribution"):
        SDEStateSpace(sde, init2, lambda z: z, dt=0.1)
    with pytest.raises(ValueError, match="dt must be a finite positive number; got -0.1"):
        SDEStateSpace(sde, init2, lambda z: dist.Normal(z, 1.0), dt=-0.1)


def test_result_plot_draws_bands_and_ess():
    import matplotlib.pyplot as plt

    lg = LinearGaussianSDE.ou(1.0, 0.0, 0.5, 0.2, t0=0.0)
    res = ParticleFilter(lg.state_space(0.1), 50).run(ou_data(num_series=3, n=6), seed=0)
    fig = res.plot()
    assert len(fig.axes) == 6
    assert len(fig.axes[0].collections) == 1 and len(fig.axes[1].lines) == 2
    plt.close(fig)
    with pytest.raises(ValueError, match="series index 5 out of range for 3 series"):
        res.plot(series=[5])


def test_summaries_do_not_depend_on_the_record_block(monkeypatch):
    """Summaries are buffered and computed per block: blocks of one step give the same numbers.

    Masked 2-D data with ragged series exercise the scatter of buffered steps to rows.
    """
    import bayesdyn.inference.particle as particle

    data, pf = masked_2d_data(), ParticleFilter(model_2d().state_space(0.1), 40)
    ref = pf.run(data, seed=3)
    monkeypatch.setattr(particle, "_RECORD_BLOCK", 1)
    small = pf.run(data, seed=3)
    for name in ("means", "variances", "quantiles", "obs_means", "ess", "log_evidence_trace"):
        torch.testing.assert_close(getattr(small, name), getattr(ref, name), rtol=0, atol=0)
    assert torch.equal(small.log_evidence, ref.log_evidence)


def test_progress_bar_over_observation_times(capsys):
    """``progress=True`` draws a bar over the observation times; the default (stderr is not a
    terminal under pytest) draws none; the bar does not change the draws."""
    data = ou_data(num_series=2, n=7)
    pf = ParticleFilter(LinearGaussianSDE.ou(1.0, 0.0, 0.5, 0.2, t0=0.0).state_space(0.1), 30)
    quiet = pf.run(data, seed=1)
    assert capsys.readouterr().err == ""
    loud = pf.run(data, seed=1, progress=True)
    err = capsys.readouterr().err
    steps = len(set(np.concatenate(data.times).tolist()))  # grid points with a row
    assert "particle filter" in err and f"{steps}/{steps}" in err
    assert torch.equal(quiet.means, loud.means)
    state = pf.init_state(2).update(data, seed=1, progress=True)
    assert f"{steps}/{steps}" in capsys.readouterr().err
    assert torch.equal(state.last_result.means, quiet.means)


def test_divergence_and_impossible_observations_are_named():
    from bayesdyn._validation import SolverDiverged

    init = dist.Normal(torch.zeros(1), 1.0).to_event(1)
    exploding = FunctionalSDE(lambda t, z: 50.0 * z**3, lambda t, z: torch.ones_like(z), 1)
    space = SDEStateSpace(exploding, init, lambda z: dist.Normal(z, 0.2), dt=0.5, t0=0.0)
    data = IrregularTimeSeries([np.array([5.0, 6.0])], [np.zeros((2, 1))])
    with pytest.raises(SolverDiverged, match=r"particles became non-finite before t=5;"):
        ParticleFilter(space, 20).run(data, seed=0)
    # diverging before a row with every channel masked is caught there as well
    late = IrregularTimeSeries(
        [np.array([0.5, 5.0])], [np.zeros((2, 1))], [np.array([[True], [False]])]
    )
    with pytest.raises(SolverDiverged, match=r"particles became non-finite before t=5;"):
        ParticleFilter(space, 20).run(late, seed=0)
    # an observation outside the likelihood's support for every particle of series 1
    calm = FunctionalSDE(lambda t, z: -z, lambda t, z: 0.1 * torch.ones_like(z), 1)
    box = SDEStateSpace(
        calm, init, lambda z: dist.Uniform(z - 1, z + 1, validate_args=False), dt=0.1, t0=0.0
    )
    far = IrregularTimeSeries([np.array([1.0])] * 2, [np.array([[0.0]]), np.array([[50.0]])])
    with pytest.raises(SolverDiverged, match=r"series 1: every particle has zero weight at t=1 "):
        ParticleFilter(box, 20).run(far, seed=0)


# ---------------------------------------------------------------------------- jumps
def test_jump_diffusion_one_step_matches_the_closed_form_mixture():
    """One Euler step from N(m0, v0) with "no jump or one jump" (rate lam, size N(mu_j, s_j^2))
    then y ~ N(z1, r^2): p(y) and E[z1 | y] are a two-component Gaussian mixture in closed form.
    Both proposals must match it (the guided one through the mixture density in its weights);
    the same tolerance rejects the no-jump answer (positive control of the jumps)."""
    theta, g, r, m0, v0, h = 1.0, 0.4, 0.2, 0.1, 0.2, 0.3
    lam, mu_j, s_j = 2.0, 0.8, 0.3
    ys = [0.0, 0.6, 1.2]
    a = 1 - theta * h
    p_jump = 1 - math.exp(-lam * h)
    var0 = a * a * v0 + g * g * h  # variance of z1 without a jump
    comps = [(1 - p_jump, a * m0, var0), (p_jump, a * m0 + mu_j, var0 + s_j**2)]
    log_z, post_mean, log_z_nojump = [], [], []
    for y in ys:
        dens = [w * stats.norm.pdf(y, m, math.sqrt(v + r * r)) for w, m, v in comps]
        means = [m + v / (v + r * r) * (y - m) for _, m, v in comps]
        log_z.append(math.log(sum(dens)))
        post_mean.append(sum(d * mm for d, mm in zip(dens, means, strict=True)) / sum(dens))
        log_z_nojump.append(stats.norm.logpdf(y, a * m0, math.sqrt(var0 + r * r)))
    data = replicated(IrregularTimeSeries([[h]] * 3, [[y] for y in ys]))
    sde = FunctionalSDE(lambda t, z: -theta * z, g, 1)
    space = SDEStateSpace(
        sde,
        dist.Normal(torch.tensor([m0]), math.sqrt(v0)).to_event(1),
        lambda z: dist.Normal(z, r),
        dt=h,
        t0=0.0,
        proposal=lambda seg, grid: FunctionalSDE(  # a pull towards the observation
            lambda t, z: -theta * z + 2.0 * (seg.values[:, 0] - z), g, 1
        ),
        jump_rate=lam,
        jump_size=(torch.tensor([mu_j]), torch.tensor([s_j])),
    )
    thr = t_threshold(2 * 2 * 3 + 3)
    for proposal in ("prior", "guide"):
        res = ParticleFilter(space, 2000, proposal).run(data, seed=0)
        for b in range(3):
            sl = slice(b * R, (b + 1) * R)
            lz, mean = res.log_evidence[sl], res.means[sl, 0, 0]
            s2 = lz.var()
            se_lz = s2.sqrt() / math.sqrt(R)
            assert abs(float((lz.mean() + s2 / 2 - log_z[b]) / se_lz)) < thr, (proposal, b)
            t_mean = (mean.mean() - post_mean[b]) / (mean.std() / math.sqrt(R))
            assert abs(float(t_mean)) < thr, (proposal, b, float(t_mean))
            if proposal == "prior" and b == 2:  # y = 1.2 is likely only after a jump
                assert abs(float((lz.mean() + s2 / 2 - log_z_nojump[b]) / se_lz)) > thr
    with pytest.raises(ValueError, match="jump_rate and jump_size must be given together"):
        SDEStateSpace(sde, space.initial(1), space.likelihood, dt=h, jump_rate=1.0)
