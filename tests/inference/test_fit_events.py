"""``bayesdyn.fit(..., batch_size=...)`` on event data: mini-batches keep their events."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bayesdyn._validation import BayesdynValueError
from bayesdyn.data import IrregularTimeSeries, simulate_hawkes
from bayesdyn.inference import PathELBO, fit
from bayesdyn.inference.fit import _MinibatchObjective
from bayesdyn.models import LatentJumpSDE

HAWKES = dict(baseline=0.2, alpha=0.8, beta=1.0)


def _series():
    # Five sequences with different event counts and windows, one with observed values.
    rng = np.random.default_rng(1)
    times = [np.array([0.0, 4.0 + i]) for i in range(5)]
    events = [np.sort(rng.uniform(0.1, 3.9 + i, n)) for i, n in enumerate([3, 0, 6, 1, 4])]
    values = [np.zeros((2, 1)) for _ in range(5)]
    mask = [np.zeros((2, 1), dtype=bool) for _ in range(5)]
    marks = [rng.integers(0, 2, e.shape[0]) for e in events]
    return IrregularTimeSeries(
        times,
        values,
        mask,
        events=events,
        marks=marks,
        num_marks=2,
        require_observed_channels=False,
    )


def _same_events(a, b):
    assert a.num_marks == b.num_marks
    for x, y in zip(a[:5], b[:5], strict=True):
        assert x.shape == y.shape and torch.equal(x, y)


def test_jump_batch_subset_equals_the_batch_of_the_subset():
    s = _series()
    batch = s.to_jump_batch()
    for idx in ([2, 0], [1], [4, 3, 1]):
        sub = batch.subset(torch.tensor(idx))
        ref = s[idx].to_jump_batch()
        for x, y in zip(sub[:4], ref[:4], strict=True):
            assert torch.equal(x, y)
        _same_events(sub.events, ref.events)
    # a subset whose series have no events keeps one padding column, as pad_events does
    empty = batch.subset(torch.tensor([1]))
    assert empty.events.times.shape == (1, 1) and not bool(empty.events.mask.any())


def test_fit_minibatches_carry_the_events():
    s = _series()
    batch = s.to_jump_batch()
    m = LatentJumpSDE(num_marks=2, latent_dim=2, hidden_dim=8, context_dim=4, dt=0.5)
    obj = _MinibatchObjective(m, batch, 2, PathELBO(max_plate_nesting=2), seed=3)
    # The mini-batch order is randperm of the objective's own generator (seeded 3).
    expect = torch.randperm(5, generator=torch.Generator().manual_seed(3))[:2]
    mb, _ = obj.minibatch()
    _same_events(mb.events, s[expect.tolist()].to_jump_batch().events)
    # Before the hook fit's mini-batches were plain IrregularBatches and the model raised
    # "batch carries no events"; now training on mini-batches runs and the event-only
    # parameters (the jump network) receive gradients.
    d = simulate_hawkes(num_series=6, t1=8.0, seed=0, **HAWKES)
    hb = d.series.to_jump_batch()
    m2 = LatentJumpSDE(latent_dim=2, hidden_dim=8, context_dim=4, dt=0.5, init_intensity=0.5)
    before = m2.jump_net.net[-1].weight.detach().clone()
    res = fit(m2, hb, num_steps=3, batch_size=2, lr=0.01, seed=0, progress=False)
    assert res.num_steps == 3 and all(np.isfinite(h["loss"]) for h in res.history)
    assert not torch.equal(m2.jump_net.net[-1].weight.detach(), before)


def test_fit_on_the_series_without_events_still_says_how():
    m = LatentJumpSDE(latent_dim=2, hidden_dim=8, context_dim=4)
    with pytest.raises(BayesdynValueError, match=r"no events; build it with .*to bayesdyn.fit"):
        fit(m, _series()[[0, 2]].to_batch(), num_steps=1, batch_size=1, progress=False)
