"""The filtering benchmark compares like with like: its SMCFilter model is the discretised model.

``benchmarks/bench_filtering.py`` times ``pyro.infer.SMCFilter`` on model/guide classes of its
own. Its speed ratio means something only if those classes target the same Euler-discretised
model as bayesdyn's particle filter; here their evidence estimate is checked against the exact
Kalman filter of that model, with a negative control, and the script's smoke run is checked
for its output contract. No test reads ../shared.

Tolerance: ``R`` independent SMCFilter runs give ``log Z-hat_r``. ``Z-hat`` is unbiased; for a
log-normal ``Z-hat`` with log-variance ``s^2``, ``E[log Z-hat] = log Z - s^2 / 2``, so
``t = (mean + s^2/2 - log Z) / (s / sqrt(R))`` is compared with the two-sided t quantile with
``R - 1`` degrees of freedom at the suite-wide false-alarm rate.
"""

from __future__ import annotations

import importlib.util
import math
import re
import sys
from pathlib import Path

import pyro
import torch
from scipy import stats

from bayesdyn import LinearGaussianSDE, kalman_filter
from tests.conftest import TEST_FAILURE_RATE

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
R = 12


def _load():
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("_bench_filtering", BENCH / "bench_filtering.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bench = _load()


def smc_t_statistic(lg_run: LinearGaussianSDE, num_obs: int = 15, n: int = 200) -> float:
    """t statistic of R SMCFilter evidence estimates of ``lg_run`` against the true model's
    Kalman log-likelihood (both on the benchmark's grid)."""
    series, lg, lg64, grid, obs_at = bench.make_problem(num_obs, seed=1)
    kf = float(kalman_filter(lg64, series, discretization="euler", dt=bench.DT).log_likelihood)
    lz = []
    for r in range(R):
        pyro.set_rng_seed(r)
        lz.append(bench.run_smcfilter(lg_run, grid, obs_at, n))
    lz = torch.tensor(lz)
    s2 = float(lz.var())
    return (float(lz.mean()) + s2 / 2 - kf) / math.sqrt(s2 / R)


def test_smcfilter_model_targets_the_discretised_model():
    thr = float(stats.t.ppf(1 - TEST_FAILURE_RATE / 4, R - 1))  # 2 tests, two-sided
    true = LinearGaussianSDE.ou(bench.THETA, bench.MU, bench.SIGMA, bench.OBS_SCALE, t0=bench.T0)
    assert abs(smc_t_statistic(true)) < thr
    # Negative control: observations four times less noisy than the data's (sd 0.05) make the
    # evidence far smaller than the Kalman value, and the same tolerance must see it.
    wrong = LinearGaussianSDE.ou(bench.THETA, bench.MU, bench.SIGMA, 0.05, t0=bench.T0)
    assert smc_t_statistic(wrong) < -thr


def test_smoke_run_prints_speedup_last(capsys):
    speedup = bench.main(["--smoke"])
    out = capsys.readouterr().out.strip().splitlines()
    m = re.fullmatch(r"speedup_vs_smcfilter=(\d+\.\d+)", out[-1])
    assert m and float(m.group(1)) == round(speedup, 2) and speedup > 0
    assert any("log-likelihood error vs Kalman" in line and "SMCFilter" in line for line in out)
    assert any("log-likelihood error vs Kalman" in line and "bayesdyn" in line for line in out)
