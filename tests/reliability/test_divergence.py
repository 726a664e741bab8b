"""Divergence recovery: roll back to the last good checkpoint, halve the learning rate, go on.

Faults are injected into a real LatentSDE (``_faults.FaultyLatentSDE``): a posterior drift
that explodes (the SDE solve overflows) or a NaN gradient, on chosen steps. Every fit here is
float64 and deterministic, so the recovered run is compared exactly with a reference built
from the checkpoint by hand.
"""

from __future__ import annotations

import pytest
import torch

from bayesdyn import fit
from bayesdyn._validation import BayesdynValueError, FitDiverged
from bayesdyn.inference import load_checkpoint, save_checkpoint
from tests.common import lattice_ou
from tests.reliability._faults import FaultyLatentSDE, params

KW = dict(lr=2e-2, lr_final=1e-2, batch_size=5, kl_anneal_steps=4, seed=3, progress=False)


def small(**faults):
    torch.manual_seed(0)
    return FaultyLatentSDE(
        1, latent_dim=2, hidden_dim=8, context_dim=3, dt=0.25, diffusion_hidden_dim=4, **faults
    )


@pytest.fixture(scope="module")
def data():
    return lattice_ou(num_series=10, num_obs=5, t1=2.0, spacing=0.25, seed=1)[0]


def test_exploding_drift_rolls_back_halves_lr_and_continues(tmp_path, data):
    # The drift explodes on the 6th step (guide call 6): checkpoints are at steps 3, 6, 9.
    m = small(explode=lambda call: call == 6)
    r = fit(m, data, num_steps=10, checkpoint_every=3, checkpoint_dir=tmp_path / "f", **KW)
    assert r.num_steps == 10 and [h["step"] for h in r.history] == list(range(1, 11))
    (ev,) = r.divergences
    assert ev["step"] == 6 and ev["rolled_back_to"] == 3 and ev["lr_scale"] == 0.5
    assert ev["reason"].startswith("the SDE solve diverged (the SDE path became non-finite")
    assert "\n" not in ev["reason"]
    assert "recovered from 1 divergence(s)" in r.summary()
    decay = (KW["lr_final"] / KW["lr"]) ** (1 / 10)
    for h in r.history:  # the halved rate applies from the rolled-back step on
        scale = 0.5 if h["step"] > 3 else 1.0
        assert h["lr"] == pytest.approx(KW["lr"] * decay ** (h["step"] - 1) * scale, rel=1e-12)
    assert all(torch.isfinite(v).all() for v in params(m).values())
    ck = load_checkpoint(tmp_path / "f" / "checkpoint.pt")
    assert ck["step"] == 10 and ck["lr_scale"] == 0.5 and len(ck["divergences"]) == 1

    # Reference: the same run stopped at its first divergence (max_divergences=1), which
    # leaves the step-3 checkpoint on disk; that checkpoint with the learning rate halved by
    # hand, resumed. Rollback restored the model, optimiser, RNG states and data order
    # exactly, so the recovered run equals the reference bit for bit.
    ref = small(explode=lambda call: call == 6)
    with pytest.raises(FitDiverged):
        fit(ref, data, num_steps=10, checkpoint_every=3, checkpoint_dir=tmp_path / "r",
            max_divergences=1, **KW)  # fmt: skip
    path = tmp_path / "r" / "checkpoint.pt"
    ck = load_checkpoint(path)
    assert ck["step"] == 3
    ck["lr_scale"] = 0.5
    save_checkpoint(path, {k: v for k, v in ck.items() if k != "format"})
    ref = small()
    fit(ref, data, num_steps=10, checkpoint_every=3, checkpoint_dir=tmp_path / "r", resume=True,
        **KW)  # fmt: skip
    for k, v in params(ref).items():
        assert torch.equal(v, m.state_dict()[k]), k


def test_nan_gradient_rolls_back(data):
    # The loss stays finite; one parameter's gradient turns NaN on the 4th step.
    m = small(nan_grad=lambda call: call == 4)
    r = fit(m, data, num_steps=6, checkpoint_every=2, **KW)
    (ev,) = r.divergences
    assert ev["step"] == 4 and ev["rolled_back_to"] == 2
    assert ev["reason"] == "the gradient norm became nan"
    assert r.num_steps == 6 and all(torch.isfinite(v).all() for v in params(m).values())


def test_persistent_explosion_stops_after_max_divergences(tmp_path, data):
    m = small(explode=lambda call: call >= 5)  # from the 5th step on, every attempt explodes
    with pytest.raises(FitDiverged) as info:
        fit(
            m,
            data,
            num_steps=10,
            checkpoint_every=3,
            checkpoint_dir=tmp_path,
            max_divergences=3,
            **KW,
        )
    msg = str(info.value)
    assert "training diverged 3 times (max_divergences=3)" in msg
    assert "the last time at step 4: the SDE solve diverged" in msg
    assert "rolled back to the last good parameters (step 3)" in msg
    assert "the last good checkpoint is kept" in msg
    # The model is the last good checkpoint, which is intact on disk.
    ck = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ck["step"] == 3 and ck["divergences"] == []
    for k, v in ck["model"].items():
        assert torch.equal(m.state_dict()[k], v), k
    # steps 1-4 succeed (calls 1-4), step 5 fails (call 5), then step 4 fails twice (6, 7)
    assert m.calls == 7


def test_max_divergences_one_stops_at_the_first(data):
    m = small(explode=lambda call: call == 2)
    with pytest.raises(FitDiverged, match=r"diverged 1 times \(max_divergences=1\)"):
        fit(m, data, num_steps=4, max_divergences=1, **KW)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_max_divergences_is_checked(data, bad):
    with pytest.raises(BayesdynValueError, match="max_divergences must be a positive integer"):
        fit(small(), data, num_steps=1, max_divergences=bad, **KW)
