"""Data-parallel training: ``bayesdyn fit --nproc 2`` (two local gloo processes, launched the
torchrun way) ends with the parameters of one process training on the same global batches.

One process reproduces the two-process run with ``--shards 2``: each global mini-batch is cut
into the same two shards, each shard draws the noise seeded by (seed, step, shard), and the
shard gradients are summed, by accumulation here and by ``all_reduce`` there.
"""

from __future__ import annotations

import sys

import pytest
import torch

from bayesdyn import LatentSDE, fit
from bayesdyn._validation import BayesdynValueError
from bayesdyn.inference.distributed import DataParallel
from tests.common import lattice_ou
from tests.reliability._cli import TINY, model_state, run, run_in_process, write_tiny_csv

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or sys.platform == "win32",
    reason="needs torch.distributed with gloo",
)


def test_two_processes_equal_one_process_with_the_same_global_batch(tmp_path):
    data = write_tiny_csv(tmp_path / "d.csv", num_series=10)
    common = [str(data), *TINY, "--steps", "8", "--batch-size", "6", "--val-fraction", "0"]
    common += ["--kl-anneal-steps", "4", "--checkpoint-every", "4", "--seed", "3"]
    two = run("fit", *common, "--out", str(tmp_path / "two"), "--nproc", "2")
    assert two.returncode == 0, two.stderr
    assert run_in_process("fit", *common, "--out", str(tmp_path / "one"), "--shards", "2") == 0
    a, b = model_state(tmp_path / "one"), model_state(tmp_path / "two")
    for k, v in a.items():
        # float32; the two-process sum of two shard gradients is the same two-term sum as
        # one process's accumulation, so the runs agree to float rounding.
        assert torch.allclose(v, b[k], rtol=1e-5, atol=1e-6), (k, (v - b[k]).abs().max())
    # the runs trained (a negative control for a vacuous comparison)
    import pandas as pd

    h1 = pd.read_csv(tmp_path / "one" / "history.csv")
    h2 = pd.read_csv(tmp_path / "two" / "history.csv")
    assert len(h1) == len(h2) == 8
    assert h1["loss"].tolist() == pytest.approx(h2["loss"].tolist(), rel=1e-5)
    assert h1["loss"].iloc[0] != h1["loss"].iloc[-1]


def test_data_parallel_arguments_are_checked():
    s = lattice_ou(num_series=4, num_obs=4, seed=0)[0]
    m = LatentSDE(1, latent_dim=2, hidden_dim=8, context_dim=3, dt=0.25)
    with pytest.raises(BayesdynValueError, match="num_shards must be a positive multiple"):
        DataParallel(num_shards=0)
    with pytest.raises(BayesdynValueError, match=r"batch_size \(2\) must be at least num_shards"):
        fit(m, s, num_steps=1, batch_size=2, data_parallel=DataParallel(3), progress=False)
    with pytest.raises(BayesdynValueError, match="needs a seed; got seed=None"):
        fit(m, s, num_steps=1, seed=None, data_parallel=DataParallel(2), progress=False)
    with pytest.raises(BayesdynValueError, match="cannot be combined"):
        fit(m, s, num_steps=1, chunk_size=3, data_parallel=DataParallel(2), progress=False)
