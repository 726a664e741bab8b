"""``to_inference_data``: posterior draws of latent SDE fits as native ArviZ groups.

Layout (``E`` members map to chains, ``S`` draws to draws):

- ``posterior``:

  - ``z`` (chain, draw, series, time, latent_dim): the latent path on float ``time``;
  - ``z0`` (chain, draw, series, latent_dim): the state at ``t0``;
  - ``obs_scale`` (chain, draw, channel): observation scale (data units with a scaler);
  - ``diffusion`` (chain, draw, latent_dim): root-mean-square ``g(z)`` along the path;
  - ``intensity`` (chain, draw, series, time, mark): jump models only (see below).
- ``posterior_predictive``: ``obs`` (chain, draw, observation), replicated data at the data
  points; ``y`` (chain, draw, series, time, channel), the predictive on ``time``.
- ``predictions``: ``y`` (chain, draw, series, forecast_time, channel).
- ``log_likelihood``: ``obs`` (chain, draw, observation), pointwise ``log p(y_i | z)``.
- ``sample_stats``: ``elbo`` (chain, draw), one-particle ELBO estimates of each member.
- ``observed_data``: ``obs`` (observation), the observed values only.
- ``constant_data``: ``observation_time`` (observation), ``last_observed`` (series) and, for
  data with events, ``event_time``, ``event_series``, ``event_mark`` (event).

``observation`` enumerates the observed (series, time, channel) triples (masked values are
left out), with non-dimension coordinates ``obs_series``, ``obs_time`` and ``obs_channel``; so
``az.loo``, ``az.waic``, ``az.plot_ppc(var_names=["obs"])`` and ``az.plot_loo_pit`` work
directly, and ``az.plot_ts(idata, y="obs", x="observation_time")`` plots one series and
channel (select it with ``idata.isel(observation=...)``).

Jump models take part through duck typing: a model with a method ``intensity(z)`` mapping latent
states ``[..., L]`` to per-mark event intensities ``[..., K]`` gets the posterior ``intensity``.

:class:`~bayesdyn.models.LatentJumpSDE` chains (events only, ``obs_dim=0``, or with ``D``
continuous channels) need ``data`` with events and get their own layout. Each draw is one
guide path (the posterior jump SDE; with ``guide="prior"`` the prior jump SDE, whose state
jumps at the observed events) on the solver grid refined by ``time``, replayed through the
model to score the observed sites along it:

- ``posterior``: ``z`` (chain, draw, series, time, latent_dim), left limits at ``time``;
  ``z0``; ``intensity`` (chain, draw, series, time, mark) ``= model.intensity(z)``;
  ``diffusion``; ``obs_scale`` when ``D > 0``.
- ``log_likelihood``: ``events`` (chain, draw, series): a pointwise entry is one series' whole
  event sequence, ``log p(events_b | path)`` (the point-process term: ``sum log lambda(t_i)``
  minus the integrated intensity over its window), so ``az.loo(idata, var_name="events")``
  leaves out one series at a time; with ``D > 0`` also ``obs`` (chain, draw, observation) as
  above (pass ``var_name`` to ArviZ, which refuses several variables otherwise).
- ``observed_data``: ``event_time`` (series, event), NaN padded to the largest count,
  ``event_mark`` (series, event), padded with ``-1``, ``event_count`` (series); ``obs`` when
  ``D > 0``.
- ``posterior_predictive`` (``obs``, ``y``) only when ``D > 0``; ``constant_data``:
  ``window_start``, ``window_end``, ``last_observed`` (series) (and ``observation_time``).
- ``sample_stats``: ``elbo`` as above (with the ``JumpBatch``); no ``predictions`` group:
  future events move the latent path, so forecast them with
  :func:`bayesdyn.inference.forecast_events`.

The observation scale is a fitted parameter of each member (variational inference gives a
point estimate), so it is constant along draws and varies only across members; the diffusion
level, ``z0`` and ``z`` vary along draws.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._validation import BayesdynTypeError, BayesdynValueError
from ..inference import PathELBO, Trajectories, posterior_predictive
from ..models.latent_jump_sde import LatentJumpSDE

__all__ = ["to_inference_data"]


def _members(source) -> list:
    """The fitted models that become chains (all latent SDEs or all jump models)."""
    members = getattr(source, "members", None)  # an ensemble (e.g. inference.Ensemble)
    if members is not None:
        source = list(members() if callable(members) else members)
    if isinstance(source, (list, tuple)):
        if not source:
            raise BayesdynValueError("source is an empty sequence of models; need at least one")
        models = list(source)
    else:
        models = [source]
    for i, m in enumerate(models):
        if isinstance(m, LatentJumpSDE):
            continue
        if callable(getattr(m, "model", None)) and not callable(getattr(m, "make_grid", None)):
            raise BayesdynTypeError(
                f"item {i} ({type(m).__name__}) is not supported by to_inference_data: it "
                "samples through posterior_predictive, which needs a LatentSDE-like model with "
                "make_grid(batch, times), or a LatentJumpSDE"
            )
        if not (callable(getattr(m, "model", None)) and callable(getattr(m, "guide", None))):
            raise BayesdynTypeError(
                "source must be Trajectories, a fitted model with .model/.guide (e.g. "
                f"LatentSDE or LatentJumpSDE), or a sequence of them; item {i} is "
                f"{type(m).__name__}"
            )
    jumps = [isinstance(m, LatentJumpSDE) for m in models]
    if any(jumps) and not all(jumps):
        raise BayesdynTypeError(
            "source mixes LatentJumpSDE and other models; all chains must be the same kind of "
            f"model, got {[type(m).__name__ for m in models]}"
        )
    return models


def _times_arg(name: str, x) -> np.ndarray | None:
    if x is None:
        return None
    try:
        a = np.asarray(x.detach().cpu() if isinstance(x, Tensor) else x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise BayesdynTypeError(f"{name} must be a 1-D array of floats; got {x!r}") from e
    if a.ndim != 1 or a.size == 0 or not np.isfinite(a).all() or (np.diff(a) <= 0).any():
        raise BayesdynValueError(
            f"{name} must be a non-empty, finite, strictly increasing 1-D array [Q]; got shape "
            f"{a.shape}" + (f" with values {a[:6].tolist()}..." if a.ndim == 1 else "")
        )
    return a


def _ids(series) -> np.ndarray:
    ids = np.asarray(list(series.ids))
    return ids.astype(str) if ids.dtype == object else ids


def _observation_table(series, scaler) -> dict[str, np.ndarray]:
    """The observed (series, time, channel) triples in batch order ``[B, T, D]`` (row-major)."""
    batch = series.to_batch(dtype=torch.float64)
    mask = batch.mask.numpy()
    b, t, d = np.nonzero(mask)
    return {
        "b": b,
        "t": t,
        "d": d,
        "series": _ids(series)[b],
        "time": batch.times.numpy()[b, t],
        "channel": np.asarray(series.channels, dtype=str)[d],
        "value": batch.values.numpy()[b, t, d],
    }


def _draw_elbo(model, batch, num_draws: int) -> np.ndarray:
    """One-particle ELBO estimates ``[S]`` (nats, whole data set) with the low-variance path KL."""
    elbo = PathELBO(max_plate_nesting=getattr(model, "max_plate_nesting", 2))
    parts = []
    with torch.no_grad():
        for start in range(0, num_draws, _ELBO_CHUNK):
            n = min(_ELBO_CHUNK, num_draws - start)
            draws = elbo.particle_elbos(model.model, model.guide, batch, num_particles=n)
            parts.append(draws.double().cpu().numpy())
    return np.concatenate(parts) if parts else np.empty(0)


#: ELBO draws evaluated together in one vectorised model + guide pass.
_ELBO_CHUNK = 25


def _member_draws(
    model, scaled, scaler, times, forecast_times, num_samples, seed, chunk_size, with_elbo
) -> dict[str, np.ndarray]:
    """All per-draw quantities of one member, in data units."""
    dtype = next(model.parameters()).dtype
    batch = scaled.to_batch(dtype=dtype)
    B, T = batch.times.shape
    t0 = float(model.make_grid(batch).grid[0])
    extra = [np.asarray(times)]
    if forecast_times is not None:
        extra.append(forecast_times)
    extra.append(np.array([t0]))
    shared = torch.as_tensor(np.concatenate(extra), dtype=dtype).expand(B, -1)
    # One posterior_predictive call for every time we need, so that z at the observations, on
    # the plotting grid, at t0 and in the forecast window all come from the same sampled path.
    query = torch.cat([batch.times, shared], 1)
    traj = posterior_predictive(model, batch, query, num_samples, chunk_size=chunk_size, seed=seed)
    lat, obs = traj.latent, traj.observations  # [S, B, Qtot, L], [S, B, Qtot, D]
    Q = len(times)
    out: dict[str, Any] = {}
    lat_obs = lat[:, :, :T]
    out["z"] = lat[:, :, T : T + Q]
    out["z0"] = lat[:, :, -1]
    pred = obs if scaler is None else scaler.inverse_values(obs)
    out["obs_rep"] = pred[:, :, :T]
    out["y"] = pred[:, :, T : T + Q]
    if forecast_times is not None:
        out["y_forecast"] = pred[:, :, T + Q : -1]
    decoder = getattr(model, "decoder", None)
    if decoder is not None:
        with torch.no_grad():
            lp = decoder(lat_obs).log_prob(batch.values)  # [S, B, T, D] per channel
            out["log_lik"] = _in_data_units(lp, scaler)
            if hasattr(decoder, "scale"):
                scale = decoder.scale().expand(num_samples, -1)
                out["obs_scale"] = scale if scaler is None else scaler.inverse_std(scale)
    intensity = getattr(model, "intensity", None)
    if callable(intensity):  # jump models: per-mark event intensity lambda_k(z), [..., K]
        with torch.no_grad():
            out["intensity"] = intensity(out["z"])
    diffusion = getattr(model, "diffusion", None)
    if callable(diffusion):
        with torch.no_grad():
            g = diffusion(out["z"])  # [S, B, Q, L]
        out["diffusion"] = g.pow(2).mean((1, 2)).sqrt()
    if with_elbo:
        out["elbo"] = _draw_elbo(model, batch, num_samples)
    return _float64_arrays(out)


def _in_data_units(lp: Tensor, scaler) -> Tensor:
    """Log-densities of standardised values as densities of the data: ``y = std * y_s + mean``
    subtracts ``log std`` per channel. Shapes: ``lp [..., D]`` -> same."""
    if scaler is None:
        return lp
    return lp - torch.as_tensor(np.log(scaler.std), dtype=lp.dtype)


def _float64_arrays(out: dict) -> dict[str, np.ndarray]:
    """Per-draw tensors as float64 numpy arrays. float64 for ArviZ: PSIS fits a generalised
    Pareto tail to log-weights, and float32 ties in a short tail make that fit divide by zero."""
    return {
        k: np.asarray(v.detach().cpu().double().numpy() if isinstance(v, Tensor) else v, float)
        for k, v in out.items()
    }


def _jump_member_draws(
    model, scaled, scaler, times, num_samples, seed, chunk_size, with_elbo
) -> dict[str, np.ndarray]:
    """All per-draw quantities of one :class:`~bayesdyn.models.LatentJumpSDE` (data units).

    Each draw is one guide path on the solver grid refined by ``times`` (the guide's posterior
    SDE, or the prior jump SDE with ``guide="prior"``; the state jumps at the observed events),
    replayed through the model to score the observed sites along it, as the ELBO does.

    Shapes (``S`` draws, ``B`` series, ``Q = len(times)``, ``T`` rows, ``D`` channels):
        ``z [S, B, Q, L]`` (left limits at ``times``), ``z0 [S, B, L]``,
        ``intensity [S, B, Q, K]``, ``events_log_lik [S, B]``, ``diffusion [S, L]``; with
        ``D > 0`` also ``log_lik``/``obs_rep [S, B, T, D]``, ``y [S, B, Q, D]``,
        ``obs_scale [S, D]``.
    """
    import pyro
    from pyro import poutine

    from ..models.latent_jump_sde import EVENTS_SITE
    from ..models.latent_sde import Z0_SITE
    from ..solvers import gather_on_grid

    dtype = next(model.parameters()).dtype
    batch = scaled.to_jump_batch(dtype=dtype)
    model.check_batch(batch)
    qt = torch.as_tensor(np.asarray(times), dtype=dtype)
    torch.manual_seed(seed)
    parts: dict[str, list[Tensor]] = {}

    def add(name: str, value: Tensor) -> None:
        parts.setdefault(name, []).append(value)

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            prep = model.prepare(batch, qt)  # the grid both traces below run on
            qidx = prep.grid.query_index  # [Q], or [B, Q] on per-series grids
            for start in range(0, num_samples, chunk_size):
                n = min(chunk_size, num_samples - start)
                with pyro.plate("_idata_draws", n, dim=-3):
                    gtr = poutine.trace(model.guide).get_trace(batch, qt)
                    mtr = poutine.trace(poutine.replay(model.model, trace=gtr)).get_trace(batch, qt)
                path = mtr.nodes["_RETURN"]["value"]  # [n, B, U, L]
                z = gather_on_grid(path, qidx.expand(path.shape[-3], -1))
                add("z", z)
                add("z0", gtr.nodes[Z0_SITE]["value"].reshape(n, *path.shape[1:2], -1))
                add("intensity", model.intensity(z))
                site = mtr.nodes[EVENTS_SITE]
                lp = site["fn"].log_prob(site["value"])  # [n, B, 1]
                add("events_log_lik", lp.reshape(n, lp.shape[1], -1).sum(-1))
                g = model.core.diffusion(z)  # [n, B, Q, L]
                add("diffusion", g.pow(2).mean((1, 2)).sqrt())
                if model.decoder is not None:
                    latent = gather_on_grid(path, prep.obs_index)  # [n, B, T, L]
                    obs_dist = model.decoder(latent)
                    lp = obs_dist.log_prob(batch.values)  # [n, B, T, D] per channel
                    add("log_lik", _in_data_units(lp, scaler))
                    add("obs_rep", obs_dist.sample())
                    add("y", model.decoder(z).sample())
    finally:
        model.train(was_training)
    out: dict[str, Any] = {k: torch.cat(v) for k, v in parts.items()}
    if model.decoder is not None:
        if scaler is not None:
            out["obs_rep"] = scaler.inverse_values(out["obs_rep"])
            out["y"] = scaler.inverse_values(out["y"])
        scale = model.decoder.scale().detach().expand(num_samples, -1)
        out["obs_scale"] = scale if scaler is None else scaler.inverse_std(scale)
    if with_elbo:
        out["elbo"] = _draw_elbo(model, batch, num_samples)
    return _float64_arrays(out)


def to_inference_data(
    source,
    data,
    *,
    times=None,
    forecast_times=None,
    scaler=None,
    num_samples: int = 100,
    num_times: int = 100,
    elbo: bool = True,
    seed: int = 0,
    chunk_size: int = 64,
):
    """Posterior draws of fitted latent SDEs (or sampled trajectories) as ArviZ ``InferenceData``.

    Ensemble members become chains (``[E, S, ...] -> (chain, draw, ...)``); a single fit is one
    chain. See the module docstring for the groups and dimension names.

    Main arguments:
        source: a fitted model (e.g. :class:`~bayesdyn.models.LatentSDE` or
            :class:`~bayesdyn.models.LatentJumpSDE`), a sequence of fitted models of one kind
            (ensemble members), an :class:`~bayesdyn.inference.Ensemble` (or any
            object with ``members()`` / ``members``; member weights are not applied), or
            :class:`~bayesdyn.inference.Trajectories`.
        data: the :class:`~bayesdyn.data.IrregularTimeSeries` the fit conditions on, in data
            units when ``scaler`` is given (it is standardised with it before conditioning);
            for jump models it must carry the events (and marks) the model was fitted on.
        times: float times ``[Q]`` of the ``time`` coordinate (latent path and predictive
            bands); default ``num_times`` points from ``t0`` to the last observation.
        forecast_times: float times ``[F]`` of the ``predictions`` group (``forecast_time``);
            default none (no ``predictions`` group); not allowed for jump models.
        scaler: the :class:`~bayesdyn.data.Scaler` the model was trained with; outputs,
            ``obs_scale`` and log-likelihoods are then in data units.

    Other arguments:
        num_samples: draws per chain ``S``.
        elbo: compute ``sample_stats.elbo`` (one extra model+guide pass per draw).
        seed: draws of member ``e`` use seed ``seed + e``.
        chunk_size: draws sampled per vectorised pass.

    For ``Trajectories`` the latent path and predictive come from the trajectories: times up to
    the last observation of every series form ``time``, later ones ``forecast_time``; there is
    no model, so ``log_likelihood``, ``sample_stats`` and the global quantities are absent.

    Returns:
        ``arviz.InferenceData``.

    Shapes:
        ``z (E, S, B, Q, L)``, ``y (E, S, B, Q, D)``, predictions ``(E, S, B, F, D)``,
        ``obs``/``log_likelihood`` ``(E, S, N)`` for ``N`` observed values. Jump models:
        ``intensity (E, S, B, Q, K)``, ``log_likelihood.events (E, S, B)``,
        ``observed_data.event_time (B, N_max)``.

    Raises:
        BayesdynTypeError: wrong ``data``/``scaler`` types, or ``source`` not a supported model
            (or jump and non-jump models mixed).
        BayesdynValueError: bad ``num_samples``/``num_times``/``times``; for jump models also
            ``data`` without events, ``forecast_times``, or a ``scaler`` with ``obs_dim=0``.
    """
    from ..data import IrregularTimeSeries, Scaler
    from . import _arviz  # imported on use: ArviZ takes seconds to import

    if not isinstance(data, IrregularTimeSeries):
        raise BayesdynTypeError(f"data must be an IrregularTimeSeries; got {type(data).__name__}")
    if scaler is not None and not isinstance(scaler, Scaler):
        raise BayesdynTypeError(f"scaler must be a Scaler or None; got {type(scaler).__name__}")
    if not (isinstance(num_samples, int) and num_samples >= 2):
        raise BayesdynValueError(f"num_samples must be an integer >= 2; got {num_samples!r}")
    if not (isinstance(num_times, int) and num_times >= 2):
        raise BayesdynValueError(f"num_times must be an integer >= 2; got {num_times!r}")
    if not isinstance(source, Trajectories):
        models = _members(source)
        if isinstance(models[0], LatentJumpSDE):
            return _jump_inference_data(
                models,
                data,
                times=_times_arg("times", times),
                forecast_times=forecast_times,
                scaler=scaler,
                num_samples=num_samples,
                num_times=num_times,
                elbo=elbo,
                seed=seed,
                chunk_size=chunk_size,
            )
    table = _observation_table(data, scaler)
    ids = _ids(data)
    coords: dict[str, Any] = {
        "series": ids,
        "channel": np.asarray(data.channels, dtype=str),
        "observation": np.arange(table["value"].size),
        "obs_series": (("observation",), table["series"]),
        "obs_time": (("observation",), table["time"]),
        "obs_channel": (("observation",), table["channel"]),
    }
    last = np.array([t[-1] for t in data.times], dtype=np.float64)
    observed = {"obs": (["observation"], table["value"])}
    constant = {
        "observation_time": (["observation"], table["time"]),
        "last_observed": (["series"], last),
    }
    if data.events is not None:  # event times (and marks) of point-process data
        counts = [len(e) for e in data.events]
        coords["event"] = np.arange(sum(counts))
        constant["event_time"] = (["event"], np.concatenate(data.events).astype(np.float64))
        constant["event_series"] = (["event"], np.repeat(ids, counts))
        constant["event_mark"] = (["event"], np.concatenate(data.marks).astype(np.int64))
    if isinstance(source, Trajectories):
        groups, num_chains = _from_trajectories(source, data, coords, last)
        groups["observed_data"] = observed
        groups["constant_data"] = constant
        return _arviz.make_inference_data(groups, coords, {"num_chains": num_chains})

    times = _times_arg("times", times)
    forecast_times = _times_arg("forecast_times", forecast_times)
    scaled = data if scaler is None else data.standardize(scaler)[0]
    draws = []
    for e, model in enumerate(models):
        if times is None:
            t0 = float(model.make_grid(scaled.to_batch()).grid[0])
            times = np.linspace(t0, float(last.max()), num_times)
        draws.append(
            _member_draws(
                model,
                scaled,
                scaler,
                times,
                forecast_times,
                num_samples,
                seed + e,
                chunk_size,
                elbo,
            )
        )
    st = {k: np.stack([d[k] for d in draws]) for k in draws[0]}  # [E, S, ...]
    L = st["z"].shape[-1]
    b, t, d = table["b"], table["t"], table["d"]
    coords["latent_dim"] = np.arange(L)
    coords["time"] = times
    groups: dict[str, dict] = {
        "posterior": {
            "z": (["chain", "draw", "series", "time", "latent_dim"], st["z"]),
            "z0": (["chain", "draw", "series", "latent_dim"], st["z0"]),
        },
        "posterior_predictive": {
            "obs": (["chain", "draw", "observation"], st["obs_rep"][:, :, b, t, d]),
            "y": (["chain", "draw", "series", "time", "channel"], st["y"]),
        },
        "observed_data": observed,
        "constant_data": constant,
    }
    if "obs_scale" in st:
        groups["posterior"]["obs_scale"] = (["chain", "draw", "channel"], st["obs_scale"])
    if "diffusion" in st:
        groups["posterior"]["diffusion"] = (["chain", "draw", "latent_dim"], st["diffusion"])
    if "log_lik" in st:
        groups["log_likelihood"] = {
            "obs": (["chain", "draw", "observation"], st["log_lik"][:, :, b, t, d])
        }
    if "intensity" in st:
        coords["mark"] = np.arange(st["intensity"].shape[-1])
        groups["posterior"]["intensity"] = (
            ["chain", "draw", "series", "time", "mark"],
            st["intensity"],
        )
    if "elbo" in st:
        groups["sample_stats"] = {"elbo": (["chain", "draw"], st["elbo"])}
    if forecast_times is not None:
        coords["forecast_time"] = forecast_times
        groups["predictions"] = {
            "y": (["chain", "draw", "series", "forecast_time", "channel"], st["y_forecast"])
        }
    attrs = {
        "num_chains": len(models),
        "chains_are": "ensemble members" if len(models) > 1 else "a single fit",
        "inference": "variational (posterior SDE guide)",
        "units": "data units" if scaler is not None else "model units",
    }
    return _arviz.make_inference_data(groups, coords, attrs)


def _from_trajectories(
    traj: Trajectories, data, coords: dict, last: np.ndarray
) -> tuple[dict, int]:
    """Groups from sampled trajectories (no model: no log-likelihood, ELBO or globals)."""
    obs, lat = traj.observations, traj.latent
    if obs.dim() == 4:
        obs, lat = obs.unsqueeze(0), lat.unsqueeze(0)
    if obs.dim() != 5:
        raise BayesdynValueError(
            f"Trajectories.observations must be [S, B, Q, D] or [E, S, B, Q, D]; got "
            f"{tuple(traj.observations.shape)}"
        )
    t = traj.times
    if t.dim() == 2:
        if not bool((t == t[:1]).all()):
            raise BayesdynValueError(
                "Trajectories.times must be shared by all series ([Q]) for ArviZ's time "
                f"coordinate; got per-series times of shape {tuple(t.shape)}"
            )
        t = t[0]
    B = obs.shape[2]
    if B != len(data):
        raise BayesdynValueError(f"Trajectories hold {B} series but data has {len(data)}")
    if obs.shape[-1] != data.obs_dim:
        raise BayesdynValueError(
            f"Trajectories have {obs.shape[-1]} channels but data has {data.obs_dim}"
        )
    t = t.detach().cpu().numpy().astype(np.float64)
    obs = obs.detach().cpu().double().numpy()
    lat = lat.detach().cpu().double().numpy()
    inside = t <= last.max()
    coords["time"] = t[inside]
    coords["latent_dim"] = np.arange(lat.shape[-1])
    groups: dict[str, Any] = {
        "posterior": {
            "z": (["chain", "draw", "series", "time", "latent_dim"], lat[:, :, :, inside])
        },
        "posterior_predictive": {
            "y": (["chain", "draw", "series", "time", "channel"], obs[:, :, :, inside])
        },
    }
    if (~inside).any():
        coords["forecast_time"] = t[~inside]
        groups["predictions"] = {
            "y": (["chain", "draw", "series", "forecast_time", "channel"], obs[:, :, :, ~inside])
        }
    return groups, int(obs.shape[0])


def _padded_events(data) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ragged events as ``event_time [B, N]`` (NaN padded), ``event_mark [B, N]`` (-1 padded)
    and ``event_count [B]``, with ``N`` the largest count (at least 1)."""
    counts = np.array([len(e) for e in data.events], dtype=np.int64)
    N = max(int(counts.max(initial=0)), 1)
    times = np.full((len(counts), N), np.nan)
    marks = np.full((len(counts), N), -1, dtype=np.int64)
    for b, (e, m) in enumerate(zip(data.events, data.marks, strict=True)):
        times[b, : len(e)] = e
        marks[b, : len(m)] = m
    return times, marks, counts


def _jump_inference_data(
    models, data, *, times, forecast_times, scaler, num_samples, num_times, elbo, seed, chunk_size
):
    """``to_inference_data`` for :class:`~bayesdyn.models.LatentJumpSDE` chains (module doc)."""
    from . import _arviz

    name = type(models[0]).__name__
    if data.events is None:
        raise BayesdynValueError(
            f"data has no events, but source is a jump model ({name}); pass the "
            "IrregularTimeSeries built with events=... (and marks=...) that the model was fitted on"
        )
    if forecast_times is not None:
        raise BayesdynValueError(
            f"forecast_times is not supported for jump models ({name}): future events change "
            "the latent path; use bayesdyn.forecast_events for event forecasts; got "
            f"forecast_times={forecast_times!r}"
        )
    D = models[0].config.obs_dim
    if any(m.config.obs_dim != D for m in models):
        raise BayesdynValueError(
            f"all jump models must have the same obs_dim; got {[m.config.obs_dim for m in models]}"
        )
    if D == 0 and scaler is not None:
        raise BayesdynValueError(
            f"scaler must be None for an events-only jump model (obs_dim=0); got {scaler!r}"
        )
    ids = _ids(data)
    windows = np.asarray(data.windows, dtype=np.float64)  # [B, 2]
    scaled = data if scaler is None else data.standardize(scaler)[0]
    if times is None:
        t0 = float(models[0].prepare(scaled.to_jump_batch()).grid.grid[..., 0].min())
        times = np.linspace(t0, float(windows[:, 1].max()), num_times)
    draws = [
        _jump_member_draws(m, scaled, scaler, times, num_samples, seed + e, chunk_size, elbo)
        for e, m in enumerate(models)
    ]
    st = {k: np.stack([d[k] for d in draws]) for k in draws[0]}  # [E, S, ...]
    ev_time, ev_mark, ev_count = _padded_events(data)
    coords: dict[str, Any] = {
        "series": ids,
        "time": times,
        "latent_dim": np.arange(st["z"].shape[-1]),
        "mark": np.arange(st["intensity"].shape[-1]),
        "event": np.arange(ev_time.shape[1]),
    }
    groups: dict[str, dict] = {
        "posterior": {
            "z": (["chain", "draw", "series", "time", "latent_dim"], st["z"]),
            "z0": (["chain", "draw", "series", "latent_dim"], st["z0"]),
            "intensity": (["chain", "draw", "series", "time", "mark"], st["intensity"]),
            "diffusion": (["chain", "draw", "latent_dim"], st["diffusion"]),
        },
        "log_likelihood": {"events": (["chain", "draw", "series"], st["events_log_lik"])},
        "observed_data": {
            "event_time": (["series", "event"], ev_time),
            "event_mark": (["series", "event"], ev_mark),
            "event_count": (["series"], ev_count),
        },
        "constant_data": {
            "window_start": (["series"], windows[:, 0]),
            "window_end": (["series"], windows[:, 1]),
            "last_observed": (["series"], np.array([t[-1] for t in data.times], dtype=float)),
        },
    }
    if D > 0:
        table = _observation_table(data, scaler)
        b, t, d = table["b"], table["t"], table["d"]
        coords.update(
            {
                "channel": np.asarray(data.channels, dtype=str),
                "observation": np.arange(table["value"].size),
                "obs_series": (("observation",), table["series"]),
                "obs_time": (("observation",), table["time"]),
                "obs_channel": (("observation",), table["channel"]),
            }
        )
        groups["posterior"]["obs_scale"] = (["chain", "draw", "channel"], st["obs_scale"])
        groups["log_likelihood"]["obs"] = (
            ["chain", "draw", "observation"],
            st["log_lik"][:, :, b, t, d],
        )
        groups["posterior_predictive"] = {
            "obs": (["chain", "draw", "observation"], st["obs_rep"][:, :, b, t, d]),
            "y": (["chain", "draw", "series", "time", "channel"], st["y"]),
        }
        groups["observed_data"]["obs"] = (["observation"], table["value"])
        groups["constant_data"]["observation_time"] = (["observation"], table["time"])
    if "elbo" in st:
        groups["sample_stats"] = {"elbo": (["chain", "draw"], st["elbo"])}
    attrs = {
        "num_chains": len(models),
        "chains_are": "ensemble members" if len(models) > 1 else "a single fit",
        "inference": "variational (posterior jump SDE guide)"
        if models[0].config.guide == "encoder"
        else "maximum likelihood (guide='prior': prior jump SDE paths)",
        "units": "data units" if scaler is not None else "model units",
        "model": name,
        "pointwise_log_likelihood": "events: log p(events of a series | path), one per series; "
        "obs: log p(y_i | path), one per observed value",
    }
    return _arviz.make_inference_data(groups, coords, attrs)
