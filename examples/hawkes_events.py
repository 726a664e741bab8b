"""Self-exciting event sequences: fit a neural jump SDE, plot its intensity, forecast counts.

Simulates ``B`` exponential Hawkes sequences (intensity ``0.2 + 0.8 sum_{t_i < t} e^{-(t - t_i)}``,
exact Ogata thinning) on ``[0, T + H]``, keeps ``[0, T]`` for training and the last ``H`` time
units as the future to forecast. A :class:`bayesdyn.LatentJumpSDE` (latent state that jumps at
every event, softplus intensity, each sequence on its own solver grid) is fitted by maximum
likelihood (``guide="prior"``) on mini-batches of sequences, then finished with full-batch
L-BFGS (:func:`bayesdyn.inference.refine_lbfgs`, selected on a quarter of the sequences held
out). The script then

- scores the training window with :func:`bayesdyn.inference.event_log_likelihood` next to the
  true process's exact log-likelihood and a constant-rate (Poisson) fit;
- forecasts the events of ``(T, T + H]`` with :func:`bayesdyn.forecast_events` and reports how
  often the true count falls inside the central 90% forecast interval;
- plots, for a few sequences, the intensity band (fit window and forecast) with the events and
  the true intensity, to ``<out>/hawkes_events.png``.

References:
    J. Jia and A. R. Benson, "Neural Jump Stochastic Differential Equations", NeurIPS 2019.

Run::

    python examples/hawkes_events.py            # a few minutes on a CPU
    python examples/hawkes_events.py --smoke    # seconds
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

import bayesdyn
from bayesdyn.data import hawkes_intensity, hawkes_log_likelihood, simulate_hawkes
from bayesdyn.inference import event_log_likelihood, refine_lbfgs

TRUTH = dict(baseline=0.2, alpha=0.8, beta=1.0)  # alpha: branching ratio


def events_only(events, t_end):
    """Events-only series on the window ``[0, t_end]``."""
    B = len(events)
    return bayesdyn.IrregularTimeSeries(
        [np.array([0.0, t_end])] * B,
        [np.zeros((2, 1))] * B,
        [np.zeros((2, 1), dtype=bool)] * B,
        events=events,
        require_observed_channels=False,
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny run for tests")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/hawkes_events")
    parser.add_argument("--num-series", type=int, default=64)
    parser.add_argument("--t-train", type=float, default=50.0)
    parser.add_argument("--horizon", type=float, default=10.0)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--refine-rounds", type=int, default=2, help="L-BFGS rounds after Adam")
    parser.add_argument("--num-samples", type=int, default=200)
    args = parser.parse_args(argv)
    if args.smoke:
        args.num_series, args.t_train, args.steps, args.num_samples = 4, 15.0, 4, 16
        args.refine_rounds = 1

    torch.set_default_dtype(torch.float64)
    T, H = args.t_train, args.horizon
    full = simulate_hawkes(num_series=args.num_series, t1=T + H, seed=args.seed, **TRUTH)
    all_events = [np.asarray(e) for e in full.series.events]
    past = events_only([e[e <= T] for e in all_events], T)
    future_counts = np.array([int(((e > T) & (e <= T + H)).sum()) for e in all_events])
    n_past = sum(len(e) for e in past.events)
    rate = n_past / (T * len(past))
    print(f"simulated {len(past)} Hawkes sequences, {n_past} events on [0, {T:g}]; truth {TRUTH}")

    torch.manual_seed(args.seed)  # the initial weights: the whole run is reproducible
    model = bayesdyn.LatentJumpSDE(
        latent_dim=3,
        hidden_dim=16,
        jump_hidden_dim=16,
        context_dim=2,
        dt=0.25,
        diffusion_max=0.05,
        init_intensity=rate,
        guide="prior",
        grid="per_series",  # each sequence on its own grid: ~n steps per batch, not ~B n
    )
    result = bayesdyn.fit(
        model,
        past.to_jump_batch(),
        num_steps=args.steps,
        batch_size=min(8, len(past)),
        lr=0.02,
        lr_final=0.003,
        seed=args.seed,
        progress=False,
    )
    print(result.summary())
    if args.refine_rounds:
        # Full-batch L-BFGS on three quarters of the sequences, each round checked on the
        # rest (a round that fits the held-out sequences worse is not kept).
        part, held = past.split_series(0.25, seed=args.seed)
        refined = refine_lbfgs(
            model,
            part.to_jump_batch(),
            val_data=held.to_jump_batch(),
            num_rounds=args.refine_rounds,
        )
        print(refined.summary())

    # Log-likelihood of the training window: the model, the truth, a constant rate.
    ll = event_log_likelihood(model, past, 16, chunk_size=8, seed=args.seed)
    true_ll = sum(hawkes_log_likelihood(e, 0.0, T, **TRUTH) for e in past.events)
    pois_ll = n_past * math.log(rate) - rate * T * len(past)
    print(
        f"log-likelihood per event: model {ll.per_event():.4f}, true process "
        f"{true_ll / n_past:.4f}, constant rate {pois_ll / n_past:.4f}"
    )

    # Forecast the next H time units: counts against what the process really did.
    fc = bayesdyn.forecast_events(
        model, past, horizon=H, num_samples=args.num_samples, num_steps=50, seed=args.seed
    )
    lo, med, hi = fc.count_quantiles([0.05, 0.5, 0.95]).numpy()
    inside = (future_counts >= lo) & (future_counts <= hi)
    print(f"forecast event counts on ({T:g}, {T + H:g}] (median [90% interval] vs true):")
    for b in range(min(4, len(past))):
        print(f"  series {b}: {med[b]:.0f} [{lo[b]:.0f}, {hi[b]:.0f}] vs {future_counts[b]}")
    print(f"90% count interval coverage over {len(past)} series: {inside.mean():.1%}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig = fc.plot(data=past, level=0.9, max_series=3)
    for r, ax in enumerate(fig.axes):  # one row per series: add the truth and the future
        g = np.linspace(0.0, T + H, 1200)
        ax.plot(g, hawkes_intensity(g, all_events[r], **TRUTH), color="k", lw=0.7,
                alpha=0.6, label="true intensity")  # fmt: skip
        fut = all_events[r][all_events[r] > T]
        ax.plot(fut, np.zeros_like(fut), "|", color="C2", ms=10, label="future events")
    fig.axes[0].legend(fontsize=7, loc="upper left")
    fig.savefig(out / "hawkes_events.png", dpi=110)
    print(f"wrote {out / 'hawkes_events.png'}")


if __name__ == "__main__":
    main()
