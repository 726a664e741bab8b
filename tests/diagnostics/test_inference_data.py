"""to_inference_data: ArviZ groups, dims and coordinates; ArviZ functions on them; netCDF."""

import ast
import contextlib
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

import bayesdyn
from bayesdyn import IrregularTimeSeries, LatentSDE, fit, posterior_predictive
from bayesdyn.diagnostics import _arviz, to_inference_data
from tests.common import lattice_ou

S = 24  # draws per member: enough for PSIS (its tail fit needs ~3 sqrt(S) draws)
TIMES = np.linspace(0.1, 3.0, 7)
FORECAST = np.array([3.5, 4.0, 4.5])


_nothing = contextlib.nullcontext


def tiny_model(seed):
    torch.manual_seed(seed)
    return LatentSDE(
        1, latent_dim=2, hidden_dim=8, context_dim=4, dt=0.25, stable_drift=True, t0=0.0
    )


@pytest.fixture(scope="module")
def fitted():
    """Two members fitted for a few steps on standardised OU series (data in data units)."""
    # module-scoped fixtures run before conftest sets the float64 default: set it here
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return _fitted()
    finally:
        torch.set_default_dtype(old)


def _fitted():
    series, _ = lattice_ou(num_series=6, num_obs=6, t1=3.0, spacing=0.1, seed=2)
    # data units far from standardised, so the scaler matters
    series = IrregularTimeSeries(series.times, [2.0 + 3.0 * v for v in series.values], series.mask)
    scaled, scaler = series.standardize()
    members = []
    for e in range(2):
        m = tiny_model(e)
        fit(m, scaled, num_steps=5, lr=2e-2, seed=e, progress=False)
        members.append(m)
    idata = to_inference_data(
        members, series, scaler=scaler, times=TIMES, forecast_times=FORECAST, num_samples=S
    )
    return series, scaled, scaler, members, idata


def test_groups_dims_and_float_time_coordinates(fitted):
    series, _, _, _, idata = fitted
    for g in (
        "posterior",
        "posterior_predictive",
        "predictions",
        "log_likelihood",
        "sample_stats",
        "observed_data",
        "constant_data",
    ):
        assert g in idata.groups(), g
    post = idata.posterior
    B, N = len(series), series.num_observed
    assert post["z"].dims == ("chain", "draw", "series", "time", "latent_dim")
    assert post["z"].shape == (2, S, B, len(TIMES), 2)
    assert post["time"].dtype == np.float64
    np.testing.assert_allclose(post["time"].values, TIMES)
    assert post["z0"].dims == ("chain", "draw", "series", "latent_dim")
    assert post["obs_scale"].dims == ("chain", "draw", "channel")
    assert post["diffusion"].dims == ("chain", "draw", "latent_dim")
    pred = idata.predictions["y"]
    assert pred.dims == ("chain", "draw", "series", "forecast_time", "channel")
    assert idata.predictions["forecast_time"].dtype == np.float64
    np.testing.assert_allclose(idata.predictions["forecast_time"].values, FORECAST)
    assert idata.posterior_predictive["obs"].shape == (2, S, N)
    assert idata.posterior_predictive["y"].shape == (2, S, B, len(TIMES), 1)
    assert idata.log_likelihood["obs"].shape == (2, S, N)
    assert idata.sample_stats["elbo"].shape == (2, S)
    assert np.isfinite(idata.sample_stats["elbo"].values).all()
    # observed data are the observed values in (series, time, channel) order, with their coords
    obs = idata.observed_data
    want = np.concatenate([v[m] for v, m in zip(series.values, series.mask, strict=True)])
    np.testing.assert_allclose(obs["obs"].values, want)
    np.testing.assert_allclose(
        obs["obs_time"].values,
        np.concatenate([t[m[:, 0]] for t, m in zip(series.times, series.mask, strict=True)]),
    )
    assert list(obs["obs_series"].values[:1]) == [series.ids[0]]
    np.testing.assert_allclose(
        idata.constant_data["last_observed"].values, [t[-1] for t in series.times]
    )


def test_members_are_chains_and_obs_scale_is_per_member(fitted):
    *_, members, idata = fitted
    scale = idata.posterior["obs_scale"].values  # (chain, draw, channel)
    assert np.all(scale == scale[:, :1])  # a point estimate per member
    assert not np.allclose(scale[0, 0], scale[1, 0])  # members differ
    # z0 is the latent path at t0 = 0 and z0 draws vary
    assert idata.posterior["z0"].values.std(axis=1).min() > 0


def test_data_units_change_loglik_by_the_log_jacobian(fitted):
    """Same seed, model units vs data units: obs differ by the affine map, log p by log std."""
    series, scaled, scaler, members, idata = fitted
    raw = to_inference_data(
        members, scaled, times=TIMES, forecast_times=FORECAST, num_samples=S, elbo=False
    )
    assert "sample_stats" not in raw.groups()
    ch = idata.observed_data["obs_channel"].values
    log_std = np.log(scaler.std)[np.searchsorted(series.channels, ch)]
    np.testing.assert_allclose(
        idata.log_likelihood["obs"].values, raw.log_likelihood["obs"].values - log_std, rtol=1e-10
    )
    np.testing.assert_allclose(
        idata.posterior_predictive["obs"].values,
        raw.posterior_predictive["obs"].values * scaler.std[0] + scaler.mean[0],
        rtol=1e-10,
    )
    np.testing.assert_allclose(
        idata.posterior["obs_scale"].values, raw.posterior["obs_scale"].values * scaler.std[0]
    )


def test_arviz_summary_loo_waic_and_plot_ts_run(fitted):
    import arviz as az
    import matplotlib

    matplotlib.use("Agg")
    series, *_, idata = fitted
    summ = _arviz.summary(idata, var_names=["obs_scale", "diffusion"])
    assert np.isfinite(summ.loc["diffusion[0]", "r_hat"])  # two members: R-hat defined
    assert bool(summ.loc["obs_scale[x0]", "fixed_per_chain"])
    loo = _arviz.loo(idata)
    assert np.isfinite(loo.elpd_loo) and loo.pareto_k.shape == (series.num_observed,)
    assert np.isfinite(_arviz.waic(idata).elpd_waic)
    # the plain ArviZ calls work on our output too (their Pareto-k warning aside)
    with pytest.warns(UserWarning, match="Pareto") if loo.warning else _nothing():
        assert np.isfinite(az.loo(idata, pointwise=True).elpd_loo)
    sel = np.flatnonzero(idata.observed_data["obs_series"].values == series.ids[0])
    axes = az.plot_ts(idata.isel(observation=sel), y="obs", x="observation_time", num_samples=10)
    assert np.asarray(axes).size >= 1
    matplotlib.pyplot.close("all")


def test_single_fit_is_one_chain_and_summary_says_rhat_undefined(fitted):
    series, _, scaler, members, _ = fitted
    one = to_inference_data(members[0], series, scaler=scaler, num_samples=8, num_times=5)
    assert one.posterior.sizes["chain"] == 1
    assert "predictions" not in one.groups()
    assert one.posterior["time"].values[0] == pytest.approx(0.0)  # default grid starts at t0
    assert one.posterior["time"].values[-1] == pytest.approx(max(t[-1] for t in series.times))
    summ = _arviz.summary(one, var_names=["diffusion"])
    assert np.isnan(summ["r_hat"]).all()


def test_netcdf_round_trip(fitted, tmp_path):
    *_, idata = fitted
    path = _arviz.to_netcdf(idata, tmp_path / "idata.nc")
    back = _arviz.from_netcdf(path)
    assert set(back.groups()) == set(idata.groups())
    for g in idata.groups():
        xr.testing.assert_identical(back[g], idata[g])


def test_datatree_container_for_arviz_1(fitted):
    """The ArviZ 1.x container (xarray DataTree) holds the same groups."""
    *_, idata = fitted
    tree = _arviz.datasets_to_datatree({g: idata[g] for g in idata.groups()})
    assert set(tree.children) == set(idata.groups())
    for g in idata.groups():
        xr.testing.assert_identical(tree[g].to_dataset(), idata[g])


def test_from_trajectories(fitted):
    series, scaled, scaler, members, _ = fitted
    qt = torch.tensor([0.5, 1.5, 2.9, 3.5, 4.0])
    traj = posterior_predictive(members[0], scaled, qt, num_samples=5, seed=0)
    idata = to_inference_data(traj, scaled)
    last = max(t[-1] for t in series.times)
    np.testing.assert_allclose(idata.posterior["time"].values, qt[qt <= last].numpy())
    np.testing.assert_allclose(idata.predictions["forecast_time"].values, qt[qt > last].numpy())
    assert idata.posterior["z"].shape[:3] == (1, 5, len(series))
    assert "log_likelihood" not in idata.groups()
    ens = bayesdyn.Trajectories(
        traj.times,
        traj.latent.expand(3, *traj.latent.shape),
        traj.observations.expand(3, *traj.observations.shape),
        traj.last_observed,
    )
    assert to_inference_data(ens, scaled).posterior.sizes["chain"] == 3


def test_errors_name_the_argument(fitted):
    series, scaled, _, members, _ = fitted
    with pytest.raises(TypeError, match="data must be an IrregularTimeSeries"):
        to_inference_data(members[0], scaled.to_batch())
    with pytest.raises(ValueError, match="num_samples must be an integer >= 2"):
        to_inference_data(members[0], scaled, num_samples=1)
    with pytest.raises(ValueError, match="times must be a non-empty, finite, strictly increasing"):
        to_inference_data(members[0], scaled, times=[1.0, 0.5])
    with pytest.raises(ValueError, match="forecast_times must be a non-empty"):
        to_inference_data(members[0], scaled, forecast_times=[[4.0]])
    with pytest.raises(ValueError, match="empty sequence of models"):
        to_inference_data([], scaled)
    with pytest.raises(TypeError, match="item 1 is str"):
        to_inference_data([members[0], "m"], scaled)
    from bayesdyn.models.latent_jump_sde import LatentJumpSDE

    # jump models are supported (tests/diagnostics/test_jump_report.py) but need event data
    with pytest.raises(ValueError, match="data has no events, but source is a jump model"):
        to_inference_data(LatentJumpSDE(1, latent_dim=2), scaled)
    with pytest.raises(TypeError, match="scaler must be a Scaler"):
        to_inference_data(members[0], scaled, scaler={"mean": 0})
    traj = posterior_predictive(members[0], scaled, torch.rand(len(series), 3), num_samples=2)
    with pytest.raises(ValueError, match="must be shared by all series"):
        to_inference_data(traj, scaled)
    with pytest.raises(ValueError, match=r"unknown group\(s\) \['prior_x'\]"):
        _arviz.make_inference_data({"prior_x": {}}, {})
    with pytest.raises(ValueError, match="does not exist"):
        _arviz.from_netcdf("/nonexistent/idata.nc")


def test_only_the_adapter_imports_arviz():
    root = Path(bayesdyn.__file__).parent
    importers = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            if any(n == "arviz" or n.startswith("arviz.") for n in names):
                importers.append(path.relative_to(root).as_posix())
    assert importers == ["diagnostics/_arviz.py"]


class _IntensityLatentSDE(LatentSDE):
    """A LatentSDE with an event intensity read off the latent state (the jump-model hook)."""

    def intensity(self, z):
        """Two marks: ``softplus(z0)`` and ``softplus(-z1)``. Shapes: ``[..., L] -> [..., 2]``."""
        return torch.nn.functional.softplus(torch.stack([z[..., 0], -z[..., 1]], -1))


def test_jump_hook_intensity_and_events_reach_idata_and_report(fitted):
    from bayesdyn.diagnostics.report import ReportInputs, figure_jumps

    series, scaled, scaler, members, _ = fitted
    model = _IntensityLatentSDE(
        1, latent_dim=2, hidden_dim=8, context_dim=4, dt=0.25, stable_drift=True, t0=0.0
    ).to(torch.get_default_dtype())
    model.load_state_dict(members[0].state_dict())
    rng = np.random.default_rng(0)
    events = [np.sort(rng.uniform(t[0], t[-1], size=3)) for t in series.times]
    marks = [rng.integers(0, 2, size=3) for _ in series.times]
    with_events = IrregularTimeSeries(
        series.times, series.values, series.mask, events=events, marks=marks
    )
    idata = to_inference_data(model, with_events, scaler=scaler, num_samples=4, elbo=False)
    lam = idata.posterior["intensity"]
    assert lam.dims == ("chain", "draw", "series", "time", "mark") and lam.shape[-1] == 2
    z = idata.posterior["z"].values
    want = np.log1p(np.exp(np.stack([z[..., 0], -z[..., 1]], -1)))
    np.testing.assert_allclose(lam.values, want, rtol=1e-10)
    np.testing.assert_allclose(idata.constant_data["event_time"].values, np.concatenate(events))
    np.testing.assert_array_equal(idata.constant_data["event_mark"].values, np.concatenate(marks))
    img = figure_jumps(ReportInputs(idata=idata, data=with_events), max_series=2)
    assert img.startswith('<img alt="event intensities and events" src="data:image/png;base64,')
    # a run without intensity and events has no jump figure
    assert figure_jumps(ReportInputs(idata=fitted[-1], data=series), max_series=2) is None


def test_fitted_ensemble_members_become_chains(fitted):
    from bayesdyn.inference import fit_ensemble

    series, scaled, scaler, members, _ = fitted
    ens = fit_ensemble(members[0].config, scaled, num_members=3, num_steps=2, progress=False)
    idata = to_inference_data(ens, series, scaler=scaler, num_samples=4, num_times=5, elbo=False)
    assert idata.posterior.sizes["chain"] == 3
    assert idata.posterior.attrs["chains_are"] == "ensemble members"
