"""Streaming filter states against the Kalman filter; cost per update; errors.

Monte Carlo tolerances follow tests/inference/test_particle.py: ``R`` copies of one series are
``R`` independent filters; their spread gives the standard error of their mean; two-sided
t-tests at ``TEST_FAILURE_RATE`` with a Bonferroni correction over the comparisons of a test.
"""

import math

import numpy as np
import pyro.distributions as dist
import pytest
import torch

import bayesdyn
from bayesdyn.data import IrregularTimeSeries
from bayesdyn.inference import (
    FilterState,
    LinearGaussianSDE,
    ParticleFilter,
    SDEStateSpace,
    Trajectories,
    kalman_filter,
)
from bayesdyn.models import FunctionalSDE
from tests.inference.test_particle import simulate, t_threshold

DT = 0.05
R = 24
THETA, SIGMA, OBS = 1.0, 0.5, 0.2


def ou_functional_space(counter=None):
    """OU prior as a user FunctionalSDE with a Gaussian decoder (linear-Gaussian overall)."""

    def drift(t, z):
        if counter is not None:
            counter[0] += 1
        return THETA * (0.0 - z)

    sde = FunctionalSDE(drift, SIGMA, state_dim=1)
    init = dist.Normal(torch.zeros(1), math.sqrt(SIGMA**2 / (2 * THETA))).to_event(1)
    return SDEStateSpace(sde, init, lambda z: dist.Normal(z, OBS), dt=DT, t0=0.0)


def one_series(n=12, seed=0):
    rng = np.random.default_rng(seed)
    t = np.sort(rng.uniform(0.05, 4.0, n))
    lg = LinearGaussianSDE.ou(THETA, 0.0, SIGMA, OBS, t0=0.0)
    return lg, simulate(lg, [t], seed=seed)


def test_streaming_updates_match_the_kalman_filter():
    lg, base = one_series()
    t, y = torch.tensor(base.times[0]), torch.tensor(base.values[0])
    state = FilterState.from_model(ou_functional_space(), num_series=R, num_particles=1000)
    chunks = [(0, 5), (5, 6), (6, 12)]  # one, several and a single row per update
    means, variances = [], []
    torch.manual_seed(0)
    for a, b in chunks:
        new = state.update(t[a:b], y[a:b].expand(R, -1, -1))
        assert state.time is None or state.time <= float(t[a])  # the old state is unchanged
        state = new
        assert state.time == pytest.approx(float(t[b - 1]))
        means.append(state.last_result.means)
        variances.append(state.last_result.variances)
    means, variances = torch.cat(means, 1)[..., 0], torch.cat(variances, 1)[..., 0]
    data = IrregularTimeSeries([base.times[0]] * R, [base.values[0]] * R)
    kf = kalman_filter(lg, data, discretization="euler", dt=DT)
    thr = t_threshold(2 * len(t) + 1)
    for est, truth in ((means, kf.means[0, :, 0]), (variances, kf.variances[0, :, 0])):
        tt = (est.mean(0) - truth) / (est.std(0) / math.sqrt(R))
        assert float(tt.abs().max()) < thr, tt
    lz = state.log_evidence
    s2 = lz.var()
    t_lz = (lz.mean() + s2 / 2 - kf.log_likelihood[0]) / (s2.sqrt() / math.sqrt(R))
    assert abs(float(t_lz)) < thr, float(t_lz)


def test_predict_matches_the_kalman_forecast():
    lg, base = one_series(n=8, seed=1)
    q = np.array([4.2, 5.0, 7.5])
    state = FilterState.from_model(ou_functional_space(), num_series=R, num_particles=1000)
    state = state.update(torch.tensor(base.times[0]), torch.tensor(base.values[0]).expand(R, -1, -1), seed=0)  # fmt: skip
    traj = state.predict(torch.tensor(q), num_samples=2000, seed=1)
    assert isinstance(traj, Trajectories)
    assert traj.latent.shape == (2000, R, 3, 1) and traj.observations.shape == (2000, R, 3, 1)
    assert torch.allclose(traj.last_observed, torch.full((R,), float(base.times[0][-1])))
    # Kalman forecast: append all-missing rows at the query times; their filtering moments are
    # the predictive moments on the same Euler grid.
    t_all = np.concatenate([base.times[0], q])
    y_all = np.concatenate([base.values[0], np.zeros((3, 1))])
    m_all = np.concatenate([np.ones(len(base.times[0]), bool), np.zeros(3, bool)])
    kf = kalman_filter(lg, IrregularTimeSeries([t_all], [y_all], [m_all], require_observed_channels=False), discretization="euler", dt=DT)  # fmt: skip
    m, P = kf.means[0, -3:, 0], kf.variances[0, -3:, 0]
    thr = t_threshold(9)
    mean_r = traj.latent.mean(0)[..., 0]  # [R, 3]
    var_r = traj.latent.var(0)[..., 0]
    obs_var_r = traj.observations.var(0)[..., 0]
    for est, truth in ((mean_r, m), (var_r, P), (obs_var_r, P + OBS**2)):
        tt = (est.mean(0) - truth) / (est.std(0) / math.sqrt(R))
        assert float(tt.abs().max()) < thr, (tt, est.mean(0), truth)
    # bands widen with the horizon
    assert bool((traj.std()[..., 0].mean(0).diff() > 0).all())


def test_update_cost_does_not_grow_with_history():
    calls = [0]
    state = FilterState.from_model(ou_functional_space(calls), num_series=3, num_particles=50)
    sizes, per_update = [], []
    for i in range(30):
        before = calls[0]
        t = torch.tensor([0.2 * (i + 1)])
        state = state.update(t, torch.zeros(3, 1, 1) + 0.1 * i)
        per_update.append(calls[0] - before)
        sizes.append(sum(x.numel() for x in state.carry if isinstance(x, torch.Tensor)))
    # every update makes the same number of drift evaluations (4 Euler steps of 0.05) ...
    assert per_update == [4] * 30, per_update
    # ... and the state keeps the same size however much it has seen
    assert len(set(sizes)) == 1
    assert state.last_result.means.shape == (3, 1, 1)


def test_update_before_the_state_time_is_rejected():
    state = FilterState.from_model(ou_functional_space(), num_series=2, num_particles=20)
    state = state.update(torch.tensor([[0.5, 1.0], [0.7, 1.0]]), torch.zeros(2, 2, 1))
    with pytest.raises(
        ValueError, match=r"series 1: times\[0\]=0.9 comes before the filter state's time 1"
    ):
        state.update(torch.tensor([[1.2], [0.9]]), torch.zeros(2, 1, 1))  # fmt: skip
    # equal times are fine (another measurement of the same state)
    assert state.update(torch.tensor([1.0]), torch.ones(2, 1, 1)).time == 1.0


def test_ragged_updates_and_masks():
    state = FilterState.from_model(ou_functional_space(), num_series=2, num_particles=50)
    times = torch.tensor([[0.5, 0.9, 0.9], [0.4, 0.6, 1.1]])  # series 0 padded at the end
    mask = torch.tensor([[True, True, False], [True, False, True]])
    state = state.update(times, torch.randn(2, 3, 1), mask)
    assert state.last_observed.tolist() == [0.9, 1.1]
    assert state.time == pytest.approx(1.1)
    res = state.last_result
    assert res.means.shape == (2, 3, 1)
    assert torch.equal(res.means[0, 2], res.means[0, 1])  # padding repeats the last row


def test_latent_sde_streams_with_the_causal_encoder():
    torch.manual_seed(0)
    model = bayesdyn.LatentSDE(
        2, latent_dim=2, hidden_dim=8, context_dim=4, dt=0.1, encoder="filter"
    )
    state = FilterState.from_model(model, num_series=2, num_particles=64, proposal="guide")
    for i in range(3):
        t = torch.tensor([[0.3 * i + 0.1, 0.3 * i + 0.2]]).expand(2, -1)
        state = state.update(t, torch.randn(2, 2, 2), seed=i)
        h, last = state.carry.aux
        assert h.shape == (2, 8) and torch.allclose(last, t[:, -1].double())
    assert bool(torch.isfinite(state.log_evidence).all())
    traj = state.predict([1.0, 1.5], num_samples=10)
    assert traj.observations.shape == (10, 2, 2, 2)


def test_smoother_guide_cannot_stream():
    torch.manual_seed(0)
    model = bayesdyn.LatentSDE(1, latent_dim=1, hidden_dim=8, context_dim=4, dt=0.1)
    state = FilterState.from_model(model, num_series=1, num_particles=16, proposal="guide")
    state = state.update(torch.tensor([0.1, 0.2]), torch.zeros(2, 1))
    with pytest.raises(
        ValueError, match="proposal='guide' can continue a filter state only with a causal encoder"
    ):
        state.update(torch.tensor([0.3]), torch.zeros(1, 1))  # fmt: skip
    # the bootstrap proposal streams with any model
    pf = ParticleFilter(model, 16)
    st = pf.init_state(1).update(torch.tensor([0.1]), torch.zeros(1, 1))
    assert st.update(torch.tensor([0.3]), torch.zeros(1, 1)).time == pytest.approx(0.3)


def test_bad_streaming_calls_are_named():
    space = ou_functional_space()
    fresh = FilterState.from_model(space, num_series=2, num_particles=10)
    with pytest.raises(ValueError, match=r"values must have shape \[B=2, T, D\]; got \[3, 1, 1\]"):
        fresh.update(torch.tensor([0.1]), torch.zeros(3, 1, 1))
    with pytest.raises(ValueError, match=r"times must have shape \[T=2\] or \[B=2, T=2\]"):
        fresh.update(torch.tensor([0.1, 0.2, 0.3]), torch.zeros(2, 2, 1))
    with pytest.raises(TypeError, match="mask must be boolean; got dtype torch.int64"):
        fresh.update(
            torch.tensor([0.1]), torch.zeros(2, 1, 1), torch.ones(2, 1, 1, dtype=torch.long)
        )
    with pytest.raises(ValueError, match="series 0: times must be strictly increasing"):
        fresh.update(torch.tensor([0.2, 0.1]), torch.zeros(2, 2, 1))
    with pytest.raises(ValueError, match="data has 1 series, the filter state has 2"):
        fresh.update(IrregularTimeSeries([[0.1]], [[0.0]]))
    with pytest.raises(ValueError, match="num_series must be a positive integer; got 0"):
        FilterState.from_model(space, num_series=0)
    with pytest.raises(ValueError, match="num_samples must be a positive integer; got 0"):
        fresh.predict([1.0], num_samples=0)
    state = fresh.update(torch.tensor([0.5]), torch.zeros(2, 1, 1))
    with pytest.raises(ValueError, match="predict times must not come before the state's time 0.5"):
        state.predict([0.4, 1.0])
    no_t0 = SDEStateSpace(space.sde, space.initial(1), space.likelihood, dt=DT)
    with pytest.raises(ValueError, match="this state has no time yet: update it with data first"):
        FilterState.from_model(no_t0, num_series=1).predict([1.0])
