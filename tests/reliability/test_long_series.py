"""Long series in bounded memory: chunked truncated backprop through time (fit(chunk_size=N)).

Checks that the windows partition the observations exactly, that each window starts from the
state the previous window's posterior path reached at the boundary, that one window equals
ordinary training bit for bit, that a chunked run resumes exactly, and that a series of
100,000 observations trains with memory set by the window, not the series.
"""

from __future__ import annotations

import sys
from typing import NamedTuple

import numpy as np
import pytest
import torch

from bayesdyn import LatentSDE, fit
from bayesdyn._validation import BayesdynValueError
from bayesdyn.data import IrregularTimeSeries
from bayesdyn.inference import PathELBO
from bayesdyn.inference._chunked import ChunkedObjective, window_boundaries
from bayesdyn.models import PATH_SITE
from tests.common import lattice_ou


def small(**kw):
    torch.manual_seed(0)
    opts = dict(latent_dim=2, hidden_dim=8, context_dim=3, dt=0.25, diffusion_hidden_dim=4)
    return LatentSDE(1, **{**opts, **kw})


def ragged(seed=0):
    """Five series with random times of different spans (some start late, some end early)."""
    rng = np.random.default_rng(seed)
    times, values = [], []
    for n, lo, hi in [(9, 0.0, 4.0), (4, 2.0, 3.0), (12, 0.5, 6.0), (1, 5.0, 5.0), (7, 0.1, 1.0)]:
        t = np.sort(rng.uniform(lo, hi, n)) if n > 1 else np.array([lo])
        times.append(np.unique(np.round(t, 3)))
        values.append(rng.normal(size=(times[-1].size, 1)))
    return IrregularTimeSeries(times, values)


def test_windows_partition_the_observations():
    s = ragged()
    batch = s.to_batch()
    obj = ChunkedObjective(small(), batch, chunk_size=5, elbo=PathELBO())
    tau = obj.tau
    assert tau[0] == s.t_min and tau[-1] == s.t_max and np.all(np.diff(tau) > 0)
    seen = []
    for k in range(obj.num_windows):
        wb, keep = obj.window(k)
        lo, hi = tau[k], tau[k + 1]
        for i, b in enumerate(keep):
            n = int(wb.lengths[i])
            t, m, v = (
                wb.times[i, :n].numpy(),
                wb.mask[i, :n, 0].numpy(),
                wb.values[i, :n, 0].numpy(),
            )
            assert np.all(t <= hi) and (k == 0 or np.all(t > lo))
            if s.times[b][-1] > hi:  # a continuing series ends exactly on the boundary
                assert t[-1] == hi
            seen += [
                (int(b), float(tt), float(vv)) for tt, mm, vv in zip(t, m, v, strict=True) if mm
            ]
            # boundary rows that are not observations are masked
            real = set(s.times[b].tolist())
            assert all(mm == (tt in real) for tt, mm in zip(t, m, strict=True))
        # series that ended before the window are not carried along
        assert all(s.times[b][-1] > lo or k == 0 for b in keep)
    expect = [
        (b, float(t), float(v))
        for b in range(len(s))
        for t, v in zip(s.times[b], s.values[b][:, 0], strict=True)
    ]
    assert sorted(seen) == sorted(expect)  # every observation exactly once
    assert obj.num_windows == len(window_boundaries(batch, 5)) - 1


def test_each_window_starts_from_the_carried_state():
    s = lattice_ou(num_series=3, num_obs=12, t1=3.0, spacing=0.25, seed=4)[0]
    model = small()
    obj = ChunkedObjective(model, s.to_batch(), chunk_size=8, elbo=PathELBO())
    assert obj.num_windows >= 3
    guides = []
    get_traces = obj.elbo._get_traces

    def spy(*args, **kwargs):  # record the guide trace of each window
        for model_tr, guide_tr in get_traces(*args, **kwargs):
            guides.append(guide_tr)
            yield model_tr, guide_tr

    obj.elbo._get_traces = spy
    for k in range(3):
        carry = None if obj.carry is None else obj.carry.clone()
        obj(k, 1.0)
        site = guides[-1].nodes[PATH_SITE]
        grid = site["fn"].grid
        assert float(grid[0]) == pytest.approx(obj.tau[k])  # the window's grid starts at tau_k
        _, keep = obj.window(k)
        if k > 0:
            z0 = site["value"][..., 0, 0, :]  # first grid point of each series' path
            assert torch.equal(z0, carry[torch.as_tensor(keep)])
            assert "z0" not in guides[-1].nodes  # no initial-state site after the first window
        else:
            assert "z0" in guides[-1].nodes
        end = site["value"][..., 0, -1, :]
        assert torch.equal(obj.carry[torch.as_tensor(keep)], end.detach())


def test_one_window_is_ordinary_training():
    s = lattice_ou(num_series=4, num_obs=6, t1=2.0, spacing=0.25, seed=5)[0]
    a, b = small(), small()
    ra = fit(a, s, num_steps=4, seed=2, progress=False)
    rb = fit(b, s, num_steps=4, seed=2, progress=False, chunk_size=10**6)
    assert [h["loss"] for h in ra.history] == [h["loss"] for h in rb.history]
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k


def test_chunked_resume_equals_uninterrupted(tmp_path):
    s = lattice_ou(num_series=2, num_obs=16, t1=4.0, spacing=0.25, seed=6)[0]
    kw = dict(chunk_size=6, seed=1, progress=False, checkpoint_every=2)
    full = small()
    fit(full, s, num_steps=7, checkpoint_dir=tmp_path / "a", **kw)
    part = small()
    fit(part, s, num_steps=3, checkpoint_dir=tmp_path / "b", **kw)  # position and carry saved
    resumed = small()
    fit(resumed, s, num_steps=7, checkpoint_dir=tmp_path / "b", resume=True, **kw)
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_chunk_size_is_checked():
    s = lattice_ou(num_series=2, num_obs=4, seed=0)[0]
    with pytest.raises(BayesdynValueError, match="chunk_size must be a positive integer; got 0"):
        fit(small(), s, num_steps=1, chunk_size=0, progress=False)
    with pytest.raises(BayesdynValueError, match="one particle per step"):
        fit(small(), s, num_steps=1, chunk_size=3, num_particles=2, progress=False)

    class OtherBatch(NamedTuple):  # a batch type with more to it (like JumpBatch's events)
        times: torch.Tensor
        values: torch.Tensor
        mask: torch.Tensor
        lengths: torch.Tensor
        covariates: None = None

    other = OtherBatch(*s.to_batch()[:4])
    with pytest.raises(BayesdynValueError, match="supports plain IrregularBatch data"):
        fit(small(), other, num_steps=1, chunk_size=3, progress=False)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_100k_observations_train_in_bounded_memory():
    T = 100_000
    rng = np.random.default_rng(0)
    t = np.arange(1, T + 1) * 0.05
    x = np.sin(0.3 * t) + 0.1 * rng.normal(size=T)
    s = IrregularTimeSeries([t], [x[:, None]])
    model = small(dt=0.05)
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pytest.skip("cannot reset the RSS high-water mark here")
    rss0 = _status_kib("VmRSS")
    r = fit(model, s, num_steps=3, chunk_size=100, progress=False)
    peak_mib = (_status_kib("VmHWM") - rss0) / 1024
    assert r.num_steps == 3 and all(np.isfinite(h["loss"]) for h in r.history)
    obj = ChunkedObjective(model, s.to_batch(), chunk_size=100, elbo=PathELBO())
    assert obj.num_windows == 1000
    sizes = {obj.window(k)[0].times.shape[1] for k in (0, 1, 500, 999)}
    assert sizes == {100}  # every window holds 100 rows, wherever it lies in the series
    # Memory is set by the window: the data (100k rows) plus one window's graph. Backprop
    # through the whole series would keep ~100k solver steps of activations (GBs; see
    # benchmarks/bench_memory.py for the measured numbers).
    assert peak_mib < 150, peak_mib


def test_cli_chunk_size(tmp_path):
    from bayesdyn.inference import load_checkpoint
    from tests.reliability._cli import TINY, run_in_process, write_tiny_csv

    data = write_tiny_csv(tmp_path / "d.csv", num_series=3)
    argv = ["fit", str(data), "--out", str(tmp_path / "run"), *TINY, "--steps", "3"]
    assert run_in_process(*argv, "--chunk-size", "5", "--val-fraction", "0") == 0
    ck = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ck["schedule"]["chunk_size"] == 5 and ck["data_order"]["position"] == 3
