"""Event times and marks on IrregularTimeSeries, the point-process loader, jump generators."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from bayesdyn._validation import BayesdynTypeError, BayesdynValueError
from bayesdyn.data import (
    IrregularTimeSeries,
    JumpBatch,
    hawkes_compensator,
    hawkes_intensity,
    hawkes_log_likelihood,
    load_point_process,
    merton_log_density,
    read_event_sequences,
    read_events_csv,
    simulate_hawkes,
    simulate_merton,
    write_events_csv,
)
from tests.conftest import TEST_FAILURE_RATE

# Two-sided normal quantile at the suite's false-alarm budget (about 3.29).
Z_CRIT = stats.norm.ppf(1 - TEST_FAILURE_RATE / 2)


def _two_series(**kw):
    times = [np.array([0.0, 1.0, 5.0]), np.array([0.0, 2.0])]
    return IrregularTimeSeries(times, [np.zeros(3), np.ones(2)], **kw)


def test_events_round_trip_batch_and_value():
    s = _two_series(events=[[0.5, 3.0], []], marks=[[0, 2], []])
    assert s.num_marks == 3
    assert s.windows == [(0.0, 5.0), (0.0, 2.0)]
    eb = s.to_event_batch(dtype=torch.float64)
    assert eb.times.shape == (2, 2) and eb.counts.tolist() == [2, 0]
    assert eb.mask.tolist() == [[True, True], [False, False]]
    # padding repeats the window end, so times stay non-decreasing
    assert eb.times[1].tolist() == [2.0, 2.0]
    v = eb.to_value()
    assert v.shape == (2, 2, 2)
    assert v[0, :, 1].tolist() == [0.0, 2.0] and v[1, :, 1].tolist() == [-1.0, -1.0]
    jb = s.to_jump_batch(dtype=torch.float64)
    assert isinstance(jb, JumpBatch)
    # the IrregularBatch part is unchanged
    b = s.to_batch(dtype=torch.float64)
    for name in ("times", "values", "mask", "lengths"):
        assert torch.equal(getattr(jb, name), getattr(b, name))


def test_subsets_and_standardize_keep_events():
    s = _two_series(events=[[0.5, 3.0], [1.5]], marks=[[1, 0], [1]])
    sub = s[[1]]
    assert [e.tolist() for e in sub.events] == [[1.5]] and sub.marks[0].tolist() == [1]
    assert sub.num_marks == 2
    scaled, _ = s.standardize()
    assert [e.tolist() for e in scaled.events] == [[0.5, 3.0], [1.5]]
    s2 = _two_series(events=[[0.5, 5.0], [0.0, 2.0]])
    past, future = s2.split_time(1.5)
    assert [e.tolist() for e in past.events] == [[0.5], [0.0]]
    assert [e.tolist() for e in future.events] == [[5.0], [2.0]]
    assert "events=3" in repr(s)


def test_split_time_refuses_to_drop_events():
    s = _two_series(events=[[0.5, 3.0], []])
    with pytest.raises(BayesdynValueError, match="event at 3 lies between the last row"):
        s.split_time(1.5)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(events=[[0.5, 0.2], []]), r"series 0: event times must be sorted .*events\[1\]=0.2"),
        (dict(events=[[0.5, 0.5], []]), r"series 0: event times repeat; events\[1\]=0.5"),
        (dict(events=[[], [2.5]]), r"series 1: events must lie in the observation window \[0, 2\]"),
        (dict(events=[[-0.1], []]), r"events\[0\]=-0.1"),
        (dict(events=[[1.0], []], marks=[[2], []], num_marks=2), r"marks must lie in \[0, num_marks=2\); marks\[0\]=2"),
        (dict(events=[[1.0], []], marks=[[-1], []]), r"marks must lie in \[0"),
        (dict(events=[[1.0], []], marks=[[0, 1], []]), "marks has 2 entries but events has 1"),
        (dict(events=[[1.0]]), r"events must hold one array per series \(2\); got 1"),
        (dict(events=[[np.inf], []]), "event times must be finite"),
        (dict(marks=[[0], []]), "marks/num_marks were given but events is None"),
        (dict(events=[[1.0], []], num_marks=0), "num_marks must be a positive integer"),
    ],
)  # fmt: skip
def test_event_validation_messages(kw, match):
    with pytest.raises(BayesdynValueError, match=match):
        _two_series(**kw)


def test_event_type_errors():
    with pytest.raises(BayesdynTypeError, match=r"series 0: marks must be integers; got 0.5"):
        _two_series(events=[[1.0], []], marks=[[0.5], []])
    with pytest.raises(BayesdynTypeError, match="events must be a sequence"):
        _two_series(events="0.5")
    with pytest.raises(BayesdynValueError, match="has no events"):
        _two_series().to_event_batch()


def test_loader_reads_the_benchmark_format(tmp_path):
    p = tmp_path / "pp.csv"
    # leading spaces, fixed-width columns, a trailing ';' per line and an empty sequence, as
    # in the benchmark files
    p.write_text("    1.377220    3.718272   4.5;\n;\n   0.25\n")
    seqs = read_event_sequences(p)
    assert [s.tolist() for s in seqs] == [[1.37722, 3.718272, 4.5], [], [0.25]]
    s = load_point_process(p, window=(0.0, 10.0))
    assert len(s) == 3 and s.windows[0] == (0.0, 10.0)
    assert not any(m.any() for m in s.mask)
    eb = s.to_event_batch()
    assert eb.counts.tolist() == [3, 0, 1]


def test_loader_errors(tmp_path):
    with pytest.raises(BayesdynValueError, match="file not found"):
        read_event_sequences(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("1.0 2.0\n3.0 x4\n")
    with pytest.raises(BayesdynValueError, match=r"line 2: expected event times .* token 'x4'"):
        read_event_sequences(bad)
    bad.write_text("1.0; 2.0\n")  # ';' only terminates a line
    with pytest.raises(BayesdynValueError, match=r"line 1: expected event times .* token '1.0;'"):
        read_event_sequences(bad)
    unsorted = tmp_path / "unsorted.csv"
    unsorted.write_text("1.0 2.0\n3.0 2.5\n")
    with pytest.raises(BayesdynValueError, match=r"series 1: event times must be sorted"):
        load_point_process(unsorted)
    outside = tmp_path / "outside.csv"
    outside.write_text("1.0 120.0\n")
    with pytest.raises(BayesdynValueError, match=r"observation window \[0, 100\]"):
        load_point_process(outside)
    with pytest.raises(BayesdynValueError, match="window must be finite"):
        load_point_process(outside, window=(5.0, 1.0))
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(BayesdynValueError, match="holds no sequences"):
        read_event_sequences(empty)


def test_hawkes_log_likelihood_matches_direct_formula():
    ev = np.array([0.3, 0.9, 1.0, 2.5, 4.0])
    kw = dict(baseline=0.4, alpha=0.6, beta=1.7)
    direct = np.log(hawkes_intensity(ev, ev, **kw)).sum() - hawkes_compensator(ev, 0, 5, **kw)
    assert hawkes_log_likelihood(ev, 0.0, 5.0, **kw) == pytest.approx(direct, rel=1e-12)
    # compensator against numerical quadrature of the intensity
    from scipy import integrate

    pts = [0.0, *ev, 5.0]
    quad = sum(
        integrate.quad(lambda t: float(hawkes_intensity([t], ev, **kw)[0]), a, b)[0]
        for a, b in zip(pts[:-1], pts[1:], strict=True)
    )
    assert hawkes_compensator(ev, 0, 5, **kw) == pytest.approx(quad, rel=1e-9)


def test_hawkes_generator_mean_count_and_time_rescaling():
    d = simulate_hawkes(num_series=400, t1=20.0, baseline=0.5, alpha=0.5, beta=1.0, seed=3)
    kw = dict(baseline=0.5, alpha=0.5, beta=1.0)
    counts = np.array([e.size for e in d.series.events])
    # The mean count is compared with E N(T) from the intensity's ODE; the standard error is
    # the empirical one, and Z_CRIT keeps the false-alarm rate at TEST_FAILURE_RATE.
    se = counts.std(ddof=1) / math.sqrt(counts.size)
    assert abs(counts.mean() - d.truth["expected_count"]) < Z_CRIT * se
    # Time-rescaling: the points Lambda(t_i) form a unit-rate Poisson process. The compensator
    # is random, but Lambda(T) >= baseline * T always, so the rescaled points in the fixed
    # interval [0, baseline * T] are fully observed: given their number they are i.i.d.
    # uniform there (exactly, with no censoring at the window end).
    s_max = 0.5 * 20.0
    u, u_bad = [], []
    rate = counts.mean() / 20.0
    for ev in d.series.events:
        lam_t = np.array([hawkes_compensator(ev[ev < t], 0.0, t, **kw) for t in ev])
        u.extend(lam_t[lam_t <= s_max] / s_max)
        # Negative control: rescaling with the best constant intensity.
        u_bad.extend(rate * ev[rate * ev <= s_max] / s_max)
    assert stats.kstest(u, "uniform").pvalue > TEST_FAILURE_RATE
    assert stats.kstest(u_bad, "uniform").pvalue < TEST_FAILURE_RATE


def test_hawkes_marks_and_errors():
    d = simulate_hawkes(num_series=50, t1=20.0, mark_probs=[0.25, 0.75], seed=1)
    marks = np.concatenate(d.series.marks)
    n = marks.size
    # binomial proportion test at the suite's level
    assert abs(marks.mean() - 0.75) < Z_CRIT * math.sqrt(0.75 * 0.25 / n)
    assert d.series.num_marks == 2
    with pytest.raises(BayesdynValueError, match="alpha .* must be < 1; got 1.2"):
        simulate_hawkes(alpha=1.2)
    with pytest.raises(BayesdynValueError, match="mark_probs must be probabilities"):
        simulate_hawkes(mark_probs=[0.5, 0.6])


def test_merton_density_and_generator():
    kw = dict(mu=0.1, sigma=0.3, jump_rate=1.5, jump_mean=-0.2, jump_std=0.4)
    x = np.linspace(-6, 6, 4001)
    dens = np.exp(merton_log_density(x, 0.0, 0.8, **kw))
    assert np.trapezoid(dens, x) == pytest.approx(1.0, abs=1e-8)
    # no jumps: the plain Gaussian transition
    g = merton_log_density(0.3, 0.1, 0.5, **{**kw, "jump_rate": 0.0})
    assert g == pytest.approx(stats.norm.logpdf(0.3, 0.1 + 0.05, 0.3 * math.sqrt(0.5)))
    d = simulate_merton(num_series=3000, num_obs=1, t1=1.0, seed=2, **kw)
    t = np.array([tt[0] for tt in d.series.times])
    xs = np.array([lat[0, 0] for lat in d.truth["latent"]])
    # Each X_t has a known CDF at its own time: the probability integral transform is uniform.
    n = np.arange(0, 40)
    pois = stats.poisson.pmf(n[:, None], kw["jump_rate"] * t)
    cdf = (
        pois
        * stats.norm.cdf(
            (xs - kw["mu"] * t - n[:, None] * kw["jump_mean"])
            / np.sqrt(kw["sigma"] ** 2 * t + n[:, None] * kw["jump_std"] ** 2)
        )
    ).sum(0)
    assert stats.kstest(cdf, "uniform").pvalue > TEST_FAILURE_RATE
    assert [len(j) for j in d.truth["jump_times"]][:3] == [len(s) for s in d.truth["jump_sizes"]][
        :3
    ]


def test_events_csv_round_trip_with_data_csv(tmp_path):
    """write_events_csv + read_events_csv next to to_dataframe/from_csv give back the same
    events, marks and num_marks (string ids, a series without events, an unused mark)."""
    times = [np.array([0.0, 1.0, 5.0]), np.array([0.0, 2.0]), np.array([1.0, 4.0])]
    s = IrregularTimeSeries(
        times,
        [np.zeros(3), np.ones(2), np.full(2, 2.0)],
        ids=["a", "b", "c"],
        events=[[0.1 + 1e-12, 3.0], [], [1.0, 2.5, 4.0]],
        marks=[[0, 2], [], [1, 1, 0]],
        num_marks=4,
    )
    s.to_dataframe().to_csv(tmp_path / "data.csv", index=False)
    write_events_csv(s, tmp_path / "events.csv")
    base = IrregularTimeSeries.from_csv(tmp_path / "data.csv")
    assert base.events is None
    back = read_events_csv(tmp_path / "events.csv", base, num_marks=4)
    assert back.ids == s.ids and back.num_marks == 4
    for got, want in zip(back.events, s.events, strict=True):
        np.testing.assert_array_equal(got, want)  # exact: full-precision times
    for got, want in zip(back.marks, s.marks, strict=True):
        np.testing.assert_array_equal(got, want)
    assert read_events_csv(tmp_path / "events.csv", base).num_marks == 3  # default max + 1


def test_events_csv_of_events_only_series_with_int_ids(tmp_path):
    """Events-only series (all-NaN data.csv, integer ids) read back with
    require_observed_channels=False; rows in any order; the mark column is optional."""
    s = simulate_hawkes(num_series=3, t1=5.0, seed=3, baseline=0.5, alpha=0.5, beta=1.0).series
    s.to_dataframe().to_csv(tmp_path / "data.csv", index=False)
    with pytest.raises(BayesdynValueError, match="no observed value"):
        IrregularTimeSeries.from_csv(tmp_path / "data.csv")
    base = IrregularTimeSeries.from_csv(tmp_path / "data.csv", require_observed_channels=False)
    write_events_csv(s, tmp_path / "events.csv")
    back = read_events_csv(tmp_path / "events.csv", base)
    for got, want in zip(back.events, s.events, strict=True):
        np.testing.assert_array_equal(got, want)
    df = pd.read_csv(tmp_path / "events.csv").iloc[::-1].drop(columns="mark")
    df.to_csv(tmp_path / "shuffled.csv", index=False)
    back2 = read_events_csv(tmp_path / "shuffled.csv", base)
    assert [e.tolist() for e in back2.events] == [e.tolist() for e in s.events]
    assert back2.num_marks == 1 and all((m == 0).all() for m in back2.marks)


def test_events_csv_errors_name_the_file_and_the_problem(tmp_path):
    s = _two_series(events=[[0.5], []])
    with pytest.raises(BayesdynValueError, match="series has no events to write"):
        write_events_csv(_two_series(), tmp_path / "x.csv")
    cases = {
        "unknown.csv": ("id,time,mark\n0,0.5,0\n7,1.0,0\n", r"unknown series id\(s\) \['7'\]"),
        "nocol.csv": ("id,when\n0,0.5\n", r"missing \['time'\]"),
        "text.csv": ("id,time,mark\n0,soon,0\n", r"row 2: column 'time' must be a number"),
        "outside.csv": ("id,time\n1,3.0\n", r"events must lie in the observation window"),
        "repeat.csv": ("id,time\n0,0.5\n0,0.5\n", "event times repeat"),
    }
    for name, (text, match) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(BayesdynValueError, match=match) as err:
            read_events_csv(tmp_path / name, s)
        assert name in str(err.value)
    with pytest.raises(BayesdynValueError, match="file not found"):
        read_events_csv(tmp_path / "missing.csv", s)
    with pytest.raises(BayesdynTypeError, match="series must be an IrregularTimeSeries"):
        read_events_csv(tmp_path / "repeat.csv", [s])
