"""to_inference_data and the HTML report for jump models (LatentJumpSDE): posterior paths and
intensities, per-series event log-likelihoods for LOO, observed events, netCDF, the jumps figure;
run directories of jump models (save_run, save_model/load_model, `bayesdyn report RUN_DIR`)."""

import html.parser
import math

import numpy as np
import pytest
import torch
import xarray as xr

from bayesdyn import IrregularTimeSeries, LatentJumpSDE, LatentSDE, fit, load_model, save_model
from bayesdyn._validation import BayesdynTypeError, BayesdynValueError
from bayesdyn.data import Scaler, simulate_hawkes
from bayesdyn.diagnostics import _arviz, save_run, to_inference_data
from bayesdyn.diagnostics.report import (
    ReportInputs,
    collect_run,
    in_sample_scores,
    render_report,
)
from bayesdyn.inference import save_checkpoint

S = 24  # draws per chain: enough for PSIS's tail fit
Q = 20  # default plotting grid size used here
T1 = 8.0  # window [0, T1]
HAWKES = dict(baseline=0.5, alpha=0.5, beta=1.0)


def _float64(build):
    """Module-scoped fixtures run before conftest sets the float64 default: set it here."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return build()
    finally:
        torch.set_default_dtype(old)


def _jump_model(seed, **kw):
    torch.manual_seed(seed)
    opts = dict(
        latent_dim=2, hidden_dim=8, jump_hidden_dim=8, context_dim=2, dt=0.5, diffusion_max=0.05
    )
    return LatentJumpSDE(**{**opts, **kw})


@pytest.fixture(scope="module")
def events_only():
    """A LatentJumpSDE (guide='prior', obs_dim=0) fitted for 3 steps on 4 Hawkes sequences."""

    def build():
        data = simulate_hawkes(num_series=4, t1=T1, seed=0, **HAWKES).series
        model = _jump_model(0, guide="prior")
        fit(model, data.to_jump_batch(), num_steps=3, lr=0.02, seed=0, progress=False)
        idata = to_inference_data(model, data, num_samples=S, num_times=Q)
        return data, model, idata

    return _float64(build)


def _with_channels_data():
    """4 series: one noisy channel at 7 times on [0, T1] and Hawkes events on the same window."""
    rng = np.random.default_rng(1)
    events = simulate_hawkes(num_series=4, t1=T1, seed=1, **HAWKES).series.events
    times = [np.linspace(0.0, T1, 7)] * 4
    values = [(5.0 + 2.0 * np.sin(t) + 0.3 * rng.standard_normal(7))[:, None] for t in times]
    mask = [np.ones((7, 1), dtype=bool)] * 4
    return IrregularTimeSeries(times, values, mask, events=events)


@pytest.fixture(scope="module")
def with_channels():
    """Two LatentJumpSDE members (encoder guide, obs_dim=1) on standardised data, 3 steps."""

    def build():
        data = _with_channels_data()
        scaled, scaler = data.standardize()
        members = []
        for e in range(2):
            m = _jump_model(e, obs_dim=1)
            fit(m, scaled.to_jump_batch(), num_steps=3, lr=0.02, seed=e, progress=False)
            members.append(m)
        idata = to_inference_data(members, data, scaler=scaler, num_samples=S, num_times=Q)
        return data, scaler, members, idata

    return _float64(build)


def test_events_only_posterior_dims_and_intensity_of_z(events_only):
    data, model, idata = events_only
    B = len(data)
    assert {"posterior", "log_likelihood", "sample_stats", "observed_data"} <= set(idata.groups())
    assert "posterior_predictive" not in idata.groups()  # no continuous channels
    post = idata.posterior
    assert post["z"].dims == ("chain", "draw", "series", "time", "latent_dim")
    assert post["z"].shape == (1, S, B, Q, 2)
    np.testing.assert_allclose(post["time"].values, np.linspace(0.0, T1, Q))  # default grid
    assert post["z0"].shape == (1, S, B, 2)
    assert post["diffusion"].shape == (1, S, 2)
    lam = post["intensity"]
    assert lam.dims == ("chain", "draw", "series", "time", "mark") and lam.shape == (1, S, B, Q, 1)
    assert np.isfinite(lam.values).all() and (lam.values > 0).all()
    with torch.no_grad():
        want = model.intensity(torch.as_tensor(post["z"].values)).numpy()
    np.testing.assert_allclose(lam.values, want, rtol=1e-12)
    # the z draws vary (a sampled path per draw), and the intensity with them
    assert post["z"].values.std(axis=1).min() > 0
    assert idata.sample_stats["elbo"].shape == (1, S)
    assert np.isfinite(idata.sample_stats["elbo"].values).all()
    ll = idata.log_likelihood["events"]
    assert ll.dims == ("chain", "draw", "series") and np.isfinite(ll.values).all()
    assert idata.posterior.attrs["model"] == "LatentJumpSDE"


def test_observed_events_are_the_input_events_nan_padded(events_only):
    data, _, idata = events_only
    obs = idata.observed_data
    counts = [len(e) for e in data.events]
    assert obs["event_time"].dims == ("series", "event")
    assert obs["event_time"].shape == (len(data), max(counts))
    np.testing.assert_array_equal(obs["event_count"].values, counts)
    for b, (ev, mk) in enumerate(zip(data.events, data.marks, strict=True)):
        np.testing.assert_array_equal(obs["event_time"].values[b, : len(ev)], ev)
        assert np.isnan(obs["event_time"].values[b, len(ev) :]).all()
        np.testing.assert_array_equal(obs["event_mark"].values[b, : len(ev)], mk)
        assert (obs["event_mark"].values[b, len(ev) :] == -1).all()
    np.testing.assert_array_equal(idata.constant_data["window_end"].values, T1)


def test_loo_runs_on_events_and_netcdf_round_trip(events_only, tmp_path):
    data, _, idata = events_only
    loo = _arviz.loo(idata, var_name="events")
    assert np.isfinite(loo.elpd_loo) and loo.pareto_k.shape == (len(data),)
    assert float(loo.elpd_loo) == pytest.approx(float(_arviz.loo(idata).elpd_loo))  # one var
    back = _arviz.from_netcdf(_arviz.to_netcdf(idata, tmp_path / "jump.nc"))
    assert set(back.groups()) == set(idata.groups())
    for g in idata.groups():
        xr.testing.assert_identical(back[g], idata[g])


def test_pointwise_event_log_likelihood_is_exact_for_a_constant_intensity():
    """W = 0: each of the K = 2 marks has lambda = softplus(c) + min_intensity whatever the
    path, so each series' entry is N_b log(lambda) - K lambda T exactly, in every draw (drawn
    in several chunks)."""
    data = simulate_hawkes(num_series=3, t1=T1, seed=2, mark_probs=[0.5, 0.5], **HAWKES).series
    assert {int(m) for mk in data.marks for m in mk} == {0, 1}
    model = _jump_model(0, guide="prior", num_marks=2)
    with torch.no_grad():
        model.intensity_head.weight.zero_()
        model.intensity_head.bias.fill_(0.3)
    idata = to_inference_data(model, data, num_samples=5, num_times=5, elbo=False, chunk_size=2)
    lam = math.log1p(math.exp(0.3)) + model.config.min_intensity
    want = np.array([len(e) * math.log(lam) - 2 * lam * T1 for e in data.events])
    got = idata.log_likelihood["events"].values  # (chain, draw, series)
    assert got.shape == (1, 5, 3)
    np.testing.assert_allclose(got, np.broadcast_to(want, got.shape), rtol=1e-10)
    assert idata.posterior["intensity"].shape == (1, 5, 3, 5, 2)
    np.testing.assert_allclose(idata.posterior["intensity"].values, lam, rtol=1e-10)
    np.testing.assert_array_equal(
        idata.observed_data["event_mark"].values[0, : len(data.marks[0])], data.marks[0]
    )
    assert "sample_stats" not in idata.groups()


def test_with_channels_members_are_chains_with_obs_loglik_and_predictive(with_channels):
    data, scaler, members, idata = with_channels
    B, N = len(data), data.num_observed
    post = idata.posterior
    assert post["z"].shape == (2, S, B, Q, 2) and post["intensity"].shape == (2, S, B, Q, 1)
    assert (post["intensity"].values > 0).all()
    scale = post["obs_scale"].values  # (chain, draw, channel), data units
    assert scale.shape == (2, S, 1) and np.all(scale == scale[:, :1])
    np.testing.assert_allclose(
        scale[:, 0, 0],
        [float(m.decoder.scale().detach()[0]) * scaler.std[0] for m in members],
        rtol=1e-10,
    )
    assert idata.log_likelihood["obs"].shape == (2, S, N)
    assert idata.log_likelihood["events"].shape == (2, S, B)
    assert idata.posterior_predictive["obs"].shape == (2, S, N)
    assert idata.posterior_predictive["y"].shape == (2, S, B, Q, 1)
    want = np.concatenate([v[m] for v, m in zip(data.values, data.mask, strict=True)])
    np.testing.assert_allclose(idata.observed_data["obs"].values, want)
    # predictive in data units: centred near the data (mean ~5), not the standardised scale
    assert abs(float(idata.posterior_predictive["obs"].mean()) - want.mean()) < 3.0
    for var in ("obs", "events"):
        assert np.isfinite(_arviz.loo(idata, var_name=var).elpd_loo), var
    assert idata.sample_stats["elbo"].shape == (2, S)


class _Sections(html.parser.HTMLParser):
    """Section ids, and the <img> alt texts and text inside each section."""

    def __init__(self):
        super().__init__()
        self.current = None
        self.images: dict[str, list[str]] = {}
        self.text: dict[str, str] = {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.current = a.get("id")
            self.images[self.current], self.text[self.current] = [], ""
        elif tag == "img" and self.current is not None:
            assert a["src"].startswith("data:image/png;base64,")
            self.images[self.current].append(a.get("alt"))

    def handle_endtag(self, tag):
        if tag == "section":
            self.current = None

    def handle_data(self, data):
        if self.current is not None:
            self.text[self.current] += data


def _render(inputs):
    p = _Sections()
    p.feed(render_report(inputs, max_series=2))
    return p


def test_report_of_events_only_fit_shows_the_jumps_figure(events_only):
    data, _, idata = events_only
    p = _render(ReportInputs(idata=idata, data=data, title="jumps"))
    assert p.images["jumps"] == ["event intensities and events"]
    assert "nothing to show" not in p.text["jumps"]
    assert "no continuous observed channels" in p.text["predictive"]
    assert p.images["predictive"] == []
    assert "No calibration scores" in p.text["calibration"]
    assert "event sequences (one per series)" in p.text["loo"]
    assert p.images["latent"] == ["posterior latent trajectories"]


def test_report_with_channels_has_calibration_loo_of_both_and_jumps(with_channels):
    data, _, _, idata = with_channels
    inputs = ReportInputs(idata=idata, data=data, scores=in_sample_scores(idata, seed=0))
    p = _render(inputs)
    assert p.images["jumps"] == ["event intensities and events"]
    assert p.images["predictive"] == ["data and posterior predictive bands per series"]
    assert p.images["calibration"] == ["PIT histogram and coverage"]
    assert (
        "observed values" in p.text["loo"] and "The events are scored separately" in p.text["loo"]
    )


def test_bad_inputs_for_jump_models_name_the_argument(events_only):
    data, model, _ = events_only
    no_events = IrregularTimeSeries(
        data.times, data.values, data.mask, require_observed_channels=False
    )
    with pytest.raises(ValueError, match=r"data has no events, but source is a jump model"):
        to_inference_data(model, no_events, num_samples=2)
    with pytest.raises(ValueError, match="forecast_times is not supported for jump models"):
        to_inference_data(model, data, num_samples=2, forecast_times=[9.0, 10.0])
    sde = LatentSDE(1, latent_dim=2, hidden_dim=8, context_dim=2)
    with pytest.raises(TypeError, match="source mixes LatentJumpSDE and other models"):
        to_inference_data([model, sde], data, num_samples=2)
    _, scaler = _with_channels_data().standardize()
    with pytest.raises(ValueError, match="scaler must be None for an events-only jump model"):
        to_inference_data(model, data, scaler=scaler, num_samples=2)
    with pytest.raises(ValueError, match="times must be a non-empty, finite, strictly increasing"):
        to_inference_data(model, data, times=[2.0, 1.0], num_samples=2)
    # the model's own batch check still applies (observed values for an events-only model)
    with pytest.raises(ValueError, match="obs_dim=0"):
        to_inference_data(model, _with_channels_data(), num_samples=2)


# ----------------------------------------------------------------------------- run directories


def _report_via_cli(run, out):
    from bayesdyn.cli import main

    argv = ["report", str(run), "--out", str(out), "--num-samples", "8", "--max-series", "2"]
    assert main(argv) == 0
    p = _Sections()
    p.feed(out.read_text(encoding="utf-8"))
    return p


def test_cli_report_of_a_saved_events_only_jump_run(events_only, tmp_path, capsys):
    """save_run writes model.pt + data.csv (all NaN) + events.csv; `bayesdyn report` loads the
    LatentJumpSDE and the events back and draws the jumps figure."""
    data, model, _ = events_only
    run = save_run(tmp_path / "run", model, data, history=[{"step": 1, "loss": 2.0}])
    assert {p.name for p in run.iterdir()} == {"model.pt", "data.csv", "events.csv", "history.csv"}
    p = _report_via_cli(run, tmp_path / "r.html")
    assert "report written to" in capsys.readouterr().out
    assert p.images["jumps"] == ["event intensities and events"]
    assert "no continuous observed channels" in p.text["predictive"]
    assert "No calibration scores" in p.text["calibration"]
    assert p.images["training"] == ["training curve"]
    back = collect_run(run, num_samples=2, num_times=5).data  # the events read back exactly
    assert back.ids == data.ids and back.num_marks == data.num_marks
    for got, want in zip(back.events, data.events, strict=True):
        np.testing.assert_array_equal(got, want)


def test_cli_report_of_a_saved_jump_ensemble_with_channels(with_channels, tmp_path):
    """Two members + scaler as members/*.pt: the report has the jumps figure and in-sample
    calibration of the continuous channel."""
    data, scaler, members, _ = with_channels
    run = save_run(tmp_path / "run", members, data, scaler, summary={"note": "two members"})
    assert sorted(p.name for p in (run / "members").iterdir()) == ["000.pt", "001.pt"]
    p = _report_via_cli(run, tmp_path / "r.html")
    assert p.images["jumps"] == ["event intensities and events"]
    assert p.images["calibration"] == ["PIT histogram and coverage"]
    assert "two members" in p.text["run"]


def test_save_load_round_trip_of_a_jump_model(with_channels, tmp_path):
    data, scaler, members, _ = with_channels
    model = members[1]
    save_model(model, tmp_path / "m.pt", extra={"scaler": scaler.state_dict()})
    back, extra = load_model(tmp_path / "m.pt")
    assert type(back) is LatentJumpSDE and back.config == model.config
    want, got = model.state_dict(), back.state_dict()
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), k
    assert Scaler.from_state_dict(extra["scaler"]).std.tolist() == scaler.std.tolist()
    z = torch.randn(3, 5, model.config.latent_dim)
    with torch.no_grad():
        assert torch.equal(back.intensity(z), model.intensity(z))


def test_old_payload_loads_as_latent_sde_and_unknown_class_is_named(tmp_path):
    sde = LatentSDE(1, latent_dim=2, hidden_dim=8, context_dim=2)
    save_checkpoint(tmp_path / "old.pt", {"model_payload": sde.to_checkpoint(), "extra": {}})
    back, extra = load_model(tmp_path / "old.pt")  # written before "model_class" existed
    assert type(back) is LatentSDE and back.config == sde.config and extra == {}
    payload = {"model_class": "FancySDE", "model_payload": sde.to_checkpoint(), "extra": {}}
    save_checkpoint(tmp_path / "fancy.pt", payload)
    with pytest.raises(BayesdynValueError, match=r"fancy\.pt.*unknown model class 'FancySDE'"):
        load_model(tmp_path / "fancy.pt")
    with pytest.raises(BayesdynTypeError, match="model must be one of.*got Linear"):
        save_model(torch.nn.Linear(2, 2), tmp_path / "lin.pt")


def test_jump_run_without_events_csv_is_refused(events_only, tmp_path):
    data, model, _ = events_only
    run = save_run(tmp_path / "run", model, data)
    (run / "events.csv").unlink()
    with pytest.raises(BayesdynValueError, match="holds a LatentJumpSDE but no events.csv"):
        collect_run(run, num_samples=2)


def test_save_run_checks_its_arguments_before_writing(events_only, tmp_path):
    data, model, _ = events_only
    run = tmp_path / "run"
    with pytest.raises(BayesdynTypeError, match="model must be one of.*got Linear"):
        save_run(run, torch.nn.Linear(2, 2), data)
    with pytest.raises(BayesdynValueError, match="non-empty sequence of members; got"):
        save_run(run, [], data)
    with pytest.raises(BayesdynTypeError, match="data must be an IrregularTimeSeries; got list"):
        save_run(run, model, [data])
    with pytest.raises(BayesdynTypeError, match="scaler must be a bayesdyn Scaler or None"):
        save_run(run, model, data, {"mean": [0.0]})
    assert not run.exists()
    # re-saving as an ensemble replaces model.pt (the report would read both layouts)
    save_run(run, model, data)
    save_run(run, [model, model], data)
    assert not (run / "model.pt").exists() and len(list((run / "members").glob("*.pt"))) == 2
