import pytest
import torch

from bayesdyn import LatentSDE, fit
from bayesdyn._validation import BayesdynTypeError, BayesdynValueError, FitDiverged
from bayesdyn.inference import load_checkpoint, save_checkpoint
from tests.common import lattice_ou


def small():
    torch.manual_seed(0)
    return LatentSDE(1, latent_dim=2, hidden_dim=8, context_dim=3, dt=0.25, diffusion_hidden_dim=4)


@pytest.fixture
def data():
    return lattice_ou(num_series=12, num_obs=6, t1=2.0, spacing=0.25, seed=3)[0]


def params(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def test_fit_decreases_loss_and_records_history(data):
    m = small()
    r = fit(m, data, num_steps=40, lr=2e-2, kl_anneal_steps=10, progress=False)
    assert r.num_steps == 40 and len(r.history) == 40
    first = sum(h["loss"] for h in r.history[:5]) / 5
    last = sum(h["loss"] for h in r.history[-5:]) / 5
    assert last < first
    assert r.history[0]["kl_scale"] == pytest.approx(0.01)
    assert r.history[-1]["kl_scale"] == 1.0
    assert "trained 40 steps" in r.summary()


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path, data):
    kw = dict(lr=1e-2, kl_anneal_steps=6, batch_size=5, seed=7, progress=False, checkpoint_every=4)
    full = small()
    fit(full, data, num_steps=12, checkpoint_dir=tmp_path / "a", **kw)
    part = small()
    fit(part, data, num_steps=8, checkpoint_dir=tmp_path / "b", **kw)  # "killed" at step 8
    resumed = small()
    r = fit(resumed, data, num_steps=12, checkpoint_dir=tmp_path / "b", resume=True, **kw)
    assert r.num_steps == 12 and len(r.history) == 12
    for k, v in params(full).items():
        assert torch.allclose(v, resumed.state_dict()[k], atol=1e-10), k


def test_early_stopping_restores_best_parameters(data):
    train, val = data[:8], data[8:]
    m = small()
    r = fit(m, train, num_steps=60, lr=5e-2, val_data=val, val_every=5, patience=2, progress=False)
    assert r.best_val_loss is not None
    vals = [h["val_loss"] for h in r.history if "val_loss" in h]
    assert r.best_val_loss == min(vals)
    assert r.stopped_early == (r.num_steps < 60)


def test_divergence_stops_with_clear_error_and_keeps_last_good(tmp_path, data):
    m = small()
    fit(m, data, num_steps=4, checkpoint_dir=tmp_path, checkpoint_every=2, progress=False)
    good = params(m)
    ck_before = load_checkpoint(tmp_path / "checkpoint.pt")["step"]

    # injected fault: a drift that explodes
    with torch.no_grad():
        m.post_drift.rest[-1].bias.fill_(1e200)
    poisoned = params(m)
    with pytest.raises(FitDiverged, match="rolled back to the last good parameters"):
        fit(m, data, num_steps=4, checkpoint_dir=tmp_path, checkpoint_every=1, progress=False)
    # rolled back to the state before the failing step, and the checkpoint is intact
    for k, v in poisoned.items():
        assert torch.equal(m.state_dict()[k], v)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == ck_before
    assert not torch.equal(good["post_drift.rest.3.bias"], poisoned["post_drift.rest.3.bias"])


def test_resume_continues_a_longer_run_with_the_same_decay(tmp_path, data):
    # Training in chunks (as the mocap benchmark does, to score a custom metric between
    # chunks): each chunk asks for num_steps = k and lr_final = lr * decay**k, the same per-step
    # learning rates as one run of the full length, which the chunks must reproduce.
    kw = dict(lr=2e-2, batch_size=5, seed=4, progress=False, checkpoint_every=10**9)
    decay = 0.9
    full = small()
    fit(full, data, num_steps=8, lr_final=2e-2 * decay**8, **kw)
    chunked = small()
    for k in (3, 6, 8):
        r = fit(chunked, data, num_steps=k, lr_final=2e-2 * decay**k, checkpoint_dir=tmp_path,
                resume=True, **kw)  # fmt: skip
    assert r.num_steps == 8
    for name, v in params(full).items():
        assert torch.allclose(v, chunked.state_dict()[name], atol=1e-10), name
    # Another decay (the same num_steps with another lr_final) is refused.
    with pytest.raises(BayesdynValueError, match=r"another schedule \(lr_decay_per_step"):
        fit(small(), data, num_steps=8, lr_final=1e-3, checkpoint_dir=tmp_path, resume=True, **kw)


@pytest.mark.parametrize(
    "kw, err, match",
    [
        (dict(lr=0.0), BayesdynValueError, "lr must be a finite positive number; got 0.0"),
        (dict(num_steps=-1), BayesdynValueError, "num_steps must be >= 0; got -1"),
        (dict(kl_min=0.0), BayesdynValueError, r"kl_min must lie in \(0, 1\]; got 0.0"),
        (dict(resume=True), BayesdynValueError, "resume=True needs checkpoint_dir"),
        (dict(batch_size=0), BayesdynValueError, "batch_size must be a positive integer"),
    ],
)
def test_fit_bad_arguments(data, kw, err, match):
    with pytest.raises(err, match=match):
        fit(small(), data, progress=False, **kw)


def test_fit_rejects_wrong_data_type():
    with pytest.raises(BayesdynTypeError, match="data must be an IrregularTimeSeries or"):
        fit(small(), [1, 2, 3], progress=False)


def test_checkpoint_is_atomic_and_weights_only(tmp_path):
    save_checkpoint(tmp_path / "c.pt", {"step": 3, "x": torch.ones(2)})
    assert not (tmp_path / "c.pt.tmp").exists()
    assert load_checkpoint(tmp_path / "c.pt")["step"] == 3
    (tmp_path / "c.pt").write_bytes((tmp_path / "c.pt").read_bytes()[:50])  # truncated
    with pytest.raises(BayesdynValueError, match="could not be loaded safely"):
        load_checkpoint(tmp_path / "c.pt")


def test_iterate_averaging_returns_the_mean_of_the_iterates(tmp_path, data):
    # With a constant learning rate the first k steps of a run do not depend on num_steps, so
    # short runs give the iterates of the long one; the averaged fit returns their mean.
    kw = dict(lr=1e-2, batch_size=5, seed=3, progress=False)
    n, after = 6, 3
    iterates = []
    for k in range(after + 1, n + 1):
        m = small()
        fit(m, data, num_steps=k, **kw)
        iterates.append(params(m))
    avg = small()
    fit(avg, data, num_steps=n, average_after=after, **kw)
    last = iterates[-1]
    moved = False
    for name, _ in small().named_parameters():
        mean = torch.stack([it[name] for it in iterates]).mean(0)
        assert torch.allclose(avg.state_dict()[name], mean, atol=1e-6), name
        moved |= not torch.allclose(mean, last[name], atol=1e-6)
    assert moved  # the average is not the last iterate
    # Validation scores the averaged parameters, and resuming restores the running mean.
    train, val = data[:8], data[8:]
    kw2 = dict(kw, val_data=val, val_every=2, average_after=2, checkpoint_every=3)
    full = small()
    fit(full, train, num_steps=8, checkpoint_dir=tmp_path / "a", **kw2)
    part = small()
    fit(part, train, num_steps=6, checkpoint_dir=tmp_path / "b", **kw2)  # stops at a val step
    resumed = small()
    fit(resumed, train, num_steps=8, checkpoint_dir=tmp_path / "b", resume=True, **kw2)
    for k, v in params(full).items():
        assert torch.allclose(v, resumed.state_dict()[k], atol=1e-10), k
    with pytest.raises(BayesdynValueError, match=r"average_after must be an integer in \[0, "):
        fit(small(), data, num_steps=4, average_after=4, progress=False)


def test_average_after_for():
    from bayesdyn.inference import average_after_for

    assert average_after_for(2400, 0.3) == 1680
    assert average_after_for(300, 0.001) == 299  # never num_steps itself (fit would refuse it)
    assert average_after_for(300, 0.0) is None and average_after_for(0, 0.5) is None
    with pytest.raises(BayesdynValueError, match=r"--x must be a fraction in \[0, 1\); got 1.0"):
        average_after_for(10, 1.0, "--x")


def test_fit_releases_the_kernel_work_buffers(data):
    from bayesdyn.inference import PathELBO
    from bayesdyn.models import release_kernel_buffers
    from bayesdyn.models.nets import _POOL

    m = small()
    batch = data.to_batch()
    loss = PathELBO().differentiable_loss(m.model, m.guide, batch)
    loss.backward()
    del loss  # frees the graph: the fused kernels' buffers return to the pool
    assert _POOL.kept > 0
    kept = _POOL.kept
    assert release_kernel_buffers() == kept and _POOL.kept == 0
    fit(m, data, num_steps=3, progress=False)
    assert _POOL.kept == 0 and not any(_POOL.free.values())
