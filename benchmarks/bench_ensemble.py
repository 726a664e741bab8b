"""Deep-ensemble training speed: K = 8 members vectorised against K = 1, and peak memory.

Usage::

    python benchmarks/bench_ensemble.py [--quick] [--members 8] [--seed N] [--threads T]

Configuration: the foundation benchmark's small configuration (``_harness.SMALL_CONFIG``: 256
series, 100 observation times on [0, 2], latent 4, hidden 64, context 16, dt 0.01), the
model of ``_bayesdyn_probe.make_model``.

Timed, in alternating rounds so that both sides see the same machine noise: one SVI step
(forward, backward, per-member clipping, Adam) of

* ``K=1``: one ordinary ``LatentSDE`` training step, exactly the foundation benchmark's
  (``_bayesdyn_probe.make_step_fn``: fused kernels, ``PathELBO``, Adam);
* ``K=8``: eight members stacked and trained as one vectorised model (``vmap`` over the
  stacked parameters; one step updates all members).

Also reported: the vectorised path with K=1 (the cost of vmap itself) and peak RSS of K=1 and
K=K in fresh subprocesses. The last line is ``k8_over_k1=<ratio>`` (target: <= 3).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _bayesdyn_probe as ours  # noqa: E402
import _harness  # noqa: E402
import torch  # noqa: E402
from bench_latent_sde import time_alternating  # noqa: E402

from bayesdyn.inference.ensemble import _GroupTrainer, _Spec  # noqa: E402


def make_trainer(members: int, vectorize: bool, seed: int = 0, **config):
    """``(trainer, batch)`` for ``members`` members on the small configuration's data."""
    c, ts, xs = _harness.probe_data(config, seed)
    model = ours.make_model(c["data_size"], c["latent"], c["hidden"], c["context"], c["dt"])
    spec = _Spec(
        config=model.to_checkpoint()["config"],
        seed=seed,
        method="init",
        prior_scale=1.0,
        num_steps=1000,
        lr=1e-2,
        lr_final=1e-2,
        batch_size=None,
        kl_anneal_steps=0,
        kl_min=0.01,
        clip_norm=10.0,
        common_noise=False,
        val_particles=1,
        dtype="float32",
    )
    return _GroupTrainer(spec, ours.make_batch(ts, xs), list(range(members)), vectorize=vectorize)


def stepper(trainer):
    """A zero-argument callable running the trainer's next SVI step."""
    count = [0]

    def step():
        trainer.step(count[0])
        count[0] += 1

    return step


def memory_probe(seed: int = 0, members: int = 1, vectorize: bool = True, **config):
    """Build the trainer and return its step (contract of ``_harness.peak_rss_in_subprocess``)."""
    return stepper(make_trainer(members, vectorize, seed, **config))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer timing rounds")
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=_harness.DEFAULT_THREADS,
        help="torch threads for the timed steps (1: the arithmetic-bound ratio, free of "
        "how well each side uses a second core)",
    )
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be >= 1; got {args.threads}")
    _harness.DEFAULT_THREADS = args.threads
    _harness.configure_torch()
    K = args.members
    cfg = _harness.SMALL_CONFIG
    print(f"config: {cfg}, K={K}, torch threads {torch.get_num_threads()}", flush=True)
    c, ts, xs = _harness.probe_data({}, args.seed)
    torch.manual_seed(args.seed)
    single = ours.make_model(c["data_size"], c["latent"], c["hidden"], c["context"], c["dt"])
    one = ours.make_step_fn(single, ours.make_batch(ts, xs))
    many = stepper(make_trainer(K, vectorize=True, seed=args.seed))
    rounds = 3 if args.quick else 7
    t_many, t_one = time_alternating(many, one, warmup=1, rounds=rounds)
    print(f"step: K={K} vectorised {t_many * 1e3:.0f} ms, K=1 ordinary {t_one * 1e3:.0f} ms")
    vec1 = _harness.time_step(
        stepper(make_trainer(1, vectorize=True, seed=args.seed)), warmup=1, repeats=rounds
    )
    print(f"step: K=1 vectorised (vmap overhead) {vec1['median_s'] * 1e3:.0f} ms", flush=True)
    mem = {}
    for k, spec in ((1, "_bayesdyn_probe:memory_probe"), (K, "bench_ensemble:memory_probe")):
        kwargs = dict(seed=args.seed) if k == 1 else dict(seed=args.seed, members=k)
        mem[k] = _harness.peak_rss_in_subprocess(spec, kwargs)
        print(
            f"peak RSS K={k}: {mem[k]['peak_rss_mib']:.0f} MiB "
            f"(+{mem[k]['delta_rss_mib']:.0f} MiB during steps)",
            flush=True,
        )
    print(f"per-member step time: {t_many / K * 1e3:.0f} ms (K={K}) vs {t_one * 1e3:.0f} ms (K=1)")
    print(f"peak_rss_ratio=({mem[K]['peak_rss_mib'] / mem[1]['peak_rss_mib']:.3f})")
    print(f"k8_over_k1={t_many / t_one:.4f}")


if __name__ == "__main__":
    main()
