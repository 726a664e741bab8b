"""``PathELBO``: the ELBO for latent SDEs with the low-variance path KL.

For a path site whose model and guide distributions are both :class:`~bayesdyn.models.SDEPath`
(same grid, same diffusion), the ``log p(z) - log q(z)`` term is replaced by minus the
low-variance KL estimate

.. math:: \\sum_k \\tfrac12 \\lVert (f_q - f_p)(t_k, z_k)/g(t_k, z_k) \\rVert^2 dt_k,

which equals the naive difference in expectation (both estimate ``KL(q || p)``) but drops its
zero-mean stochastic integral :math:`\\int (f_q - f_p)/g \\, dW`. Gaussian initial-state sites get
their analytic KL, as in ``TraceMeanField_ELBO``. Every other site is scored as in
``Trace_ELBO``. All guide sites must be reparameterised.
"""

from __future__ import annotations

from typing import Literal

import pyro
import torch
from pyro import poutine
from pyro.distributions.kl import kl_divergence
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO
from pyro.infer.util import is_validation_enabled, torch_item
from pyro.poutine.util import prune_subsample_sites
from pyro.util import check_model_guide_match, warn_if_nan

from .._validation import BayesdynValueError
from ..models import SDEPath

__all__ = ["PathELBO"]


class PathELBO(ELBO):
    """Evidence lower bound with the low-variance path KL for :class:`SDEPath` sites.

    Args:
        num_particles: Monte Carlo particles per step.
        path_kl: ``"lowvar"`` (default) or ``"naive"`` (plain ``log p - log q``, for checks).
        analytic_kl: use closed-form KLs where Pyro has them (e.g. Gaussian ``z0``).
        vectorize_particles: draw particles in one vectorised pass.
        max_plate_nesting: as in Pyro (2 for :class:`~bayesdyn.models.LatentSDE`).

    Use it like any Pyro ELBO: ``SVI(model, guide, optim, loss=PathELBO())``.
    """

    def __init__(
        self,
        num_particles: int = 1,
        *,
        path_kl: Literal["lowvar", "naive"] = "lowvar",
        analytic_kl: bool = True,
        vectorize_particles: bool = False,
        max_plate_nesting: float = float("inf"),
        **kwargs,
    ):
        if path_kl not in ("lowvar", "naive"):
            raise BayesdynValueError(f"path_kl must be 'lowvar' or 'naive'; got {path_kl!r}")
        super().__init__(
            num_particles=num_particles,
            vectorize_particles=vectorize_particles,
            max_plate_nesting=max_plate_nesting,
            **kwargs,
        )
        self.path_kl = path_kl
        self.analytic_kl = analytic_kl

    def _get_trace(self, model, guide, args, kwargs):
        guide_trace = poutine.trace(guide, graph_type="flat").get_trace(*args, **kwargs)
        model_trace = poutine.trace(
            poutine.replay(model, trace=guide_trace), graph_type="flat"
        ).get_trace(*args, **kwargs)
        if is_validation_enabled():
            check_model_guide_match(model_trace, guide_trace, self.max_plate_nesting)
        return prune_subsample_sites(model_trace), prune_subsample_sites(guide_trace)

    @staticmethod
    def _site_log_prob(site) -> torch.Tensor:
        lp = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
        return scale_and_mask(lp, site["scale"], site["mask"])

    def elbo_particle(self, model_trace, guide_trace, reduce=None) -> torch.Tensor:
        """ELBO of one particle (differentiable). Returns a scalar tensor.

        ``reduce`` sums each term's elementwise values (default: over everything); see
        :meth:`particle_elbos`.
        """
        if reduce is None:
            reduce = torch.sum
        elbo = 0.0
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample":
                continue
            if site["is_observed"]:
                elbo = elbo + reduce(self._site_log_prob(site))
                continue
            gsite = guide_trace.nodes.get(name)
            if gsite is None:
                raise BayesdynValueError(
                    f"model site {name!r} is latent but the guide does not sample it"
                )
            if not gsite["fn"].has_rsample:
                raise BayesdynValueError(
                    f"PathELBO needs reparameterised guide sites; site {name!r} uses "
                    f"{type(gsite['fn']).__name__}, which has no rsample"
                )
            p, q = site["fn"], gsite["fn"]
            if self.path_kl == "lowvar" and isinstance(p, SDEPath) and isinstance(q, SDEPath):
                kl = q.path_kl(p, gsite["value"])
                elbo = elbo - reduce(scale_and_mask(kl, gsite["scale"], gsite["mask"]))
                continue
            if self.analytic_kl and not isinstance(p, SDEPath):
                try:
                    kl = kl_divergence(q, p)
                except NotImplementedError:
                    kl = None
                if kl is not None and kl.shape == q.batch_shape:
                    elbo = elbo - reduce(scale_and_mask(kl, gsite["scale"], gsite["mask"]))
                    continue
            elbo = elbo + reduce(self._site_log_prob(site)) - reduce(self._site_log_prob(gsite))
        return elbo if torch.is_tensor(elbo) else torch.tensor(float(elbo))

    def particle_elbos(self, model, guide, *args, num_particles: int, **kwargs) -> torch.Tensor:
        """Independent one-particle ELBO estimates, drawn in one vectorised pass.

        Model and guide run once inside a particle plate at dim ``-(max_plate_nesting + 1)``;
        each particle's terms are summed separately. Their mean is the usual
        ``num_particles`` estimate; their spread shows the estimator's noise.

        Shapes: returns ``[num_particles]``.
        """
        if isinstance(num_particles, bool) or not isinstance(num_particles, int):
            raise BayesdynValueError(f"num_particles must be an int; got {num_particles!r}")
        if num_particles < 1:
            raise BayesdynValueError(f"num_particles must be >= 1; got {num_particles}")
        if self.max_plate_nesting == float("inf"):
            raise BayesdynValueError(
                "particle_elbos needs a finite max_plate_nesting (2 for LatentSDE); got inf"
            )
        dim = -1 - int(self.max_plate_nesting)

        def in_plate(fn):
            def wrapped(*a, **k):
                with pyro.plate("particle_elbos", num_particles, dim=dim):
                    return fn(*a, **k)

            return wrapped

        mt, gt = self._get_trace(in_plate(model), in_plate(guide), args, kwargs)

        def reduce(t: torch.Tensor) -> torch.Tensor:
            t = torch.as_tensor(t)
            if t.dim() < -dim:  # no particle dim: the same for every particle
                return t.sum().expand(num_particles)
            t = t.sum(dim=tuple(range(t.dim() + dim + 1, t.dim())))
            return t.reshape(-1).expand(num_particles)

        return self.elbo_particle(mt, gt, reduce)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """Negative ELBO averaged over particles, differentiable."""
        loss = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            loss = loss - self.elbo_particle(model_trace, guide_trace) / self.num_particles
        warn_if_nan(loss, "loss")
        return loss

    def loss(self, model, guide, *args, **kwargs) -> float:
        """Negative ELBO estimate as a float (no gradients)."""
        with torch.no_grad():
            return torch_item(self.differentiable_loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """Negative ELBO as a float, with gradients accumulated into the parameters."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward(retain_graph=self.retain_graph)
        return torch_item(loss)
