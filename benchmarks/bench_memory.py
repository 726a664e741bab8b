"""Peak memory of training on one long series: chunked truncated BPTT vs whole-series backprop.

Usage::

    python benchmarks/bench_memory.py [--windows 3] [--chunk-size 1000] [--full-max 10000]

One series of ``T`` observations on a clock (spacing 0.05, solver ``dt`` 0.05: one Euler step
per observation), a LatentSDE with latent 4, hidden 32, context 16. For each ``T`` in 1k, 10k
and 100k, a fresh subprocess (``_harness.peak_rss_in_subprocess``) builds the data and the
model and takes ``--windows`` optimiser steps:

* ``chunked``: ``fit(..., chunk_size=N)``'s objective, one window of ``N`` observations per
  step (truncated backprop through time; memory set by the window);
* ``full``: one step of backprop through the whole series (memory grows with ``T``), run up
  to ``--full-max`` observations (100k would take several GB).

It prints the peak RSS of each process (interpreter, torch, data and training) and what the
training steps added on top of the RSS just before them. The last line is
``mem_100k_over_10k=<peak RSS at 100k / peak RSS at 10k, chunked>`` (target <= 2).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _harness  # noqa: E402

SIZES = (1_000, 10_000, 100_000)


def memory_probe(num_obs: int, chunk_size: int | None, seed: int = 0):
    """Build a ``num_obs``-observation series and a LatentSDE; return one training step.

    ``chunk_size=None`` backpropagates through the whole series in one step.
    """
    import numpy as np
    import torch

    from bayesdyn.data import IrregularTimeSeries
    from bayesdyn.inference import PathELBO
    from bayesdyn.inference._chunked import ChunkedObjective
    from bayesdyn.models import LatentSDE

    rng = np.random.default_rng(seed)
    t = np.arange(1, num_obs + 1) * 0.05
    x = np.sin(0.3 * t) + 0.5 * np.sin(0.05 * t) + 0.1 * rng.normal(size=num_obs)
    batch = IrregularTimeSeries([t], [x[:, None]]).to_batch()
    torch.manual_seed(seed)
    model = LatentSDE(1, latent_dim=4, hidden_dim=32, context_dim=16, dt=0.05, stable_drift=True)
    elbo = PathELBO(max_plate_nesting=2)
    objective = ChunkedObjective(model, batch, chunk_size or num_obs + 1, elbo)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    state = {"step": 0}

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = objective(state["step"], 1.0)  # backward inside
        opt.step()
        state["step"] += 1
        return loss

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--windows", type=int, default=3, help="training steps per measurement")
    ap.add_argument("--chunk-size", type=int, default=1000)
    ap.add_argument("--full-max", type=int, default=10_000, help="largest T for full backprop")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    print(
        f"one series, spacing 0.05 = dt; LatentSDE latent 4, hidden 32, context 16; "
        f"{args.windows} steps per process; {args.threads} thread(s)"
    )
    print(f"{'mode':>8} {'T':>8} {'peak RSS MiB':>13} {'added by steps MiB':>19} {'s/step':>8}")
    peaks: dict[tuple[str, int], float] = {}
    for mode in ("chunked", "full"):
        for T in SIZES:
            if mode == "full" and T > args.full_max:
                print(f"{mode:>8} {T:>8} {'skipped (--full-max)':>13}")
                continue
            chunk = args.chunk_size if mode == "chunked" else None
            r = _harness.peak_rss_in_subprocess(
                "bench_memory:memory_probe",
                {"num_obs": T, "chunk_size": chunk},
                steps=args.windows,
                num_threads=args.threads,
            )
            peaks[(mode, T)] = r["peak_rss_mib"]
            per_step = sum(r["step_s"]) / len(r["step_s"])
            print(
                f"{mode:>8} {T:>8} {r['peak_rss_mib']:>13.1f} {r['delta_rss_mib']:>19.1f} "
                f"{per_step:>8.2f}",
                flush=True,
            )
    ratio = peaks[("chunked", 100_000)] / peaks[("chunked", 10_000)]
    print(f"mem_100k_over_10k={ratio:.3f}")


if __name__ == "__main__":
    main()
