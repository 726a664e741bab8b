"""Shared pieces of the property-based tests: the fixed hypothesis profile and the oracle.

Every constructor or loader call must end in exactly one of two ways: a valid
:class:`IrregularTimeSeries` whose ``to_batch()`` round trip keeps every observed value
exactly, or bayesdyn's named ``BayesdynValueError`` / ``BayesdynTypeError``. Any other
exception propagates and fails the test (it is a bug).
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import HealthCheck, event, settings

from bayesdyn._validation import BayesdynTypeError, BayesdynValueError
from bayesdyn.data import IrregularTimeSeries

#: Fixed profile: derandomised (the same examples on every run and machine), bounded so that a
#: test runs in seconds, no deadline (CPU is shared), no example database written to the repo.
FUZZ = settings(
    derandomize=True,
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

NAMED_ERRORS = (BayesdynValueError, BayesdynTypeError)


def outcome(build):
    """Run ``build()``; return the series, or None after one of the named errors.

    The named error must carry a message (it names the argument and what was wrong).
    """
    try:
        s = build()
    except NAMED_ERRORS as e:
        assert str(e).strip(), f"{type(e).__name__} without a message"
        event(f"outcome: {type(e).__name__}")
        return None
    event("outcome: valid")
    assert isinstance(s, IrregularTimeSeries), type(s)
    check_round_trip(s)
    return s


def check_round_trip(s: IrregularTimeSeries) -> None:
    """``to_batch()`` -> ``from_batch`` keeps times, masks and observed values bit for bit.

    Also checks the float32 batch: it either raises a named error or holds exactly the float32
    rounding of the observed values, finite, with strictly increasing times on valid rows.
    """
    b = s.to_batch(dtype=torch.float64)
    assert b.times.shape[0] == len(s) and b.values.shape[-1] == s.obs_dim
    back = IrregularTimeSeries.from_batch(b, ids=s.ids, channels=s.channels)
    assert back.ids == s.ids and back.channels == s.channels
    for i in range(len(s)):
        t, v, m = s.times[i], s.values[i], s.mask[i]
        assert np.array_equal(back.times[i], t)
        assert np.array_equal(back.mask[i], m)
        assert np.array_equal(back.values[i][m], v[m])
        n = t.shape[0]
        assert np.array_equal(b.values[i, :n].numpy()[m], v[m])
        assert not b.mask[i, n:].any()
    if s.covariates is not None:
        for i in range(len(s)):
            assert np.array_equal(back.covariates[i], s.covariates[i])
    try:
        b32 = s.to_batch(dtype=torch.float32)
    except NAMED_ERRORS:
        return
    for i in range(len(s)):
        n = s.lengths[i]
        t32 = b32.times[i, :n]
        assert bool(torch.isfinite(t32).all())
        assert bool((t32[1:] > t32[:-1]).all()), "float32 batch times collapsed"
        m = torch.from_numpy(np.array(s.mask[i]))
        v32 = b32.values[i, :n][m]
        assert bool(torch.isfinite(v32).all()), "float32 batch has non-finite observed values"
        assert torch.equal(v32, torch.from_numpy(np.array(s.values[i]))[m].to(torch.float32))
