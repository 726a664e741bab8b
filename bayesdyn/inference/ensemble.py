r"""Deep ensembles of :class:`~bayesdyn.models.LatentSDE`: vectorised training, mixture predictive.

A single variational fit understates the uncertainty in the network weights. An ensemble of
``E`` independently initialised members, each fitted by the same SVI objective, spreads over
several modes of the weight posterior (Lakshminarayanan et al. 2017); its posterior predictive
is the mixture

.. math:: p(y^* \mid y) \approx \sum_{e=1}^{E} w_e\, p_e(y^* \mid y).

Options (``method``):

- ``"init"``: members differ by their initialisation (and their SVI noise);
- ``"bootstrap"``: member ``e`` also weights each series by its count in a bootstrap resample
  of the series (counts ``~ Multinomial(B, 1/B)``), i.e. it fits a resampled data set;
- ``"anchored"``: anchored ensembles / randomised MAP sampling (Pearce et al. 2020): member
  ``e`` adds ``||theta_e - theta_anc,e||^2 / (2 sigma^2)`` to its negative ELBO, where the
  anchor ``theta_anc,e`` is its own initial draw from the initialisation distribution and
  ``sigma = prior_scale``. With Gaussian likelihoods and priors the minimisers are exact
  posterior samples; here they approximate the posterior over the weights.

Training is **vectorised**: the members' parameters are stacked ``[E, ...]``
(:class:`~bayesdyn.models.stacked.MemberStack`) and one SVI step evaluates all members with
``torch.func.vmap`` and updates them with one Adam step (per-member gradient clipping, as in
:func:`~bayesdyn.inference.fit`). Nothing in a step loops over members. ``backend="ray"`` runs
groups of members as Ray tasks (see :mod:`bayesdyn.inference._ray_backend`).

Member weights are uniform or pseudo-BMA weights from the validation ELBO,
``w_e \propto \exp(\mathrm{ELBO}_e(y_{val}))`` (Yao et al. 2018).

References:
    1. Lakshminarayanan, Pritzel, Blundell (2017). Simple and scalable predictive uncertainty
       estimation using deep ensembles. NeurIPS.
    2. Pearce, Leibfried, Brintrup, Zaki, Neely (2020). Uncertainty in neural networks:
       approximately Bayesian ensembling. AISTATS.
    3. Yao, Vehtari, Simpson, Gelman (2018). Using stacking to average Bayesian predictive
       distributions. Bayesian Analysis.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pyro
import torch
from pyro.poutine.messenger import Messenger
from torch import Tensor
from tqdm.auto import tqdm

from .._validation import BayesdynTypeError, BayesdynValueError, FitDiverged, check_positive
from ..models import LatentSDE, LatentSDEConfig
from ..models.stacked import MemberStack
from .elbo import PathELBO
from .fit import _as_batch, _subset, load_checkpoint, save_checkpoint
from .predictive import Trajectories, posterior_predictive

__all__ = [
    "Disagreement",
    "Ensemble",
    "EnsembleFitResult",
    "ensemble_disagreement",
    "fit_ensemble",
]

logger = logging.getLogger("bayesdyn.ensemble")

METHODS = ("init", "bootstrap", "anchored")
BACKENDS = ("vectorized", "sequential", "ray")
ENSEMBLE_FORMAT = "bayesdyn.Ensemble/1"


# ---------------------------------------------------------------------------------- Pyro glue
class _NoParamStore(Messenger):
    """Answers ``pyro.param`` with the given tensor without touching the global param store.

    Inside ``vmap`` the module's parameters are per-member views; registering them in the
    global store would leak them out of the transform.
    """

    def _pyro_param(self, msg):
        if len(msg["args"]) > 1:
            msg["value"] = msg["args"][1]
            msg["done"] = True


class _SeriesWeights(Messenger):
    """Multiplies every sample site's scale by per-series weights ``[B, 1]`` (bootstrap counts).

    All of LatentSDE's sites live in the ``"series"`` plate at ``dim=-2`` (batch shapes
    ``[B, 1]`` or ``[B, T]``), so the weights broadcast over the time plate.
    """

    def __init__(self, weights: Tensor):
        super().__init__()
        self.weights = weights

    def _pyro_sample(self, msg):
        msg["scale"] = self.weights * msg["scale"]


class _RandnNormal(Messenger):
    """Draws latent Gaussian sites as ``loc + scale * torch.randn(shape)``.

    The same reparameterised draw, and the same random stream, as ``Normal.rsample`` (which
    fills ``torch.empty(shape).normal_()``); but ``torch.randn`` also runs under
    ``vmap(randomness="different")``, where in-place sampling into an unbatched tensor is
    refused. Sites that already have a value (observed or replayed) are left alone.
    """

    def _pyro_sample(self, msg):
        if msg["value"] is not None or msg["is_observed"]:
            return
        fn = msg["fn"]
        base = fn.base_dist if isinstance(fn, torch.distributions.Independent) else fn
        if not isinstance(base, torch.distributions.Normal):
            return
        eps = torch.randn(fn.shape(), dtype=base.loc.dtype, device=base.loc.device)
        msg["value"] = base.loc + base.scale * eps


def _neg_elbo(model, batch, weights: Tensor | None, kl_scale: float, elbo: PathELBO) -> Tensor:
    """Negative ELBO of one member (summed, not per observation); ``weights [B]`` or None."""

    def weighted(fn):
        if weights is None:
            return fn

        def run(*args, **kwargs):
            with _SeriesWeights(weights.unsqueeze(-1)):
                return fn(*args, **kwargs)

        return run

    loss = 0.0
    with _NoParamStore(), _RandnNormal():
        for model_trace, guide_trace in elbo._get_traces(
            weighted(model.model), weighted(model.guide), (batch,), {"kl_scale": kl_scale}
        ):
            loss = loss - elbo.elbo_particle(model_trace, guide_trace) / elbo.num_particles
    return loss


# ---------------------------------------------------------------------------------- seeds
def _derived_seed(*keys: int) -> int:
    """A 31-bit seed from integer keys (independent streams for members, tasks, bootstraps)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0] >> 1)


def _init_member(config: LatentSDEConfig, seed: int, k: int) -> LatentSDE:
    torch.manual_seed(_derived_seed(seed, 0, k))
    return LatentSDE(config=config)


def _bootstrap_weights(seed: int, k: int, num_series: int) -> np.ndarray:
    rng = np.random.default_rng(_derived_seed(seed, 1, k))
    return rng.multinomial(num_series, np.full(num_series, 1.0 / num_series)).astype(float)


# ---------------------------------------------------------------------------------- training
@dataclass
class _Spec:
    """Plain-data training settings (picklable, so Ray tasks receive them as they are)."""

    config: dict
    seed: int
    method: str
    prior_scale: float
    num_steps: int
    lr: float
    lr_final: float
    batch_size: int | None
    kl_anneal_steps: int
    kl_min: float
    clip_norm: float | None
    common_noise: bool
    val_particles: int
    dtype: str = "float64"


class _GroupTrainer:
    """SVI for a group of members ``ids`` trained together; :meth:`step` is one SVI step.

    With ``vectorize=True`` the members are one :class:`MemberStack` and a step runs the model
    and guide once for all of them (``vmap``); with ``vectorize=False`` the group holds one
    member, which trains as an ordinary :class:`LatentSDE` (fused kernels, ``nn.GRU``): the
    sequential reference. Stacked tensors are ``[E_g, ...]``.
    """

    def __init__(self, spec: _Spec, batch, ids: list[int], *, vectorize: bool = True):
        config = LatentSDEConfig.from_dict(spec.config)
        members = [_init_member(config, spec.seed, k) for k in ids]
        E = len(ids)
        if not vectorize and E != 1:
            raise BayesdynValueError(f"sequential training takes one member per group; got {E}")
        self.spec, self.batch, self.ids, self.vectorize = spec, batch, list(ids), vectorize
        B = batch.times.shape[0]
        self.dtype = dtype = batch.times.dtype
        self.w_all = None
        if spec.method == "bootstrap":
            self.w_all = torch.as_tensor(
                np.stack([_bootstrap_weights(spec.seed, k, B) for k in ids]), dtype=dtype
            )  # [E, B]
        self.stack = MemberStack(members)
        self.params = self.stack.params
        self.anchors = (
            {n: p.detach().clone() for n, p in self.params.items()}
            if spec.method == "anchored"
            else None
        )
        self.plain = members[0]
        self.elbo = PathELBO(max_plate_nesting=LatentSDE.max_plate_nesting)
        self.obs_per_series = batch.mask.flatten(1).sum(-1).to(dtype)  # [B]
        n_full = (
            self.obs_per_series.sum() if self.w_all is None else self.w_all @ self.obs_per_series
        )
        self.n_full = n_full.clamp(min=1.0)  # [] or [E]
        # Same noise stream as a lone fit(seed=seed) with common noise; else one per group.
        noise_seed = spec.seed if spec.common_noise else _derived_seed(spec.seed, 2, ids[0])
        torch.manual_seed(noise_seed)
        self.order = torch.Generator().manual_seed(noise_seed)  # mini-batch order, as in fit()
        self.optim = torch.optim.Adam(list(self.params.values()), lr=spec.lr)
        self.decay = (spec.lr_final / spec.lr) ** (1.0 / max(spec.num_steps, 1))
        self.bs = B if spec.batch_size is None else min(spec.batch_size, B)
        self.randomness = "same" if spec.common_noise else "different"
        self.last_good = {n: p.detach().clone() for n, p in self.params.items()}

    def member_losses(self, mb, w_mb, kl_scale: float) -> Tensor:
        """Negative ELBO of each member on mini-batch ``mb``. Shapes: ``[E]``."""
        elbo = self.elbo
        if self.vectorize:
            with pyro.validation_enabled(False):  # data-dependent checks cannot run under vmap
                if w_mb is None:
                    return self.stack.vmap(
                        lambda m: _neg_elbo(m, mb, None, kl_scale, elbo),
                        randomness=self.randomness,
                    )
                return self.stack.vmap(
                    lambda m, w: _neg_elbo(m, mb, w, kl_scale, elbo),
                    w_mb,
                    in_dims=(0,),
                    randomness=self.randomness,
                )
        state = {n: v[0] for n, v in {**self.params, **self.stack.buffers}.items()}
        with torch.nn.utils.stateless._reparametrize_module(self.plain, state):
            w = None if w_mb is None else w_mb[0]
            return _neg_elbo(self.plain, mb, w, kl_scale, elbo).reshape(1)

    def step(self, step: int) -> Tensor:
        """SVI step number ``step`` for all members at once; returns their losses ``[E]``."""
        spec, B = self.spec, self.batch.times.shape[0]
        # KL annealing and learning-rate decay exactly as in fit().
        kl_scale = (
            1.0
            if spec.kl_anneal_steps <= 0
            else min(1.0, spec.kl_min + (1.0 - spec.kl_min) * step / spec.kl_anneal_steps)
        )
        for g in self.optim.param_groups:
            g["lr"] = spec.lr * self.decay**step
        if self.bs < B:
            idx = torch.randperm(B, generator=self.order)[: self.bs]
            mb = _subset(self.batch, idx)
            w_mb = None if self.w_all is None else self.w_all[:, idx]
            n_obs = (
                mb.mask.flatten(1).sum(-1).to(self.dtype).sum()
                if w_mb is None
                else w_mb @ self.obs_per_series[idx]
            ).clamp(min=1.0)
        else:
            mb, w_mb, n_obs = self.batch, self.w_all, self.n_full
        self.optim.zero_grad(set_to_none=True)
        loss = self.member_losses(mb, w_mb, kl_scale) / n_obs  # [E]
        if self.anchors is not None:
            sq = sum(
                (p - self.anchors[n]).square().reshape(p.shape[0], -1).sum(-1)
                for n, p in self.params.items()
            )
            loss = loss + 0.5 * sq / spec.prior_scale**2 / self.n_full
        bad = ~torch.isfinite(loss.detach())
        if bool(bad.any()):
            with torch.no_grad():
                for n, p in self.params.items():
                    p.copy_(self.last_good[n])
            raise FitDiverged(
                f"the loss of ensemble member(s) {[self.ids[i] for i in bad.nonzero()[:, 0]]} "
                f"became non-finite at step {step}; rolled back to the last good parameters. "
                "Try a smaller lr, a smaller dt, stable_drift=True or standardised data."
            )
        loss.sum().backward()  # members are independent: each gets its own gradient
        if spec.clip_norm is not None:
            _clip_per_member(list(self.params.values()), spec.clip_norm)
        self.optim.step()
        with torch.no_grad():
            for n, p in self.params.items():
                self.last_good[n].copy_(p)
        return loss.detach()

    def state(self) -> dict[str, Tensor]:
        """Stacked parameters and buffers ``[E, ...]`` (detached copies)."""
        return {n: v.detach().clone() for n, v in {**self.params, **self.stack.buffers}.items()}


def _train_group(
    spec: _Spec, batch, ids: list[int], *, val_batch=None, vectorize=True, progress=False
) -> dict[str, Any]:
    """Train members ``ids`` together; returns stacked states ``[E_g, ...]`` and losses."""
    trainer = _GroupTrainer(spec, batch, ids, vectorize=vectorize)
    E = len(ids)
    losses = torch.empty(spec.num_steps, E, dtype=trainer.dtype)
    bar = tqdm(
        total=spec.num_steps, disable=not progress, desc=f"ensemble[{E}]", dynamic_ncols=True
    )
    t0 = time.perf_counter()
    try:
        for step in range(spec.num_steps):
            losses[step] = trainer.step(step)
            bar.update(1)
            bar.set_postfix({"loss": f"{float(losses[step].mean()):.4f}"}, refresh=False)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    val_elbo = None
    if val_batch is not None:
        val_elbo = _validation_elbo(
            trainer.stack, val_batch, spec.val_particles, vectorize, trainer.plain
        )
    return {"ids": list(ids), "state": trainer.state(), "loss": losses, "val_elbo": val_elbo,
            "seconds": seconds}  # fmt: skip


def _clip_per_member(params: list[Tensor], max_norm: float) -> None:
    """``clip_grad_norm_`` applied to each member separately (stacked grads ``[E, ...]``)."""
    grads = [p.grad for p in params if p.grad is not None]
    sq = sum(g.detach().square().reshape(g.shape[0], -1).sum(-1) for g in grads)
    coef = (max_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)  # torch's formula, per member
    for g in grads:
        g.mul_(coef.view((-1,) + (1,) * (g.dim() - 1)))


def _validation_elbo(stack: MemberStack, val_batch, num_particles: int, vectorize, plain):
    """Total validation ELBO of each member (nats, not per observation). Shapes: ``[E]``."""
    elbo = PathELBO(
        num_particles=num_particles,
        vectorize_particles=num_particles > 1,
        max_plate_nesting=LatentSDE.max_plate_nesting,
    )
    with torch.no_grad():
        if vectorize:
            with pyro.validation_enabled(False):
                return -stack.vmap(lambda m: _neg_elbo(m, val_batch, None, 1.0, elbo))
        state = {n: v[0] for n, v in {**stack.params, **stack.buffers}.items()}
        with torch.nn.utils.stateless._reparametrize_module(plain, state):
            return -_neg_elbo(plain, val_batch, None, 1.0, elbo).reshape(1)


# ---------------------------------------------------------------------------------- results
@dataclass
class EnsembleFitResult:
    """What :func:`fit_ensemble` records.

    Attributes:
        loss: per-step loss of each member (negative ELBO per observed value, plus the anchor
            term for ``method="anchored"``). Shapes: ``[num_steps, E]``.
        val_elbo: total validation ELBO per member (nats), or None. Shapes: ``[E]``.
        seconds: wall time of the whole fit.
        backend: ``"vectorized"``, ``"sequential"`` or ``"ray"``.
        groups: member ids trained together (one vectorised model per group).
        failures: one dict per failed Ray attempt (``group``, ``members``, ``attempt``,
            ``error``); every failure was retried (or the fit raised).
    """

    loss: Tensor
    val_elbo: Tensor | None
    seconds: float
    backend: str
    groups: list[list[int]]
    failures: list[dict] = field(default_factory=list)


class Ensemble:
    """``E`` fitted :class:`LatentSDE` members with stacked parameters and mixture weights.

    Args:
        config: the members' shared :class:`LatentSDEConfig`.
        state: parameter/buffer name -> stacked tensor ``[E, ...]``.
        weights: member weights ``[E]`` (non-negative, summing to one; default uniform).
        method: how the members were trained (for the record).

    Use :func:`fit_ensemble` to train one, :meth:`member` to get member ``e`` as an ordinary
    model, :meth:`posterior_predictive` for the mixture predictive ``[E, S, B, Q, D]`` and
    :func:`ensemble_disagreement` for between- vs within-member variance.
    """

    def __init__(
        self,
        config: LatentSDEConfig,
        state: dict[str, Tensor],
        weights: Tensor | None = None,
        *,
        method: str = "init",
        fit_result: EnsembleFitResult | None = None,
    ):
        if not isinstance(config, LatentSDEConfig):
            raise BayesdynTypeError(
                f"config must be a LatentSDEConfig; got {type(config).__name__}"
            )
        if not state:
            raise BayesdynValueError("state must hold the stacked parameters; got none")
        E = next(iter(state.values())).shape[0]
        self.config = config
        self.state = state
        self.method = method
        self.fit_result = fit_result
        self.weights = _check_weights(
            torch.full((E,), 1.0 / E, dtype=torch.float64) if weights is None else weights, E
        )
        self._stack: MemberStack | None = None

    @property
    def num_members(self) -> int:
        """``E``."""
        return int(self.weights.shape[0])

    def member(self, e: int) -> LatentSDE:
        """Member ``e`` as an ordinary :class:`LatentSDE`."""
        if not (isinstance(e, int) and 0 <= e < self.num_members):
            raise BayesdynValueError(f"member index must lie in [0, {self.num_members}); got {e!r}")
        model = LatentSDE(config=self.config)
        model.load_state_dict({n: v[e] for n, v in self.state.items()})
        return model

    def members(self) -> list[LatentSDE]:
        """All members as ordinary models."""
        return [self.member(e) for e in range(self.num_members)]

    def stack(self) -> MemberStack:
        """The members as one :class:`~bayesdyn.models.stacked.MemberStack` (cached)."""
        if self._stack is None:
            self._stack = MemberStack(self.members())
        return self._stack

    def set_weights(
        self, weights: Literal["uniform", "elbo"] | Tensor, val_data=None, *, num_particles=16
    ) -> Tensor:
        """Set the mixture weights: ``"uniform"``, ``"elbo"`` (pseudo-BMA from the validation
        ELBO of ``val_data``) or explicit weights ``[E]``. Returns the weights ``[E]``."""
        if isinstance(weights, str):
            if weights == "uniform":
                w = torch.full((self.num_members,), 1.0 / self.num_members, dtype=torch.float64)
            elif weights == "elbo":
                if val_data is None:
                    raise BayesdynValueError("weights='elbo' needs val_data (held-out series)")
                val = _as_batch(val_data, "val_data")
                self.member(0).check_batch(val)
                stack = self.stack()
                elbos = _validation_elbo(stack, val, num_particles, True, None)
                w = elbo_weights(elbos)
            else:
                raise BayesdynValueError(
                    f"weights must be 'uniform', 'elbo' or a tensor [E]; got {weights!r}"
                )
        else:
            w = weights
        self.weights = _check_weights(w, self.num_members)
        return self.weights

    def posterior_predictive(
        self,
        data,
        times,
        num_samples: int = 100,
        *,
        chunk_size: int = 64,
        seed: int | None = None,
    ) -> Trajectories:
        """The mixture posterior predictive: ``num_samples`` draws from every member.

        All members sample at once (``vmap`` over the stacked parameters). The result's
        quantiles, mean and bands pool members with :attr:`weights`.

        Args:
            data: conditioning series (``IrregularTimeSeries`` or ``IrregularBatch``).
            times: query times ``[Q]`` or ``[B, Q]``.
            num_samples: ``S`` draws per member.
            seed: seed for reproducible draws.

        Returns:
            :class:`Trajectories` with ``latent [E, S, B, Q, L]``, ``observations
            [E, S, B, Q, D]`` and ``member_weights [E]``.
        """
        if not (isinstance(num_samples, int) and num_samples >= 1):
            raise BayesdynValueError(f"num_samples must be a positive integer; got {num_samples!r}")
        stack = self.stack()
        if seed is not None:
            torch.manual_seed(seed)

        def draw(model):
            tr = posterior_predictive(model, data, times, num_samples, chunk_size=chunk_size)
            return tr.latent, tr.observations

        # One unbatched call first: validates the inputs with clear messages (vmap would
        # wrap them) and gives the metadata (times, last observation, names).
        with _NoParamStore():
            meta = posterior_predictive(stack.template, data, times, 1)
        with pyro.validation_enabled(False), _NoParamStore(), _RandnNormal():
            latent, obs = stack.vmap(draw)
        return Trajectories(
            times=meta.times,
            latent=latent,
            observations=obs,
            last_observed=meta.last_observed,
            channels=meta.channels,
            ids=meta.ids,
            member_weights=self.weights.to(obs.dtype),
        )

    # ------------------------------------------------------------------ save / load
    def to_checkpoint(self) -> dict:
        """Plain data (config, stacked state, weights), loadable with ``weights_only=True``."""
        return {
            "format": ENSEMBLE_FORMAT,
            "config": asdict(self.config),
            "state": {n: v.detach().cpu() for n, v in self.state.items()},
            "weights": self.weights.detach().cpu(),
            "method": self.method,
        }

    @classmethod
    def from_checkpoint(cls, payload: dict) -> Ensemble:
        """Inverse of :meth:`to_checkpoint`."""
        if not isinstance(payload, dict) or payload.get("format") != ENSEMBLE_FORMAT:
            got = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
            raise BayesdynValueError(f"not a bayesdyn Ensemble checkpoint (format {got!r})")
        return cls(
            LatentSDEConfig.from_dict(payload["config"]),
            dict(payload["state"]),
            payload["weights"],
            method=payload["method"],
        )

    def save(self, path) -> None:
        """Write the ensemble atomically (see :func:`~bayesdyn.inference.save_checkpoint`)."""
        save_checkpoint(path, {"ensemble": self.to_checkpoint()})

    @classmethod
    def load(cls, path) -> Ensemble:
        """Load an ensemble saved by :meth:`save` (``weights_only=True``)."""
        payload = load_checkpoint(path)
        if "ensemble" not in payload:
            raise BayesdynValueError(f"{str(path)!r} holds no ensemble")
        return cls.from_checkpoint(payload["ensemble"])


def elbo_weights(val_elbo: Tensor) -> Tensor:
    r"""Pseudo-BMA member weights ``softmax(ELBO_e)`` from total validation ELBOs ``[E]``.

    ``exp(ELBO_e)`` lower-bounds member ``e``'s marginal likelihood of the held-out series,
    so these are approximate posterior model probabilities (Yao et al. 2018). Returns ``[E]``.
    """
    v = torch.as_tensor(val_elbo, dtype=torch.float64)
    return torch.softmax(v, 0)


def _check_weights(w, E: int) -> Tensor:
    w = torch.as_tensor(w, dtype=torch.float64).detach()
    if w.shape != (E,):
        raise BayesdynValueError(f"weights must have shape [E]=[{E}]; got {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or float(w.sum()) <= 0:
        raise BayesdynValueError(f"weights must be finite, non-negative, not all zero; got {w}")
    return w / w.sum()


# ---------------------------------------------------------------------------------- fit
def fit_ensemble(
    model: LatentSDEConfig | LatentSDE,
    data,
    num_members: int = 5,
    *,
    method: Literal["init", "bootstrap", "anchored"] = "init",
    prior_scale: float = 1.0,
    num_steps: int = 1000,
    lr: float = 1e-2,
    lr_final: float | None = None,
    batch_size: int | None = None,
    kl_anneal_steps: int = 0,
    kl_min: float = 0.01,
    clip_norm: float | None = 10.0,
    seed: int = 0,
    common_noise: bool = False,
    weights: Literal["uniform", "elbo"] = "uniform",
    val_data=None,
    val_particles: int = 16,
    backend: Literal["vectorized", "sequential", "ray"] = "vectorized",
    num_groups: int | None = None,
    ray_address: str | None = None,
    max_retries: int = 2,
    progress: bool | None = None,
    _inject_failures: dict[int, int] | None = None,
) -> Ensemble:
    """Train a deep ensemble of ``num_members`` latent SDEs (see the module docstring).

    Main arguments:
        model: a :class:`LatentSDEConfig`, or a :class:`LatentSDE` whose config is used (its
            weights are not: every member gets its own initialisation).
        data: training series (``IrregularTimeSeries`` or ``IrregularBatch``).
        num_members: ``E``.
        method: ``"init"``, ``"bootstrap"`` or ``"anchored"``.
        prior_scale: ``sigma`` of the anchored prior (``method="anchored"``).
        weights: ``"uniform"`` or ``"elbo"`` (needs ``val_data``).
        backend: ``"vectorized"`` (one stacked model, one SVI step updates all members),
            ``"sequential"`` (ordinary fits one after another: the reference) or ``"ray"``
            (groups of members as Ray tasks).

    Other arguments:
        num_steps, lr, lr_final, batch_size, kl_anneal_steps, kl_min, clip_norm: as in
            :func:`~bayesdyn.inference.fit` (clipping is per member).
        seed: member ``e`` is initialised from a seed derived from ``(seed, e)``; bootstrap
            counts likewise, so a member does not depend on how members are grouped.
        common_noise: every member uses the SVI noise stream of ``fit(..., seed=seed)``
            (common random numbers). Then vectorised, sequential and Ray training give the same
            parameters up to float rounding. Default: independent noise per group of members.
        val_particles: particles of the validation ELBO.
        num_groups: Ray tasks (default: one per CPU of the cluster, at most ``E``).
        ray_address: ``ray.init(address=...)`` of an existing cluster; default: the running
            Ray instance, else a local one.
        max_retries: retries of a failed Ray task; each failure is logged and recorded in
            ``fit_result.failures``; when retries run out the fit raises.
        progress: progress bar (default: when stderr is a terminal).

    Returns:
        :class:`Ensemble` (``.fit_result`` holds an :class:`EnsembleFitResult`).

    Shapes:
        ``data`` batches as ``times [B, T]``, ``values [B, T, D]``, ``mask [B, T, D]``;
        stacked parameters are ``[E, ...]``.
    """
    if isinstance(model, LatentSDE):
        config = model.config
    elif isinstance(model, LatentSDEConfig):
        config = model
    else:
        raise BayesdynTypeError(
            f"model must be a LatentSDEConfig or LatentSDE; got {type(model).__name__}"
        )
    if isinstance(num_members, bool) or not isinstance(num_members, int) or num_members < 1:
        raise BayesdynValueError(f"num_members must be a positive integer; got {num_members!r}")
    if method not in METHODS:
        raise BayesdynValueError(f"method must be one of {METHODS}; got {method!r}")
    if backend not in BACKENDS:
        raise BayesdynValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
    if weights not in ("uniform", "elbo"):
        raise BayesdynValueError(f"weights must be 'uniform' or 'elbo'; got {weights!r}")
    if weights == "elbo" and val_data is None:
        raise BayesdynValueError("weights='elbo' needs val_data (held-out series)")
    prior_scale = check_positive("prior_scale", prior_scale)
    lr = check_positive("lr", lr)
    lr_final = lr if lr_final is None else check_positive("lr_final", lr_final)
    if clip_norm is not None:
        clip_norm = check_positive("clip_norm", clip_norm)
    num_steps = int(num_steps)
    if num_steps < 0:
        raise BayesdynValueError(f"num_steps must be >= 0; got {num_steps}")
    if not 0.0 < kl_min <= 1.0:
        raise BayesdynValueError(f"kl_min must lie in (0, 1]; got {kl_min}")
    if batch_size is not None and not (isinstance(batch_size, int) and batch_size >= 1):
        raise BayesdynValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    if not (isinstance(max_retries, int) and max_retries >= 0):
        raise BayesdynValueError(f"max_retries must be a non-negative integer; got {max_retries!r}")
    if isinstance(val_particles, bool) or not isinstance(val_particles, int) or val_particles < 1:
        raise BayesdynValueError(f"val_particles must be a positive integer; got {val_particles!r}")
    if backend != "ray" and (num_groups is not None or ray_address is not None):
        raise BayesdynValueError(
            f"num_groups and ray_address apply to backend='ray' only; got backend={backend!r}"
        )
    batch = _as_batch(data, "data")
    probe = LatentSDE(config=config)
    probe.check_batch(batch)
    val_batch = None if val_data is None else _as_batch(val_data, "val_data")
    if val_batch is not None:
        probe.check_batch(val_batch)
    spec = _Spec(
        config=asdict(config),
        seed=int(seed),
        method=method,
        prior_scale=prior_scale,
        num_steps=num_steps,
        lr=lr,
        lr_final=lr_final,
        batch_size=batch_size,
        kl_anneal_steps=int(kl_anneal_steps),
        kl_min=float(kl_min),
        clip_norm=clip_norm,
        common_noise=bool(common_noise),
        val_particles=int(val_particles),
        dtype=str(torch.get_default_dtype()).removeprefix("torch."),
    )
    if progress is None:
        progress = sys.stderr.isatty()
    t0 = time.perf_counter()
    ids = list(range(num_members))
    failures: list[dict] = []
    if backend == "vectorized":
        groups = [ids]
        results = [_train_group(spec, batch, ids, val_batch=val_batch, progress=progress)]
    elif backend == "sequential":
        groups = [[k] for k in ids]
        results = [
            _train_group(spec, batch, g, val_batch=val_batch, vectorize=False, progress=progress)
            for g in groups
        ]
    else:
        from ._ray_backend import train_on_ray

        results, groups, failures = train_on_ray(
            spec,
            batch,
            val_batch,
            num_members,
            num_groups=num_groups,
            address=ray_address,
            max_retries=max_retries,
            inject_failures=_inject_failures,
        )
    state = {n: torch.cat([r["state"][n] for r in results]) for n in results[0]["state"]}
    loss = torch.cat([r["loss"] for r in results], dim=1)
    val_elbo = None if val_batch is None else torch.cat([r["val_elbo"] for r in results])
    fit_result = EnsembleFitResult(
        loss=loss,
        val_elbo=val_elbo,
        seconds=time.perf_counter() - t0,
        backend=backend,
        groups=groups,
        failures=failures,
    )
    w = elbo_weights(val_elbo) if weights == "elbo" else None
    return Ensemble(config, state, w, method=method, fit_result=fit_result)


# ---------------------------------------------------------------------------------- diagnostics
@dataclass
class Disagreement:
    r"""Between-member against within-member predictive variance at each time.

    By the law of total variance the mixture's variance splits exactly as

    .. math:: \mathrm{Var}[y] = \underbrace{\textstyle\sum_e w_e \mathrm{Var}_e[y]}_{\text{within}}
        + \underbrace{\textstyle\sum_e w_e (\mathrm{E}_e[y] - \mathrm{E}[y])^2}_{\text{between}}.

    ``between`` is the epistemic part the members disagree on; ``within`` is what each member
    already predicts (its noise and latent uncertainty).

    Attributes:
        times: query times ``[Q]`` or ``[B, Q]``.
        between, within: ``[B, Q, D]`` (or ``[B, Q, L]`` for the latent state).
        last_observed: each series' last observation time ``[B]``.
    """

    times: Tensor
    between: Tensor
    within: Tensor
    last_observed: Tensor

    @property
    def total(self) -> Tensor:
        """Mixture variance ``between + within``. Shapes: ``[B, Q, D]``."""
        return self.between + self.within

    @property
    def share(self) -> Tensor:
        """Share of the mixture variance due to disagreement, in [0, 1]. Shapes: ``[B, Q, D]``."""
        return self.between / self.total.clamp(min=torch.finfo(self.total.dtype).tiny)

    def to_dataframe(self):
        """Long table with columns ``series, time, channel, region, between, within, share``."""
        import pandas as pd

        B, Q, D = self.between.shape
        t = (self.times if self.times.dim() == 2 else self.times.expand(B, -1)).cpu().numpy()
        last = self.last_observed.cpu().numpy()
        return pd.DataFrame(
            {
                "series": np.repeat(np.arange(B), Q * D),
                "time": np.repeat(t.reshape(-1), D),
                "channel": np.tile(np.arange(D), B * Q),
                "region": np.where(
                    np.repeat((t > last[:, None]).reshape(-1), D), "forecast", "interpolation"
                ),
                "between": self.between.cpu().numpy().reshape(-1),
                "within": self.within.cpu().numpy().reshape(-1),
                "share": self.share.cpu().numpy().reshape(-1),
            }
        )

    def plot(self, series: int = 0, channel: int = 0):
        """Stacked between/within variance over time for one series and channel (a Figure)."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        B, _, D = self.between.shape
        if not 0 <= series < B or not 0 <= channel < D:
            raise BayesdynValueError(
                f"series must lie in [0, {B}) and channel in [0, {D}); got {series}, {channel}"
            )
        t = (self.times if self.times.dim() == 1 else self.times[series]).cpu()
        w = self.within[series, :, channel].cpu()
        b = self.between[series, :, channel].cpu()
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.fill_between(t, 0, w, alpha=0.5, label="within members")
        ax.fill_between(t, w, w + b, alpha=0.5, label="between members")
        ax.axvline(float(self.last_observed[series]), color="k", ls="--", lw=0.8)
        ax.set_xlabel("time")
        ax.set_ylabel("predictive variance")
        ax.legend(fontsize=8)
        fig.tight_layout()
        return fig


def ensemble_disagreement(traj: Trajectories, which: str = "observations") -> Disagreement:
    """Between- vs within-member variance of an ensemble's predictive at each query time.

    Args:
        traj: from :meth:`Ensemble.posterior_predictive` (``[E, S, B, Q, D]``).
        which: ``"observations"`` or ``"latent"``.

    Returns:
        :class:`Disagreement` with ``between`` and ``within`` of shape ``[B, Q, D]``
        (members weighted by ``traj.member_weights``, population variances).
    """
    if which not in ("observations", "latent"):
        raise BayesdynValueError(f"which must be 'observations' or 'latent'; got {which!r}")
    x = getattr(traj, which)
    if x.dim() != 5:
        raise BayesdynValueError(
            f"traj must be an ensemble predictive with {which} [E, S, B, Q, D]; "
            f"got shape {tuple(x.shape)}"
        )
    E = x.shape[0]
    w = traj.member_weights
    w = torch.full((E,), 1.0 / E, dtype=x.dtype) if w is None else w.to(x.dtype)
    w = w.view(E, 1, 1, 1)
    m = x.mean(1)  # [E, B, Q, D]
    v = x.var(1, unbiased=False)
    mix = (w * m).sum(0)
    return Disagreement(
        times=traj.times,
        between=(w * (m - mix).square()).sum(0),
        within=(w * v).sum(0),
        last_observed=traj.last_observed,
    )
