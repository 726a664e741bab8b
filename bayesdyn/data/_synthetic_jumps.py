r"""Synthetic jump processes with a known truth: Merton jump-diffusion and exponential Hawkes.

- :func:`simulate_merton`: :math:`X_t = x_0 + \mu t + \sigma W_t + \sum_{i \le N_t} J_i` with
  :math:`N` a Poisson process of rate :math:`\lambda` and :math:`J_i \sim \mathcal N(\mu_J,
  \sigma_J^2)`, observed (with optional noise) at random times. Exact: jump times and sizes are
  drawn first, the Brownian part from independent Gaussian increments.
  :func:`merton_log_density` is the closed-form transition density (a Poisson mixture of
  Gaussians).
- :func:`simulate_hawkes`: the exponential Hawkes process with intensity
  :math:`\lambda(t) = \mu + \alpha\beta \sum_{t_i < t} e^{-\beta (t - t_i)}` (``alpha`` is the
  branching ratio, the mean number of children of an event), simulated exactly by Ogata
  thinning from an empty history at ``t = 0``, with optional i.i.d. categorical marks.
  :func:`hawkes_log_likelihood` and :func:`hawkes_intensity` give the exact likelihood and
  intensity.
- :func:`simulate_self_correcting`: the self-correcting (stress-release) process of Isham and
  Westcott, :math:`\lambda(t) = \exp(\mu t - \beta N(t^-))`, whose intensity grows between
  events and drops by the factor :math:`e^{-\beta}` at each; simulated exactly by inverting its
  closed-form compensator. :func:`self_correcting_log_likelihood` and
  :func:`self_correcting_intensity` give the exact likelihood and intensity.

References:
    1. R. C. Merton, J. Financial Economics 3, 1976.
    2. Y. Ogata, IEEE Trans. Inf. Theory 27, 1981.
    3. V. Isham and M. Westcott, "A self-correcting point process", Stoch. Proc. Appl. 8, 1979.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from .._validation import BayesdynValueError, check_positive
from ._series import IrregularTimeSeries
from ._synthetic import SyntheticData, _check_int, _common, _draw_times, _package

__all__ = [
    "hawkes_compensator",
    "hawkes_intensity",
    "hawkes_log_likelihood",
    "merton_log_density",
    "self_correcting_intensity",
    "self_correcting_log_likelihood",
    "simulate_hawkes",
    "simulate_merton",
    "simulate_self_correcting",
]


def merton_log_density(
    x: Any,
    x0: Any,
    dt: float,
    *,
    mu: float,
    sigma: float,
    jump_rate: float,
    jump_mean: float,
    jump_std: float,
    tol: float = 1e-16,
) -> np.ndarray:
    r"""Closed-form log transition density of the Merton jump-diffusion over a time ``dt``.

    .. math:: p(x \mid x_0) = \sum_{n \ge 0} \mathrm{Pois}(n; \lambda dt)\,
        \mathcal N(x; x_0 + \mu dt + n \mu_J, \sigma^2 dt + n \sigma_J^2),

    truncated where the Poisson tail falls below ``tol``.

    Shapes: ``x``, ``x0`` broadcastable arrays -> their broadcast shape.
    """
    dt = check_positive("dt", dt)
    lam = check_positive("jump_rate", jump_rate, allow_zero=True) * dt
    x = np.asarray(x, dtype=np.float64) - np.asarray(x0, dtype=np.float64) - mu * dt
    # Truncate the Poisson sum where the remaining tail mass is below tol.
    n_max, mass = 0, 0.0
    while n_max < 1000:
        mass += math.exp(
            -lam + (n_max * math.log(lam) if lam > 0 else 0.0) - math.lgamma(n_max + 1)
        )
        n_max += 1
        if lam == 0 or 1.0 - mass < tol:
            break
    terms = []
    for n in range(n_max):
        log_pn = -lam + (n * math.log(lam) if lam > 0 else (0.0 if n == 0 else -np.inf))
        log_pn -= math.lgamma(n + 1)
        var = sigma**2 * dt + n * jump_std**2
        terms.append(log_pn - 0.5 * ((x - n * jump_mean) ** 2 / var + math.log(2 * math.pi * var)))
    return np.logaddexp.reduce(np.stack(terms), axis=0)


def simulate_merton(
    *,
    num_series: int = 8,
    t1: float = 10.0,
    num_obs: int = 50,
    mu: float = 0.0,
    sigma: float = 0.2,
    jump_rate: float = 1.0,
    jump_mean: float = 0.0,
    jump_std: float = 0.5,
    x0: float = 0.0,
    obs_noise: float = 0.0,
    missing_prob: float = 0.0,
    seed: int = 0,
) -> SyntheticData:
    """Merton jump-diffusion observed at random times (exact simulation).

    Args:
        num_series, t1, num_obs: ``B`` series with ``num_obs`` sorted uniform times on ``(0, t1]``.
        mu, sigma: drift and diffusion of the continuous part.
        jump_rate, jump_mean, jump_std: Poisson rate and Gaussian jump-size parameters.
        x0: the state at ``t = 0``.
        obs_noise, missing_prob: Gaussian observation noise and missingness.
        seed: numpy seed.

    Returns:
        :class:`SyntheticData`; ``truth`` holds the parameters, ``latent`` (``[T_i, 1]`` per
        series), ``jump_times`` and ``jump_sizes`` (per series arrays on ``(0, t1]``).

    Shapes:
        ``B`` series ``[num_obs, 1]``.
    """
    B, t1f, N, noise, p = _common(num_series, t1, num_obs, obs_noise, missing_prob)
    sigma = check_positive("sigma", sigma)
    jump_rate = check_positive("jump_rate", jump_rate, allow_zero=True)
    jump_std = check_positive("jump_std", jump_std, allow_zero=True)
    rng = np.random.default_rng(seed)
    times = _draw_times(rng, B, N, t1f)
    latent = np.empty((B, N, 1))
    jt_all, js_all = [], []
    for b in range(B):
        n_jumps = rng.poisson(jump_rate * t1f)
        jt = np.sort(rng.uniform(0.0, t1f, size=n_jumps))
        js = jump_mean + jump_std * rng.standard_normal(n_jumps)
        gaps = np.diff(np.concatenate([[0.0], times[b]]))
        w = np.cumsum(np.sqrt(gaps) * rng.standard_normal(N))
        cum_jumps = np.concatenate([[0.0], np.cumsum(js)])[np.searchsorted(jt, times[b], "right")]
        latent[b, :, 0] = x0 + mu * times[b] + sigma * w + cum_jumps
        jt_all.append(jt)
        js_all.append(js)
    truth = {
        "mu": mu,
        "sigma": sigma,
        "jump_rate": jump_rate,
        "jump_mean": jump_mean,
        "jump_std": jump_std,
        "x0": x0,
        "jump_times": jt_all,
        "jump_sizes": js_all,
    }
    return _package(times, latent, rng, noise, p, ["x"], truth)


def hawkes_intensity(
    t: Any, events: Any, *, baseline: float, alpha: float, beta: float
) -> np.ndarray:
    r"""Exponential Hawkes intensity :math:`\mu + \alpha\beta\sum_{t_i < t} e^{-\beta(t - t_i)}`.

    Strict inequality: at an event time this is the left limit (the intensity the event saw).

    Shapes: ``t [Q]``, ``events [N]`` -> ``[Q]``.
    """
    t = np.asarray(t, dtype=np.float64)
    ev = np.asarray(events, dtype=np.float64)
    d = t[..., None] - ev
    ker = np.where(d > 0, np.exp(-beta * np.where(d > 0, d, 0.0)), 0.0)
    return baseline + alpha * beta * ker.sum(-1)


def hawkes_compensator(
    events: Any, t0: float, t1: float, *, baseline: float, alpha: float, beta: float
) -> float:
    r"""Exact :math:`\int_{t_0}^{t_1} \lambda(t)\,dt` for events in ``[t0, t1]`` (empty history before)."""
    ev = np.asarray(events, dtype=np.float64)
    return float(baseline * (t1 - t0) + alpha * np.sum(1.0 - np.exp(-beta * (t1 - ev))))


def hawkes_log_likelihood(
    events: Any, t0: float, t1: float, *, baseline: float, alpha: float, beta: float
) -> float:
    r"""Exact log-likelihood :math:`\sum_i \log\lambda(t_i) - \int_{t_0}^{t_1}\lambda\,dt`.

    Uses the O(N) recursion :math:`A_i = e^{-\beta(t_i - t_{i-1})}(1 + A_{i-1})`.

    Shapes: ``events [N]`` -> float.
    """
    ev = np.asarray(events, dtype=np.float64)
    ll = 0.0
    a = 0.0
    for i in range(ev.shape[0]):
        if i > 0:
            a = math.exp(-beta * (ev[i] - ev[i - 1])) * (1.0 + a)
        ll += math.log(baseline + alpha * beta * a)
    return ll - hawkes_compensator(ev, t0, t1, baseline=baseline, alpha=alpha, beta=beta)


def simulate_hawkes(
    *,
    num_series: int = 8,
    t1: float = 100.0,
    baseline: float = 0.2,
    alpha: float = 0.8,
    beta: float = 1.0,
    mark_probs: Optional[Any] = None,
    seed: int = 0,
) -> SyntheticData:
    """Exponential Hawkes event sequences on ``[0, t1]`` by Ogata thinning (exact).

    Between events the intensity decays, so its value just after the current time bounds it
    until the next event; candidates from that bound are kept with probability
    ``lambda(s) / bound``.

    Args:
        num_series: ``B`` sequences.
        t1: window end (the window is ``[0, t1]``).
        baseline, alpha, beta: ``mu``, branching ratio (``< 1``) and decay rate.
        mark_probs: optional probabilities of ``K`` i.i.d. categorical marks.
        seed: numpy seed.

    Returns:
        :class:`SyntheticData` whose series are events-only (rows at ``0`` and ``t1``, nothing
        observed) with ``events``/``marks``; ``truth`` holds the parameters,
        ``stationary_rate = baseline / (1 - alpha)`` and ``expected_count`` on ``[0, t1]``.

    Shapes:
        ``B`` series ``[2, 1]`` with ``events[i] [N_i]``.
    """
    B = _check_int("num_series", num_series)
    t1f = check_positive("t1", t1)
    mu = check_positive("baseline", baseline)
    alpha = check_positive("alpha", alpha, allow_zero=True)
    beta = check_positive("beta", beta)
    if alpha >= 1.0:
        raise BayesdynValueError(f"alpha (the branching ratio) must be < 1; got {alpha}")
    probs = None
    if mark_probs is not None:
        probs = np.asarray(mark_probs, dtype=np.float64).reshape(-1)
        if probs.size < 1 or (probs < 0).any() or not math.isclose(probs.sum(), 1.0):
            raise BayesdynValueError(f"mark_probs must be probabilities summing to 1; got {probs}")
    rng = np.random.default_rng(seed)
    events, marks = [], []
    for _ in range(B):
        t, excite, out = 0.0, 0.0, []  # excite = alpha*beta*sum exp(-beta (t - t_i)) at t+
        while True:
            bound = mu + excite
            w = rng.exponential(1.0 / bound)
            t += w
            if t > t1f:
                break
            excite *= math.exp(-beta * w)
            if rng.random() * bound <= mu + excite:
                out.append(t)
                excite += alpha * beta
        ev = np.array(out)
        events.append(ev)
        marks.append(
            np.zeros(ev.shape, dtype=np.int64)
            if probs is None
            else rng.choice(probs.size, size=ev.shape[0], p=probs)
        )
    series = _events_only_series(events, marks, t1f, 1 if probs is None else probs.size)
    kappa = beta * (1.0 - alpha)
    expected = mu * t1f / (1 - alpha) - mu * alpha / ((1 - alpha) * kappa) * (
        1 - math.exp(-kappa * t1f)
    )
    truth = dict(
        baseline=mu,
        alpha=alpha,
        beta=beta,
        mark_probs=None if probs is None else probs.tolist(),
        stationary_rate=mu / (1 - alpha),
        expected_count=expected,
    )
    return SyntheticData(series, truth)


def _events_only_series(events: list, marks: list, t1: float, num_marks: int):
    """Events-only series on ``[0, t1]``: rows at ``0`` and ``t1`` with nothing observed."""
    B = len(events)
    return IrregularTimeSeries(
        [np.array([0.0, t1])] * B,
        [np.zeros((2, 1))] * B,
        [np.zeros((2, 1), dtype=bool)] * B,
        channels=["value"],
        events=events,
        marks=marks,
        num_marks=num_marks,
        require_observed_channels=False,
    )


def self_correcting_intensity(t: Any, events: Any, *, mu: float, beta: float) -> np.ndarray:
    r"""Self-correcting intensity :math:`\exp(\mu t - \beta N(t^-))` (left limits at events).

    Shapes: ``t [Q]``, sorted ``events [N]`` -> ``[Q]``.
    """
    t = np.asarray(t, dtype=np.float64)
    n_before = np.searchsorted(np.asarray(events, dtype=np.float64), t, side="left")
    return np.exp(mu * t - beta * n_before)


def self_correcting_log_likelihood(
    events: Any, t0: float, t1: float, *, mu: float, beta: float
) -> float:
    r"""Exact log-likelihood on ``[t0, t1]`` (no events before ``t0``).

    :math:`\sum_i (\mu t_i - \beta (i-1)) - \sum_k e^{-\beta k}(e^{\mu s_{k+1}} -
    e^{\mu s_k})/\mu`, with :math:`s_0 = t_0 < s_1 = t_1 < \dots < s_{N+1} = t_1` the events
    between the window ends.

    Shapes: sorted ``events [N]`` -> float.
    """
    ev = np.asarray(events, dtype=np.float64)
    edges = np.concatenate([[t0], ev, [t1]])
    k = np.arange(edges.size - 1)
    comp = np.sum(np.exp(-beta * k) * (np.exp(mu * edges[1:]) - np.exp(mu * edges[:-1])) / mu)
    return float(np.sum(mu * ev - beta * np.arange(ev.size)) - comp)


def simulate_self_correcting(
    *, num_series: int = 8, t1: float = 100.0, mu: float = 0.5, beta: float = 0.2, seed: int = 0
) -> SyntheticData:
    r"""Self-correcting event sequences on ``[0, t1]``, exact by compensator inversion.

    After the ``n``-th event at ``s`` the compensator up to ``t`` is
    :math:`e^{-\beta n}(e^{\mu t} - e^{\mu s})/\mu`; with :math:`E \sim \mathrm{Exp}(1)` the
    next event is :math:`t = \log(e^{\mu s} + \mu E e^{\beta n})/\mu` (computed in log space).

    Args:
        num_series: ``B`` sequences.
        t1: window end (the window is ``[0, t1]``).
        mu, beta: growth rate of the log-intensity and its drop at each event (both > 0).
        seed: numpy seed.

    Returns:
        :class:`SyntheticData` with events-only series (as :func:`simulate_hawkes`); ``truth``
        holds ``mu``, ``beta`` and the long-run rate ``mu / beta``.

    Shapes:
        ``B`` series ``[2, 1]`` with ``events[i] [N_i]``.
    """
    B = _check_int("num_series", num_series)
    t1f = check_positive("t1", t1)
    mu = check_positive("mu", mu)
    beta = check_positive("beta", beta)
    rng = np.random.default_rng(seed)
    events = []
    for _ in range(B):
        s, out = 0.0, []
        while True:
            e = rng.exponential()
            # log(e^{mu s} + mu E e^{beta n}) = logaddexp(mu s, log(mu E) + beta n)
            s = float(np.logaddexp(mu * s, math.log(mu * e) + beta * len(out))) / mu
            if s > t1f:
                break
            out.append(s)
        events.append(np.array(out))
    marks = [np.zeros(ev.shape, dtype=np.int64) for ev in events]
    series = _events_only_series(events, marks, t1f, 1)
    return SyntheticData(series, dict(mu=mu, beta=beta, long_run_rate=mu / beta))
