"""Kill and resume: SIGKILL ``bayesdyn fit`` after a checkpoint, resume it, compare.

The resumed run must end with the parameters of an uninterrupted run with the same seed, so a
checkpoint must carry everything that steers training: parameters, optimiser state, RNG
states, data order, annealing and learning-rate schedule, early-stopping state. A kill while
a checkpoint is being written must never damage the previous one.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from bayesdyn._validation import BayesdynValueError
from bayesdyn.inference import load_checkpoint
from tests.reliability._cli import (
    REPO,
    TINY,
    cli,
    env,
    model_state,
    run,
    run_in_process,
    write_tiny_csv,
)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")


def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path):
    data = write_tiny_csv(tmp_path / "d.csv")
    # 12 series: 3 held out for validation (so the best-state tracking is checkpointed too),
    # mini-batches of 4 (so the data order matters), KL annealing over 12 steps, lr decay.
    common = [str(data), *TINY, "--steps", "24", "--batch-size", "4", "--kl-anneal-steps", "12"]
    common += ["--checkpoint-every", "4", "--val-fraction", "0.25", "--seed", "11"]

    killed = subprocess.Popen(
        cli("fit", *common, "--out", str(tmp_path / "b")),
        env=env(),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ckpt = tmp_path / "b" / "checkpoint.pt"
    deadline = time.monotonic() + 240
    while not ckpt.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait(timeout=60) == -signal.SIGKILL, "the run ended before it was killed"
    step_at_kill = load_checkpoint(ckpt)["step"]
    assert 4 <= step_at_kill < 24
    assert not (tmp_path / "b" / "model.pt").exists()  # it really stopped mid-training

    assert run_in_process("fit", *common, "--out", str(tmp_path / "a")) == 0  # uninterrupted
    resumed = run("fit", *common, "--out", str(tmp_path / "b"), "--resume")
    assert resumed.returncode == 0, resumed.stderr

    a, b = model_state(tmp_path / "a"), model_state(tmp_path / "b")
    for k, v in a.items():
        # float32 on one machine: the same operations in the same order, so equal up to the
        # last bit; allclose leaves room only for float rounding.
        assert torch.allclose(v, b[k], rtol=1e-6, atol=1e-7), k
    ha, hb = (
        pd.read_csv(tmp_path / "a" / "history.csv"),
        pd.read_csv(tmp_path / "b" / "history.csv"),
    )
    pd.testing.assert_frame_equal(ha, hb, rtol=1e-6)
    assert len(ha) == 24


_KILL_DURING_SAVE = r"""
import io, os, signal, sys, torch
from bayesdyn.inference import save_checkpoint
path = sys.argv[1]
save_checkpoint(path, {"step": 1, "w": torch.arange(1000.0)})
real_save = torch.save
def dying_save(obj, f, *a, **k):
    buf = io.BytesIO()
    real_save(obj, buf, *a, **k)
    data = buf.getvalue()
    f.write(data[: len(data) // 2])  # half the new checkpoint reaches the disk...
    f.flush()
    os.fsync(f.fileno())
    os.kill(os.getpid(), signal.SIGKILL)  # ...then the process dies
torch.save = dying_save
save_checkpoint(path, {"step": 2, "w": torch.zeros(1000)})
"""


def test_kill_during_checkpoint_write_keeps_the_last_good_one(tmp_path):
    path = tmp_path / "checkpoint.pt"
    p = subprocess.run(
        [sys.executable, "-c", _KILL_DURING_SAVE, str(path)],
        env=env(),
        cwd=REPO,
        capture_output=True,
        timeout=120,
    )
    assert p.returncode == -signal.SIGKILL, p.stderr
    ck = load_checkpoint(path)  # the previous checkpoint, whole
    assert ck["step"] == 1 and torch.equal(ck["w"], torch.arange(1000.0))
    partial = tmp_path / "checkpoint.pt.tmp"
    assert partial.exists()  # the torn write went to the temporary file only
    with pytest.raises(BayesdynValueError, match="could not be loaded safely"):
        load_checkpoint(partial)
    # The next save replaces the torn temporary file and the checkpoint.
    from bayesdyn.inference import save_checkpoint

    save_checkpoint(path, {"step": 3})
    assert load_checkpoint(path)["step"] == 3 and not partial.exists()
