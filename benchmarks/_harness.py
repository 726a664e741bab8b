"""Timing and memory helpers shared by the benchmark scripts in ``benchmarks/``.

Scripts are not a package; they do::

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import _harness

Public helpers:

* ``configure_torch(num_threads=2)``: float32 default dtype, fixed thread count.
* ``make_lorenz_like_data(num_series, num_times, t1, data_size, seed) -> (ts [T], xs [T, B, D])``.
* ``time_step(step_fn, warmup=2, repeats=5) -> {"median_s", "min_s", "all"}``.
* ``peak_rss_in_subprocess(spec, kwargs, steps=2) -> dict``: memory of one model measured in
  a fresh Python process.  ``spec`` is ``"module:function"``; the function is called as
  ``function(**kwargs)`` and must build model + data and return a zero-argument callable
  that performs one training iteration (forward + backward + optimizer step).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
DEFAULT_THREADS = 2
_RESULT_TAG = "__PEAK_RSS_RESULT__"


def configure_torch(num_threads: int | None = None) -> None:
    """Pin the torch thread count (default ``DEFAULT_THREADS``: the benchmark machine has 2
    cores; a script's ``--threads`` may change it) and use float32."""
    torch.set_num_threads(DEFAULT_THREADS if num_threads is None else num_threads)
    torch.set_default_dtype(torch.float32)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
def make_lorenz_like_data(
    num_series: int,
    num_times: int,
    t1: float,
    data_size: int = 3,
    seed: int = 0,
    noise_std: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stochastic-Lorenz trajectories, standardised, time-major.

    Simulates ``dx = a(x) dt + diag(b * x) dW`` (a = (10, 28, 8/3), b = (0.1, 0.28, 0.3), the
    setting of Li et al. 2020, section 7.2) with Euler-Maruyama on a fine grid from
    ``x0 ~ N(0, I)``, records it at ``num_times`` equally spaced times on ``[0, t1]``,
    standardises each coordinate and adds N(0, noise_std^2) observation noise.  For
    ``data_size != 3`` the 3-d state goes through a fixed random linear map first.

    Returns ``ts`` of shape ``[T]`` and ``xs`` of shape ``[T, B, D]``, both float32.
    """
    configure_torch()
    gen = torch.Generator().manual_seed(int(seed))
    ts = torch.linspace(0.0, float(t1), int(num_times), dtype=torch.float64)
    sub = max(1, math.ceil((float(t1) / max(num_times - 1, 1)) / 1e-3))  # inner dt <= 1e-3
    h = (float(t1) / max(num_times - 1, 1)) / sub
    sqrt_h = math.sqrt(h)
    s, r, beta = 10.0, 28.0, 8.0 / 3.0
    b = torch.tensor([0.1, 0.28, 0.3], dtype=torch.float64)

    x = torch.randn(num_series, 3, generator=gen, dtype=torch.float64)
    out = [x]
    for _ in range(num_times - 1):
        for _ in range(sub):
            x1, x2, x3 = x.unbind(dim=1)
            drift = torch.stack([s * (x2 - x1), r * x1 - x2 - x1 * x3, x1 * x2 - beta * x3], dim=1)
            dw = torch.randn(num_series, 3, generator=gen, dtype=torch.float64) * sqrt_h
            x = x + drift * h + b * x * dw
        out.append(x)
    xs = torch.stack(out, dim=0)  # [T, B, 3]

    if data_size != 3:
        proj = torch.randn(3, data_size, generator=gen, dtype=torch.float64) / math.sqrt(3.0)
        xs = xs @ proj
    mean = xs.mean(dim=(0, 1))
    std = xs.std(dim=(0, 1)).clamp_min(1e-12)
    xs = (xs - mean) / std
    xs = xs + noise_std * torch.randn(xs.shape, generator=gen, dtype=torch.float64)
    return ts.float(), xs.float().contiguous()


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------
def time_step(step_fn: Callable[[], Any], warmup: int = 2, repeats: int = 5) -> dict[str, Any]:
    """Wall-clock one training iteration: ``warmup`` untimed calls, then ``repeats`` timed ones.

    Returns ``{"median_s": float, "min_s": float, "all": [float, ...]}``.
    """
    configure_torch()
    for _ in range(int(warmup)):
        step_fn()
    times = []
    for _ in range(int(repeats)):
        start = time.perf_counter()
        step_fn()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "all": times}


# --------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------
def _proc_status_mib(field: str) -> float | None:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in MiB; None off Linux."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _ru_maxrss_mib() -> float:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def _reset_peak_rss() -> bool:
    """Reset the kernel's per-process RSS high-water mark (Linux >= 4.0); True on success."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _resolve(spec: str) -> Callable[..., Any]:
    import importlib

    mod_name, _, fn_name = spec.partition(":")
    if not fn_name:
        raise ValueError(f"spec must look like 'module:function', got {spec!r}")
    return getattr(importlib.import_module(mod_name), fn_name)


def _probe_child(spec: str, kwargs_json: str, steps: int, num_threads: int) -> None:
    """Body of the measuring subprocess; prints one tagged JSON line on stdout."""
    configure_torch(num_threads)
    probe = _resolve(spec)
    t0 = time.perf_counter()
    step_fn = probe(**json.loads(kwargs_json))
    build_s = time.perf_counter() - t0
    # Note: on Linux ``ru_maxrss`` survives fork+exec, so in a child started from a big parent
    # it can report the *parent's* RSS.  ``VmHWM`` belongs to the child's own address space,
    # so it is the primary measure; ``ru_maxrss`` is reported alongside for reference.
    rss_before = _proc_status_mib("VmRSS")
    hwm_build = _proc_status_mib("VmHWM")
    reset = rss_before is not None and _reset_peak_rss()
    step_times = []
    for _ in range(int(steps)):
        t0 = time.perf_counter()
        step_fn()
        step_times.append(time.perf_counter() - t0)
    hwm_end = _proc_status_mib("VmHWM")
    ru_maxrss = _ru_maxrss_mib()
    if rss_before is None or hwm_end is None:  # no /proc: fall back to getrusage only
        rss_before, hwm_build, hwm_end, reset = ru_maxrss, ru_maxrss, ru_maxrss, False
    steps_peak = hwm_end if reset else max(hwm_end, rss_before)
    result = {
        "spec": spec,
        "steps": int(steps),
        "peak_rss_mib": max(hwm_build, hwm_end),
        "delta_rss_mib": steps_peak - rss_before,
        "rss_before_steps_mib": rss_before,
        "steps_peak_rss_mib": steps_peak,
        "peak_reset_ok": reset,
        "ru_maxrss_mib": ru_maxrss,
        "build_s": build_s,
        "step_s": step_times,
        "num_threads": torch.get_num_threads(),
    }
    print(_RESULT_TAG + json.dumps(result), flush=True)


def peak_rss_in_subprocess(
    spec: str,
    kwargs: dict[str, Any] | None = None,
    steps: int = 2,
    num_threads: int = DEFAULT_THREADS,
    python: str | None = None,
    timeout: float | None = 1800.0,
) -> dict[str, Any]:
    """Peak resident memory of ``steps`` training iterations, in a fresh Python process.

    ``spec`` is ``"module:function"`` (e.g. ``"_reference_torchsde:memory_probe"``; modules in
    ``benchmarks/`` and importable packages both work, since the child puts ``benchmarks/``
    and the repository root on ``sys.path``).  ``kwargs`` must be JSON-serialisable.

    The child builds model + data via ``function(**kwargs)``, reads its current RSS, resets the
    kernel's RSS high-water mark, runs the returned step callable ``steps`` times and reads the
    high-water mark again.  Returns a dict (all memory in MiB) with ``peak_rss_mib`` (absolute
    high-water mark of the child process: interpreter, torch, data and training),
    ``delta_rss_mib`` (peak during the steps minus the RSS just before the first step, i.e.
    what training iterations add), ``rss_before_steps_mib``, ``steps_peak_rss_mib``,
    ``ru_maxrss_mib`` (``getrusage``; see the note in ``_probe_child``), ``step_s`` and
    ``build_s``.  Raises ``RuntimeError`` with the child's output if it fails.
    """
    code = (
        "import sys; "
        f"sys.path.insert(0, {REPO_ROOT!r}); sys.path.insert(0, {BENCH_DIR!r}); "
        "import _harness; "
        "_harness._probe_child(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))"
    )
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(num_threads)
    proc = subprocess.run(
        [
            python or sys.executable,
            "-c",
            code,
            spec,
            json.dumps(kwargs or {}),
            str(int(steps)),
            str(int(num_threads)),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=timeout,
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_RESULT_TAG):
            if proc.returncode != 0:
                break
            return json.loads(line[len(_RESULT_TAG) :])
    raise RuntimeError(
        f"memory probe {spec!r} failed (exit {proc.returncode}):\n"
        f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"
    )


def adam_step_fn(parameters, loss_fn: Callable[[], Any], lr: float = 1e-2) -> Callable[[], float]:
    """One training iteration (zero grads, forward, backward, Adam step) as a callable.

    Both sides of every benchmark use this, so the timed work differs only in the loss.
    """
    import torch

    opt = torch.optim.Adam(list(parameters), lr=lr)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


#: The "small" benchmark configuration; the memory probes of both sides default to it.
SMALL_CONFIG = dict(
    num_series=256, num_times=100, t1=2.0, data_size=3, latent=4, hidden=64, context=16, dt=0.01
)


def probe_data(config: dict, seed: int):
    """``(config, ts, xs)`` for a memory probe: ``config`` over :data:`SMALL_CONFIG`."""
    cfg = {**SMALL_CONFIG, **config}
    unknown = set(cfg) - set(SMALL_CONFIG)
    if unknown:
        raise ValueError(f"unknown probe options {sorted(unknown)}; known: {sorted(SMALL_CONFIG)}")
    ts, xs = make_lorenz_like_data(
        cfg["num_series"], cfg["num_times"], cfg["t1"], cfg["data_size"], seed
    )
    return cfg, ts, xs
