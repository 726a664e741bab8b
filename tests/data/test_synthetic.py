"""Synthetic generators against closed forms, with fixed seeds.

Tolerances: z-scores are bounded by 4 standard errors (two-sided false-alarm rate ~6e-5 each)
and KS tests must have p-value above 1e-3, inside the suite-wide budget of conftest.py.
"""

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
from scipy.integrate import solve_ivp

from bayesdyn._validation import BayesdynTypeError, BayesdynValueError
from bayesdyn.data import (
    IrregularTimeSeries,
    SyntheticData,
    simulate_double_ou,
    simulate_gbm,
    simulate_lorenz,
    simulate_ou,
)

Z = 4.0
KS_P = 1e-3

GENERATORS = [simulate_ou, simulate_double_ou, simulate_lorenz, simulate_gbm]


def _check_mean(x, mean, sd):
    se = sd / np.sqrt(x.size)
    assert abs(x.mean() - mean) < Z * se, (x.mean(), mean, se)


def _check_std_normal(z):
    z = np.asarray(z).ravel()
    _check_mean(z, 0.0, 1.0)
    # var of a sample variance of N(0,1) is about 2/n
    assert abs(z.var() - 1.0) < Z * np.sqrt(2.0 / z.size), z.var()
    assert scipy.stats.kstest(z, "norm").pvalue > KS_P


@pytest.mark.parametrize("gen", GENERATORS, ids=lambda f: f.__name__)
def test_common_contract(gen):
    out = gen(num_series=3, num_obs=7, seed=1)
    assert isinstance(out, SyntheticData)
    s = out.series
    assert isinstance(s, IrregularTimeSeries)
    assert s.num_series == 3 and s.lengths == [7, 7, 7]
    assert len(out.truth["latent"]) == 3 and out.truth["latent"][0].shape[0] == 7
    t1 = {"simulate_ou": 10.0, "simulate_double_ou": 20.0}.get(gen.__name__)
    for t in s.times:
        assert t[0] > 0 and np.all(np.diff(t) > 0)
        if t1 is not None:
            assert t[-1] <= t1
    again = gen(num_series=3, num_obs=7, seed=1)
    for a, b in zip(s.values, again.series.values, strict=True):
        np.testing.assert_array_equal(a, b)
    other = gen(num_series=3, num_obs=7, seed=2)
    assert not np.array_equal(s.values[0], other.series.values[0])


@pytest.mark.parametrize("gen", GENERATORS, ids=lambda f: f.__name__)
def test_missingness_never_drops_rows_or_channels(gen):
    out = gen(num_series=4, num_obs=20, missing_prob=0.95, seed=3)
    mask = np.stack(out.series.mask)
    assert mask.any(-1).all()  # no empty row
    assert mask.any(axis=(0, 1)).all()  # no empty channel


def test_missingness_rate():
    p, D = 0.3, 3
    out = simulate_lorenz(num_series=40, num_obs=50, missing_prob=p, t1=0.5, dt=1e-2, seed=4)
    mask = np.stack(out.series.mask)
    # Each fully missing row (probability p^D) gets one channel back.
    expected = p - p**D / D
    n = mask.size
    frac = 1.0 - mask.mean()
    assert abs(frac - expected) < Z * np.sqrt(p * (1 - p) / n)


def test_observation_noise():
    out = simulate_ou(num_series=50, num_obs=40, obs_noise=0.3, seed=5)
    resid = np.concatenate(out.series.values) - np.concatenate(out.truth["latent"])
    _check_std_normal(resid / 0.3)


def test_ou_stationary_marginal():
    theta, mu, sigma = 0.7, 1.5, 0.4
    out = simulate_ou(
        num_series=4000, num_obs=2, theta=theta, mu=mu, sigma=sigma, obs_dim=2, seed=6
    )
    x = np.stack(out.truth["latent"])[:, 0]  # first observation of every series, [B, D]
    sd = sigma / np.sqrt(2 * theta)
    _check_std_normal((x - mu) / sd)
    x0 = out.truth["x0"]
    _check_std_normal((x0 - mu) / sd)


def test_ou_transitions_over_irregular_gaps():
    theta, mu, sigma = 1.3, -0.5, 0.8
    out = simulate_ou(
        num_series=200, num_obs=30, t1=8.0, theta=theta, mu=mu, sigma=sigma, x0=3.0, seed=7
    )
    lat = np.stack(out.truth["latent"])[..., 0]  # [B, T]
    times = np.stack(out.series.times)
    prev = np.concatenate([np.full((lat.shape[0], 1), 3.0), lat[:, :-1]], axis=1)
    gaps = np.diff(times, axis=1, prepend=0.0)
    decay = np.exp(-theta * gaps)
    mean = mu + (prev - mu) * decay
    sd = np.sqrt(sigma**2 * (1 - decay**2) / (2 * theta))
    _check_std_normal((lat - mean) / sd)


def test_ou_fixed_x0_mean_and_variance_at_first_time():
    # From a fixed x0 the law at time t is N(mu + (x0 - mu) e^{-theta t}, sd(t)^2).
    out = simulate_ou(num_series=3000, num_obs=1, t1=1.0, theta=2.0, sigma=1.0, x0=-2.0, seed=8)
    t = np.concatenate(out.series.times)
    x = np.concatenate(out.truth["latent"])[:, 0]
    mean = -2.0 * np.exp(-2.0 * t)
    sd = np.sqrt((1 - np.exp(-4.0 * t)) / 4.0)
    _check_std_normal((x - mean) / sd)


def test_double_ou_transitions_match_independent_oracle():
    tf, ts, sf, ss, mu = 3.0, 0.3, 0.6, 0.25, 1.0
    out = simulate_double_ou(
        num_series=150,
        num_obs=30,
        t1=15.0,
        theta_fast=tf,
        theta_slow=ts,
        sigma_fast=sf,
        sigma_slow=ss,
        mu=mu,
        seed=9,
    )
    A = np.array([[-tf, tf], [0.0, -ts]])
    LLt = np.diag([sf**2, ss**2])
    P = scipy.linalg.solve_continuous_lyapunov(A, -LLt)
    np.testing.assert_allclose(out.truth["stationary_cov"], P, rtol=1e-10)
    y = np.stack(out.truth["latent"]) - mu  # [B, T, 2]
    y_prev = np.concatenate([out.truth["x0"][:, None] - mu, y[:, :-1]], axis=1)
    gaps = np.diff(np.stack(out.series.times), axis=1, prepend=0.0)
    # Closed-form exponential of the upper-triangular drift matrix (distinct eigenvalues).
    ef, es = np.exp(-tf * gaps), np.exp(-ts * gaps)
    phi = np.zeros(gaps.shape + (2, 2))
    phi[..., 0, 0] = ef
    phi[..., 0, 1] = tf * (es - ef) / (tf - ts)
    phi[..., 1, 1] = es
    np.testing.assert_allclose(phi[0, 0], scipy.linalg.expm(A * gaps[0, 0]), rtol=1e-12)
    # For a stationary linear SDE, Q(gap) = P - Phi P Phi^T (independent of Van Loan).
    Q = P - phi @ P @ np.swapaxes(phi, -1, -2)
    r = y - np.einsum("btij,btj->bti", phi, y_prev)
    white = np.linalg.solve(np.linalg.cholesky(Q), r[..., None])[..., 0]
    _check_std_normal(np.array(white))


def test_double_ou_stationary_start():
    out = simulate_double_ou(num_series=4000, num_obs=1, seed=10)
    x0 = out.truth["x0"] - out.truth["mu"]
    P = out.truth["stationary_cov"]
    _check_std_normal(np.linalg.solve(np.linalg.cholesky(P), x0.T))
    assert out.series.channels == ["x", "m"]


def test_lorenz_without_noise_matches_ode():
    x0 = np.array([1.0, 2.0, 20.0])
    out = simulate_lorenz(
        num_series=2, num_obs=10, t1=0.5, alpha=(0.0, 0.0, 0.0), dt=1e-4, x0=x0, seed=11
    )

    def f(_, u):
        return [10 * (u[1] - u[0]), u[0] * (28 - u[2]) - u[1], u[0] * u[1] - 8 / 3 * u[2]]

    for t, lat in zip(out.series.times, out.truth["latent"], strict=True):
        ref = solve_ivp(f, (0.0, 0.5), x0, t_eval=t, rtol=1e-10, atol=1e-10).y.T
        # Euler's global error is O(dt); dt=1e-4 over t<=0.5 gives well below 1e-2 here.
        np.testing.assert_allclose(lat, ref, atol=2e-2, rtol=2e-3)
    assert out.series.channels == ["x", "y", "z"]


def test_lorenz_multiplicative_noise_scale():
    # Over a short time t the noise of component i is about alpha_i * x_i(0) * sqrt(t).
    alpha = np.array([0.1, 0.2, 0.3])
    x0 = np.array([1.0, -1.0, 2.0])
    B = 3000
    out = simulate_lorenz(
        num_series=B, num_obs=1, t1=1e-3, alpha=alpha, dt=1e-4, x0=x0, obs_noise=0.0, seed=12
    )
    t = np.concatenate(out.series.times)
    x = np.concatenate(out.truth["latent"])
    f0 = np.array(
        [10 * (x0[1] - x0[0]), x0[0] * (28 - x0[2]) - x0[1], x0[0] * x0[1] - 8 / 3 * x0[2]]
    )
    z = (x - x0 - f0 * t[:, None]) / (alpha * np.abs(x0) * np.sqrt(t[:, None]))
    # Drift curvature adds O(t) relative bias (~1%), well inside 4 standard errors at this B.
    _check_std_normal(z)


def test_lorenz_blow_up_is_reported():
    with pytest.raises(
        BayesdynValueError, match=r"non-finite states at t=.* with dt=0.5; try a smaller dt"
    ):
        simulate_lorenz(num_series=2, num_obs=3, t1=50.0, dt=0.5, x0=10.0, seed=0)


def test_gbm_log_increments():
    mu, sigma = 0.4, 0.5
    out = simulate_gbm(num_series=200, num_obs=25, mu=mu, sigma=sigma, x0=2.0, t1=3.0, seed=13)
    lat = np.stack(out.truth["latent"])[..., 0]
    logx = np.log(np.concatenate([np.full((200, 1), 2.0), lat], axis=1))
    gaps = np.diff(np.stack(out.series.times), axis=1, prepend=0.0)
    incr = np.diff(logx, axis=1)
    z = (incr - (mu - sigma**2 / 2) * gaps) / (sigma * np.sqrt(gaps))
    _check_std_normal(z)
    # obs_noise defaults to 0 for the GBM: observations are the latent values
    np.testing.assert_array_equal(np.stack(out.series.values)[..., 0], lat)


@pytest.mark.parametrize(
    "kwargs, err, msg",
    [
        ({"num_series": 0}, BayesdynValueError, "num_series must be >= 1; got 0"),
        ({"num_obs": 2.5}, BayesdynTypeError, "num_obs must be an int"),
        ({"t1": -1.0}, BayesdynValueError, "t1 must be a finite positive number"),
        ({"missing_prob": 1.0}, BayesdynValueError, r"missing_prob must lie in \[0, 1\)"),
        ({"obs_noise": -0.1}, BayesdynValueError, "obs_noise must be a finite non-negative"),
        ({"theta": 0.0}, BayesdynValueError, "theta must be a finite positive number"),
        ({"x0": [1.0, 2.0, 3.0]}, BayesdynValueError, r"x0 must broadcast to \[num_series, 1\]"),
    ],
)
def test_ou_argument_errors(kwargs, err, msg):
    with pytest.raises(err, match=msg):
        simulate_ou(**kwargs)


def test_other_argument_errors():
    with pytest.raises(BayesdynValueError, match="x0 must be positive for a GBM"):
        simulate_gbm(x0=-1.0)
    with pytest.raises(BayesdynValueError, match="alpha must be 3 finite non-negative numbers"):
        simulate_lorenz(alpha=(0.1, 0.1))
    with pytest.raises(BayesdynValueError, match="sigma_slow must be a finite positive"):
        simulate_double_ou(sigma_slow=0.0)


def test_negative_control_wrong_diffusion_is_detected():
    # The OU transition check must reject a 10% error in sigma (guards against a vacuous test).
    out = simulate_ou(num_series=200, num_obs=30, t1=8.0, theta=1.3, sigma=0.8, x0=3.0, seed=7)
    lat = np.stack(out.truth["latent"])[..., 0]
    prev = np.concatenate([np.full((200, 1), 3.0), lat[:, :-1]], axis=1)
    gaps = np.diff(np.stack(out.series.times), axis=1, prepend=0.0)
    decay = np.exp(-1.3 * gaps)
    sd_wrong = np.sqrt((0.8 * 1.1) ** 2 * (1 - decay**2) / 2.6)
    with pytest.raises(AssertionError):
        _check_std_normal((lat - prev * decay) / sd_wrong)
