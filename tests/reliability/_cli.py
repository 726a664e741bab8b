"""Helpers to run the ``bayesdyn`` command line in subprocesses on a tiny data set."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[2]

#: A tiny model, so that each training step takes milliseconds.
TINY = ["--latent-dim", "2", "--hidden-dim", "8", "--context-dim", "3", "--quiet"]


def write_tiny_csv(path: Path, num_series: int = 12, seed: int = 0) -> Path:
    """Long-format CSV of noisy sine waves at random lattice times (id, time, x)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(num_series):
        t = np.sort(rng.choice(np.arange(1, 41) * 0.1, 8, replace=False))
        for tt in t:
            rows.append((i, round(float(tt), 3), float(np.sin(tt + i) + 0.1 * rng.normal())))
    pd.DataFrame(rows, columns=["id", "time", "x"]).to_csv(path, index=False)
    return path


def env() -> dict[str, str]:
    e = dict(os.environ)
    e.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return e


def cli(*args: str) -> list[str]:
    """The ``bayesdyn`` command (the venv's interpreter running the CLI module)."""
    return [sys.executable, "-m", "bayesdyn.cli", *args]


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        cli(*args), capture_output=True, text=True, env=env(), cwd=REPO, timeout=timeout
    )


def run_in_process(*args: str) -> int:
    """``bayesdyn <args>`` in this process, as a subprocess would run it: float32 default
    dtype and one thread (saves the interpreter start-up of one more subprocess)."""
    from bayesdyn.cli import main

    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float32)
    torch.set_num_threads(1)
    try:
        return main(list(args))
    finally:
        torch.set_default_dtype(dtype)
        torch.set_num_threads(threads)


def model_state(run_dir: Path) -> dict[str, torch.Tensor]:
    """The trained parameters a run wrote (loaded with weights_only=True)."""
    payload = torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True)
    return payload["model_payload"]["state_dict"]
