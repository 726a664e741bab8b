r"""Synthetic irregular time series with a known truth.

Every generator draws ``num_obs`` observation times per series, sorted uniform on
``(0, t1]`` without duplicates, simulates the latent path at those times (exactly where a
closed-form transition exists), adds Gaussian noise of standard deviation ``obs_noise`` and
removes each value independently with probability ``missing_prob``. Missingness never removes a
whole row (one random channel of such a row is re-observed) and never removes a channel from
every series. The returned ``truth`` holds the parameters and the latent values at the
observation times (``truth["latent"]``, a list of ``[T_i, L]`` arrays).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from .._validation import BayesdynTypeError, BayesdynValueError, check_positive
from ._series import IrregularTimeSeries

__all__ = [
    "SyntheticData",
    "simulate_double_ou",
    "simulate_gbm",
    "simulate_lorenz",
    "simulate_ou",
]


class SyntheticData(NamedTuple):
    """Simulated observations and the truth that generated them.

    Attributes:
        series: the noisy, possibly incomplete observations.
        truth: parameters of the generator and ``"latent"``, the noise-free latent state at each
            series' observation times.

    Shapes:
        - ``series``: ``B`` series of ``[T_i, D]``
        - ``truth["latent"]``: list of ``B`` arrays ``[T_i, L]``
    """

    series: IrregularTimeSeries
    truth: dict[str, Any]


def _check_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise BayesdynTypeError(f"{name} must be an int; got {type(value).__name__} {value!r}")
    if value < minimum:
        raise BayesdynValueError(f"{name} must be >= {minimum}; got {value}")
    return int(value)


def _common(
    num_series: Any, t1: Any, num_obs: Any, obs_noise: Any, missing_prob: Any
) -> tuple[int, float, int, float, float]:
    B = _check_int("num_series", num_series)
    N = _check_int("num_obs", num_obs)
    t1f = check_positive("t1", t1)
    noise = check_positive("obs_noise", obs_noise, allow_zero=True)
    p = check_positive("missing_prob", missing_prob, allow_zero=True)
    if p >= 1.0:
        raise BayesdynValueError(f"missing_prob must lie in [0, 1); got {p}")
    return B, t1f, N, noise, p


def _draw_times(rng: np.random.Generator, B: int, N: int, t1: float) -> np.ndarray:
    """Sorted uniform times on (0, t1] per series, redrawn until there are no ties or zeros."""
    times = np.sort(t1 - rng.uniform(0.0, t1, size=(B, N)), axis=1)  # (0, t1]
    for _ in range(100):
        bad = (np.diff(times, axis=1) <= 0).any(axis=1) | (times[:, 0] <= 0)
        if not bad.any():
            return times
        times[bad] = np.sort(t1 - rng.uniform(0.0, t1, size=(int(bad.sum()), N)), axis=1)
    raise BayesdynValueError(
        f"could not draw {N} distinct observation times on (0, {t1}]; t1 is too small"
    )


def _observe(
    rng: np.random.Generator, latent: np.ndarray, obs_noise: float, missing_prob: float
) -> tuple[np.ndarray, np.ndarray]:
    """Add noise and missingness to ``latent [B, N, D]``; returns ``(values, mask)``."""
    B, N, D = latent.shape
    values = latent + obs_noise * rng.standard_normal(latent.shape)
    mask = rng.random(latent.shape) >= missing_prob
    # Re-observe one random channel of rows that lost every channel.
    empty = ~mask.any(-1)
    if empty.any():
        b, n = np.nonzero(empty)
        mask[b, n, rng.integers(0, D, size=b.size)] = True
    # Never remove a channel from the whole data set.
    for d in np.flatnonzero(~mask.any(axis=(0, 1))):
        mask[rng.integers(0, B), rng.integers(0, N), d] = True
    return values, mask


def _broadcast_x0(name: str, x0: Any, B: int, D: int) -> np.ndarray:
    arr = np.asarray(x0, dtype=np.float64)
    try:
        out = np.broadcast_to(arr, (B, D)).copy()
    except ValueError:
        raise BayesdynValueError(
            f"{name} must broadcast to [num_series, {D}] = {(B, D)}; got shape {arr.shape}"
        ) from None
    if not np.isfinite(out).all():
        raise BayesdynValueError(f"{name} must be finite; got {arr}")
    return out


def _package(
    times: np.ndarray,
    latent: np.ndarray,
    rng: np.random.Generator,
    obs_noise: float,
    missing_prob: float,
    channels: Sequence[str],
    truth: dict[str, Any],
) -> SyntheticData:
    values, mask = _observe(rng, latent, obs_noise, missing_prob)
    series = IrregularTimeSeries(list(times), list(values), list(mask), channels=list(channels))
    truth = dict(truth)
    truth.update(obs_noise=obs_noise, missing_prob=missing_prob, latent=list(latent))
    return SyntheticData(series, truth)


def simulate_ou(
    *,
    num_series: int = 16,
    t1: float = 10.0,
    num_obs: int = 50,
    theta: float = 1.0,
    mu: float = 0.0,
    sigma: float = 0.5,
    obs_dim: int = 1,
    x0: Any = None,
    obs_noise: float = 0.1,
    missing_prob: float = 0.0,
    seed: int = 0,
) -> SyntheticData:
    r"""Ornstein–Uhlenbeck process observed at irregular times, simulated exactly.

    .. math:: dx = \theta(\mu - x)\,dt + \sigma\,dW

    with ``obs_dim`` independent components. Over a gap :math:`\Delta` the exact transition is
    :math:`x' = \mu + (x-\mu)e^{-\theta\Delta} + \sqrt{\sigma^2(1-e^{-2\theta\Delta})/(2\theta)}\,
    \varepsilon`. The state at ``t=0`` is ``x0`` or, by default, a draw from the stationary law
    :math:`N(\mu, \sigma^2/(2\theta))`; the first observation follows a transition from 0.

    Args:
        num_series: number of series ``B``.
        t1: end of the observation window ``[0, t1]``.
        num_obs: observations per series ``T``.
        theta: mean-reversion rate (> 0).
        mu: long-run mean.
        sigma: diffusion scale (> 0).
        obs_dim: number of independent components ``D``.
        x0: state at ``t=0``, broadcastable to ``[B, D]``; None draws it from the stationary law.
        obs_noise: standard deviation of the Gaussian observation noise.
        missing_prob: probability that each value is missing.
        seed: seed of ``np.random.default_rng``.

    Returns:
        :class:`SyntheticData`; ``truth`` holds ``theta, mu, sigma, x0, latent``.

    Shapes:
        ``B`` series with ``times [T]``, ``values [T, D]``; ``truth["x0"]`` is ``[B, D]`` and
        ``truth["latent"][i]`` is ``[T, D]``.
    """
    B, t1, N, obs_noise, missing_prob = _common(num_series, t1, num_obs, obs_noise, missing_prob)
    theta = check_positive("theta", theta)
    sigma = check_positive("sigma", sigma)
    mu = float(mu)
    D = _check_int("obs_dim", obs_dim)
    rng = np.random.default_rng(seed)
    if x0 is None:
        x = mu + sigma / np.sqrt(2 * theta) * rng.standard_normal((B, D))
    else:
        x = _broadcast_x0("x0", x0, B, D)
    x_init = x.copy()
    times = _draw_times(rng, B, N, t1)
    gaps = np.diff(times, axis=1, prepend=0.0)
    latent = np.empty((B, N, D))
    for n in range(N):
        decay = np.exp(-theta * gaps[:, n : n + 1])
        sd = np.sqrt(sigma**2 * (1 - decay**2) / (2 * theta))
        x = mu + (x - mu) * decay + sd * rng.standard_normal((B, D))
        latent[:, n] = x
    truth = {"theta": theta, "mu": mu, "sigma": sigma, "x0": x_init}
    return _package(times, latent, rng, obs_noise, missing_prob, [f"x{d}" for d in range(D)], truth)


def _double_ou_matrices(
    theta_fast: float, theta_slow: float, sigma_fast: float, sigma_slow: float
) -> tuple[np.ndarray, np.ndarray]:
    """Drift matrix ``A`` and diffusion ``L`` of the centred double OU ``dY = A Y dt + L dW``.

    Args:
        theta_fast: reversion rate of ``x`` towards ``m``.
        theta_slow: reversion rate of ``m`` towards ``mu``.
        sigma_fast: diffusion scale of ``x``.
        sigma_slow: diffusion scale of ``m``.

    Shapes:
        ``A [2, 2]``, ``L [2, 2]``.
    """
    A = np.array([[-theta_fast, theta_fast], [0.0, -theta_slow]])
    L = np.diag([sigma_fast, sigma_slow])
    return A, L


def _van_loan(A: np.ndarray, LLt: np.ndarray, gaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact transition matrix and noise covariance of ``dY = AY dt + L dW`` over each gap.

    Van Loan (1978): ``expm([[-A, LL^T], [0, A^T]] * gap) = [[., G12], [0, G22]]`` gives
    ``Phi = G22^T`` and ``Q = Phi @ G12``.
    """
    import torch

    n = A.shape[0]
    M = np.zeros((2 * n, 2 * n))
    M[:n, :n] = -A
    M[:n, n:] = LLt
    M[n:, n:] = A.T
    with torch.no_grad():
        Mt = torch.as_tensor(M, dtype=torch.float64)
        g = torch.as_tensor(gaps.reshape(-1), dtype=torch.float64)[:, None, None]
        G = torch.linalg.matrix_exp(Mt * g).numpy()
    phi = np.swapaxes(G[:, n:, n:], -1, -2)
    Q = phi @ G[:, :n, n:]
    Q = 0.5 * (Q + np.swapaxes(Q, -1, -2))
    return phi.reshape(*gaps.shape, n, n), Q.reshape(*gaps.shape, n, n)


def _stationary_cov(A: np.ndarray, LLt: np.ndarray) -> np.ndarray:
    # Solve the Lyapunov equation A P + P A^T + L L^T = 0 via the Kronecker form.
    n = A.shape[0]
    eye = np.eye(n)
    K = np.kron(eye, A) + np.kron(A, eye)
    P = np.linalg.solve(K, -LLt.reshape(-1)).reshape(n, n)
    return 0.5 * (P + P.T)


def _gauss_sample(rng: np.random.Generator, cov: np.ndarray) -> np.ndarray:
    # Symmetric square root via eigh: robust when a tiny gap makes cov nearly singular.
    w, V = np.linalg.eigh(cov)
    root = V * np.sqrt(np.clip(w, 0.0, None))[..., None, :]
    eps = rng.standard_normal(cov.shape[:-1])
    return np.einsum("...ij,...j->...i", root, eps)


def simulate_double_ou(
    *,
    num_series: int = 16,
    t1: float = 20.0,
    num_obs: int = 50,
    theta_fast: float = 2.0,
    theta_slow: float = 0.2,
    sigma_fast: float = 0.5,
    sigma_slow: float = 0.3,
    mu: float = 0.0,
    x0: Any = None,
    obs_noise: float = 0.1,
    missing_prob: float = 0.0,
    seed: int = 0,
) -> SyntheticData:
    r"""Two-timescale linear SDE: a fast OU ``x`` reverting to a slow OU level ``m``.

    .. math::
        dx = \theta_f (m - x)\,dt + \sigma_f\,dW_1, \qquad
        dm = -\theta_s (m - \mu)\,dt + \sigma_s\,dW_2.

    With :math:`Y = (x, m) - \mu` this is :math:`dY = AY\,dt + L\,dW`; the exact transition over
    a gap :math:`\Delta` is :math:`Y' = e^{A\Delta}Y + N(0, Q(\Delta))`, with :math:`e^{A\Delta}`
    and :math:`Q(\Delta)=\int_0^\Delta e^{As}LL^Te^{A^Ts}ds` from Van Loan's block matrix
    exponential. The state at ``t=0`` defaults to a draw from the stationary law
    :math:`N(\mu\mathbf{1}, P)` with :math:`AP + PA^T + LL^T = 0`. Both ``x`` and ``m`` are
    observed (``D = 2``, channels ``["x", "m"]``).

    Args:
        num_series: number of series ``B``.
        t1: end of the observation window.
        num_obs: observations per series ``T``.
        theta_fast: reversion rate of ``x`` towards ``m`` (> 0).
        theta_slow: reversion rate of ``m`` towards ``mu`` (> 0).
        sigma_fast: diffusion scale of ``x``.
        sigma_slow: diffusion scale of ``m``.
        mu: long-run mean of both.
        x0: state ``(x, m)`` at ``t=0``, broadcastable to ``[B, 2]``; None draws it from the
            stationary law.
        obs_noise: observation noise standard deviation.
        missing_prob: probability that each value is missing.
        seed: seed of ``np.random.default_rng``.

    Returns:
        :class:`SyntheticData`; ``truth`` holds the parameters, ``drift_matrix`` ``A``,
        ``diffusion`` ``L``, ``stationary_cov`` ``P``, ``x0`` and ``latent``.

    Shapes:
        ``B`` series with ``times [T]``, ``values [T, 2]``; ``truth["latent"][i]`` is ``[T, 2]``.

    References:
        1. C. Van Loan, "Computing integrals involving the matrix exponential", IEEE TAC, 1978.
    """
    B, t1, N, obs_noise, missing_prob = _common(num_series, t1, num_obs, obs_noise, missing_prob)
    theta_fast = check_positive("theta_fast", theta_fast)
    theta_slow = check_positive("theta_slow", theta_slow)
    sigma_fast = check_positive("sigma_fast", sigma_fast)
    sigma_slow = check_positive("sigma_slow", sigma_slow)
    mu = float(mu)
    rng = np.random.default_rng(seed)
    A, L = _double_ou_matrices(theta_fast, theta_slow, sigma_fast, sigma_slow)
    LLt = L @ L.T
    P = _stationary_cov(A, LLt)
    if x0 is None:
        y = _gauss_sample(rng, np.broadcast_to(P, (B, 2, 2)))
    else:
        y = _broadcast_x0("x0", x0, B, 2) - mu
    y_init = y + mu
    times = _draw_times(rng, B, N, t1)
    gaps = np.diff(times, axis=1, prepend=0.0)
    phi, Q = _van_loan(A, LLt, gaps)
    latent = np.empty((B, N, 2))
    for n in range(N):
        y = np.einsum("bij,bj->bi", phi[:, n], y) + _gauss_sample(rng, Q[:, n])
        latent[:, n] = y + mu
    truth = {
        "theta_fast": theta_fast,
        "theta_slow": theta_slow,
        "sigma_fast": sigma_fast,
        "sigma_slow": sigma_slow,
        "mu": mu,
        "drift_matrix": A,
        "diffusion": L,
        "stationary_cov": P,
        "x0": y_init,
    }
    return _package(times, latent, rng, obs_noise, missing_prob, ["x", "m"], truth)


def simulate_lorenz(
    *,
    num_series: int = 16,
    t1: float = 2.0,
    num_obs: int = 100,
    sigma: float = 10.0,
    rho: float = 28.0,
    beta: float = 8.0 / 3.0,
    alpha: Sequence[float] = (0.15, 0.15, 0.15),
    dt: float = 1e-3,
    x0: Any = None,
    obs_noise: float = 0.01,
    missing_prob: float = 0.0,
    seed: int = 0,
) -> SyntheticData:
    r"""Stochastic Lorenz system with multiplicative diagonal noise (Li et al. 2020).

    .. math::
        dx = \sigma(y - x)\,dt + \alpha_1 x\,dW_1,\quad
        dy = (x(\rho - z) - y)\,dt + \alpha_2 y\,dW_2,\quad
        dz = (xy - \beta z)\,dt + \alpha_3 z\,dW_3.

    Simulated with Euler–Maruyama (Itô) on the union of a regular grid of step ``dt`` and all
    observation times, so every observation time is a grid point and no step exceeds ``dt``.
    The initial state defaults to a standard normal draw per series.

    Args:
        num_series: number of series ``B``.
        t1: end of the observation window.
        num_obs: observations per series ``T``.
        sigma: Prandtl number.
        rho: Rayleigh number.
        beta: geometric factor.
        alpha: multiplicative noise scales, 3 non-negative numbers.
        dt: largest Euler–Maruyama step.
        x0: initial state broadcastable to ``[B, 3]``; None draws ``N(0, I)``.
        obs_noise: observation noise standard deviation.
        missing_prob: probability that each value is missing.
        seed: seed of ``np.random.default_rng``.

    Returns:
        :class:`SyntheticData` with channels ``["x", "y", "z"]``; ``truth`` holds the
        parameters, ``x0`` and ``latent``.

    Raises:
        BayesdynValueError: if the simulation produces non-finite states (reduce ``dt``).

    Shapes:
        ``B`` series with ``times [T]``, ``values [T, 3]``; ``truth["latent"][i]`` is ``[T, 3]``.

    References:
        1. X. Li, T.-K. L. Wong, R. T. Q. Chen, D. Duvenaud, "Scalable gradients for
           stochastic differential equations", AISTATS 2020.
    """
    B, t1, N, obs_noise, missing_prob = _common(num_series, t1, num_obs, obs_noise, missing_prob)
    sigma, rho, beta = float(sigma), float(rho), float(beta)
    dt = check_positive("dt", dt)
    a = np.asarray(alpha, dtype=np.float64).reshape(-1)
    if a.shape != (3,) or not np.isfinite(a).all() or (a < 0).any():
        raise BayesdynValueError(f"alpha must be 3 finite non-negative numbers; got {alpha!r}")
    rng = np.random.default_rng(seed)
    state = rng.standard_normal((B, 3)) if x0 is None else _broadcast_x0("x0", x0, B, 3)
    x_init = state.copy()
    times = _draw_times(rng, B, N, t1)

    # Shared grid: regular steps plus every observation time, so observations are grid points.
    regular = np.arange(0.0, t1, dt)
    grid = np.unique(np.concatenate([regular, times.ravel(), [0.0]]))
    obs_u = np.searchsorted(grid, times)  # [B, N], exact matches by construction
    flat_u = obs_u.ravel()
    order = np.argsort(flat_u, kind="stable")
    bounds = np.searchsorted(flat_u[order], np.arange(grid.size + 1))
    flat_b, flat_n = np.divmod(order, N)
    latent = np.empty((B, N, 3))
    steps = np.diff(grid)
    finite = True
    # Overflow is detected below and reported with a hint, so numpy's warning is redundant.
    with np.errstate(over="ignore", invalid="ignore"):
        for u in range(1, grid.size):
            h = steps[u - 1]
            x, y, z = state[:, 0], state[:, 1], state[:, 2]
            drift = np.stack([sigma * (y - x), x * (rho - z) - y, x * y - beta * z], axis=-1)
            dW = np.sqrt(h) * rng.standard_normal((B, 3))
            state = state + drift * h + a * state * dW
            if not np.isfinite(state).all():
                finite = False
                break
            lo, hi = bounds[u], bounds[u + 1]
            if hi > lo:
                latent[flat_b[lo:hi], flat_n[lo:hi]] = state[flat_b[lo:hi]]
    if not finite:
        raise BayesdynValueError(
            f"simulate_lorenz produced non-finite states at t={grid[u]:g} with dt={dt}; "
            "try a smaller dt"
        )
    truth = {
        "sigma": sigma,
        "rho": rho,
        "beta": beta,
        "alpha": a,
        "dt": dt,
        "x0": x_init,
    }
    return _package(times, latent, rng, obs_noise, missing_prob, ["x", "y", "z"], truth)


def simulate_gbm(
    *,
    num_series: int = 16,
    t1: float = 1.0,
    num_obs: int = 50,
    mu: float = 0.5,
    sigma: float = 0.3,
    x0: Any = 1.0,
    obs_dim: int = 1,
    obs_noise: float = 0.0,
    missing_prob: float = 0.0,
    seed: int = 0,
) -> SyntheticData:
    r"""Geometric Brownian motion observed at irregular times, simulated exactly.

    .. math:: dx = \mu x\,dt + \sigma x\,dW

    Over a gap :math:`\Delta`, :math:`x' = x\exp((\mu - \sigma^2/2)\Delta + \sigma\sqrt\Delta
    \,\varepsilon)`, so log-increments are :math:`N((\mu-\sigma^2/2)\Delta, \sigma^2\Delta)`.
    Components are independent.

    Args:
        num_series: number of series ``B``.
        t1: end of the observation window.
        num_obs: observations per series ``T``.
        mu: drift rate.
        sigma: volatility (> 0).
        x0: positive state at ``t=0``, broadcastable to ``[B, D]``.
        obs_dim: number of independent components ``D``.
        obs_noise: additive Gaussian observation noise standard deviation.
        missing_prob: probability that each value is missing.
        seed: seed of ``np.random.default_rng``.

    Returns:
        :class:`SyntheticData`; ``truth`` holds ``mu, sigma, x0, latent``.

    Shapes:
        ``B`` series with ``times [T]``, ``values [T, D]``; ``truth["latent"][i]`` is ``[T, D]``.
    """
    B, t1, N, obs_noise, missing_prob = _common(num_series, t1, num_obs, obs_noise, missing_prob)
    mu = float(mu)
    sigma = check_positive("sigma", sigma)
    D = _check_int("obs_dim", obs_dim)
    x = _broadcast_x0("x0", x0, B, D)
    if (x <= 0).any():
        raise BayesdynValueError(f"x0 must be positive for a GBM; got {np.asarray(x0)}")
    x_init = x.copy()
    rng = np.random.default_rng(seed)
    times = _draw_times(rng, B, N, t1)
    gaps = np.diff(times, axis=1, prepend=0.0)
    drift = mu - 0.5 * sigma**2
    incr = drift * gaps[..., None] + sigma * np.sqrt(gaps)[..., None] * rng.standard_normal(
        (B, N, D)
    )
    latent = x[:, None, :] * np.exp(np.cumsum(incr, axis=1))
    truth = {"mu": mu, "sigma": sigma, "x0": x_init}
    return _package(times, latent, rng, obs_noise, missing_prob, [f"x{d}" for d in range(D)], truth)
