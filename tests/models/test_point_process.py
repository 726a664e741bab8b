"""TemporalPointProcess: exact Poisson/Hawkes likelihoods, compensator convergence, thinning."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from scipy import stats

from bayesdyn._validation import BayesdynValueError
from bayesdyn.data import (
    IrregularTimeSeries,
    hawkes_intensity,
    hawkes_log_likelihood,
    simulate_hawkes,
)
from bayesdyn.models import TemporalPointProcess
from bayesdyn.solvers import make_union_grid
from tests.conftest import TEST_FAILURE_RATE

Z_CRIT = stats.norm.ppf(1 - TEST_FAILURE_RATE / 2)


def _value(times, marks=None):
    t = torch.tensor(np.array(times, dtype=np.float64))
    m = torch.zeros_like(t) if marks is None else torch.as_tensor(marks, dtype=torch.float64)
    return torch.stack([t, m], -1)


def test_poisson_log_prob_is_exact():
    grid = torch.tensor([0.0, 0.7, 2.0, 5.0])
    lam = torch.full((4, 1), 1.3)
    tpp = TemporalPointProcess(grid, lam)
    ev = [0.2, 0.7, 3.1, 4.9]
    assert float(tpp.log_prob(_value(ev))) == pytest.approx(4 * math.log(1.3) - 1.3 * 5.0)
    # marked: sum of log lambda_{m_i} minus the total compensator
    lam2 = torch.tensor([0.4, 1.1]).expand(4, 2)
    tpp2 = TemporalPointProcess(grid, lam2)
    lp = tpp2.log_prob(_value(ev, [0, 1, 1, 0]))
    assert float(lp) == pytest.approx(2 * math.log(0.4) + 2 * math.log(1.1) - 1.5 * 5.0)


def test_linear_intensity_partial_window_is_exact():
    # lambda(t) = a + b t is linear, so the piecewise-linear representation is exact, and a
    # window that does not end on grid points is integrated exactly too.
    a, b = 0.5, 0.3
    grid = torch.arange(0.0, 6.0)
    lam = (a + b * grid).unsqueeze(-1)
    lo, hi = 0.3, 4.7
    tpp = TemporalPointProcess(grid, lam, window=torch.tensor([lo, hi]))
    ev = [0.31, 2.5, 4.69]
    exact = sum(math.log(a + b * t) for t in ev) - (a * (hi - lo) + b / 2 * (hi**2 - lo**2))
    assert float(tpp.log_prob(_value(ev))) == pytest.approx(exact, rel=1e-12)
    assert float(tpp.intensity_at(torch.tensor([2.5]))[0, 0]) == pytest.approx(a + b * 2.5)


def _hawkes_tpp(ev: np.ndarray, t1: float, dt: float, kw: dict) -> TemporalPointProcess:
    """The Hawkes intensity on a grid holding the events: left limits at interval ends, right
    limits (including the event's own excitation) at interval starts."""
    knots = torch.tensor(np.r_[ev, t1]).unsqueeze(0)
    grid = make_union_grid(knots, dt=dt, t0=0.0).grid
    g = grid.numpy()
    left = hawkes_intensity(g, ev, **kw)
    right = left + kw["alpha"] * kw["beta"] * np.isin(g, ev)
    start = torch.as_tensor(right[:-1]).unsqueeze(-1)
    end = torch.as_tensor(left[1:]).unsqueeze(-1)
    return TemporalPointProcess(grid, start=start, end=end)


def test_hawkes_log_prob_converges_with_order_two_and_error_estimate():
    kw = dict(baseline=0.5, alpha=0.6, beta=1.5)
    d = simulate_hawkes(num_series=1, t1=20.0, seed=4, **kw)
    ev = d.series.events[0]
    assert ev.size > 5
    exact = hawkes_log_likelihood(ev, 0.0, 20.0, **kw)
    dts = [0.4, 0.2, 0.1, 0.05]
    errs, ests = [], []
    for dt in dts:
        tpp = _hawkes_tpp(ev, 20.0, dt, kw)
        lp = float(tpp.log_prob(_value(ev)))
        errs.append(exact - lp)
        # exact - trapezoid log-likelihood = -(exact - trapezoid compensator)
        ests.append(-float(tpp.compensator_error()))
    errs, ests = np.array(errs), np.array(ests)
    # log lambda(t_i) is exact (events are grid points); only the compensator errs, and the
    # trapezoid rule on a convex intensity overestimates it: the error is positive.
    assert (errs > 0).all() and (np.diff(np.abs(errs)) < 0).all()
    slope = np.polyfit(np.log(dts), np.log(errs), 1)[0]
    # Trapezoid error is C h^2 + O(h^3): with beta*h <= 0.6 the fitted order lies within 0.2
    # of 2 (the O(h^3) term shifts the fit by about beta*h/4).
    assert abs(slope - 2.0) < 0.2
    # The divided-difference estimate matches the true error to O(beta h) relative accuracy.
    rel = np.abs(ests - errs) / errs
    assert rel[-1] < 2 * 1.5 * 0.05 and rel[-1] < rel[0]
    tpp = _hawkes_tpp(ev, 20.0, 0.05, kw)
    tpp.check_compensator(rtol=1e-3)
    with pytest.raises(BayesdynValueError, match="exceeds rtol=1e-06; use a finer grid"):
        tpp.check_compensator(rtol=1e-6)


def _sine_tpp(batch=(), window=None):
    grid = torch.linspace(0.0, 8.0, 161)
    lam0 = 1.0 + 0.8 * torch.sin(2 * grid)
    lam1 = 0.5 + 0.4 * torch.cos(grid)
    lam = torch.stack([lam0, lam1], -1).expand(*batch, 161, 2)
    return TemporalPointProcess(grid, lam, window=window)


def test_thinning_sample_time_rescaling_counts_and_marks():
    tpp = _sine_tpp()
    torch.manual_seed(0)
    v = tpp.sample((600,))
    assert v.shape[:-2] == (600,) and v.shape[-1] == 2
    t, m = v[..., 0], v[..., 1]
    valid = m >= 0
    counts = valid.sum(-1).double()
    total = float(tpp.compensator())
    # counts ~ Poisson(total): mean and variance agree (z-test on the mean with sd sqrt(total/n))
    assert abs(float(counts.mean()) - total) < Z_CRIT * math.sqrt(total / 600)
    # Time rescaling with the deterministic compensator: given N, Lambda(t_i)/Lambda(T) are
    # i.i.d. uniform.
    grid = tpp.grid
    lam_tot = (tpp.start + tpp.end).sum(-1) / 2 * (grid[1:] - grid[:-1])
    cum = torch.cat([torch.zeros(1), torch.cumsum(lam_tot, 0)])
    k = torch.searchsorted(grid, t[valid].contiguous()).clamp(1, 160) - 1
    frac = (t[valid] - grid[k]) / (grid[k + 1] - grid[k])
    a = tpp.start.sum(-1)[k]
    b = tpp.end.sum(-1)[k]
    h = grid[k + 1] - grid[k]
    # integral of the linear intensity from grid[k] to t
    part = 0.5 * (a + a + (b - a) * frac) * h * frac
    u = ((cum[k] + part) / total).numpy()
    assert stats.kstest(u, "uniform").pvalue > TEST_FAILURE_RATE
    # Negative control: uniform times (a constant intensity) are rejected.
    assert stats.kstest(t[valid].numpy() / 8.0, "uniform").pvalue < TEST_FAILURE_RATE
    # marks: P(mark 1) = Lambda_1 / Lambda overall (binomial test)
    comp_k = (tpp.start + tpp.end) / 2 * (grid[1:] - grid[:-1]).unsqueeze(-1)
    p1 = float(comp_k[:, 1].sum() / comp_k.sum())
    n = int(valid.sum())
    p1_hat = float((m[valid] == 1).double().mean())
    assert abs(p1_hat - p1) < Z_CRIT * math.sqrt(p1 * (1 - p1) / n)


def test_pyro_site_with_ragged_padded_events_and_masks():
    s = IrregularTimeSeries(
        [np.array([0.0, 8.0]), np.array([1.0, 6.0])],
        [np.zeros(2), np.zeros(2)],
        [np.zeros(2, bool), np.zeros(2, bool)],
        events=[[0.5, 2.0, 7.5], [3.0]],
        marks=[[1, 0, 1], [0]],
        require_observed_channels=False,
    )
    eb = s.to_event_batch(dtype=torch.float64)
    value = eb.to_value()  # [2, 3, 2] with padding in series 1

    def model(mask=True):
        with pyro.plate("series", 2, dim=-1), poutine.mask(mask=mask):
            return pyro.sample("events", _sine_tpp((2,), eb.window), obs=value)

    tr = poutine.trace(model).get_trace()
    tr.compute_log_prob()
    site = tr.nodes["events"]
    single0 = _sine_tpp(window=eb.window[0]).log_prob(value[0])
    single1 = _sine_tpp(window=eb.window[1]).log_prob(value[1, :1])
    assert torch.allclose(site["log_prob"], torch.stack([single0, single1]))
    # a masked series does not count
    tr = poutine.trace(model).get_trace(torch.tensor([True, False]))
    assert float(tr.log_prob_sum()) == pytest.approx(float(single0))
    # sampled as a latent site with a fixed event shape (Predictive needs one)
    tpp = TemporalPointProcess(
        _sine_tpp().grid, start=_sine_tpp().start, end=_sine_tpp().end, max_events=60
    )
    pred = pyro.infer.Predictive(
        lambda: pyro.sample("ev", tpp), num_samples=5, parallel=True, return_sites=["ev"]
    )()
    assert pred["ev"].shape == (5, 60, 2)
    assert tpp.event_shape == (60, 2)


@pytest.mark.parametrize(
    "value, match",
    [
        (_value([1.0, 0.5]), r"must be sorted \(strictly increasing\); event 1 at t=0.5"),
        (_value([1.0, 9.0]), r"outside \[0, 8\]"),
        (_value([1.0], [2.0]), r"marks must be integers in \[0, num_marks=2\)"),
        (_value([1.0], [0.5]), "marks must be integers"),
        (_value([1.0, 2.0], [-1.0, 0.0]), "padding .* must come after all real events"),
        (torch.ones(3), r"events must have shape \[..., N, 2\]"),
    ],
)
def test_bad_event_values(value, match):
    with pytest.raises(BayesdynValueError, match=match):
        _sine_tpp().log_prob(value)


def test_bad_constructor_arguments():
    grid = torch.linspace(0, 1, 5)
    with pytest.raises(BayesdynValueError, match="must be finite and non-negative"):
        TemporalPointProcess(grid, -torch.ones(5, 1))
    with pytest.raises(BayesdynValueError, match="intensity has 4 grid points, grid has 5"):
        TemporalPointProcess(grid, torch.ones(4, 1))
    with pytest.raises(BayesdynValueError, match="window must lie inside the grid"):
        TemporalPointProcess(grid, torch.ones(5, 1), window=torch.tensor([0.0, 2.0]))
    with pytest.raises(BayesdynValueError, match="grid must be strictly increasing"):
        TemporalPointProcess(torch.tensor([0.0, 1.0, 1.0]), torch.ones(3, 1))
    with pytest.raises(BayesdynValueError, match="pass intensity, or both start and end"):
        TemporalPointProcess(grid, start=torch.ones(4, 1))


def test_gradients_flow_to_the_intensity():
    grid = torch.linspace(0, 4, 9)
    rate = torch.tensor(0.7, requires_grad=True)
    tpp = TemporalPointProcess(grid, rate.expand(9, 1))
    lp = tpp.log_prob(_value([0.5, 1.0, 3.0]))
    (g,) = torch.autograd.grad(lp, rate)
    assert float(g) == pytest.approx(3 / 0.7 - 4.0)  # d/dr (3 log r - 4 r)
