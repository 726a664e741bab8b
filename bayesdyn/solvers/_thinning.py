r"""Point-process numerics: piecewise-linear intensities on a grid, the compensator, thinning.

An intensity "on the solver grid" is given per grid interval ``[t_k, t_{k+1}]`` by its values
at the two ends, ``start[k]`` (the right limit at ``t_k``) and ``end[k]`` (the left limit at
``t_{k+1}``), and is linear in between (``interpolation="linear"``) or log-linear
(``"log_linear"``: :math:`\lambda(t) = a^{1-w} b^{w}`, the interpolation that matches an
exponential link ``lambda = exp(W z)`` of a latent path that is linear on each step, exact for
an intensity that grows or decays exponentially between events). Separate ends let the intensity jump at grid points,
which is what happens at the events of a self-exciting process or of a latent state that
jumps at each event. An event at a grid point ``t_{k+1}`` reads the left limit ``end[k]``
(the intensity *before* the event's own jump).

For the piecewise-linear intensity the compensator :math:`\int \lambda\,dt` is the trapezoid
sum; for the log-linear one each interval contributes its length times the logarithmic mean
:math:`(b - a)/(\log b - \log a)` of its ends. Both are exact for their interpolation; :func:`trapezoid_error_estimate` estimates how far it is from the
integral of the smooth intensity whose grid values were given, and :func:`thinning_sample`
draws events exactly from it (Lewis–Shedler/Ogata thinning with a piecewise-constant bound).
:func:`simulate_jump_diffusion_events` simulates a diffusion whose state jumps at each event
while its intensity reads the state (Ogata thinning along the path).

References:
    1. Y. Ogata, "On Lewis' simulation method for point processes", IEEE Trans. Inf. Theory, 1981.
    2. J. Jia and A. R. Benson, "Neural Jump Stochastic Differential Equations", NeurIPS 2019.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from .._validation import BayesdynValueError

__all__ = [
    "INTERPOLATIONS",
    "JumpSimulation",
    "check_interpolation",
    "interpolate",
    "interval_mean",
    "interval_index",
    "piecewise_linear_at",
    "piecewise_linear_integral",
    "simulate_jump_diffusion_events",
    "thinning_sample",
    "trapezoid_error_estimate",
]


INTERPOLATIONS = ("linear", "log_linear")


def check_interpolation(interpolation: str) -> str:
    """Return ``interpolation`` if it is ``"linear"`` or ``"log_linear"``, else raise."""
    if interpolation not in INTERPOLATIONS:
        raise BayesdynValueError(
            f"interpolation must be one of {list(INTERPOLATIONS)}; got {interpolation!r}"
        )
    return interpolation


def interpolate(a: Tensor, b: Tensor, w: Tensor, interpolation: str = "linear") -> Tensor:
    """Value at fraction ``w`` of an interval with end values ``a``, ``b``.

    ``"linear"``: ``a + (b - a) w``; ``"log_linear"``: ``a^(1-w) b^w`` (``a``, ``b`` > 0).

    Shapes: broadcastable ``a``, ``b``, ``w`` -> their broadcast shape.
    """
    if interpolation == "linear":
        return a + (b - a) * w
    check_interpolation(interpolation)
    return a * torch.exp(w * (torch.log(b) - torch.log(a)))


def interval_mean(a: Tensor, b: Tensor, interpolation: str = "linear") -> Tensor:
    """Mean over an interval of the interpolant between end values ``a`` and ``b``.

    ``"linear"``: the arithmetic mean ``(a + b) / 2``. ``"log_linear"``: the logarithmic mean
    ``(b - a) / (log b - log a)`` (``a`` where ``a == b``), evaluated as
    ``a (e^x - 1) / x`` with ``x = log(b / a)`` and its Taylor series (to ``x^3``) for
    ``|x| < 1e-3``, so
    values and gradients stay finite and accurate when the ends nearly agree.

    Shapes: broadcastable ``a``, ``b`` -> their broadcast shape.
    """
    if interpolation == "linear":
        return 0.5 * (a + b)
    check_interpolation(interpolation)
    x = torch.log(b) - torch.log(a)
    small = x.abs() < 1e-3
    x_safe = torch.where(small, torch.ones_like(x), x)
    ratio = torch.where(
        small, 1.0 + x * (0.5 + x * (1.0 / 6.0 + x / 24.0)), torch.expm1(x_safe) / x_safe
    )
    return a * ratio


def interval_index(grid: Tensor, t: Tensor) -> Tensor:
    """Index ``k`` of the grid interval ``(t_k, t_{k+1}]`` holding each time (clamped).

    Times at ``grid[0]`` or before map to interval 0, times after ``grid[-1]`` to the last.
    A per-series grid ``[*gbatch, U]`` (one strictly increasing row per batch member,
    broadcasting against ``t``'s leading dimensions) is searched row by row.

    Shapes: ``grid [U]`` or ``[*gbatch, U]``, ``t [..., N]`` -> ``[..., N]`` (broadcast leading
    dimensions) long in ``[0, U-2]``.
    """
    if grid.dim() > 1:
        shape = torch.broadcast_shapes(grid.shape[:-1], t.shape[:-1])
        grid = grid.expand(*shape, grid.shape[-1]).contiguous()
        t = t.expand(*shape, t.shape[-1])
    k = torch.searchsorted(grid, t.contiguous(), right=False) - 1
    return k.clamp(0, max(grid.shape[-1] - 2, 0))


def _grid_take(x: Tensor, k: Tensor) -> Tensor:
    """``x[..., k]`` for a shared (``[U]``) or per-series (``[*gbatch, U]``) grid quantity.

    Shapes: ``x [U]`` or ``[*gbatch, U]``, ``k [..., N]`` -> ``[..., N]`` (broadcast).
    """
    if x.dim() == 1:
        return x[k]
    shape = torch.broadcast_shapes(x.shape[:-1], k.shape[:-1])
    return torch.gather(x.expand(*shape, x.shape[-1]), -1, k.expand(*shape, k.shape[-1]))


def piecewise_linear_at(
    grid: Tensor, start: Tensor, end: Tensor, t: Tensor, interpolation: str = "linear"
) -> Tensor:
    """Evaluate the piecewise intensity at times ``t`` (left limits at grid points).

    Args:
        grid: strictly increasing times.
        start, end: values at the left and right end of each interval.
        t: query times, per batch row.
        interpolation: ``"linear"`` or ``"log_linear"`` between the ends (see the module).

    Shapes:
        ``grid [U]`` (or per series ``[*gbatch, U]``), ``start``/``end [..., U-1, K]``,
        ``t [..., N]`` -> ``[..., N, K]``.
    """
    k = interval_index(grid, t)
    h = (grid[..., 1:] - grid[..., :-1]).to(start.dtype)
    w = ((t - _grid_take(grid, k)) / _grid_take(h, k)).clamp(0.0, 1.0).unsqueeze(-1)
    idx = k.unsqueeze(-1).expand(*k.shape, start.shape[-1])
    shape = torch.broadcast_shapes(idx.shape[:-2], start.shape[:-2])
    idx = idx.expand(*shape, *idx.shape[-2:])
    a = torch.gather(start.expand(*shape, *start.shape[-2:]), -2, idx)
    b = torch.gather(end.expand(*shape, *end.shape[-2:]), -2, idx)
    return interpolate(a, b, w, interpolation)


def piecewise_linear_integral(
    grid: Tensor,
    start: Tensor,
    end: Tensor,
    lo: Tensor | None = None,
    hi: Tensor | None = None,
    interpolation: str = "linear",
) -> Tensor:
    """Exact integral of the piecewise intensity over ``[lo, hi]`` (the compensator).

    Intervals are clipped to the window, so the window ends need not be grid points. A clipped
    interval's part is again linear (log-linear) between its interpolated ends, so each part
    contributes its length times :func:`interval_mean` of those ends.

    Args:
        grid: strictly increasing times.
        start, end: values at the left and right end of each interval.
        lo, hi: window per batch row (default: the whole grid).
        interpolation: ``"linear"`` or ``"log_linear"`` between the ends (see the module).

    Shapes:
        ``grid [U]`` (or per series ``[*gbatch, U]``), ``start``/``end [..., U-1, K]``,
        ``lo``/``hi [...]`` -> ``[..., K]``.
    """
    a, b = grid[..., :-1].to(start.dtype), grid[..., 1:].to(start.dtype)
    h = b - a
    if lo is None and hi is None:
        return (interval_mean(start, end, interpolation) * h.unsqueeze(-1)).sum(-2)
    lo_ = a[..., :1] if lo is None else torch.as_tensor(lo, dtype=start.dtype).unsqueeze(-1)
    hi_ = b[..., -1:] if hi is None else torch.as_tensor(hi, dtype=start.dtype).unsqueeze(-1)
    ca = torch.maximum(a, lo_)
    cb = torch.minimum(b, hi_)
    length = (cb - ca).clamp(min=0.0)
    wa = ((ca - a) / h).clamp(0, 1).unsqueeze(-1)
    wb = ((cb - a) / h).clamp(0, 1).unsqueeze(-1)
    va = interpolate(start, end, wa, interpolation)
    vb = interpolate(start, end, wb, interpolation)
    return (interval_mean(va, vb, interpolation) * length.unsqueeze(-1)).sum(-2)


def trapezoid_error_estimate(
    grid: Tensor,
    start: Tensor,
    end: Tensor,
    continuous: Tensor | None = None,
    interpolation: str = "linear",
) -> Tensor:
    r"""Estimated error ``exact - discretised`` of the compensator of a piecewise-smooth intensity.

    The trapezoid rule on an interval of length :math:`h` misses
    :math:`-h^3 f''(\xi)/12`. :math:`f''` is estimated by the second divided difference at each
    interior grid point where the intensity is continuous, averaged over the two ends of an
    interval (one end where the other is a jump; zero for an interval with jumps at both ends).
    For ``interpolation="log_linear"`` the same estimate is made for :math:`g = \log\lambda`,
    and an interval misses about :math:`\bar\lambda \cdot (-h^3 g''/12)` (first order in
    :math:`g - \hat g`, with :math:`\bar\lambda` the interval's mean intensity).
    Use it to check that the grid is fine enough: the discretised compensator is exact for the
    discretised (piecewise-linear or log-linear) model, and this estimates its distance to the
    smooth one.

    Args:
        grid: strictly increasing times.
        start, end: values at the ends of each interval.
        continuous: whether the intensity is continuous at each interior grid point (default:
            where ``end[k-1] == start[k]`` for every mark).
        interpolation: ``"linear"`` or ``"log_linear"`` (see the module).

    Shapes:
        ``grid [U]`` (or per series ``[*gbatch, U]``), ``start``/``end [..., U-1, K]``,
        ``continuous [..., U-2]`` -> ``[..., K]``.
    """
    if grid.shape[-1] < 3:
        return torch.zeros_like(start[..., 0, :])
    h = (grid[..., 1:] - grid[..., :-1]).to(start.dtype)  # [..., U-1]
    if continuous is None:
        continuous = (end[..., :-1, :] == start[..., 1:, :]).all(-1)
    fs, fe = (start, end) if interpolation == "linear" else (start.log(), end.log())
    # Second divided difference at interior point j (between intervals j-1 and j).
    f_prev, f_mid, f_next = fs[..., :-1, :], fs[..., 1:, :], fe[..., 1:, :]
    h0, h1 = h[..., :-1].unsqueeze(-1), h[..., 1:].unsqueeze(-1)
    d2 = 2.0 * ((f_next - f_mid) / h1 - (f_mid - f_prev) / h0) / (h0 + h1)  # [..., U-2, K]
    ok = continuous.unsqueeze(-1).to(start.dtype)
    d2 = d2 * ok
    zeros = torch.zeros_like(d2[..., :1, :])
    ok0 = torch.zeros_like(ok[..., :1, :])
    left_d, right_d = torch.cat([zeros, d2], -2), torch.cat([d2, zeros], -2)  # per interval
    left_ok, right_ok = torch.cat([ok0, ok], -2), torch.cat([ok, ok0], -2)
    f2 = (left_d + right_d) / (left_ok + right_ok).clamp(min=1.0)
    miss = -(h.unsqueeze(-1) ** 3) / 12.0 * f2
    if interpolation != "linear":
        miss = miss * interval_mean(start, end, interpolation)
    return miss.sum(-2)


def thinning_sample(
    grid: Tensor,
    start: Tensor,
    end: Tensor,
    lo: Tensor | None = None,
    hi: Tensor | None = None,
    *,
    interpolation: str = "linear",
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Draw marked events exactly from a piecewise intensity by thinning (no Python loop).

    On each grid interval (clipped to the window) candidates form a homogeneous Poisson process
    with the interval's bound ``max(start, end)`` of the total intensity; a candidate at ``t``
    is kept with probability ``lambda(t) / bound`` and gets mark ``k`` with probability
    ``lambda_k(t) / lambda(t)``. This is Lewis–Shedler thinning, exact for the piecewise-linear
    and the log-linear intensity (the total is linear, or a sum of exponentials, hence convex,
    on an interval, so its maximum is at an end).

    Args:
        grid: strictly increasing times.
        start, end: per-mark intensities (non-negative) at the ends of each interval.
        lo, hi: window per batch row (default: the whole grid).
        interpolation: ``"linear"`` or ``"log_linear"`` between the ends (see the module).
        generator: torch random generator.

    Returns:
        ``(times, marks, mask)``, padded to the largest count ``N`` (at least 1) with the window
        end, mark 0 and ``mask=False``; events of each row are sorted.

    Shapes:
        ``grid [U]`` (or per series ``[*gbatch, U]``, broadcasting against ``*batch``),
        ``start``/``end [*batch, U-1, K]``, ``lo``/``hi [*batch]`` -> ``times [*batch, N]``,
        ``marks [*batch, N]`` long, ``mask [*batch, N]`` bool.
    """
    batch = start.shape[:-2]
    U1, K = start.shape[-2:]
    dtype = start.dtype
    R = int(math.prod(batch))
    # One grid row per member (a view of a shared grid; a per-series grid is broadcast).
    g = grid.to(dtype)
    rows = g.expand(R, U1 + 1) if g.dim() == 1 else g.expand(*batch, U1 + 1).reshape(R, U1 + 1)
    a_t, b_t = rows[:, :-1], rows[:, 1:]
    lo_r = a_t[:, 0] if lo is None else torch.as_tensor(lo, dtype=dtype).expand(batch).reshape(R)
    hi_r = b_t[:, -1] if hi is None else torch.as_tensor(hi, dtype=dtype).expand(batch).reshape(R)
    s = start.reshape(R, U1, K)
    e = end.reshape(R, U1, K)
    if bool((s < 0).any()) or bool((e < 0).any()):
        raise BayesdynValueError("intensities must be non-negative for thinning")
    ca = torch.maximum(a_t, lo_r.unsqueeze(-1))  # [R, U-1]
    cb = torch.minimum(b_t, hi_r.unsqueeze(-1))
    length = (cb - ca).clamp(min=0.0)
    bound = torch.maximum(s.sum(-1), e.sum(-1))  # [R, U-1]
    with torch.no_grad():
        n_cand = torch.poisson(bound * length, generator=generator).long().reshape(-1)
    total = int(n_cand.sum())
    cell = torch.repeat_interleave(torch.arange(R * U1, device=grid.device), n_cand)
    row, k = cell // U1, cell % U1
    u = torch.rand(total, dtype=dtype, device=grid.device, generator=generator)
    tau = ca.reshape(-1)[cell] + u * length.reshape(-1)[cell]
    w = ((tau - a_t[row, k]) / (b_t[row, k] - a_t[row, k])).unsqueeze(-1)
    lam = interpolate(s[row, k], e[row, k], w, interpolation)  # [C, K]
    lam_tot = lam.sum(-1)
    keep = (
        torch.rand(total, dtype=dtype, device=grid.device, generator=generator) * bound[row, k]
        < lam_tot
    )
    tau, row, lam = tau[keep], row[keep], lam[keep]
    if tau.numel():
        marks = torch.multinomial(lam, 1, generator=generator).squeeze(-1)
    else:
        marks = torch.zeros(0, dtype=torch.long, device=grid.device)
    # Sort by (row, time): stable sort on time, then stable sort on row.
    order = torch.sort(tau, stable=True).indices
    order = order[torch.sort(row[order], stable=True).indices]
    tau, row, marks = tau[order], row[order], marks[order]
    counts = torch.bincount(row, minlength=R)
    N = max(1, int(counts.max()) if R else 1)
    offsets = torch.cumsum(counts, 0) - counts
    pos = torch.arange(tau.numel(), device=grid.device) - offsets[row]
    times = hi_r.unsqueeze(-1).expand(R, N).clone()
    mk = torch.zeros(R, N, dtype=torch.long, device=grid.device)
    mask = torch.zeros(R, N, dtype=torch.bool, device=grid.device)
    times[row, pos] = tau
    mk[row, pos] = marks
    mask[row, pos] = True
    return times.reshape(*batch, N), mk.reshape(*batch, N), mask.reshape(*batch, N)


class JumpSimulation(NamedTuple):
    """Output of :func:`simulate_jump_diffusion_events`.

    Shapes:
        - ``times``, ``marks``, ``mask``: ``[R, N]`` (padding: end time, mark 0, mask False)
        - ``grid_times``: ``[R, M+1]``; ``states``: ``[R, M+1, L]`` (left limits at grid times)
        - ``intensity``: ``[R, M+1, K]`` (left limits at grid times)
    """

    times: Tensor
    marks: Tensor
    mask: Tensor
    grid_times: Tensor
    states: Tensor
    intensity: Tensor


def simulate_jump_diffusion_events(
    drift_diffusion: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]],
    intensity: Callable[[Tensor], Tensor],
    jump: Callable[[Tensor, Tensor], Tensor],
    z0: Tensor,
    t_start: Tensor,
    t_end: Tensor,
    num_steps: int,
    *,
    max_events: int = 10_000,
    interpolation: str = "linear",
    generator: torch.Generator | None = None,
) -> JumpSimulation:
    r"""Simulate a diffusion whose state jumps at the events of a state-driven point process.

    Each row runs on its own clock from ``t_start`` to ``t_end`` over ``num_steps`` equal
    steps, split at every event. On a step from ``t`` to ``t + h`` the state proposal is the
    Euler–Maruyama move ``z' = z + f h + g \Delta W``; the intensity on the step is linear (or
    log-linear, see ``interpolation``) between ``lambda(z)`` and ``lambda(z')`` and candidate events come from Ogata thinning with
    the bound ``max(lambda(z), lambda(z'))``. At an accepted event ``s`` the state is
    ``z + f (s - t) + g \Delta W_s`` with ``\Delta W_s`` drawn from the Brownian bridge given
    ``\Delta W``, a mark is drawn with probabilities ``lambda_k(s)/lambda(s)``, the state jumps
    by ``jump(z_s, mark)`` and the clock restarts at ``s``. As the step shrinks this converges
    to the jump SDE :math:`dz = f dt + g dW + J(z_-, m) dN`.

    Args:
        drift_diffusion: ``(t [R], z [R, L]) -> (f, g)`` each ``[R, L]`` (diagonal noise).
        intensity: ``z [R, L] -> [R, K]`` non-negative per-mark intensities.
        jump: ``(z [R, L], marks [R] long) -> [R, L]`` state jump at an event.
        z0: state at ``t_start``.
        t_start, t_end: per-row simulation window.
        num_steps: ``M`` steps per row (the step is ``(t_end - t_start) / M``).
        max_events: cap on the events of one row (raises beyond it).
        interpolation: ``"linear"`` or ``"log_linear"`` intensity on a step (see the module).
        generator: torch random generator.

    Returns:
        :class:`JumpSimulation` with the events and the states/intensities at the step ends.

    Shapes:
        ``z0 [R, L]``, ``t_start``/``t_end [R]`` -> see :class:`JumpSimulation`.

    Raises:
        BayesdynValueError: if a row exceeds ``max_events`` or the state becomes non-finite.
    """
    R, L = z0.shape
    dtype, dev = z0.dtype, z0.device
    if not (isinstance(num_steps, int) and num_steps >= 1):
        raise BayesdynValueError(f"num_steps must be a positive integer; got {num_steps!r}")
    t_start = t_start.to(dtype).expand(R)
    t_end = t_end.to(dtype).expand(R)
    steps = torch.arange(num_steps + 1, dtype=dtype, device=dev) / num_steps
    grid_times = t_start.unsqueeze(-1) + (t_end - t_start).unsqueeze(-1) * steps  # [R, M+1]
    rows = torch.arange(R, device=dev)
    z = z0.clone()
    t = t_start.clone()
    nxt = torch.ones(R, dtype=torch.long, device=dev)  # index of the next grid time
    lam0 = intensity(z)
    K = lam0.shape[-1]
    states = z0.new_zeros(R, num_steps + 1, L)
    lam_grid = z0.new_zeros(R, num_steps + 1, K)
    states[:, 0] = z
    lam_grid[:, 0] = lam0
    # Event storage grows by doubling (a fixed [R, max_events] buffer would be mostly empty).
    cap = 16
    ev_t = t_end.unsqueeze(-1).expand(R, cap).clone()
    ev_m = torch.zeros(R, cap, dtype=torch.long, device=dev)
    count = torch.zeros(R, dtype=torch.long, device=dev)
    active = nxt <= num_steps
    while bool(active.any()):
        idx = rows[active]
        zi, ti = z[idx], t[idx]
        target = grid_times[idx, nxt[idx]]
        h = target - ti
        f, g = drift_diffusion(ti, zi)
        dw = torch.randn(zi.shape, dtype=dtype, device=dev, generator=generator)
        dw = dw * h.sqrt().unsqueeze(-1)
        z_prop = zi + f * h.unsqueeze(-1) + g * dw
        la, lb = intensity(zi), intensity(z_prop)
        bound = torch.maximum(la.sum(-1), lb.sum(-1))
        # Thinning along the step: candidates at rate `bound` until one is accepted or the
        # step ends. `pending` rows still draw candidates.
        s = ti.clone()
        accepted = torch.zeros(idx.shape, dtype=torch.bool, device=dev)
        pending = torch.ones(idx.shape, dtype=torch.bool, device=dev)
        while bool(pending.any()):
            p = pending.nonzero().squeeze(-1)
            e = torch.empty(p.shape, dtype=dtype, device=dev).exponential_(generator=generator)
            s[p] = s[p] + e / bound[p]
            past = s[p] > target[p]
            pending[p[past]] = False
            q = p[~past]
            if q.numel():
                w = ((s[q] - ti[q]) / h[q]).unsqueeze(-1)
                lam_s = interpolate(la[q], lb[q], w, interpolation).sum(-1)
                u = torch.rand(q.shape, dtype=dtype, device=dev, generator=generator)
                acc = u * bound[q] < lam_s
                accepted[q[acc]] = True
                pending[q[acc]] = False
        # Rows without an event complete the step.
        done = ~accepted
        di = idx[done]
        z[di] = z_prop[done]
        t[di] = target[done]
        states[di, nxt[di]] = z_prop[done]
        lam_grid[di, nxt[di]] = lb[done]
        nxt[di] += 1
        # Rows with an event: bridge to the event time, draw a mark, jump.
        if bool(accepted.any()):
            a = accepted.nonzero().squeeze(-1)
            ai = idx[a]
            frac = ((s[a] - ti[a]) / h[a]).clamp(0.0, 1.0).unsqueeze(-1)
            xi = torch.randn(dw[a].shape, dtype=dtype, device=dev, generator=generator)
            dw_s = frac * dw[a] + (frac * (1 - frac) * h[a].unsqueeze(-1)).sqrt() * xi
            z_s = zi[a] + f[a] * (s[a] - ti[a]).unsqueeze(-1) + g[a] * dw_s
            lam_s = interpolate(la[a], lb[a], frac, interpolation)
            mark = torch.multinomial(lam_s, 1, generator=generator).squeeze(-1)
            if bool((count[ai] >= max_events).any()):
                raise BayesdynValueError(
                    f"a simulated sequence exceeded max_events={max_events}; raise max_events "
                    "or check the intensity (it may be exploding)"
                )
            if int(count[ai].max()) >= cap:
                ev_t = torch.cat([ev_t, t_end.unsqueeze(-1).expand(R, cap)], -1)
                ev_m = torch.cat([ev_m, torch.zeros_like(ev_m)], -1)
                cap *= 2
            ev_t[ai, count[ai]] = s[a]
            ev_m[ai, count[ai]] = mark
            count[ai] += 1
            z[ai] = z_s + jump(z_s, mark)
            t[ai] = s[a]
        if not bool(torch.isfinite(z[idx]).all()):
            raise BayesdynValueError(
                "the simulated state became non-finite; try more steps (num_steps) or check "
                "the jump network"
            )
        active = nxt <= num_steps
    N = max(1, int(count.max()))
    mask = torch.arange(N, device=dev).unsqueeze(0) < count.unsqueeze(-1)
    return JumpSimulation(ev_t[:, :N], ev_m[:, :N], mask, grid_times, states, lam_grid)
