"""Deep-ensemble forecasts of an Ornstein–Uhlenbeck process from a few series.

With only a handful of training series, one variational fit of a latent SDE is over-confident:
it ignores the uncertainty in its network weights. This script trains a bootstrap ensemble of
latent SDEs as one vectorised model (``bayesdyn.inference.fit_ensemble``), forecasts held-out
series with the mixture posterior predictive ``[E, S, B, T, D]``, compares the coverage of the
ensemble's 90% bands with that of its members, and shows how much of the predictive variance
comes from disagreement between members (between- vs within-member variance at each time).

Writes ``<out>/ensemble_forecast.png`` (bands of the mixture) and
``<out>/ensemble_disagreement.png``.

References:
    Lakshminarayanan, Pritzel, Blundell, "Simple and scalable predictive uncertainty
    estimation using deep ensembles", NeurIPS 2017.

Run::

    python examples/ensemble_forecast.py            # about a minute on a CPU
    python examples/ensemble_forecast.py --smoke    # a few seconds
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

import bayesdyn
from bayesdyn.inference import ensemble_disagreement, fit_ensemble
from bayesdyn.models import LatentSDEConfig

T_TRAIN, T_END = 4.0, 6.0
LATTICE = 0.2  # observation times are subsets of one lattice: the solver grid stays short


def simulate(num_series, rng, *, theta=1.0, sigma=0.5, obs_noise=0.3, num_obs=20):
    """OU series (stationary start, exact transitions) seen with noise at random lattice points."""
    lattice = np.round(np.arange(LATTICE, T_END + 1e-9, LATTICE), 10)
    a = np.exp(-theta * LATTICE)
    sd = np.sqrt(sigma**2 * (1 - a**2) / (2 * theta))
    times, values = [], []
    for _ in range(num_series):
        x = np.empty(lattice.size)
        x[0] = rng.normal(0.0, sigma / np.sqrt(2 * theta))
        for k in range(1, lattice.size):
            x[k] = x[k - 1] * a + sd * rng.normal()
        keep = np.sort(rng.choice(lattice.size, size=num_obs, replace=False))
        times.append(lattice[keep])
        values.append((x[keep] + obs_noise * rng.normal(size=num_obs))[:, None])
    return bayesdyn.IrregularTimeSeries(times, values, channels=["x"])


def coverage(samples: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, level=0.9) -> float:
    """Fraction of observed ``y`` inside the central ``level`` band of ``samples [S, ...]``."""
    q = torch.quantile(
        samples, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=samples.dtype), dim=0
    )
    return float((((y >= q[0]) & (y <= q[1])) & mask).sum() / mask.sum())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny run for tests")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/ensemble_forecast")
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--train-series", type=int, default=8)
    parser.add_argument("--test-series", type=int, default=100)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args(argv)
    if args.smoke:
        args.members, args.test_series, args.steps = 3, 6, 3

    torch.set_default_dtype(torch.float32)
    rng = np.random.default_rng(args.seed)
    train, test = simulate(args.train_series, rng), simulate(args.test_series, rng)
    past, _ = train.split_time(T_TRAIN)
    test_past, test_future = test.split_time(T_TRAIN)
    print(f"training on {past}")

    config = LatentSDEConfig(
        obs_dim=1,
        latent_dim=1,
        hidden_dim=8,
        context_dim=4,
        dt=LATTICE,
        stable_drift=True,
        diffusion_state_dependent=False,
        diffusion_max=2.0,
        obs_scale_init=0.2,
    )
    ens = fit_ensemble(
        config,
        past,
        args.members,
        method="bootstrap",
        num_steps=args.steps,
        lr=5e-2,
        lr_final=5e-3,
        kl_anneal_steps=args.steps // 3,
        seed=args.seed,
    )
    res = ens.fit_result
    print(
        f"trained {ens.num_members} members as one vectorised model in {res.seconds:.1f} s; "
        "final losses " + ", ".join(f"{v:.3f}" for v in res.loss[-1].tolist())
    )

    keep = [i for i, sid in enumerate(test_past.ids) if sid in set(test_future.ids)]
    fb = test_future.to_batch()
    traj = ens.posterior_predictive(test_past[keep], fb.times, 100, seed=args.seed)
    obs = traj.observations  # [E, S, B, T, D]
    cov_members = [coverage(obs[e], fb.values, fb.mask) for e in range(ens.num_members)]
    cov_ens = coverage(obs.flatten(0, 1), fb.values, fb.mask)
    print(f"90% band coverage on {int(fb.mask.sum())} held-out future points:")
    print(f"  members:  {', '.join(f'{c:.1%}' for c in cov_members)}")
    print(f"  ensemble: {cov_ens:.1%}")

    query = torch.linspace(0.0, T_END, 31)
    bands = ens.posterior_predictive(test_past, query, 100, seed=args.seed + 1)
    dis = ensemble_disagreement(bands)
    fore = query > T_TRAIN
    print(
        "share of predictive variance from member disagreement: "
        f"{float(dis.share[:, ~fore].mean()):.1%} inside the data, "
        f"{float(dis.share[:, fore].mean()):.1%} in the forecast window"
    )

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bands.plot(data=test, level=0.9, max_series=4).savefig(out / "ensemble_forecast.png", dpi=110)
    dis.plot(series=0).savefig(out / "ensemble_disagreement.png", dpi=110)
    print(f"wrote {out / 'ensemble_forecast.png'} and {out / 'ensemble_disagreement.png'}")


if __name__ == "__main__":
    main()
