r"""The exact Kalman filter for linear-Gaussian SDEs observed with Gaussian noise at irregular times.

The model (``L`` latent dimensions, ``D`` channels)

.. math::
    dz = (A z + b)\,dt + G\,dW, \qquad z(t_0) \sim \mathcal N(m_0, P_0), \qquad
    y_i = H z(t_i) + c + \varepsilon_i, \quad \varepsilon_i \sim \mathcal N(0, \mathrm{diag}(r^2)),

with diagonal ``G = diag(g)``. This is the oracle for every filter in bayesdyn: the
Ornstein–Uhlenbeck process is the case ``L = D = 1``, ``A = -theta``, ``b = theta mu``.

Two discretisations:

- ``"exact"``: the exact transition over each gap ``Delta`` between observations,
  ``F = e^{A Delta}``, ``u = int_0^Delta e^{As} b ds`` (one augmented matrix exponential) and
  ``Q = int_0^Delta e^{As} G G^T e^{A^T s} ds`` (Van Loan 1978). The log-likelihood is the exact
  marginal likelihood of the continuous-time model.
- ``"euler"``: the Euler–Maruyama chain on the solver grid that :class:`ParticleFilter` and
  :class:`~bayesdyn.models.SDEPath` use (``make_union_grid(times, dt=dt, t0=t0)``), with per-step
  transition ``z' = (I + A h) z + b h + G sqrt(h) eps``. The filter is then exact for that
  discretised model, so particle filters can be compared with it without discretisation bias.

Missing channels are handled exactly: a masked channel contributes neither to the update nor to
the likelihood. Everything is torch, so the log-likelihood is differentiable in the parameters.

References:
    1. C. F. Van Loan, "Computing integrals involving the matrix exponential", IEEE TAC 1978.
    2. S. Särkkä and A. Solin, *Applied Stochastic Differential Equations*, CUP 2019, ch. 6.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from .._validation import BayesdynTypeError, BayesdynValueError, check_positive
from ..models.base import FunctionalSDE
from ..solvers import make_union_grid
from ._filter_grid import obs_on_grid

__all__ = ["KalmanResult", "LinearGaussianSDE", "kalman_filter"]

_LOG_2PI = math.log(2 * math.pi)


class KalmanResult(NamedTuple):
    """Filtering distributions and the log-likelihood.

    Attributes:
        means: filtering means ``E[z(t_i) | y_{<=i}]`` at each observation row.
        covariances: filtering covariances at each row.
        log_likelihood: ``log p(y_{1:T})`` of each series (masked values and padding excluded).
        log_likelihood_terms: the one-step terms ``log p(y_i | y_{<i})`` (0 for padding rows).
        obs_means: filtering means in observation space, ``H m_i + c``.

    Shapes: ``means [B, T, L]``, ``covariances [B, T, L, L]``, ``log_likelihood [B]``,
    ``log_likelihood_terms [B, T]``, ``obs_means [B, T, D]``. Padding rows repeat the last
    valid row's filtering distribution.
    """

    means: Tensor
    covariances: Tensor
    log_likelihood: Tensor
    log_likelihood_terms: Tensor
    obs_means: Tensor

    @property
    def variances(self) -> Tensor:
        """Diagonal of :attr:`covariances`. Shapes: ``[B, T, L]``."""
        return self.covariances.diagonal(dim1=-2, dim2=-1)


def _as_tensor(name: str, x, shape: tuple[int, ...], dtype) -> Tensor:
    try:
        t = torch.as_tensor(x, dtype=dtype)
    except (TypeError, ValueError, RuntimeError) as e:
        raise BayesdynTypeError(f"{name} must be a tensor or array of numbers; got {x!r}") from e
    if t.shape != torch.Size(shape):
        raise BayesdynValueError(f"{name} must have shape {list(shape)}; got {list(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise BayesdynValueError(f"{name} must be finite; got non-finite entries")
    return t


@dataclass(eq=False)
class LinearGaussianSDE:
    r"""A linear-Gaussian SDE with a linear-Gaussian observation model (see the module docstring).

    Args:
        drift_matrix: ``A``.
        drift_offset: ``b``.
        diffusion: ``g``, the diagonal of ``G`` (positive).
        obs_matrix: ``H``.
        obs_offset: ``c``.
        obs_scale: ``r``, the observation noise standard deviation per channel (positive).
        init_mean: ``m0``; init_cov: ``P0`` (symmetric positive definite), the law at ``t0``.
        t0: time of the initial law (default: each batch's earliest time).

    Parameters may be tensors that require grad (the filter is differentiable in them).

    Shapes: ``A [L, L]``, ``b [L]``, ``g [L]``, ``H [D, L]``, ``c [D]``, ``r [D]``,
    ``m0 [L]``, ``P0 [L, L]``.
    """

    drift_matrix: Tensor
    drift_offset: Tensor
    diffusion: Tensor
    obs_matrix: Tensor
    obs_offset: Tensor
    obs_scale: Tensor
    init_mean: Tensor
    init_cov: Tensor
    t0: float | None = None

    def __post_init__(self):
        A = self.drift_matrix
        dtype = A.dtype if isinstance(A, Tensor) else torch.get_default_dtype()
        A = torch.as_tensor(A, dtype=dtype)
        if A.dim() != 2 or A.shape[0] != A.shape[1]:
            raise BayesdynValueError(f"drift_matrix must be square [L, L]; got {list(A.shape)}")
        L = A.shape[0]
        H = torch.as_tensor(self.obs_matrix, dtype=dtype)
        if H.dim() != 2 or H.shape[1] != L:
            raise BayesdynValueError(f"obs_matrix must have shape [D, {L}]; got {list(H.shape)}")
        D = H.shape[0]
        self.drift_matrix = _as_tensor("drift_matrix", A, (L, L), dtype)
        self.obs_matrix = _as_tensor("obs_matrix", H, (D, L), dtype)
        self.drift_offset = _as_tensor("drift_offset", self.drift_offset, (L,), dtype)
        self.diffusion = _as_tensor("diffusion", self.diffusion, (L,), dtype)
        self.obs_offset = _as_tensor("obs_offset", self.obs_offset, (D,), dtype)
        self.obs_scale = _as_tensor("obs_scale", self.obs_scale, (D,), dtype)
        self.init_mean = _as_tensor("init_mean", self.init_mean, (L,), dtype)
        self.init_cov = _as_tensor("init_cov", self.init_cov, (L, L), dtype)
        for name in ("diffusion", "obs_scale"):
            if not bool((getattr(self, name) > 0).all()):
                raise BayesdynValueError(f"{name} must be positive; got {getattr(self, name)}")
        P0 = self.init_cov.detach()
        if not torch.allclose(P0, P0.T) or bool(torch.linalg.eigvalsh(P0).min() <= 0):
            raise BayesdynValueError(
                f"init_cov must be symmetric positive definite; got {P0.tolist()}"
            )
        if self.t0 is not None:
            self.t0 = float(self.t0)

    @classmethod
    def ou(
        cls,
        theta: float | Tensor,
        mu: float | Tensor,
        sigma: float | Tensor,
        obs_scale: float | Tensor,
        init_mean: float | Tensor | None = None,
        init_var: float | Tensor | None = None,
        t0: float | None = None,
    ) -> LinearGaussianSDE:
        r"""The scalar Ornstein–Uhlenbeck process :math:`dz = \theta(\mu - z)dt + \sigma dW`
        observed as ``y = z + eps``, ``eps ~ N(0, obs_scale^2)``.

        The initial law defaults to the stationary one, ``N(mu, sigma^2 / (2 theta))``.
        Scalars may be tensors that require grad.
        """
        dtype = next(
            (x.dtype for x in (theta, mu, sigma, obs_scale) if isinstance(x, Tensor)),
            torch.get_default_dtype(),
        )

        def s(x) -> Tensor:
            return torch.as_tensor(x, dtype=dtype).reshape(())

        th, m, sg, r = s(theta), s(mu), s(sigma), s(obs_scale)
        check_positive("theta", float(th.detach()))
        m0 = m if init_mean is None else s(init_mean)
        v0 = sg**2 / (2 * th) if init_var is None else s(init_var)
        return cls(
            drift_matrix=-th.reshape(1, 1),
            drift_offset=(th * m).reshape(1),
            diffusion=sg.reshape(1),
            obs_matrix=torch.ones(1, 1, dtype=dtype),
            obs_offset=torch.zeros(1, dtype=dtype),
            obs_scale=r.reshape(1),
            init_mean=m0.reshape(1),
            init_cov=v0.reshape(1, 1),
            t0=t0,
        )

    @property
    def state_dim(self) -> int:
        """``L``."""
        return int(self.drift_matrix.shape[0])

    @property
    def obs_dim(self) -> int:
        """``D``."""
        return int(self.obs_matrix.shape[0])

    # ------------------------------------------------------------------ pieces for other filters
    def sde(self) -> FunctionalSDE:
        """The latent SDE as a :class:`~bayesdyn.models.FunctionalSDE` (``z [..., L]``)."""
        A, b, g = self.drift_matrix, self.drift_offset, self.diffusion
        return FunctionalSDE(lambda t, z: z @ A.T + b, lambda t, z: g.expand_as(z), self.state_dim)

    def likelihood(self, z: Tensor):
        """Observation distribution ``Normal(H z + c, r)``. Shapes: ``z [..., L]`` -> ``[..., D]``."""
        import pyro.distributions as dist

        loc = z @ self.obs_matrix.T + self.obs_offset
        return dist.Normal(loc, self.obs_scale.expand_as(loc))

    def initial(self):
        """Initial law at ``t0``: a ``MultivariateNormal`` with event shape ``[L]``."""
        import pyro.distributions as dist

        return dist.MultivariateNormal(self.init_mean, self.init_cov)

    def state_space(self, dt: float):
        """This model as a :class:`~bayesdyn.inference.SDEStateSpace` for particle filters."""
        from .particle import SDEStateSpace

        return SDEStateSpace(self.sde(), self.initial(), self.likelihood, dt=dt, t0=self.t0)

    # ------------------------------------------------------------------ transitions
    def transition(self, gap: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Exact transition ``z(t + gap) = F z(t) + u + N(0, Q)``.

        Shapes: ``gap [...]`` -> ``F [..., L, L]``, ``u [..., L]``, ``Q [..., L, L]``.
        """
        A, b, g = self.drift_matrix, self.drift_offset, self.diffusion
        L = A.shape[0]
        gap = gap.to(A.dtype)[..., None, None]
        # [[A, b], [0, 0]] * gap exponentiates to [[F, u], [0, 1]].
        aug = torch.zeros(L + 1, L + 1, dtype=A.dtype)
        aug = torch.cat([torch.cat([A, b[:, None]], 1), aug[L:]], 0)
        E = torch.linalg.matrix_exp(aug * gap)
        F, u = E[..., :L, :L], E[..., :L, L]
        # Van Loan: expm([[-A, GG^T], [0, A^T]] gap) = [[., F^{-1} Q], [0, F^T]].
        vl = torch.cat(
            [torch.cat([-A, torch.diag(g**2)], 1), torch.cat([torch.zeros_like(A), A.T], 1)], 0
        )
        M = torch.linalg.matrix_exp(vl * gap)
        Q = F @ M[..., :L, L:]
        return F, u, 0.5 * (Q + Q.transpose(-1, -2))

    def euler_transition(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One Euler–Maruyama step of length ``h``: ``F = I + A h``, ``u = b h``, ``Q = diag(g^2) h``.

        Shapes: ``h [...]`` -> ``F [..., L, L]``, ``u [..., L]``, ``Q [..., L, L]``.
        """
        A, b, g = self.drift_matrix, self.drift_offset, self.diffusion
        h = h.to(A.dtype)
        eye = torch.eye(A.shape[0], dtype=A.dtype)
        F = eye + A * h[..., None, None]
        return F, b * h[..., None], torch.diag(g**2) * h[..., None, None]

    # ------------------------------------------------------------------ filtering
    def filter(
        self,
        data,
        *,
        discretization: Literal["exact", "euler"] = "exact",
        dt: float | None = None,
    ) -> KalmanResult:
        """Run the Kalman filter; see :func:`kalman_filter`."""
        return kalman_filter(self, data, discretization=discretization, dt=dt)


def _predict(m: Tensor, P: Tensor, F: Tensor, u: Tensor, Q: Tensor) -> tuple[Tensor, Tensor]:
    m = (F @ m.unsqueeze(-1)).squeeze(-1) + u
    P = F @ P @ F.transpose(-1, -2) + Q
    return m, 0.5 * (P + P.transpose(-1, -2))


def _update(model: LinearGaussianSDE, m: Tensor, P: Tensor, y: Tensor, obs: Tensor):
    """Masked Kalman update of ``m [B, L]``, ``P [B, L, L]`` with ``y [B, D]``, ``obs [B, D]``.

    A masked channel gets a zero row in ``H``, a zero residual and unit innovation variance, so
    it contributes exactly nothing (its ``log 1`` and ``0^2`` terms vanish) and the gain for it is 0.
    """
    w = obs.to(m.dtype)
    Hm = model.obs_matrix * w.unsqueeze(-1)  # [B, D, L]
    resid = (y - m @ model.obs_matrix.T - model.obs_offset) * w  # [B, D]
    S = Hm @ P @ Hm.transpose(-1, -2) + torch.diag_embed(w * model.obs_scale**2 + (1 - w))
    chol = torch.linalg.cholesky(S)
    PHt = P @ Hm.transpose(-1, -2)  # [B, L, D]
    K = torch.cholesky_solve(PHt.transpose(-1, -2), chol).transpose(-1, -2)  # [B, L, D]
    m_new = m + (K @ resid.unsqueeze(-1)).squeeze(-1)
    # Joseph form keeps P symmetric positive definite in finite precision.
    eye = torch.eye(m.shape[-1], dtype=m.dtype)
    IKH = eye - K @ Hm
    Rm = torch.diag_embed(w * model.obs_scale**2)
    P_new = IKH @ P @ IKH.transpose(-1, -2) + K @ Rm @ K.transpose(-1, -2)
    white = torch.linalg.solve_triangular(chol, resid.unsqueeze(-1), upper=False).squeeze(-1)
    logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    ll = -0.5 * (white.square().sum(-1) + logdet + w.sum(-1) * _LOG_2PI)
    return m_new, 0.5 * (P_new + P_new.transpose(-1, -2)), ll


def kalman_filter(
    model: LinearGaussianSDE,
    data,
    *,
    discretization: Literal["exact", "euler"] = "exact",
    dt: float | None = None,
) -> KalmanResult:
    """Filtering means, covariances and the log-likelihood of a :class:`LinearGaussianSDE`.

    Args:
        model: the linear-Gaussian model.
        data: an :class:`~bayesdyn.data.IrregularTimeSeries` or ``IrregularBatch``
            (per-channel masks and padding are honoured).
        discretization: ``"exact"`` (continuous-time model) or ``"euler"`` (the Euler chain
            on ``make_union_grid(times, dt=dt, t0=t0)``, the grid particle filters use).
        dt: largest Euler step; required for ``"euler"``.

    Returns:
        :class:`KalmanResult`.

    Shapes:
        ``times [B, T]``, ``values [B, T, D]``, ``mask [B, T, D]`` -> ``means [B, T, L]``,
        ``covariances [B, T, L, L]``, ``log_likelihood [B]``.

    Raises:
        BayesdynValueError: for a wrong discretisation, a missing ``dt``, channel mismatch or
            a ``t0`` after the first observation.
    """
    from .fit import _as_batch

    if not isinstance(model, LinearGaussianSDE):
        raise BayesdynTypeError(f"model must be a LinearGaussianSDE; got {type(model).__name__}")
    if discretization not in ("exact", "euler"):
        raise BayesdynValueError(
            f"discretization must be 'exact' or 'euler'; got {discretization!r}"
        )
    batch = _as_batch(data, "data")
    dtype = model.drift_matrix.dtype
    times, values = batch.times.to(dtype), batch.values.to(dtype)
    mask, lengths = batch.mask, batch.lengths
    B, T, D = values.shape
    if D != model.obs_dim:
        raise BayesdynValueError(f"values has {D} channels, the model expects {model.obs_dim}")
    L = model.state_dim
    t0 = float(times.min()) if model.t0 is None else model.t0
    if t0 > float(times.min()):
        raise BayesdynValueError(
            f"t0 must not exceed the earliest time {float(times.min())}; got t0={t0}"
        )
    valid = torch.arange(T).expand(B, T) < lengths.unsqueeze(-1)
    m = model.init_mean.expand(B, L)
    P = model.init_cov.expand(B, L, L)
    if discretization == "exact":
        prev = torch.full((B,), t0, dtype=dtype)
        means, covs, terms = [], [], []
        for i in range(T):
            gap = torch.where(valid[:, i], times[:, i] - prev, torch.zeros_like(prev))
            m, P = _predict(m, P, *model.transition(gap))
            obs = mask[:, i] & valid[:, i : i + 1]
            m, P, ll = _update(model, m, P, values[:, i], obs)
            prev = torch.where(valid[:, i], times[:, i], prev)
            means.append(m)
            covs.append(P)
            terms.append(ll)
        means_t, covs_t, terms_t = (
            torch.stack(means, 1),
            torch.stack(covs, 1),
            torch.stack(terms, 1),
        )
    else:
        if dt is None:
            raise BayesdynValueError("dt is required for discretization='euler'")
        dt = check_positive("dt", dt)
        grid = make_union_grid(times, dt=dt, t0=t0)
        U = grid.grid.numel()
        og = obs_on_grid(grid.index, lengths, values, mask, U)
        steps = set(og.steps)
        Fs, us, Qs = model.euler_transition(grid.grid[1:] - grid.grid[:-1])
        gm = [m] * U
        gP = [P] * U
        gl = [m.new_zeros(B)] * U
        for k in range(U):
            if k > 0:
                m, P = _predict(m, P, Fs[k - 1], us[k - 1], Qs[k - 1])
            if k in steps:
                m, P, gl[k] = _update(model, m, P, og.values[:, k], og.mask[:, k])
            gm[k], gP[k] = m, P
        # Read the filtering distribution back at each row's grid point.
        idx = grid.index
        gm_t, gP_t, gl_t = torch.stack(gm, 1), torch.stack(gP, 1), torch.stack(gl, 1)
        means_t = torch.gather(gm_t, 1, idx.unsqueeze(-1).expand(B, T, L))
        covs_t = torch.gather(gP_t, 1, idx[..., None, None].expand(B, T, L, L))
        terms_t = torch.gather(gl_t, 1, idx) * valid
    obs_means = means_t @ model.obs_matrix.T + model.obs_offset
    return KalmanResult(means_t, covs_t, terms_t.sum(-1), terms_t, obs_means)
