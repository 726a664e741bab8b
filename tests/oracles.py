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
