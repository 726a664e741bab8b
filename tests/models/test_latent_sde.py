import pytest
import torch
from pyro import poutine

from bayesdyn import LatentSDE, LatentSDEConfig, PathELBO, load_model, save_model
from bayesdyn._validation import BayesdynTypeError, BayesdynValueError
from bayesdyn.data import IrregularBatch
from bayesdyn.models import OBS_SITE, PATH_SITE, PRED_SITE, Z0_SITE
from tests.common import ragged_batch


def make(D=2, **kw):
    opts = dict(latent_dim=3, hidden_dim=8, context_dim=4, dt=0.2, diffusion_hidden_dim=4)
    opts.update(kw)
    return LatentSDE(D, **opts)


def test_site_names_are_api():
    assert (Z0_SITE, PATH_SITE, OBS_SITE, PRED_SITE) == ("z0", "z", "obs", "pred")


@pytest.mark.parametrize("B", [1, 4])
@pytest.mark.parametrize("T", [1, 7])
@pytest.mark.parametrize("D", [1, 3])
@pytest.mark.parametrize("encoder", ["gru", "first_k", "filter"])
def test_model_and_guide_shapes(B, T, D, encoder):
    batch = ragged_batch(B, T, D)
    m = make(D, encoder=encoder)
    q = torch.tensor([0.5, 3.0])
    gt = poutine.trace(m.guide).get_trace(batch, query_times=q)
    mt = poutine.trace(poutine.replay(m.model, trace=gt)).get_trace(batch, query_times=q)
    U = m.make_grid(batch, q).grid.numel()
    assert gt.nodes["z"]["value"].shape == (B, 1, U, 3)
    assert mt.nodes["z0"]["value"].shape == (B, 1, 3)
    assert mt.nodes["obs"]["fn"].batch_shape == (B, T)
    assert mt.nodes["obs"]["fn"].event_shape == (D,)
    assert mt.nodes["pred"]["value"].shape == (B, 2, D)
    loss = PathELBO().differentiable_loss(m.model, m.guide, batch)
    loss.backward()
    assert torch.isfinite(loss)


def test_masked_and_padded_values_do_not_count():
    batch = ragged_batch(4, 6, 2)
    m = make()
    noisy = batch._replace(
        values=torch.where(batch.mask, batch.values, torch.randn_like(batch.values) * 1e3)
    )

    def loss(b):
        torch.manual_seed(5)
        return PathELBO().loss(m.model, m.guide, b)

    # the encoder zeroes masked inputs, the likelihood masks them: identical losses
    assert loss(batch) == pytest.approx(loss(noisy), rel=1e-12)


def test_fully_masked_series_contributes_no_likelihood():
    batch = ragged_batch(3, 5, 2)
    mask = batch.mask.clone()
    mask[2] = False
    b2 = batch._replace(mask=mask)
    m = make()
    tr = poutine.trace(
        poutine.replay(m.model, trace=poutine.trace(m.guide).get_trace(b2))
    ).get_trace(b2)
    tr.compute_log_prob()
    assert torch.all(tr.nodes["obs"]["log_prob"][2] == 0)
    assert torch.isfinite(tr.nodes["obs"]["log_prob"]).all()


def test_posterior_drift_switches_to_prior_after_last_observation():
    batch = ragged_batch(2, 5, 2)
    m = make()
    grid = m.make_grid(batch, torch.tensor([4.0])).grid
    post = m.posterior_sde(batch, grid, m.encode(batch))
    prior = m.prior_sde(batch, grid)
    z = torch.randn(2, 1, grid.numel() - 1, 3)
    fq, gq = post.on_path(grid[:-1], z)
    fp, gp = prior.on_path(grid[:-1], z)
    assert torch.equal(gq, gp)
    last = batch.times.gather(1, (batch.lengths - 1).unsqueeze(-1))
    after = (grid[:-1].unsqueeze(0) >= last).unsqueeze(1).unsqueeze(-1).expand_as(fq)
    assert after.any() and torch.equal(fq[after], fp[after])
    assert not torch.allclose(fq[~after], fp[~after])
    # the per-step path agrees with the vectorised one
    for k in [0, grid.numel() - 2]:
        f_step, _ = post.step(k, grid[k], z[..., k, :])
        assert torch.allclose(f_step, fq[..., k, :])


def test_stable_drift_keeps_long_forecasts_bounded():
    torch.manual_seed(0)
    m = make(1, stable_drift=True, diffusion_max=1.0)
    with torch.no_grad():  # an adversarial bounded part pushing outwards
        m.prior_drift.rest[-1].bias.fill_(5.0)
    times = torch.linspace(0, 1, 5).unsqueeze(0)
    batch = IrregularBatch(
        times, torch.zeros(1, 5, 1), torch.ones(1, 5, 1, dtype=torch.bool), torch.tensor([5])
    )
    grid = torch.linspace(0, 100, 1001)  # 100x the data window
    from bayesdyn import SDEPath

    prior = m.prior_sde(batch, grid)
    with torch.no_grad():
        paths = SDEPath(prior, torch.zeros(256, 1, 3), grid).sample()
        P = m.prior_drift.precision()
    # |f_bounded| <= 5 and P >= eps*I: the stationary region has radius ~ (5*sqrt(L) + noise)/eps
    eps_min = float(torch.linalg.eigvalsh(P).min())
    radius = (m.prior_drift.bound * 3**0.5 + 6 * 1.0) / eps_min
    assert float(paths.abs().max()) < radius
    late = paths[:, :, -250:].abs().amax(-1).amax(-1)
    early = paths[:, :, 250:500].abs().amax(-1).amax(-1)
    assert float(late.mean()) < 1.5 * float(early.mean())  # no drift to infinity


@pytest.mark.parametrize(
    "mutate, err, match",
    [
        (
            lambda b: b._replace(values=b.values[..., :1], mask=b.mask[..., :1]),
            BayesdynValueError,
            "values has 1 channels, the model expects 2",
        ),
        (
            lambda b: b._replace(covariates=torch.zeros(*b.times.shape, 2)),
            BayesdynValueError,
            "batch has 2 covariates, the model expects covariate_dim=0",
        ),
        (lambda b: (b.times, b.values), BayesdynTypeError, "batch must be an IrregularBatch"),
    ],
)
def test_bad_batch(mutate, err, match):
    m = make()
    with pytest.raises(err, match=match):
        m.model(mutate(ragged_batch()))


@pytest.mark.parametrize(
    "opts, match",
    [
        (dict(latent_dim=0), "latent_dim must be a positive integer; got 0"),
        (dict(encoder="lstm"), "encoder must be 'gru', 'first_k' or 'filter'; got 'lstm'"),
        (dict(decoder="poisson"), "decoder must be 'gaussian' or 'student_t'"),
        (dict(dt=-1.0), "dt must be a finite positive number; got -1.0"),
        (dict(bogus=1), r"unknown LatentSDE option\(s\) \['bogus'\]"),
        (dict(diffusion_min=1.0, diffusion_max=0.5), "need 0 <= min_scale < max_scale"),
    ],
)
def test_bad_config(opts, match):
    with pytest.raises(BayesdynValueError, match=match):
        LatentSDE(2, **opts)


def test_covariates_and_time_inputs_change_the_drift():
    batch = ragged_batch(2, 5, 2)
    cov = torch.randn(2, 5, 1)
    b = batch._replace(covariates=cov)
    m = make(covariate_dim=1, time_input=True)
    loss = PathELBO().differentiable_loss(m.model, m.guide, b)
    loss.backward()
    w = m.prior_drift.first.weight.grad
    assert w.shape[1] == 3 + 2 and bool(w[:, 3:].abs().sum() > 0)


def test_save_and_load_round_trip(tmp_path):
    m = make(2, decoder="student_t")
    save_model(m, tmp_path / "m.pt", extra={"scaler": {"mean": [0.0, 1.0], "std": [1.0, 2.0]}})
    m2, extra = load_model(tmp_path / "m.pt")
    assert extra["scaler"]["std"] == [1.0, 2.0]
    assert isinstance(m2.config, LatentSDEConfig) and m2.config == m.config
    for (k, v), (k2, v2) in zip(m.state_dict().items(), m2.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2)


def test_load_refuses_pickled_objects(tmp_path):
    import argparse

    evil = argparse.Namespace(payload="arbitrary object")  # not on torch's weights_only allow-list
    torch.save({"format": "bayesdyn.checkpoint/1", "model_payload": evil}, tmp_path / "bad.pt")
    with pytest.raises(BayesdynValueError, match="could not be loaded safely"):
        load_model(tmp_path / "bad.pt")
    (tmp_path / "trunc.pt").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(BayesdynValueError, match="could not be loaded safely"):
        load_model(tmp_path / "trunc.pt")
    with pytest.raises(BayesdynValueError, match="does not exist"):
        load_model(tmp_path / "missing.pt")


def test_gaussian_decoder_set_scale_round_trips_and_refuses_bad_values():
    from bayesdyn.models import GaussianDecoder

    for learn in (True, False):
        dec = GaussianDecoder(2, 3, learn_scale=learn, min_scale=1e-4)
        want = torch.tensor([0.05, 1.0, 120.0])
        dec.set_scale(want)
        torch.testing.assert_close(dec.scale(), want, rtol=1e-6, atol=0)
        dec.set_scale(0.3)
        torch.testing.assert_close(dec.scale(), torch.full((3,), 0.3), rtol=1e-6, atol=0)
        assert isinstance(dec.raw_scale, torch.nn.Parameter) == learn
    with pytest.raises(BayesdynValueError, match=r"shape \[3\]; got shape \(2,\)"):
        dec.set_scale([0.1, 0.2])
    with pytest.raises(BayesdynValueError, match="> min_scale=0.0001"):
        dec.set_scale([0.1, 0.0, 0.2])
    with pytest.raises(BayesdynValueError, match="finite"):
        dec.set_scale(float("nan"))
