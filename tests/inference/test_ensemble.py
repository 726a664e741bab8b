"""Deep ensembles: vectorised training equals sequential fits, mixture predictive, diagnostics.

Numerical tolerances. Vectorised and sequential training run the same float64 arithmetic in a
different order (batched vs plain matmuls, the autograd loop vs the fused Euler kernel), so
parameters agree to rounding: ~1e-16 relative per operation, a few hundred operations per step,
a handful of Adam steps. We allow 1e-9; one Adam step moves a parameter by about lr = 1e-2,
so any mixing of members (or a wrong gradient) is 7 orders of magnitude above it, and the
negative controls below check that members do differ by far more than the tolerance.
"""

import numpy as np
import pytest
import torch
from scipy import optimize, stats

import bayesdyn
from bayesdyn.inference import (
    Disagreement,
    Ensemble,
    Trajectories,
    ensemble_disagreement,
    fit_ensemble,
)
from bayesdyn.inference.elbo import PathELBO
from bayesdyn.inference.ensemble import (
    _bootstrap_weights,
    _init_member,
    _neg_elbo,
    elbo_weights,
)
from bayesdyn.models import DiagonalDiffusion, LatentSDE, LatentSDEConfig
from bayesdyn.models.stacked import MemberStack, StackableGRU, make_stackable
from tests.common import lattice_ou

TOL = 1e-9


@pytest.fixture(scope="module")
def tiny():
    series, _ = lattice_ou(num_series=6, num_obs=8, seed=3)
    cfg = LatentSDEConfig(obs_dim=1, latent_dim=2, hidden_dim=8, context_dim=4, dt=0.2)
    return series, cfg


def max_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


# ------------------------------------------------------------------ vectorised == sequential
def test_vectorised_training_equals_sequential_fits(tiny):
    series, cfg = tiny
    kw = dict(num_steps=3, seed=5, batch_size=4, clip_norm=1.0, kl_anneal_steps=2, lr=1e-2)
    ens = fit_ensemble(cfg, series, 3, common_noise=True, **kw)
    assert ens.fit_result.groups == [[0, 1, 2]]
    assert ens.fit_result.loss.shape == (3, 3)
    fitted = []
    for k in range(3):
        model = _init_member(cfg, 5, k)
        bayesdyn.fit(model, series, progress=False, **kw)  # the ordinary single-model loop
        fitted.append(model.state_dict())
        assert max_diff(ens.member(k).state_dict(), model.state_dict()) < TOL
    # negative controls: members are not interchangeable, and training moved them
    assert max_diff(fitted[0], fitted[1]) > 1e3 * TOL
    assert max_diff(ens.member(0).state_dict(), _init_member(cfg, 5, 0).state_dict()) > 1e-3


@pytest.mark.parametrize("method", ["bootstrap", "anchored"])
def test_vectorised_equals_sequential_backend(tiny, method):
    series, cfg = tiny
    kw = dict(num_steps=3, seed=1, method=method, common_noise=True, prior_scale=0.5)
    vec = fit_ensemble(cfg, series, 3, **kw)
    seq = fit_ensemble(cfg, series, 3, backend="sequential", **kw)
    assert seq.fit_result.groups == [[0], [1], [2]]
    assert max_diff(vec.state, seq.state) < TOL
    assert torch.allclose(vec.fit_result.loss, seq.fit_result.loss, atol=TOL, rtol=0)


def test_one_model_call_per_step_for_all_members(tiny, monkeypatch):
    """Nothing in a step loops over members: the guide runs once per step, whatever E is."""
    series, cfg = tiny
    calls = []
    original = LatentSDE.guide

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LatentSDE, "guide", counting)
    fit_ensemble(cfg, series, 4, num_steps=2)
    assert len(calls) == 2


def test_independent_noise_differs_from_common_noise(tiny):
    series, cfg = tiny
    common = fit_ensemble(cfg, series, 2, num_steps=3, common_noise=True, seed=2)
    indep = fit_ensemble(cfg, series, 2, num_steps=3, common_noise=False, seed=2)
    lone = _init_member(cfg, 2, 1)
    bayesdyn.fit(lone, series, num_steps=3, seed=2, progress=False)
    assert max_diff(common.member(1).state_dict(), lone.state_dict()) < TOL
    assert max_diff(indep.member(1).state_dict(), lone.state_dict()) > 1e3 * TOL


# ------------------------------------------------------------------ methods
def test_bootstrap_counts_are_multinomial_resamples():
    B = 10
    w = np.stack([_bootstrap_weights(0, k, B) for k in range(2000)])
    assert (w.sum(1) == B).all() and (w >= 0).all() and (w == np.round(w)).all()
    # each count ~ Binomial(B, 1/B): mean 1, variance 1 - 1/B; 2000 x 10 draws give the mean
    # to +-4 standard errors of sqrt(0.9 / 20000) = 0.0067
    assert abs(w.mean() - 1.0) < 4 * np.sqrt(0.9 / w.size)
    assert abs(w.var() - 0.9) < 0.05  # sd of the sample variance ~ 0.012 here
    assert not np.array_equal(w[0], w[1])


def test_series_weights_scale_the_elbo(tiny):
    series, cfg = tiny
    batch = series.to_batch()
    model = _init_member(cfg, 0, 0)
    elbo = PathELBO(max_plate_nesting=2)
    B = batch.times.shape[0]
    values = []
    for w in (None, torch.ones(B), torch.full((B,), 2.0)):
        torch.manual_seed(0)
        with torch.no_grad():
            values.append(float(_neg_elbo(model, batch, w, 1.0, elbo)))
    assert values[1] == pytest.approx(values[0], rel=1e-12)
    assert values[2] == pytest.approx(2 * values[0], rel=1e-12)
    # zero weight on all but series 0 equals the ELBO of series 0 alone... in expectation only
    # (the noise draws differ in shape), so check just that the weights change the value:
    torch.manual_seed(0)
    w0 = torch.zeros(B)
    w0[0] = 1.0
    with torch.no_grad():
        assert abs(float(_neg_elbo(model, batch, w0, 1.0, elbo)) - values[0]) > 1e-3


def test_anchored_prior_scale_controls_the_pull_to_the_anchor(tiny):
    series, cfg = tiny
    kw = dict(num_steps=10, seed=0, common_noise=True, lr=5e-2)
    free = fit_ensemble(cfg, series, 2, method="init", **kw)
    loose = fit_ensemble(cfg, series, 2, method="anchored", prior_scale=1e8, **kw)
    tight = fit_ensemble(cfg, series, 2, method="anchored", prior_scale=1e-3, **kw)
    # a prior of scale 1e8 adds ~1e-16 relative to the loss: the same fit
    assert max_diff(free.state, loose.state) < 1e-7
    start = _init_member(cfg, 0, 0).state_dict()

    def rms_move(ens):
        sd = ens.member(0).state_dict()
        sq = sum(float((sd[k] - start[k]).square().sum()) for k in sd)
        return (sq / sum(v.numel() for v in sd.values())) ** 0.5

    # Free training drifts by ~lr per step; a tight anchor (gradient 1e6 x the deviation per
    # observation) flips the sign of every gradient, so Adam's averaged steps cancel near it.
    assert rms_move(tight) < 0.25 * rms_move(free), (rms_move(tight), rms_move(free))


# ------------------------------------------------------------------ stacked building blocks
def test_stackable_gru_and_diffusion_match_the_originals():
    torch.manual_seed(0)
    gru = torch.nn.GRU(3, 5, batch_first=True)
    plain = StackableGRU(gru)
    x = torch.randn(4, 6, 3, requires_grad=True)
    (out_a, h_a), (out_b, h_b) = gru(x), plain(x)
    assert torch.allclose(out_a, out_b, atol=1e-12) and torch.allclose(h_a, h_b, atol=1e-12)
    ga = torch.autograd.grad(out_a.square().sum(), x)[0]
    gb = torch.autograd.grad(out_b.square().sum(), x)[0]
    assert torch.allclose(ga, gb, atol=1e-12)
    diff = DiagonalDiffusion(3, 4)
    z = torch.randn(7, 3)
    stacked = make_stackable(torch.nn.Sequential(diff))[0]
    assert torch.allclose(stacked(z), diff(z), atol=1e-14)


def test_member_stack_vmap_equals_each_member(tiny):
    series, cfg = tiny
    batch = series.to_batch()
    members = [_init_member(cfg, 0, k) for k in range(3)]
    stack = MemberStack(members)
    ctx = stack.vmap(lambda m, b: m.encode(b), batch)
    assert ctx.shape[0] == 3
    for k in range(3):
        assert torch.allclose(ctx[k], members[k].encode(batch), atol=1e-12)
        assert max_diff(stack.state_dict(k), members[k].state_dict()) == 0.0


# ------------------------------------------------------------------ predictive and diagnostics
@pytest.fixture(scope="module")
def small_ensemble(tiny):
    series, cfg = tiny
    return fit_ensemble(cfg, series, 3, num_steps=2, seed=0)


def test_posterior_predictive_shapes_and_members(small_ensemble, tiny):
    series, _ = tiny
    times = torch.linspace(0.0, 5.0, 6)
    tr = small_ensemble.posterior_predictive(series, times, num_samples=5, seed=0)
    B = series.to_batch().times.shape[0]
    assert tr.observations.shape == (3, 5, B, 6, 1)
    assert tr.latent.shape == (3, 5, B, 6, 2)
    assert tr.num_samples == 5
    assert tr.quantiles([0.05, 0.95]).shape == (2, B, 6, 1)
    assert torch.allclose(tr.member_weights, torch.full((3,), 1 / 3, dtype=torch.float64))
    df = tr.to_dataframe()
    assert len(df) == B * 6
    # member e's draws come from member e: its mean matches a lone predictive of that member
    # to Monte Carlo error (400 draws; tolerance 5 standard errors of the mean)
    lone = bayesdyn.posterior_predictive(small_ensemble.member(1), series, times, 400, seed=1)
    mix = small_ensemble.posterior_predictive(series, times, num_samples=400, seed=2)
    se = lone.observations.std(0) / 20 * np.sqrt(2)
    assert bool(((mix.observations[1].mean(0) - lone.observations.mean(0)).abs() < 5 * se).all())


def test_weighted_quantiles_against_mixture_cdf():
    torch.manual_seed(0)
    S = 4000
    obs = torch.stack([torch.randn(S, 1, 1, 1), 3.0 + torch.randn(S, 1, 1, 1)])
    w = torch.tensor([0.8, 0.2], dtype=torch.float64)
    tr = Trajectories(torch.zeros(1), obs.clone(), obs, torch.zeros(1), member_weights=w)
    for q in (0.1, 0.5, 0.9):
        got = float(tr.quantiles([q])[0, 0, 0, 0])
        truth = optimize.brentq(
            lambda x, q=q: 0.8 * stats.norm.cdf(x) + 0.2 * stats.norm.cdf(x - 3.0) - q, -10, 10
        )
        # quantile of 8000 weighted draws: sd ~ sqrt(q(1-q)/n_eff)/density < 0.05 here
        assert abs(got - truth) < 0.1, (q, got, truth)
    assert float(tr.mean()) == pytest.approx(0.8 * 0.0 + 0.2 * 3.0, abs=0.05)
    onehot = Trajectories(torch.zeros(1), obs, obs, torch.zeros(1), member_weights=w * 0 + 1e-300)
    onehot.member_weights = torch.tensor([0.0, 1.0], dtype=torch.float64)
    got = onehot.quantiles([0.3])[0, 0, 0, 0]
    want = np.quantile(obs[1, :, 0, 0, 0].numpy(), 0.3, method="inverted_cdf")
    assert float(got) == pytest.approx(float(want), abs=1e-12)


def test_disagreement_is_the_law_of_total_variance():
    torch.manual_seed(0)
    obs = torch.randn(4, 50, 2, 3, 1) + torch.arange(4.0).view(4, 1, 1, 1, 1)
    tr = Trajectories(torch.arange(3.0), obs, obs, torch.tensor([1.0, 1.0]))
    d = ensemble_disagreement(tr)
    assert isinstance(d, Disagreement) and d.between.shape == (2, 3, 1)
    pooled = obs.reshape(-1, 2, 3, 1).var(0, unbiased=False)
    assert torch.allclose(d.total, pooled, atol=1e-12)
    # between = variance of the member means; within = mean of the member variances
    assert torch.allclose(d.between, obs.mean(1).var(0, unbiased=False), atol=1e-12)
    assert torch.allclose(d.within, obs.var(1, unbiased=False).mean(0), atol=1e-12)
    assert bool((d.share > 0.5).all())  # members centred at 0, 1, 2, 3 with unit noise
    # negative control: identical members do not disagree
    same = obs[:1].expand(4, -1, -1, -1, -1)
    d0 = ensemble_disagreement(Trajectories(torch.arange(3.0), same, same, torch.ones(2)))
    assert torch.allclose(d0.between, torch.zeros_like(d0.between), atol=1e-12)
    df = d.to_dataframe()
    assert list(df.columns) == ["series", "time", "channel", "region", "between", "within", "share"]
    assert set(df.region) == {"interpolation", "forecast"}


def test_elbo_weights_and_validation(tiny):
    series, cfg = tiny
    assert torch.allclose(
        elbo_weights(torch.tensor([0.0, np.log(3.0)])),
        torch.tensor([0.25, 0.75], dtype=torch.float64),
    )
    ens = fit_ensemble(
        cfg, series, 2, num_steps=1, weights="elbo", val_data=series, val_particles=2
    )
    assert ens.fit_result.val_elbo.shape == (2,)
    assert torch.allclose(ens.weights, elbo_weights(ens.fit_result.val_elbo))
    w = ens.set_weights("elbo", series, num_particles=2)  # vectorised validation ELBO
    assert w.shape == (2,) and float(w.sum()) == pytest.approx(1.0) and bool((w >= 0).all())
    # pseudo-BMA weights are near one-hot when total ELBOs differ by many nats, as here; the
    # fit-time estimate (other particles) must pick the same member
    assert int(w.argmax()) == int(ens.fit_result.val_elbo.argmax())
    assert torch.equal(ens.set_weights("uniform"), torch.full((2,), 0.5, dtype=torch.float64))
    with pytest.raises(ValueError, match="weights='elbo' needs val_data"):
        ens.set_weights("elbo")


def test_save_and_load_round_trip(small_ensemble, tmp_path):
    path = tmp_path / "ens.pt"
    small_ensemble.save(path)
    back = Ensemble.load(path)
    assert back.num_members == 3
    assert max_diff(back.state, small_ensemble.state) == 0.0
    assert torch.equal(back.weights, small_ensemble.weights)


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_members=0), "num_members must be a positive integer; got 0"),
        (dict(method="dropout"), "method must be one of .*; got 'dropout'"),
        (dict(backend="dask"), "backend must be one of .*; got 'dask'"),
        (dict(weights="stacking"), "weights must be 'uniform' or 'elbo'; got 'stacking'"),
        (dict(weights="elbo"), "weights='elbo' needs val_data"),
        (dict(prior_scale=-1.0), "prior_scale must be a finite positive number; got -1.0"),
        (dict(max_retries=-1), "max_retries must be a non-negative integer; got -1"),
        (dict(batch_size=0), "batch_size must be a positive integer; got 0"),
        (dict(val_particles=0), "val_particles must be a positive integer; got 0"),
        (dict(num_groups=2), "num_groups and ray_address apply to backend='ray' only"),
    ],
)
def test_fit_ensemble_errors(tiny, kwargs, match):
    series, cfg = tiny
    with pytest.raises(ValueError, match=match):
        fit_ensemble(cfg, series, **{"num_members": 2, "num_steps": 1, **kwargs})


def test_type_and_shape_errors(tiny, small_ensemble):
    series, cfg = tiny
    with pytest.raises(TypeError, match="model must be a LatentSDEConfig or LatentSDE; got int"):
        fit_ensemble(3, series)
    with pytest.raises(ValueError, match="values has 1 channels, the model expects 2"):
        fit_ensemble(LatentSDEConfig(obs_dim=2), series, num_steps=1)
    with pytest.raises(ValueError, match=r"member index must lie in \[0, 3\); got 3"):
        small_ensemble.member(3)
    with pytest.raises(ValueError, match=r"weights must have shape \[E\]=\[3\]; got \(2,\)"):
        small_ensemble.set_weights(torch.ones(2))
    with pytest.raises(ValueError, match="weights must be finite, non-negative"):
        small_ensemble.set_weights(torch.tensor([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match=r"traj must be an ensemble predictive .* got shape"):
        ensemble_disagreement(
            Trajectories(torch.zeros(1), *(torch.zeros(2, 1, 1, 1),) * 2, torch.zeros(1))
        )
    with pytest.raises(ValueError, match="only single-layer"):
        StackableGRU(torch.nn.GRU(2, 3, num_layers=2, batch_first=True))
    with pytest.raises(ValueError, match="members must share parameter shapes; member 1"):
        MemberStack([LatentSDE(1, hidden_dim=4), LatentSDE(1, hidden_dim=5)])
    with pytest.raises(ValueError, match="members must hold at least one model"):
        MemberStack([])


# ------------------------------------------------------------------ calibration
def test_ensemble_covers_closer_to_nominal_than_a_single_member():
    """Few series: members under-cover; the bootstrap ensemble's 90% bands cover closer to 90%.

    Data: 8 training series of OU (theta=1, sigma=0.5, observation noise 0.3) on a 0.2 lattice,
    trained on t <= 4; 150 further series are conditioned on their own t <= 4 and scored on
    their held-out points in (4, 6] (about 1000 points). "A single member" is a member drawn at
    random, so its coverage is the members' average. The comparison is paired (same points)
    and its standard error is clustered by series (points of one series are correlated). The
    improvement must exceed 2 standard errors (one-sided, 2.3% false-alarm rate if the
    ensemble were no better).
    """
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)  # speed; the comparison is not float-sensitive
    try:
        series, _ = lattice_ou(num_series=8, num_obs=20, t1=6.0, spacing=0.2, seed=1, obs_noise=0.3)
        past, _ = series.split_time(4.0)
        test, _ = lattice_ou(num_series=150, num_obs=20, t1=6.0, spacing=0.2, seed=2, obs_noise=0.3)
        test_past, test_future = test.split_time(4.0)
        cfg = LatentSDEConfig(
            obs_dim=1,
            latent_dim=1,
            hidden_dim=8,
            context_dim=4,
            dt=0.2,
            stable_drift=True,
            diffusion_state_dependent=False,
            diffusion_max=2.0,
            obs_scale_init=0.2,
        )
        ens = fit_ensemble(
            cfg, past, 5, method="bootstrap", num_steps=100, lr=5e-2, lr_final=5e-3,
            kl_anneal_steps=30, seed=0,
        )  # fmt: skip
        fb = test_future.to_batch()
        keep = [i for i, s in enumerate(test_past.ids) if s in set(test_future.ids)]
        obs = ens.posterior_predictive(test_past[keep], fb.times, 100, seed=0).observations
    finally:
        torch.set_default_dtype(old)
    y, m = fb.values, fb.mask

    def inside(samples):  # [S, B, Q, D] -> 0/1 per point
        q = torch.quantile(samples, torch.tensor([0.05, 0.95], dtype=samples.dtype), dim=0)
        return ((y >= q[0]) & (y <= q[1])).float()

    hit_ens = inside(obs.flatten(0, 1))
    hit_single = torch.stack([inside(obs[e]) for e in range(obs.shape[0])]).mean(0)
    n = m.sum()
    cov_ens, cov_single = float(hit_ens[m].sum() / n), float(hit_single[m].sum() / n)
    per_series = ((hit_ens - hit_single) * m).sum((1, 2))  # paired differences by series
    n_series = m.sum((1, 2)).float()
    diff = float(per_series.sum() / n)
    se = float(((per_series - diff * n_series).square().sum()).sqrt() / n)
    assert cov_single < 0.9, cov_single  # the setting where a single fit is over-confident
    assert abs(cov_ens - 0.9) < abs(cov_single - 0.9), (cov_ens, cov_single)
    print(
        f"coverage at 90%: ensemble {cov_ens:.4f}, single member {cov_single:.4f}, "
        f"improvement {diff:.4f} (SE {se:.4f}, {int(n)} points)"
    )
    assert diff > 2 * se, (cov_ens, cov_single, diff, se)
