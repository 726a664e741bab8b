"""Closed-form oracles for tests: Ornstein–Uhlenbeck transitions, Euler recursions, Kalman filter.

Written independently of the library code (numpy/scipy, explicit loops) so tests compare two
implementations.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def ou_transition(x, dt, theta, mu, sigma):
    """Exact OU transition mean and variance over a gap ``dt``."""
    a = np.exp(-theta * dt)
    return mu + (x - mu) * a, sigma**2 * (1 - a**2) / (2 * theta)


def ou_stationary(theta, mu, sigma):
    """Stationary mean and variance of the OU process."""
    return mu, sigma**2 / (2 * theta)


def euler_ou_moments(m0, v0, grid, theta, mu, sigma):
    """Mean and variance of the Euler–Maruyama OU chain at every grid point (exact recursion)."""
    m, v = [m0], [v0]
    for k in range(len(grid) - 1):
        h = grid[k + 1] - grid[k]
        a = 1 - theta * h
        m.append(a * m[-1] + theta * mu * h)
        v.append(a * a * v[-1] + sigma**2 * h)
    return np.array(m), np.array(v)


def euler_ou_log_prob_loop(path, grid, theta, mu, sigma):
    """Euler–Maruyama OU path log-density by an explicit loop with scipy (path ``[U, L]``)."""
    total = 0.0
    for k in range(len(grid) - 1):
        h = grid[k + 1] - grid[k]
        mean = path[k] + theta * (mu - path[k]) * h
        total += stats.norm.logpdf(path[k + 1], mean, sigma * math.sqrt(h)).sum()
    return total


def kalman_ou(times, y, theta, mu, sigma, obs_noise, m0, v0):
    """Kalman filter for a scalar OU observed with Gaussian noise at irregular times.

    The state at ``times[0]`` has prior ``N(m0, v0)``. Returns the log-likelihood and the
    filtering means and variances at each time.
    """
    m, v = m0, v0
    ll = 0.0
    means, variances = [], []
    for i, t in enumerate(times):
        if i > 0:
            m, v = (
                ou_transition(m, t - times[i - 1], theta, mu, sigma)[0],
                (
                    v * np.exp(-2 * theta * (t - times[i - 1]))
                    + ou_transition(0.0, t - times[i - 1], theta, mu, sigma)[1]
                ),
            )
        s = v + obs_noise**2
        ll += stats.norm.logpdf(y[i], m, math.sqrt(s))
        k = v / s
        m, v = m + k * (y[i] - m), (1 - k) * v
        means.append(m)
        variances.append(v)
    return ll, np.array(means), np.array(variances)


def ou_series_nll(params, times_list, values_list):
    """Exact negative log-likelihood of OU-plus-noise series (stationary start), summed.

    ``params = (log theta, log sigma, log obs_noise, mu)``.
    """
    th, sg, on, mu = math.exp(params[0]), math.exp(params[1]), math.exp(params[2]), params[3]
    sv = sg**2 / (2 * th)
    total = 0.0
    for t, y in zip(times_list, values_list, strict=True):
        total -= kalman_ou(t, y, th, mu, sg, on, mu, sv)[0]
    return total


def ou_mle(times_list, values_list, start=(1.0, 0.5, 0.1, 0.0)):
    """Exact maximum-likelihood estimates and their standard errors (observed information).

    Returns ``(estimates, stderr)`` dicts for ``theta``, ``stationary_var`` (and the raw
    parameters); standard errors by the delta method from a finite-difference Hessian in the
    log-parameters.
    """
    from scipy.optimize import minimize

    x0 = [math.log(start[0]), math.log(start[1]), math.log(start[2]), start[3]]
    res = minimize(
        ou_series_nll,
        x0,
        args=(times_list, values_list),
        method="Nelder-Mead",
        options=dict(maxiter=4000, xatol=1e-6, fatol=1e-8),
    )
    x = np.asarray(res.x)
    h = 1e-3
    n = len(x)
    hess = np.zeros((n, n))
    f = lambda v: ou_series_nll(v, times_list, values_list)  # noqa: E731
    for i in range(n):
        for j in range(n):
            e_i, e_j = np.eye(n)[i] * h, np.eye(n)[j] * h
            hess[i, j] = (
                f(x + e_i + e_j) - f(x + e_i - e_j) - f(x - e_i + e_j) + f(x - e_i - e_j)
            ) / (4 * h * h)
    cov = np.linalg.inv(hess)
    th, sg = math.exp(x[0]), math.exp(x[1])
    # stationary var = exp(2 log sg - log th) / 2: gradient in (log th, log sg) is var*(-1, 2)
    var = sg**2 / (2 * th)
    grad_var = np.array([-var, 2 * var, 0.0, 0.0])
    est = {"theta": th, "stationary_var": var, "obs_noise": math.exp(x[2]), "mu": x[3]}
    se = {
        "theta": th * math.sqrt(cov[0, 0]),
        "stationary_var": math.sqrt(grad_var @ cov @ grad_var),
    }
    return est, se
