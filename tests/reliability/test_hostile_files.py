"""Hostile and corrupt files each get a clear, named error (and nothing worse).

- truncated, empty or random-byte checkpoints, at load and at ``fit(resume=True)``;
- a checkpoint carrying a pickled object, which ``weights_only`` loading refuses (and whose
  code never runs);
- config files with wrong types, unknown options or invalid JSON (``bayesdyn fit --config``);
- a CSV with a million rows of garbage, which fails at its first chunk: it reads a small part
  of the file and uses little memory.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import torch

from bayesdyn import LatentSDE, fit
from bayesdyn._validation import BayesdynTypeError, BayesdynValueError
from bayesdyn.cli import main
from bayesdyn.data import IrregularTimeSeries
from bayesdyn.data._series import CSV_CHUNK_ROWS
from bayesdyn.inference import load_checkpoint, load_model, save_checkpoint
from bayesdyn.inference.fit import CHECKPOINT_FORMAT
from tests.common import lattice_ou
from tests.reliability._cli import write_tiny_csv


def small():
    torch.manual_seed(0)
    return LatentSDE(1, latent_dim=2, hidden_dim=8, context_dim=3, dt=0.25, diffusion_hidden_dim=4)


@pytest.fixture(scope="module")
def data():
    return lattice_ou(num_series=6, num_obs=5, t1=2.0, spacing=0.25, seed=2)[0]


# ------------------------------------------------------------------ checkpoints


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda b: b[: len(b) // 2],  # truncated mid-file
        lambda b: b[:10],  # truncated in the header
        lambda b: b"",  # empty
        lambda b: bytes(np.random.default_rng(0).integers(0, 256, len(b), dtype=np.uint8)),
    ],
    ids=["half", "header", "empty", "random"],
)
def test_corrupt_checkpoint_fails_clearly_at_resume(tmp_path, data, corrupt):
    fit(small(), data, num_steps=2, checkpoint_every=1, checkpoint_dir=tmp_path, progress=False)
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(
        BayesdynValueError,
        match=r"checkpoint '.*checkpoint.pt' could not be loaded safely \(weights_only=True\)",
    ):
        fit(small(), data, num_steps=4, checkpoint_dir=tmp_path, resume=True, progress=False)


class _Payload:
    """Unpickling this would run code: it writes a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("where", ["top", "nested"])
def test_pickled_object_payload_is_refused(tmp_path, where):
    marker = tmp_path / "pwned"
    evil = _Payload(str(marker))
    payload = {"format": CHECKPOINT_FORMAT, "step": 1}
    if where == "top":
        payload["model"] = evil
    else:
        payload["model_payload"] = {"state_dict": {"w": torch.ones(2)}, "config": evil}
    path = tmp_path / "evil.pt"
    torch.save(payload, path)
    with pytest.raises(
        BayesdynValueError,
        match=r"could not be loaded safely \(weights_only=True\): UnpicklingError",
    ):
        load_checkpoint(path)
    with pytest.raises(BayesdynValueError, match="could not be loaded safely"):
        load_model(path)
    assert not marker.exists()  # the payload's code never ran


def test_foreign_files_are_not_checkpoints(tmp_path):
    torch.save(torch.ones(3), tmp_path / "tensor.pt")
    with pytest.raises(BayesdynValueError, match="is not a bayesdyn checkpoint"):
        load_checkpoint(tmp_path / "tensor.pt")
    save_checkpoint(tmp_path / "ck.pt", {"step": 1})
    with pytest.raises(BayesdynValueError, match="is a training checkpoint, not a saved model"):
        load_model(tmp_path / "ck.pt")
    with pytest.raises(BayesdynValueError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_resume_refuses_a_checkpoint_of_another_schedule(tmp_path, data):
    fit(small(), data, num_steps=2, lr=1e-2, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(
        BayesdynValueError, match=r"another schedule \(lr: checkpoint 0.01, now 0.02\)"
    ):
        fit(
            small(),
            data,
            num_steps=4,
            lr=2e-2,
            checkpoint_dir=tmp_path,
            resume=True,
            progress=False,
        )


# ------------------------------------------------------------------ config files


@pytest.mark.parametrize(
    "config, match",
    [
        ({"steps": "many"}, r"option 'steps' must be an integer; got str 'many'"),
        ({"steps": 2.5}, r"option 'steps' must be an integer; got float 2.5"),
        ({"lr": True}, r"option 'lr' must be a finite number; got bool True"),
        ({"lr": "1e-2"}, r"option 'lr' must be a finite number; got str '1e-2'"),
        ({"resume": "yes"}, r"option 'resume' must be true or false; got str 'yes'"),
        ({"steps": None}, r"option 'steps' must be not null; got NoneType None"),
        ({"value-cols": 3}, r"option 'value-cols' must be a string; got int 3"),
    ],
)
def test_config_with_wrong_types(tmp_path, capsys, config, match):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(config))
    data = write_tiny_csv(tmp_path / "d.csv")
    assert main(["fit", str(data), "--out", str(tmp_path / "run"), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bayesdyn fit: error: --config ")
    assert pytest.importorskip("re").search(match, err), err
    assert not (tmp_path / "run").exists()  # refused before anything was trained or written


@pytest.mark.parametrize(
    "text, match",
    [
        ('{"steps": 3,}', "could not read a JSON object"),
        ("[1, 2]", "must hold a JSON object of options; got list"),
        ('{"stepz": 3}', r"unknown option 'stepz'; known: \[.*'steps'"),
        ('{"decoder": "poisson"}', r"option 'decoder' must be one of \['gaussian', 'student_t'\]"),
        ("\x00\xff garbage", "could not read a JSON object"),
    ],
)
def test_malformed_config(tmp_path, capsys, text, match):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(text, encoding="latin-1")
    rc = main(["fit", "d.csv", "--out", str(tmp_path / "run"), "--config", str(cfg)])
    assert rc == 2
    import re

    assert re.search(match, capsys.readouterr().err)


def test_config_values_are_used_and_flags_win(tmp_path, monkeypatch):
    import bayesdyn.cli as cli

    seen = {}
    monkeypatch.setattr(cli, "_cmd_fit", lambda args: seen.update(vars(args)) or 0)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"steps": 7, "lr": 0.5, "latent-dim": 3, "resume": True}))
    assert main(["fit", "d.csv", "--out", "o", "--config", str(cfg), "--lr", "0.1"]) == 0
    assert seen["steps"] == 7 and seen["latent_dim"] == 3 and seen["resume"] is True
    assert seen["lr"] == 0.1  # the command line wins over the file


# ------------------------------------------------------------------ a million rows of garbage


def _proc(field: str) -> int | None:
    try:
        with open(f"/proc/self/{'io' if field == 'rchar' else 'status'}") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")
@pytest.mark.parametrize("kind", ["words", "late", "binary"])
def test_million_rows_of_garbage_fail_fast(tmp_path, kind):
    rng = np.random.default_rng(0)
    n = 1_000_000
    path = tmp_path / "garbage.csv"
    words = np.array(["abc", "x1", "NaNa", "--", "1e", "0x1F", "é", "''"])
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("id,time,x\n")
        if kind == "late":  # a valid first chunk, then garbage
            fh.write("".join(f"{i % 7},{i},{i * 0.5}\n" for i in range(CSV_CHUNK_ROWS + 5)))
        if kind == "binary":
            fh.flush()
            with open(path, "ab") as fb:
                fb.write(rng.integers(0, 256, size=30 * n // 100, dtype=np.uint8).tobytes() * 100)
        else:  # 100 copies of 10,000 random garbage rows (cheap to write)
            w = words[rng.integers(0, len(words), size=(n // 100, 3))]
            block = "\n".join(map(",".join, w)) + "\n"
            for _ in range(100):
                fh.write(block)
    size = os.path.getsize(path)
    # Peak memory and bytes read while loading: the high-water mark is reset first (Linux).
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pytest.skip("cannot reset the RSS high-water mark here")
    rss0, read0 = _proc("VmRSS"), _proc("rchar")
    with pytest.raises((BayesdynValueError, BayesdynTypeError)) as info:
        IrregularTimeSeries.from_csv(path)
    peak_mib = (_proc("VmHWM") - rss0) / 1024
    read = _proc("rchar") - read0
    msg = str(info.value)
    if kind == "words":
        assert "time_col 'time' must hold real numbers; got dtype" in msg and "(row 0 holds" in msg
    elif kind == "late":
        assert f"(row {CSV_CHUNK_ROWS + 5} holds" in msg  # the first row of garbage
    else:
        assert "could not read CSV" in msg
    # It stopped within the first chunks: a small part of the file was read. Reading all of
    # it as strings (what a plain pandas.read_csv does) costs ~60 MiB for the word file.
    assert read < size / 3, (read, size)
    assert peak_mib < 40, peak_mib
