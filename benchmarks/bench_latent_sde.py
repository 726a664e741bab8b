"""Latent SDE training speed, peak memory and sampling throughput: bayesdyn vs torchsde.

Usage::

    python benchmarks/bench_latent_sde.py [--quick] [--seed N]

Two configurations:

* ``small``: 256 series, 100 observation times on [0, 2], latent 4, hidden 64, context 16,
  dt 0.01;
* ``lorenz``: the defaults of torchsde's ``examples/latent_sde_lorenz.py`` (1024 series,
  100 observation times on [0, 2], latent 4, hidden 128, context 64, dt 0.01).

For each, one training iteration (forward + backward + Adam step) is timed for bayesdyn and
for the torchsde reference in alternating rounds (so both see the same machine noise), peak
memory of each is measured in a fresh subprocess, and posterior-predictive sampling
throughput of bayesdyn's guide is reported.

Step counts: torchsde's fixed-step Euler steps by ``dt`` from ``t0`` and linearly interpolates
at the observation times (200 steps on [0, 2]). bayesdyn puts every observation time on its
grid (the likelihood is exact at them) and splits the 0.0202 gaps into equal steps: with
``step_rounding="nearest"`` into 2 (198 steps, the like-for-like comparison, used for the
ratios on the last two lines), with the library default ``"ceil"`` into 3 (297 steps, every
step <= dt). Both are timed and printed.  The last two lines are
``ratio_vs_torchsde_lorenz=<x>`` and ``ratio_vs_torchsde=<x>`` (ours / reference time, small
config), lower is better.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _bayesdyn_probe as ours  # noqa: E402
import _harness  # noqa: E402
import _reference_torchsde as ref  # noqa: E402
import pyro  # noqa: E402
import torch  # noqa: E402
from pyro.infer import Predictive  # noqa: E402

CONFIGS = {
    "small": _harness.SMALL_CONFIG,
    "lorenz": dict(
        num_series=1024,
        num_times=100,
        t1=2.0,
        data_size=3,
        latent=4,
        hidden=128,
        context=64,
        dt=0.01,
    ),
}


def _num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _build(cfg: dict, seed: int):
    ts, xs = _harness.make_lorenz_like_data(
        cfg["num_series"], cfg["num_times"], cfg["t1"], cfg["data_size"], seed
    )
    arch = (cfg["data_size"], cfg["latent"], cfg["hidden"], cfg["context"], cfg["dt"])
    torch.manual_seed(seed)
    reference = ref.make_reference(*arch)
    models = {}
    for rounding in ROUNDINGS:
        torch.manual_seed(seed)
        models[rounding] = ours.make_model(*arch, step_rounding=rounding)
    batch = ours.make_batch(ts, xs)
    return ts, xs, reference, models, batch


ROUNDINGS = ("nearest", "ceil")


def time_alternating(*steps, warmup: int, rounds: int, per_round: int = 1) -> list[float]:
    """Median seconds per call of step functions timed in rotating-order rounds."""
    _harness.configure_torch()
    for _ in range(warmup):
        for fn in steps:
            fn()
    times = [[] for _ in steps]
    n = len(steps)
    for r in range(rounds):
        for j in range(n):
            i = (j + r) % n
            for _ in range(per_round):
                t0 = time.perf_counter()
                steps[i]()
                times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def _num_steps(model, batch) -> int:
    return model.make_grid(batch).grid.numel() - 1


def sampling_throughput(model, batch, num_samples: int, repeats: int) -> dict:
    """Trajectories x grid steps per second for posterior path samples ``[S, B, 1, U, L]``."""
    predictive = Predictive(
        model.model, guide=model.guide, num_samples=num_samples, parallel=True, return_sites=["z"]
    )
    with torch.no_grad():
        predictive(batch)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            z = predictive(batch)["z"]
            times.append(time.perf_counter() - t0)
    seconds = statistics.median(times)
    num_traj = num_samples * batch.times.shape[0]
    steps = z.shape[-2] - 1
    return {"seconds": seconds, "trajectories": num_traj, "steps": steps,
            "traj_steps_per_s": num_traj * steps / seconds}  # fmt: skip


def run_config(name: str, cfg: dict, args) -> dict:
    ts, xs, reference, models, batch = _build(cfg, args.seed)
    model = models["nearest"]
    n_ref, n_ours = _num_params(reference), _num_params(model)
    print(f"[{name}] parameters: bayesdyn {n_ours}, torchsde reference {n_ref}", flush=True)
    ref_steps = ref.num_steps(reference, xs, ts)
    steps = [ours.make_step_fn(models[r], batch) for r in ROUNDINGS]
    steps.append(ref.make_step_fn(reference, xs, ts))
    rounds = 3 if args.quick else 7
    warmup = 1 if args.quick else 2
    *t_by_rounding, t_ref = time_alternating(*steps, warmup=warmup, rounds=rounds)
    t_ours = t_by_rounding[0]
    for r, t in zip(ROUNDINGS, t_by_rounding, strict=True):
        print(
            f"[{name}] step: bayesdyn ({r}, {_num_steps(models[r], batch)} Euler steps) "
            f"{t:.4f}s = {t / t_ref:.3f}x torchsde ({ref_steps} drift calls) {t_ref:.4f}s",
            flush=True,
        )

    probe_kwargs = dict(cfg, seed=args.seed)
    mem_ours = _harness.peak_rss_in_subprocess("_bayesdyn_probe:memory_probe", probe_kwargs)
    mem_ref = _harness.peak_rss_in_subprocess("_reference_torchsde:memory_probe", probe_kwargs)
    print(
        f"[{name}] peak RSS: bayesdyn {mem_ours['peak_rss_mib']:.0f} MiB "
        f"(+{mem_ours['delta_rss_mib']:.0f} in steps), torchsde {mem_ref['peak_rss_mib']:.0f} MiB "
        f"(+{mem_ref['delta_rss_mib']:.0f} in steps)",
        flush=True,
    )

    sub = model if name == "small" else None
    thr = None
    if sub is not None:
        samp_series = min(256, cfg["num_series"])
        sbatch = type(batch)(*(x[:samp_series] if torch.is_tensor(x) else x for x in batch))
        thr = sampling_throughput(model, sbatch, 100, 1 if args.quick else 3)
        print(
            f"[{name}] posterior sampling: {thr['trajectories']} paths x {thr['steps']} steps "
            f"in {thr['seconds']:.3f}s = {thr['traj_steps_per_s']:.3g} traj*steps/s",
            flush=True,
        )
    return {
        "params": (n_ours, n_ref),
        "time": (t_ours, t_ref),
        "mem": (mem_ours, mem_ref),
        "throughput": thr,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer timing repeats")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    _harness.configure_torch()
    pyro.set_rng_seed(args.seed)

    results = {name: run_config(name, cfg, args) for name, cfg in CONFIGS.items()}

    print()
    header = (
        f"{'config':<8} {'params ours/ref':>17} {'step ours':>10} {'step ref':>10} "
        f"{'time ratio':>10} {'peak ours':>10} {'peak ref':>10} {'mem ratio':>9} "
        f"{'dmem ours':>10} {'dmem ref':>9} {'dmem ratio':>10}"
    )
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        (n_o, n_r), (t_o, t_r), (m_o, m_r) = r["params"], r["time"], r["mem"]
        p_o, p_r = m_o["peak_rss_mib"], m_r["peak_rss_mib"]
        d_o, d_r = m_o["delta_rss_mib"], m_r["delta_rss_mib"]
        print(
            f"{name:<8} {f'{n_o}/{n_r}':>17} {t_o * 1e3:>8.1f}ms {t_r * 1e3:>8.1f}ms "
            f"{t_o / t_r:>10.3f} {p_o:>7.0f}MiB {p_r:>7.0f}MiB {p_o / p_r:>9.3f} "
            f"{d_o:>7.0f}MiB {d_r:>6.0f}MiB {d_o / max(d_r, 1e-9):>10.3f}"
        )
    thr = results["small"]["throughput"]
    if thr is not None:
        print(
            f"posterior predictive (small, no_grad): {thr['trajectories']} trajectories x "
            f"{thr['steps']} steps: {thr['traj_steps_per_s']:.3g} trajectory-steps/s"
        )
    lorenz = results["lorenz"]["time"]
    small = results["small"]["time"]
    print(f"ratio_vs_torchsde_lorenz={lorenz[0] / lorenz[1]:.4f}")
    print(f"ratio_vs_torchsde={small[0] / small[1]:.4f}")


if __name__ == "__main__":
    main()
