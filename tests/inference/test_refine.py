"""``refine_lbfgs``: full-batch L-BFGS on the frozen-noise ELBO reaches the exact maximum
likelihood, keeps the best validation parameters, and checks its arguments."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import optimize

from bayesdyn._validation import BayesdynValueError
from bayesdyn.data import self_correcting_log_likelihood, simulate_self_correcting
from bayesdyn.inference import refine_lbfgs
from tests.models.test_log_linear_intensity import _exact_self_correcting_model


def _two_parameter_model(mu: float, beta: float):
    """The hand-set self-correcting LatentJumpSDE with only the drift (mu) and the jump (-beta)
    trainable: its log-likelihood is the closed form of lambda = exp(mu t - beta N) (up to a
    1e-4 initial-state noise)."""
    m = _exact_self_correcting_model(dt=0.5, grid="per_series")
    for p in m.parameters():
        p.requires_grad_(False)
    drift, jump = m.core.prior_drift.rest[-1].bias, m.jump_net.net[-1].bias
    with torch.no_grad():
        drift.fill_(mu)
        jump.fill_(-beta)
    drift.requires_grad_(True)
    jump.requires_grad_(True)
    m.train(False)  # frozen parameters: pyro.module warns about them in training mode
    return m, drift, jump


def _mle(events, t1):
    def nll(x):
        return -sum(self_correcting_log_likelihood(e, 0.0, t1, mu=x[0], beta=x[1]) for e in events)

    res = optimize.minimize(
        nll, [0.5, 0.2], method="Nelder-Mead", options=dict(xatol=1e-9, fatol=1e-10)
    )
    return res.x


def test_refine_reaches_the_closed_form_maximum_likelihood():
    d = simulate_self_correcting(num_series=12, t1=20.0, seed=4, mu=0.5, beta=0.2).series
    mu_hat, beta_hat = _mle(d.events, 20.0)
    # Start well off the optimum (mu_hat ~0.47, beta_hat ~0.19 for these data).
    m, drift, jump = _two_parameter_model(0.4, 0.3)
    res = refine_lbfgs(m, d.to_jump_batch(), num_rounds=3, max_iter=30, progress=False)
    assert res.history and res.history[-1]["loss"] < res.initial_loss
    assert res.best_round >= 1 and res.best_val_loss is None
    # The only noise is z0 ~ N(0, 1e-4^2) per series, which moves the optimum by ~1e-4.
    assert float(drift.detach()) == pytest.approx(mu_hat, abs=1e-3)
    assert float(-jump.detach()) == pytest.approx(beta_hat, abs=1e-3)
    # Negative control: the start is far outside that tolerance.
    assert abs(0.4 - mu_hat) > 20 * 1e-3 and abs(0.3 - beta_hat) > 20 * 1e-3


def test_refine_keeps_the_best_validation_parameters():
    train = simulate_self_correcting(num_series=8, t1=20.0, seed=1, mu=0.5, beta=0.2).series
    val = simulate_self_correcting(num_series=8, t1=20.0, seed=2, mu=0.3, beta=0.2).series
    # Start at the validation process: refining on the training data moves away from it.
    m, drift, jump = _two_parameter_model(0.3, 0.2)
    start = {k: v.clone() for k, v in m.state_dict().items()}
    res = refine_lbfgs(
        m, train.to_jump_batch(), val_data=val.to_jump_batch(), num_rounds=2, progress=False
    )
    assert res.history[0]["loss"] < res.initial_loss  # it did improve the training loss
    assert all(h["val_loss"] > res.initial_val_loss for h in res.history)
    assert res.best_round == 0 and res.best_val_loss == res.initial_val_loss
    for k, v in m.state_dict().items():
        assert torch.equal(v, start[k]), k
    assert "kept round 0" in res.summary()


def test_refine_objective_is_deterministic_with_frozen_noise():
    # A model with real path noise (diffusion and z0 scale): two refinements from the same
    # start with the same seed give identical parameters; another seed does not.
    d = simulate_self_correcting(num_series=4, t1=10.0, seed=3, mu=0.5, beta=0.2).series
    out = []
    for seed in (0, 0, 1):
        m, drift, jump = _two_parameter_model(0.45, 0.25)
        with torch.no_grad():
            m.core.z0_prior.raw_scale.fill_(-2.0)  # z0 scale ~0.13: noisy paths
        refine_lbfgs(m, d.to_jump_batch(), num_rounds=1, max_iter=5, seed=seed, progress=False)
        out.append(np.array([float(drift.detach()), float(jump.detach())]))
    assert np.array_equal(out[0], out[1])
    assert not np.array_equal(out[0], out[2])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_rounds=0), "num_rounds must be a positive integer; got 0"),
        (dict(max_iter="5"), "max_iter must be a positive integer; got '5'"),
        (dict(history_size=True), "history_size must be a positive integer; got True"),
        (dict(seed=1.5), "seed must be an integer; got 1.5"),
    ],
)
def test_refine_argument_errors(kwargs, match):
    d = simulate_self_correcting(num_series=2, t1=5.0, seed=0, mu=0.5, beta=0.2).series
    m, _, _ = _two_parameter_model(0.5, 0.2)
    with pytest.raises(BayesdynValueError, match=match):
        refine_lbfgs(m, d.to_jump_batch(), **kwargs)


def test_refine_needs_trainable_parameters():
    d = simulate_self_correcting(num_series=2, t1=5.0, seed=0, mu=0.5, beta=0.2).series
    m, drift, jump = _two_parameter_model(0.5, 0.2)
    drift.requires_grad_(False)
    jump.requires_grad_(False)
    with pytest.raises(BayesdynValueError, match="no trainable parameters"):
        refine_lbfgs(m, d.to_jump_batch())


def test_refine_works_on_a_latent_sde_and_refuses_a_diverged_start():
    from bayesdyn import LatentSDE, fit
    from tests.common import lattice_ou

    data = lattice_ou(num_series=10, num_obs=6, t1=2.0, spacing=0.25, seed=3)[0]
    torch.manual_seed(0)
    m = LatentSDE(1, latent_dim=2, hidden_dim=8, context_dim=3, dt=0.25, diffusion_hidden_dim=4)
    fit(m, data[:8], num_steps=20, lr=2e-2, progress=False)
    res = refine_lbfgs(m, data[:8], val_data=data[8:], num_rounds=2, max_iter=10, progress=False)
    assert res.history[-1]["loss"] < res.initial_loss
    assert res.best_val_loss <= res.initial_val_loss
    # The kept parameters give the recorded validation loss (same frozen noise).
    kept = refine_lbfgs(m, data[:8], val_data=data[8:], num_rounds=1, max_iter=1, progress=False)
    assert kept.initial_val_loss == pytest.approx(res.best_val_loss, rel=1e-12)
    with torch.no_grad():
        m.post_drift.rest[-1].bias.fill_(1e200)  # a drift that explodes
    with pytest.raises(
        BayesdynValueError, match="needs a model whose loss is finite to start from"
    ):
        refine_lbfgs(m, data[:8], progress=False)


def _fail_evaluation(monkeypatch, fail_at: set[int]):
    """Fault injection: the ELBO evaluations numbered in ``fail_at`` (1-based, counting every
    call of the objective) return NaN, as a diverged SDE solve would. The model, the ELBO and
    L-BFGS are the real ones."""
    import bayesdyn.inference.refine as refine_mod

    real = refine_mod._loss
    calls = {"n": 0}

    def loss(*args, **kwargs):
        calls["n"] += 1
        out = real(*args, **kwargs)
        return out * float("nan") if calls["n"] in fail_at else out

    monkeypatch.setattr(refine_mod, "_loss", loss)
    return calls


def test_refine_retries_a_round_that_diverges_midway(monkeypatch):
    """A non-finite objective inside a round restores the last good parameters, halves the
    step scale, starts a fresh L-BFGS memory, and the rounds still reach the optimum."""
    d = simulate_self_correcting(num_series=12, t1=20.0, seed=4, mu=0.5, beta=0.2).series
    mu_hat, beta_hat = _mle(d.events, 20.0)
    m, drift, jump = _two_parameter_model(0.4, 0.3)
    # Evaluation 1 is the starting loss; 2.. are round 1's line search: fail its 4th.
    calls = _fail_evaluation(monkeypatch, {5})
    res = refine_lbfgs(m, d.to_jump_batch(), num_rounds=3, max_iter=30, progress=False)
    assert calls["n"] > 5
    assert res.divergences == [{"round": 1, "reason": res.divergences[0]["reason"], "lr": 0.5}]
    assert "nan" in res.divergences[0]["reason"].lower()
    assert [h["round"] for h in res.history] == list(range(1, len(res.history) + 1))
    assert float(drift.detach()) == pytest.approx(mu_hat, abs=1e-3)
    assert float(-jump.detach()) == pytest.approx(beta_hat, abs=1e-3)
    assert "1 divergence(s) retried" in res.summary()


def test_refine_stops_after_max_divergences_with_the_best_parameters(monkeypatch):
    d = simulate_self_correcting(num_series=6, t1=20.0, seed=4, mu=0.5, beta=0.2).series
    m, drift, jump = _two_parameter_model(0.4, 0.3)
    start = {k: v.clone() for k, v in m.state_dict().items()}
    _fail_evaluation(monkeypatch, set(range(3, 1000)))  # every evaluation after the first step
    res = refine_lbfgs(
        m, d.to_jump_batch(), num_rounds=3, max_iter=10, max_divergences=2, progress=False
    )
    assert [x["lr"] for x in res.divergences] == [0.5, 0.25]
    assert res.stopped.startswith("diverged:") and "round 1" in res.stopped
    assert res.history == [] and res.best_round == 0
    for k, v in m.state_dict().items():  # nothing finished: the starting parameters stay
        assert torch.equal(v, start[k]), k
