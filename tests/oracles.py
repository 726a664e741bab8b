"""Closed-form oracles for tests: Ornstein–Uhlenbeck transitions, Euler recursions, joint Gaussians.

Written independently of the library code (numpy/scipy, explicit loops) so tests compare two
implementations. The one Kalman filter lives in ``bayesdyn.inference.kalman`` (users need it
too); it is tested here against :func:`brute_force_filter`, which conditions the joint Gaussian of
all observations directly, and the OU maximum-likelihood oracle below uses it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
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


def ou_series_nll(params, batch):
    """Exact negative log-likelihood of OU-plus-noise series (stationary start), summed.

    ``params = (log theta, log sigma, log obs_noise, mu)``; ``batch`` is an ``IrregularBatch``.
    Uses the library's Kalman filter (itself tested against the brute-force joint Gaussian
    below in ``tests/inference/test_kalman.py``).
    """
    from bayesdyn.inference.kalman import LinearGaussianSDE

    th, sg, on, mu = math.exp(params[0]), math.exp(params[1]), math.exp(params[2]), params[3]
    th, mu, sg, on = (torch.tensor(x, dtype=torch.float64) for x in (th, mu, sg, on))
    model = LinearGaussianSDE.ou(th, mu, sg, on, t0=float(batch.times.min()))
    # Every series starts in the stationary law at its own first time: shift each series so
    # that its first observation is at the shared t0 (OU is time-homogeneous).
    shifted = batch._replace(times=batch.times - batch.times[:, :1] + batch.times.min())
    with torch.no_grad():
        return -float(model.filter(shifted).log_likelihood.sum())


def gaussian_chain_joint(m0, P0, transitions):
    """Joint mean ``[K+1, L]`` and covariance ``[(K+1) L, (K+1) L]`` of a linear-Gaussian chain.

    ``z_0 ~ N(m0, P0)`` and ``z_{k+1} = F_k z_k + u_k + N(0, Q_k)`` for ``transitions[k] =
    (F_k, u_k, Q_k)`` (numpy). Cross-covariances by ``Cov(z_j, z_k) = F_{k-1}...F_j Var(z_j)``.
    """
    L = len(m0)
    K = len(transitions)
    means = [np.asarray(m0, float)]
    var = [np.asarray(P0, float)]
    for F, u, Q in transitions:
        means.append(F @ means[-1] + u)
        var.append(F @ var[-1] @ F.T + Q)
    cov = np.zeros(((K + 1) * L, (K + 1) * L))
    for j in range(K + 1):
        block = var[j]
        for k in range(j, K + 1):
            if k > j:
                block = transitions[k - 1][0] @ block
            cov[k * L : (k + 1) * L, j * L : (j + 1) * L] = block
            cov[j * L : (j + 1) * L, k * L : (k + 1) * L] = block.T
    return np.array(means), cov


def exact_linear_transition(A, b, g, gap):
    """Exact transition ``(F, u, Q)`` of ``dz = (Az + b)dt + diag(g) dW`` by quadrature.

    ``F = expm(A gap)``; ``u`` and ``Q`` by adaptive quadrature (``scipy.integrate.quad_vec``),
    independent of the Van Loan construction used by the library.
    """
    from scipy.integrate import quad_vec
    from scipy.linalg import expm

    A, b, G = np.asarray(A, float), np.asarray(b, float), np.diag(np.asarray(g, float))
    F = expm(A * gap)
    u = quad_vec(lambda s: expm(A * s) @ b, 0.0, gap, epsabs=1e-13)[0] if gap > 0 else 0 * b
    Q = (
        quad_vec(lambda s: expm(A * s) @ G @ G.T @ expm(A * s).T, 0.0, gap, epsabs=1e-13)[0]
        if gap > 0
        else np.zeros_like(A)
    )
    return F, u, Q


def brute_force_filter(means, cov, points, H, c, r, y, mask):
    """Filtering moments and log-likelihood by conditioning the joint Gaussian directly.

    ``means [K+1, L]`` and ``cov`` are the joint of the chain (see :func:`gaussian_chain_joint`);
    observation ``i`` sees chain point ``points[i]`` through ``y_i = H z + c + N(0, diag(r^2))``
    on the channels where ``mask[i]`` is True. Returns ``(loglik, filt_means [n, L],
    filt_covs [n, L, L])``, each filtering moment conditioning on all observed values up to ``i``.
    """
    H, c, r = np.asarray(H, float), np.asarray(c, float), np.asarray(r, float)
    L = means.shape[1]
    n, D = y.shape
    # Stack every observed scalar: its mean, its covariance with every chain point, noise.
    rows, ymean, yobs, noise, owner = [], [], [], [], []
    for i in range(n):
        for d in range(D):
            if mask[i, d]:
                sel = np.zeros(means.size)
                sel[points[i] * L : (points[i] + 1) * L] = H[d]
                rows.append(sel)
                ymean.append(H[d] @ means[points[i]] + c[d])
                yobs.append(y[i, d])
                noise.append(r[d] ** 2)
                owner.append(i)
    R = np.array(rows).reshape(-1, means.size)
    Syy = R @ cov @ R.T + np.diag(noise)
    Szy = cov @ R.T
    ymean, yobs, owner = np.array(ymean), np.array(yobs), np.array(owner)
    loglik = stats.multivariate_normal(ymean, Syy).logpdf(yobs) if len(yobs) else 0.0
    fm, fc = [], []
    for i in range(n):
        k = owner <= i
        blk = slice(points[i] * L, (points[i] + 1) * L)
        mz, Pz = means[points[i]], cov[blk, blk]
        if k.any():
            gain = np.linalg.solve(Syy[np.ix_(k, k)], Szy[blk][:, k].T).T
            mz = mz + gain @ (yobs[k] - ymean[k])
            Pz = Pz - gain @ Szy[blk][:, k].T
        fm.append(mz)
        fc.append(Pz)
    return float(loglik), np.array(fm), np.array(fc)


def ou_mle(times_list, values_list, start=(1.0, 0.5, 0.1, 0.0)):
    """Exact maximum-likelihood estimates and their standard errors (observed information).

    Returns ``(estimates, stderr)`` dicts for ``theta``, ``stationary_var`` (and the raw
    parameters); standard errors by the delta method from a finite-difference Hessian in the
    log-parameters.
    """
    from scipy.optimize import minimize

    from bayesdyn.data import IrregularTimeSeries

    batch = IrregularTimeSeries(times_list, values_list).to_batch(torch.float64)
    x0 = [math.log(start[0]), math.log(start[1]), math.log(start[2]), start[3]]
    res = minimize(
        ou_series_nll,
        x0,
        args=(batch,),
        method="Nelder-Mead",
        options=dict(maxiter=4000, xatol=1e-6, fatol=1e-8),
    )
    x = np.asarray(res.x)
    h = 1e-3
    n = len(x)
    hess = np.zeros((n, n))
    f = lambda v: ou_series_nll(v, batch)  # noqa: E731
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
