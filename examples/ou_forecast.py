"""Forecasting an Ornstein–Uhlenbeck process observed at irregular times.

Simulates ``B`` noisy OU series, each observed at a random subset of a regular lattice
(spacing 0.1) on ``[0, 10]``, fits a :class:`bayesdyn.LatentSDE` by variational inference,
forecasts the held-out window ``(10, 12]`` with the posterior predictive, and reports the
coverage of the central intervals on the held-out future observations (a calibrated model
covers about 90% of them with its 90% band). Writes a plot of bands, medians, sample paths and
data to ``<out>/ou_forecast.png``.

The OU process :math:`dx = \\theta(\\mu - x)\\,dt + \\sigma\\,dW` is simulated exactly with its
Gaussian transition, so the data carry no discretisation error.

Observation times are subsets of one lattice on purpose: the solver grid is the union of all
series' times, so continuous random times would make it ``B * T`` points long.

References:
    Li et al., "Scalable Gradients for Stochastic Differential Equations", AISTATS 2020.

Run::

    python examples/ou_forecast.py            # a few minutes on a CPU
    python examples/ou_forecast.py --smoke    # a few seconds
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

import bayesdyn

LATTICE = 0.1  # spacing of the observation lattice
T_TRAIN, T_END = 10.0, 12.0  # data window [0, T_TRAIN]; forecast window (T_TRAIN, T_END]


def simulate(num_series, *, theta, mu, sigma, obs_noise, obs_prob, rng):
    """OU series observed at random lattice points of ``[0, T_END]`` (exact transitions)."""
    lattice = np.round(np.arange(0.0, T_END + LATTICE / 2, LATTICE), 10)
    a = np.exp(-theta * LATTICE)
    sd = np.sqrt(sigma**2 * (1 - a**2) / (2 * theta))
    times, values = [], []
    for _ in range(num_series):
        x = np.empty(lattice.size)
        x[0] = rng.normal(mu, 1.5)  # start away from the mean, so the reversion shows
        for k in range(1, lattice.size):
            x[k] = mu + (x[k - 1] - mu) * a + sd * rng.normal()
        keep = rng.random(lattice.size) < obs_prob
        keep[0] = True  # every series is observed at t=0 ...
        keep[lattice > T_TRAIN] |= np.arange((lattice > T_TRAIN).sum()) == 0  # ... and after T
        times.append(lattice[keep])
        values.append((x[keep] + obs_noise * rng.normal(size=keep.sum()))[:, None])
    return bayesdyn.IrregularTimeSeries(times, values, channels=["x"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny run for tests")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/ou_forecast")
    parser.add_argument("--num-series", type=int, default=64)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--num-samples", type=int, default=200)
    args = parser.parse_args(argv)
    if args.smoke:
        args.num_series, args.steps, args.num_samples = 6, 5, 20

    torch.set_default_dtype(torch.float64)
    rng = np.random.default_rng(args.seed)
    truth = dict(theta=0.5, mu=1.0, sigma=0.5, obs_noise=0.1)
    series = simulate(args.num_series, obs_prob=0.3, rng=rng, **truth)
    past, future = series.split_time(T_TRAIN)
    print(f"simulated {series}; truth {truth}")

    model = bayesdyn.LatentSDE(
        1, latent_dim=2, hidden_dim=32, context_dim=8, dt=LATTICE, stable_drift=True, t0=0.0
    )
    result = bayesdyn.fit(
        model,
        past,
        num_steps=args.steps,
        lr=1e-2,
        lr_final=1e-3,
        kl_anneal_steps=args.steps // 3,
        seed=args.seed,
        progress=False,
    )
    print(result.summary())

    # Bands on the whole lattice: interpolation inside [0, T_TRAIN], forecast after it.
    query = np.round(np.arange(0.0, T_END + LATTICE / 2, LATTICE), 10)
    traj = bayesdyn.posterior_predictive(model, past, query, args.num_samples, seed=args.seed)

    # Calibration on the held-out future points: forecast at exactly their times.
    keep = [i for i, sid in enumerate(past.ids) if sid in set(future.ids)]
    fb = future.to_batch()
    ftraj = bayesdyn.posterior_predictive(
        model, past[keep], fb.times, args.num_samples, seed=args.seed + 1
    )
    table = bayesdyn.calibration_table(ftraj.observations, fb.values, fb.mask)
    print("\nheld-out forecast calibration (central intervals):")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    cov90 = float(table.loc[table.level == 0.9, "coverage"].iloc[0])
    print(f"90% interval coverage on {int(fb.mask.sum())} future points: {cov90:.1%}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig = traj.plot(data=series, level=0.9, max_series=4)
    fig.savefig(out / "ou_forecast.png", dpi=110)
    print(f"wrote {out / 'ou_forecast.png'}")


if __name__ == "__main__":
    main()
