"""Networks for latent SDEs: drifts, diffusions, encoders and decoders.

Every network that runs inside the solver loop splits its work in two: a part that depends
only on the grid (time, covariates, encoder context) is computed once per batch by
``features``/``bind``, and the per-step part is a single small matmul on the state. That is
what keeps the hot loop lean (see DESIGN.md, performance notes).
"""

from __future__ import annotations

import math
import weakref
from typing import NamedTuple

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import BayesdynValueError
from ..solvers._euler import under_functorch

__all__ = [
    "MLP",
    "DiagonalDiffusion",
    "DriftNet",
    "FirstKEncoder",
    "GRUEncoder",
    "GaussianDecoder",
    "RowFeatures",
    "StudentTDecoder",
]

_ACTIVATIONS = {"softplus": nn.Softplus, "tanh": nn.Tanh, "relu": nn.ReLU, "silu": nn.SiLU}


def _activation(name: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise BayesdynValueError(f"activation must be one of {sorted(_ACTIVATIONS)}; got {name!r}")
    return _ACTIVATIONS[name]()


class MLP(nn.Sequential):
    """A plain MLP: ``in_dim -> hidden_dim (x num_layers) -> out_dim``.

    Shapes: ``[..., in_dim] -> [..., out_dim]``.
    """

    def __init__(
        self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2, activation="softplus"
    ):
        layers: list[nn.Module] = []
        d = in_dim
        for _ in range(num_layers):
            layers += [nn.Linear(d, hidden_dim), _activation(activation)]
            d = hidden_dim
        layers.append(nn.Linear(d, out_dim))
        super().__init__(*layers)


class DriftNet(nn.Module):
    r"""Drift MLP ``f(z, x)`` whose extra inputs ``x`` (time, covariates ``u(t)``, context) are
    known on the grid in advance.

    With ``stable=True`` the drift is

    .. math:: f(z, x) = -P z + b \tanh(\mathrm{MLP}(z, x)), \qquad P = A A^\top + \epsilon I,

    a learned negative-definite linear part plus a network bounded by ``b``: the restoring
    force grows linearly while everything else stays bounded, so paths mean-revert and long
    forecasts stay bounded.

    Args:
        state_dim: ``L``.
        hidden_dim: ``H``.
        extra_dim: number of extra inputs ``E`` (context + covariates + time).
        num_layers: hidden layers.
        activation: ``"softplus"``, ``"tanh"``, ``"relu"`` or ``"silu"``.
        stable: use the mean-reverting form above.
        bound: ``b`` for ``stable=True``.

    Shapes:
        - :meth:`features`: ``x [..., U, E] -> [..., U, H]``
        - :meth:`forward_pre`: ``z [..., L]``, ``pre [..., H]`` -> ``[..., L]``
    """

    def __init__(
        self,
        state_dim: int,
        hidden_dim: int,
        extra_dim: int = 0,
        *,
        num_layers: int = 2,
        activation: str = "softplus",
        stable: bool = False,
        bound: float = 1.0,
    ):
        super().__init__()
        if num_layers < 1:
            raise BayesdynValueError(f"num_layers must be >= 1; got {num_layers}")
        self.state_dim = state_dim
        self.extra_dim = extra_dim
        self.stable = stable
        self.bound = float(bound)
        self.first = nn.Linear(state_dim + extra_dim, hidden_dim)
        rest: list[nn.Module] = [_activation(activation)]
        for _ in range(num_layers - 1):
            rest += [nn.Linear(hidden_dim, hidden_dim), _activation(activation)]
        rest.append(nn.Linear(hidden_dim, state_dim))
        self.rest = nn.Sequential(*rest)
        if stable:
            self.a_factor = nn.Parameter(torch.eye(state_dim) * 0.5)
            self.raw_eps = nn.Parameter(torch.tensor(math.log(math.expm1(0.1))))

    def features(self, x: Tensor | None) -> Tensor:
        """Grid-known part of the first layer: ``W_x x + b`` (or ``b`` when ``x`` is None).

        Shapes: ``x [..., E]`` -> ``[..., H]``.
        """
        if x is None or self.extra_dim == 0:
            return self.first.bias
        if x.shape[-1] != self.extra_dim:
            raise BayesdynValueError(
                f"drift extra inputs have {x.shape[-1]} features, the net expects {self.extra_dim}"
            )
        return F.linear(x, self.first.weight[:, self.state_dim :], self.first.bias)

    def precision(self) -> Tensor:
        """``P = A A^T + eps I`` (positive definite) for ``stable=True``. Shapes: ``[L, L]``."""
        eps = F.softplus(self.raw_eps)
        return self.a_factor @ self.a_factor.T + eps * torch.eye(
            self.state_dim, dtype=eps.dtype, device=eps.device
        )

    def bind(self) -> tuple[Tensor, Tensor | None]:
        """Weights used per step: the state block of the first layer and ``P`` (or None)."""
        w_z = self.first.weight[:, : self.state_dim]
        return w_z, (self.precision() if self.stable else None)

    def forward_pre(
        self, z: Tensor, pre: Tensor, bound: tuple[Tensor, Tensor | None] | None = None
    ) -> Tensor:
        """Drift from the state and precomputed features (see :meth:`features`).

        Shapes: ``z [..., L]``, ``pre`` broadcastable to ``[..., H]`` -> ``[..., L]``.
        """
        w_z, prec = self.bind() if bound is None else bound
        # A per-unit ``pre`` (no grid inputs) is just a bias: fold it into the matmul.
        first = F.linear(z, w_z, pre) if pre.dim() == 1 else F.linear(z, w_z) + pre
        out = self.rest(first)
        if prec is None:
            return out
        return self.bound * torch.tanh(out) - z @ prec

    def forward(self, z: Tensor, x: Tensor | None = None) -> Tensor:
        """Drift ``f(z, x)``. Shapes: ``z [..., L]``, ``x [..., E]`` -> ``[..., L]``."""
        return self.forward_pre(z, self.features(x))


class DiagonalDiffusion(nn.Module):
    r"""Positive, bounded diagonal diffusion :math:`g_i(z_i) \in (g_{min}, g_{max})`.

    Each latent dimension has its own small network of its own coordinate (as in Li et al.
    2020), evaluated for all dimensions at once with batched elementwise ops. With
    ``state_dependent=False`` the diffusion is a learned constant per dimension.

    Shapes: ``z [..., L] -> [..., L]``.
    """

    def __init__(
        self,
        state_dim: int,
        hidden_dim: int = 16,
        *,
        min_scale: float = 1e-3,
        max_scale: float = 1.0,
        init_scale: float | None = None,
        state_dependent: bool = True,
    ):
        super().__init__()
        if not 0 <= min_scale < max_scale:
            raise BayesdynValueError(
                f"need 0 <= min_scale < max_scale; got min_scale={min_scale}, max_scale={max_scale}"
            )
        self.min_scale = float(min_scale)
        self.max_scale = float(max_scale)
        self.state_dependent = state_dependent
        init = 0.5 * (min_scale + max_scale) if init_scale is None else init_scale
        if not min_scale < init < max_scale:
            raise BayesdynValueError(
                f"init_scale must lie in ({min_scale}, {max_scale}); got {init_scale}"
            )
        frac = (init - min_scale) / (max_scale - min_scale)
        self.out_bias = nn.Parameter(torch.full((state_dim,), math.log(frac / (1 - frac))))
        if state_dependent:
            bound = 1.0 / math.sqrt(hidden_dim)
            self.w1 = nn.Parameter(torch.empty(state_dim, hidden_dim).uniform_(-1, 1))
            self.b1 = nn.Parameter(torch.empty(state_dim, hidden_dim).uniform_(-1, 1))
            self.w2 = nn.Parameter(torch.empty(state_dim, hidden_dim).uniform_(-bound, bound))

    def forward(self, z: Tensor) -> Tensor:
        """Diffusion at ``z``. Shapes: ``[..., L] -> [..., L]``."""
        if self.state_dependent:
            return _DiagonalDiffusionFn.apply(
                z, self.w1, self.b1, self.w2, self.out_bias, self.min_scale, self.max_scale
            )
        raw = self.out_bias.expand_as(z)
        return self.min_scale + (self.max_scale - self.min_scale) * torch.sigmoid(raw)


class _DiagonalDiffusionFn(torch.autograd.Function):
    r"""Fused :class:`DiagonalDiffusion` with a hand-written backward.

    ``g = lo + (hi - lo) * sigmoid(sum_h w2 * softplus(z * w1 + b1) + out_bias)`` per latent
    dimension. Autograd would keep two or three ``[..., L, H]`` activations per solver step;
    this keeps only the softplus output and recomputes the cheap pre-activation in the
    backward pass, which also needs fewer elementwise passes than the generic graph.
    """

    @staticmethod
    def forward(ctx, z, w1, b1, w2, out_bias, lo, hi):
        L = z.shape[-1]
        z2 = z.reshape(-1, 1, L).transpose(1, 2)  # [N, L, 1]
        h = F.softplus(torch.addcmul(b1, z2, w1))  # [N, L, H]
        raw = (h * w2).sum(-1).add_(out_bias)  # [N, L]
        g = torch.sigmoid(raw).mul_(hi - lo).add_(lo).view(z.shape)
        ctx.save_for_backward(z2, w1, b1, w2, h, g)
        ctx.bounds = (lo, hi)
        return g

    @staticmethod
    def backward(ctx, grad_g):
        z2, w1, b1, w2, h, g = ctx.saved_tensors
        lo, hi = ctx.bounds
        N, L, _ = z2.shape
        s_out = (g.reshape(N, L) - lo) / (hi - lo)
        graw = (grad_g.reshape(N, L) * (hi - lo) * s_out * (1.0 - s_out)).unsqueeze(-1)
        grad_w2 = (h * graw).sum(0)
        ga = torch.addcmul(b1, z2, w1).sigmoid_().mul_(w2).mul_(graw)  # d loss / d pre-act
        grad_b1 = ga.sum(0)
        grad_w1 = (ga * z2).sum(0)
        grad_z = (ga * w1).sum(-1)
        out_bias_grad = graw.sum((0, 2))
        return grad_z.view(grad_g.shape), grad_w1, grad_b1, grad_w2, out_bias_grad, None, None


def _row_inputs(times: Tensor, values: Tensor, mask: Tensor) -> Tensor:
    """Per-row encoder inputs ``[values * mask, mask, gap to the next row]``: ``[B, T, 2D+1]``."""
    gaps = torch.zeros_like(times)
    gaps[:, :-1] = times[:, 1:] - times[:, :-1]
    m = mask.to(values.dtype)
    return torch.cat([values * m, m, gaps.unsqueeze(-1)], dim=-1)


class GRUEncoder(nn.Module):
    """GRU over the observations in reverse time order, with their time gaps and masks.

    The context at row ``i`` summarises rows ``i, i+1, ...`` of its series: the posterior drift
    at time ``t`` reads the context of the next observation, so it sees what is coming (a
    smoother). Padding rows are skipped: each series is reversed within its own length.

    Shapes: ``times [B, T]``, ``values [B, T, D]``, ``mask [B, T, D]``, ``lengths [B]`` ->
    context ``[B, T, C]``.
    """

    def __init__(self, obs_dim: int, hidden_dim: int, context_dim: int):
        super().__init__()
        self.gru = nn.GRU(2 * obs_dim + 1, hidden_dim, batch_first=True)
        self.out = nn.Linear(hidden_dim, context_dim)
        self.context_dim = context_dim

    def forward(self, times: Tensor, values: Tensor, mask: Tensor, lengths: Tensor) -> Tensor:
        """See class docstring."""
        B, T = times.shape
        x = _row_inputs(times, values, mask)
        if not under_functorch(lengths) and bool((lengths == T).all()):
            # No padding: the reversal is a flip (its backward is a flip too, where the gather
            # below would scatter-add into a zeroed tensor).
            return self.out(gru_sequence(self.gru, x.flip(1))).flip(1)  # (flip the narrower)
        j = torch.arange(T, device=times.device).expand(B, T)
        # Reverse each series within its length; padding rows stay at the end. The map is its
        # own inverse, so the same gather brings the outputs back to forward order.
        rev = torch.where(j < lengths.unsqueeze(-1), lengths.unsqueeze(-1) - 1 - j, j)
        x_rev = torch.gather(x, 1, rev.unsqueeze(-1).expand_as(x))
        h = gru_sequence(self.gru, x_rev)
        h = torch.gather(h, 1, rev.unsqueeze(-1).expand_as(h))
        return self.out(h)


def gru_sequence(gru: nn.GRU, x: Tensor) -> Tensor:
    """Outputs of a one-layer, batch-first :class:`torch.nn.GRU` from a zero initial state,
    with a hand-written backward pass.

    The same numbers as ``gru(x)[0]``. On the CPU, autograd's GRU backward computes the
    input-weight gradient as ``grad_gates^T @ x``, a matmul whose layout falls on a slow path
    for narrow inputs (``x`` of a few features over ``B * T`` rows: ~20x slower than
    ``(x^T @ grad_gates)^T``). This node stores the gates, backpropagates through time by hand
    and forms both weight gradients as one well-shaped matmul each over all steps.

    Shapes: ``x [B, T, I]`` -> ``[B, T, H]``.
    """
    if gru.num_layers != 1 or gru.bidirectional or not gru.batch_first or not gru.bias:
        return gru(x)[0]
    args = (x, gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0)
    if torch._C._are_functorch_transforms_active():
        if not any(_is_batched(a) for a in args):
            return gru(x)[0]
        return _GRUMembers.apply(*args)  # vmap over ensemble members: one batched GRU
    return _GRUFn.apply(None, *args)


class _GRUFn(torch.autograd.Function):
    """The GRU node of :func:`gru_sequence`. ``E`` None: ordinary weights; ``E`` an int: every
    input has a leading member dimension (the vmap rule of :class:`_GRUMembers` calls it so)
    and the matmuls are batched over members. Rows of the recurrence are member-major."""

    # PyTorch's gate order and form: r, z, n;
    # n = tanh(W_in x + b_in + r * (W_hn h + b_hn)); h' = (1 - z) * n + z * h.
    @staticmethod
    def forward(ctx, E, x, w_ih, w_hh, b_ih, b_hh):
        *lead, T, n_in = x.shape
        NB = math.prod(lead)  # E B rows (member-major) or B
        H = w_hh.shape[-1]
        bias = (lambda b: b) if E is None else (lambda b: b.unsqueeze(-2))
        xi = _linear_rows(bias(b_ih), x.reshape(NB * T, n_in), w_ih.transpose(-1, -2), E)
        xi = xi.view(NB, T, 3 * H)
        xi_rz, xi_n = xi[..., : 2 * H].unbind(1), xi[..., 2 * H :].unbind(1)
        # Kept for the backward pass, all steps: gate = [r, z, W_hn h + b_hn] (the sigmoids
        # overwrite their pre-activations in the recurrent projection) and n.
        gates = _POOL.take(x, T, NB, 3 * H)
        ns = _POOL.take(x, T, NB, H)
        out = x.new_empty(NB, T, H)  # each step's h is written here directly
        out_steps, gate_s, n_s = out.unbind(1), gates.unbind(0), ns.unbind(0)
        h = x.new_zeros(NB, H)
        w_hh_t, b_hh_b = w_hh.transpose(-1, -2), bias(b_hh)
        for t in range(T):
            gate = _linear_rows(b_hh_b, h, w_hh_t, E, out=gate_s[t])
            rz = gate[:, : 2 * H].add_(xi_rz[t]).sigmoid_()
            n = torch.addcmul(xi_n[t], rz[:, :H], gate[:, 2 * H :], out=n_s[t]).tanh_()
            h = torch.lerp(n, h, rz[:, H:], out=out_steps[t])  # n + z (h - n)
        ctx.E = E
        ctx.save_for_backward(x, w_ih, w_hh, out)
        ctx.gates = (gates, ns)
        _POOL.lease(ctx, [gates, ns])
        return out.view(tuple(lead) + (T, H))

    @staticmethod
    def backward(ctx, grad_out):
        x, w_ih, w_hh, out = ctx.saved_tensors
        E = ctx.E
        gates, ns = ctx.gates
        NB, T, H = out.shape
        grad_out = grad_out.reshape(NB, T, H)
        # Per step, the gradient of the recurrent projection [r, z, W_hn h + b_hn] (its r, z
        # parts are those of the input projection too) and of the input n pre-activation.
        d_g = _POOL.take(out, T, NB, 3 * H)
        d_n = _POOL.take(out, T, NB, H)
        # Per-step views, made once.
        r_s, z_s = gates[..., :H].unbind(0), gates[..., H : 2 * H].unbind(0)
        rz_s, hn_s = gates[..., : 2 * H].unbind(0), gates[..., 2 * H :].unbind(0)
        dr_s, dz_s = d_g[..., :H].unbind(0), d_g[..., H : 2 * H].unbind(0)
        drz_s, dhn_s = d_g[..., : 2 * H].unbind(0), d_g[..., 2 * H :].unbind(0)
        n_s, dn_s, dg_s = ns.unbind(0), d_n.unbind(0), d_g.unbind(0)
        zero = out.new_zeros(NB, H)
        h_prev_s = (zero,) + out.unbind(1)[:-1]
        w_hh_e = w_hh if E is None else w_hh.view((E,) + w_hh.shape[-2:])
        Ee = E or 1
        B = NB // Ee
        carry = zero
        grad_steps = grad_out.unbind(1)
        for t in reversed(range(T)):
            gh = grad_steps[t] + carry
            tmp = torch.addcmul(gh, gh, z_s[t], value=-1.0)  # gh (1 - z)
            n = n_s[t]
            dn_pre = torch.addcmul(tmp, tmp, n * n, value=-1.0, out=dn_s[t])  # ... (1 - n^2)
            torch.mul(dn_pre, hn_s[t], out=dr_s[t])
            torch.mul(gh, h_prev_s[t] - n, out=dz_s[t])
            rz = rz_s[t]
            drz_s[t].mul_(torch.addcmul(rz, rz, rz, value=-1.0))  # sigmoid' = s (1 - s)
            torch.mul(dn_pre, r_s[t], out=dhn_s[t])
            # carry = gh z + d_g W_hh: the three recurrent parts in one matmul.
            gz = gh * z_s[t]
            carry = _linear_rows(gz if E is None else gz.view(Ee, B, H), dg_s[t], w_hh_e, E)
        # Weight gradients: one matmul per member over all (t, b) rows.
        h_prev_all = torch.cat([zero.unsqueeze(0), out.transpose(0, 1)[:-1]], 0)  # [T, NB, H]

        def by_member(a):  # [T, NB, W] -> [Ee, T B, W], rows in (t, b) order
            return a.reshape(T, Ee, B, a.shape[-1]).transpose(0, 1).reshape(Ee, T * B, -1)

        d_g2, d_n2, h2 = by_member(d_g), by_member(d_n), by_member(h_prev_all)
        x2 = by_member(x.reshape(NB, T, -1).transpose(0, 1))
        w_ih_e = w_ih.view((Ee,) + w_ih.shape[-2:])
        d_rz2 = d_g2[..., : 2 * H]
        grad_x = None
        if ctx.needs_input_grad[1]:
            gx = torch.bmm(d_rz2, w_ih_e[:, : 2 * H]).baddbmm_(d_n2, w_ih_e[:, 2 * H :])
            grad_x = gx.view(Ee, T, B, -1).transpose(1, 2).reshape(x.shape)
        x_t = x2.transpose(1, 2)  # fast orientations: (x^T d)^T, (h^T d)^T
        grad_w_ih = torch.cat([torch.bmm(x_t, d_rz2), torch.bmm(x_t, d_n2)], -1).transpose(1, 2)
        grad_w_hh = torch.bmm(h2.transpose(1, 2), d_g2).transpose(1, 2)
        grad_b_hh = d_g2.sum(1)
        grad_b_ih = torch.cat([grad_b_hh[..., : 2 * H], d_n2.sum(1)], -1)
        del d_g2, d_n2, d_rz2
        _POOL.give([d_g, d_n])
        return (
            None,
            grad_x,
            grad_w_ih.reshape(w_ih.shape),
            grad_w_hh.reshape(w_hh.shape),
            grad_b_ih.reshape(w_hh.shape[:-2] + (3 * H,)),
            grad_b_hh.reshape(w_hh.shape[:-2] + (3 * H,)),
        )


class _MembersOnly(torch.autograd.Function):
    """Base of the kernels' vmap entry points: only the subclass's ``vmap`` rule is meant to
    run (it hands the member dimension to the kernel); called outside vmap it raises."""

    @staticmethod
    def forward(*args):
        raise RuntimeError("this kernel entry point runs only under torch.func.vmap")

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):  # pragma: no cover - forward never runs unbatched
        raise RuntimeError("this kernel entry point runs only under torch.func.vmap")


class _GRUMembers(_MembersOnly):
    """:class:`_GRUFn` under ``torch.func.vmap`` over stacked ensemble members: its vmap rule
    moves the member dimension to the front and runs the GRU once for all members."""

    @staticmethod
    def vmap(info, in_dims, *args):
        args = _members_first(info.batch_size, args, in_dims)
        return _GRUFn.apply(info.batch_size, *args), 0


def _members_first(E: int, args, in_dims) -> list:
    """Inputs of a vmap rule with the member dimension first (unbatched ones expanded)."""
    out = []
    for x, d in zip(args, in_dims, strict=True):
        if x is not None:
            x = x.movedim(d, 0) if d is not None else x.expand((E,) + x.shape)
            if under_functorch(x):
                raise BayesdynValueError(
                    "nested torch.func transforms (vmap inside vmap) are not supported by the "
                    "fused kernels"
                )
        out.append(x)
    return out


class FirstKEncoder(nn.Module):
    """MLP over the first ``k`` observations of each series (Li et al. 2020's mocap context).

    Series shorter than ``k`` are zero-padded with their mask saying so. The same context is
    returned for every row.

    Shapes: ``times [B, T]``, ``values [B, T, D]``, ``mask [B, T, D]``, ``lengths [B]`` ->
    context ``[B, T, C]``.
    """

    def __init__(self, obs_dim: int, k: int, hidden_dim: int, context_dim: int):
        super().__init__()
        if k < 1:
            raise BayesdynValueError(f"num_context_obs must be >= 1; got {k}")
        self.k = k
        self.net = MLP(k * (2 * obs_dim + 1), hidden_dim, context_dim, num_layers=1)
        self.context_dim = context_dim

    def forward(self, times: Tensor, values: Tensor, mask: Tensor, lengths: Tensor) -> Tensor:
        """See class docstring."""
        B, T = times.shape
        k = min(self.k, T)
        valid = (torch.arange(k, device=times.device) < lengths.unsqueeze(-1)).unsqueeze(-1)
        m = mask[:, :k] & valid
        rel = (times[:, :k] - times[:, :1]).unsqueeze(-1)
        x = torch.cat([values[:, :k] * m, m.to(values.dtype), rel * valid], dim=-1)
        if k < self.k:
            x = F.pad(x, (0, 0, 0, self.k - k))
        ctx = self.net(x.reshape(B, -1))
        return ctx.unsqueeze(1).expand(B, T, self.context_dim)


class GaussianDecoder(nn.Module):
    """Gaussian observation model ``y ~ Normal(W z + c, s)`` with a learnable per-channel scale.

    Args:
        latent_dim: ``L``; obs_dim: ``D``; hidden_dim: 0 for a linear map, else an MLP width.
        init_scale: initial observation scale; learn_scale: make it a parameter.
        min_scale: floor on the scale.

    Shapes: ``z [..., L]`` -> distribution with batch shape ``[..., D]``.
    """

    def __init__(
        self,
        latent_dim: int,
        obs_dim: int,
        hidden_dim: int = 0,
        *,
        init_scale: float = 0.1,
        learn_scale: bool = True,
        min_scale: float = 1e-4,
    ):
        super().__init__()
        if not init_scale > min_scale:
            raise BayesdynValueError(
                f"init_scale must exceed min_scale={min_scale}; got {init_scale}"
            )
        self.net = (
            nn.Linear(latent_dim, obs_dim)
            if hidden_dim == 0
            else MLP(latent_dim, hidden_dim, obs_dim, num_layers=1)
        )
        self.min_scale = float(min_scale)
        raw = torch.full((obs_dim,), math.log(math.expm1(init_scale - min_scale)))
        if learn_scale:
            self.raw_scale = nn.Parameter(raw)
        else:
            self.register_buffer("raw_scale", raw)

    def scale(self) -> Tensor:
        """Observation scale per channel. Shapes: ``[D]``."""
        return self.min_scale + F.softplus(self.raw_scale)

    @torch.no_grad()
    def set_scale(self, scale) -> None:
        """Set the observation scale, e.g. to recalibrate it on held-out residuals.

        Args:
            scale: one positive number, or one per channel (``[D]``); each must exceed
                ``min_scale``. Works whether or not the scale is learned.

        Raises:
            BayesdynValueError: wrong shape, or a value that is not finite or ``<= min_scale``.
        """
        d = self.raw_scale.shape[0]
        s = torch.as_tensor(scale, dtype=self.raw_scale.dtype, device=self.raw_scale.device)
        if s.dim() > 1 or (s.dim() == 1 and s.shape[0] != d):
            raise BayesdynValueError(
                f"scale must be a number or have shape [{d}]; got shape {tuple(s.shape)}"
            )
        if not bool(torch.isfinite(s).all()) or not bool((s > self.min_scale).all()):
            raise BayesdynValueError(
                f"scale must be finite and > min_scale={self.min_scale}; got {s.tolist()}"
            )
        excess = s - self.min_scale  # inverse softplus, stable for large values too
        self.raw_scale.copy_((excess + torch.log(-torch.expm1(-excess))).expand(d))

    def forward(self, z: Tensor) -> dist.Distribution:
        """Observation distribution at latent ``z``."""
        loc = self.net(z)
        return dist.Normal(loc, self.scale().expand_as(loc))


class StudentTDecoder(GaussianDecoder):
    """Student-t observation model with learnable degrees of freedom (``df > 2``), for outliers.

    Shapes: ``z [..., L]`` -> distribution with batch shape ``[..., D]``.
    """

    def __init__(self, latent_dim: int, obs_dim: int, hidden_dim: int = 0, *, init_df=5.0, **kw):
        super().__init__(latent_dim, obs_dim, hidden_dim, **kw)
        if not init_df > 2:
            raise BayesdynValueError(f"init_df must exceed 2; got {init_df}")
        self.raw_df = nn.Parameter(torch.tensor(math.log(math.expm1(init_df - 2.0))))

    def df(self) -> Tensor:
        """Degrees of freedom (scalar)."""
        return 2.0 + F.softplus(self.raw_df)

    def forward(self, z: Tensor) -> dist.Distribution:
        """Observation distribution at latent ``z``."""
        loc = self.net(z)
        return dist.StudentT(self.df().expand_as(loc), loc, self.scale().expand_as(loc))


def _softplus_mlp_layers(drift: DriftNet) -> list[nn.Linear] | None:
    """The Linear layers after ``first`` if ``drift`` is a plain softplus MLP, else None."""
    if drift.stable:
        return None
    linears = []
    for m in drift.rest:
        if isinstance(m, nn.Linear):
            linears.append(m)
        elif not (isinstance(m, nn.Softplus) and m.beta == 1 and m.threshold == 20):
            return None
    return linears


def _mlp_params(drift: DriftNet, layers: list[nn.Linear]) -> list[Tensor]:
    params = [drift.first.weight[:, : drift.state_dim]]
    for lin in layers:
        params += [lin.weight, lin.bias]
    return params


class RowFeatures(NamedTuple):
    """First-layer features that are constant between observations, in factored form.

    At grid point ``k`` of series ``b`` the features are ``per_row[b, index[b, k]] + tau[b, k]
    * w_tau``: a per-observation-row part (e.g. the encoder context of the next observation)
    gathered to the grid plus a part linear in a per-grid-point scalar (e.g. the time left
    until that observation). Kept factored, a ``[..., U, H]`` tensor is never materialised
    (the fused kernel gathers one row per step); :meth:`dense` materialises it.

    Shapes: ``per_row [..., T, H]``, ``index [..., U]`` (int64, into ``T``), ``tau [..., U, 1]``
    and ``w_tau [H]`` (both or neither) -> :meth:`dense` ``[..., U, H]``.
    """

    per_row: Tensor
    index: Tensor
    tau: Tensor | None = None
    w_tau: Tensor | None = None

    def dense(self) -> Tensor:
        """The features on the grid. Shapes: ``[..., U, H]``."""
        idx = self.index.unsqueeze(-1)
        shape = torch.broadcast_shapes(idx.shape[:-2], self.per_row.shape[:-2])
        rows = self.per_row.expand(shape + self.per_row.shape[-2:])
        out = torch.gather(rows, -2, idx.expand(shape + idx.shape[-2:-1] + rows.shape[-1:]))
        if self.tau is not None:
            out = out + self.tau * self.w_tau
        return out


def fused_euler_path(
    drift: DriftNet,
    diffusion: DiagonalDiffusion,
    z0: Tensor,
    pre: Tensor,
    grid: Tensor,
    noise: Tensor,
    *,
    prior: tuple[DriftNet, Tensor] | None = None,
    active: Tensor | None = None,
    bridge: tuple[Tensor, Tensor] | None = None,
    rows: RowFeatures | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None] | None:
    """Euler–Maruyama for softplus :class:`DriftNet` s and a :class:`DiagonalDiffusion` in one
    autograd node with a hand-written backward pass (backprop through the steps by hand).

    At step ``k`` the drift used is ``f_q = drift.forward_pre(z, pre_k) + (target_k - z) *
    rate_k`` (the bridge term only with ``bridge``), replaced by the prior drift
    ``f_p = prior_drift.forward_pre(z, prior_pre_k)`` where ``active_k`` is False; ``g =
    diffusion(z)``. These are the same scheme and the same numbers as
    :func:`bayesdyn.solvers.euler_maruyama` stepping with that drift; the fused node only
    removes the per-step autograd bookkeeping and keeps fewer activations. With ``prior`` the
    prior drift along the path is returned too (the low-variance path KL needs it), computed
    in the same pass. Under ``torch.func.vmap`` over stacked ensemble members (see
    :class:`~bayesdyn.models.MemberStack`) the same kernel runs once for all members, with
    batched matmuls over the member dimension (its vmap rule).

    With ``rows`` the posterior's first-layer features are ``pre + rows.dense()`` (see
    :class:`RowFeatures`), gathered step by step instead of materialised on the grid.

    Returns None where it does not apply (other activations, ``stable`` drift, constant
    diffusion), so callers fall back to the generic loop.

    Shapes: ``z0 [..., L]``, ``pre`` and ``prior[1]`` ``[H]`` or broadcastable ``[..., U, H]``,
    ``grid [U]``, ``noise [..., U-1, L]``, ``active`` broadcastable ``[..., U]``, ``bridge``
    two broadcastable ``[..., U, L]`` -> ``path [..., U, L]``, ``drift``, ``diffusion`` and
    prior drift (or None) ``[..., U-1, L]``.
    """
    layers = _softplus_mlp_layers(drift)
    if layers is None or not diffusion.state_dependent:
        return None
    params = _mlp_params(drift, layers)
    n_prior = 0
    prior_pre = None
    if prior is not None:
        p_layers = _softplus_mlp_layers(prior[0])
        if p_layers is None:
            return None
        prior_pre = prior[1]
        p_params = _mlp_params(prior[0], p_layers)
        n_prior = len(p_layers)
        params += p_params
    elif active is not None:
        raise BayesdynValueError("fused_euler_path: active needs a prior drift to switch to")
    params += [diffusion.w1, diffusion.b1, diffusion.w2, diffusion.out_bias]
    dts = (grid[1:] - grid[:-1]).to(z0.dtype)
    scaled = noise * dts.sqrt().unsqueeze(-1)
    target, rate = bridge if bridge is not None else (None, None)
    meta = (dts.tolist(), diffusion.min_scale, diffusion.max_scale, len(layers), n_prior, None)
    if rows is not None and rows.tau is not None and rows.tau.requires_grad:
        raise BayesdynValueError("fused_euler_path: rows.tau must not require gradients")
    r = (None,) * 4 if rows is None else (rows.per_row, rows.index, rows.tau, rows.w_tau)
    fn = _FusedEulerFn
    if torch._C._are_functorch_transforms_active():
        # Under vmap over ensemble members the member dimension is handed to the kernel
        # itself (its vmap rule); under other transforms the generic loop runs.
        inputs = (z0, scaled, pre, prior_pre, active, target, rate, *r, *params)
        if not any(t is not None and _is_batched(t) for t in inputs):
            return None
        fn = _FusedEulerMembers
    path, f, g, f_p = fn.apply(meta, z0, scaled, pre, prior_pre, active, target, rate, *r, *params)
    return path, f, g, (f_p if prior is not None else None)


def _is_batched(t: Tensor) -> bool:
    """True for a ``torch.func.vmap`` batched tensor."""
    return torch._C._functorch.is_batchedtensor(t)


def _per_step(x: Tensor | None, zb: torch.Size, N: int, U: int) -> list[Tensor] | None:
    """Rows of a per-grid-point input ``[..., U, W]`` as ``U`` tensors ``[N, W]`` (None stays)."""
    if x is None:
        return None
    return x.expand(zb + x.shape[-2:]).reshape(N, U, x.shape[-1]).unbind(1)


# Row-block matmuls of the fused kernel. Rows ``[N, W]`` are ``E`` member blocks of ``N / E``
# rows (member-major) when ``E`` is an int, with weights ``[E, O, I]``; ``E = None``: one block
# with weights ``[O, I]``.
def _linear_rows(
    bias: Tensor, x: Tensor, w_t: Tensor, E: int | None, out: Tensor | None = None
) -> Tensor:
    """``x @ w_t + bias`` per block (into ``out``, a contiguous ``[N, O]``, if given).
    Shapes: ``x [N, I]``, ``w_t [(E,) I, O]`` -> ``[N, O]``; ``bias`` ``[O]``/``[N, O]``
    (``E`` None) or ``[E, 1 or N/E, O]``."""
    if E is None:
        return torch.addmm(bias, x, w_t, out=out)
    N, width = x.shape[0], w_t.shape[-1]
    x3 = x.view(E, N // E, x.shape[-1])
    if out is None:
        return torch.baddbmm(bias, x3, w_t).view(N, width)
    torch.baddbmm(bias, x3, w_t, out=out.view(E, N // E, width))
    return out


def _matmul_rows(x: Tensor, w: Tensor, E: int | None) -> Tensor:
    """``x @ w`` per block. Shapes: ``x [N, O]``, ``w [(E,) O, I]`` -> ``[N, I]``."""
    if E is None:
        return x @ w
    N = x.shape[0]
    return torch.bmm(x.view(E, N // E, x.shape[-1]), w).view(N, w.shape[-1])


def _matmul_rows_narrow(x: Tensor, w: Tensor, E: int | None) -> Tensor:
    """:func:`_matmul_rows` for a narrow ``I`` (a few latent dimensions), formed as ``(w^T
    x^T)^T``: the BLAS is several times faster with the narrow side as the output's rows. The
    result is a transposed view for ``E`` None. Shapes: as :func:`_matmul_rows`."""
    w_t = w.transpose(-1, -2)
    if E is None:
        return torch.mm(w_t, x.t()).t()
    N = x.shape[0]
    out = torch.bmm(w_t, x.view(E, N // E, x.shape[-1]).transpose(1, 2))  # [E, I, N / E]
    return out.transpose(1, 2).reshape(N, w.shape[-1])


def _add_outer_rows(acc: Tensor, gy: Tensor, x: Tensor, E: int | None) -> None:
    """``acc += gy^T x`` per block (a weight gradient). Shapes: ``gy [N, O]``, ``x [N, I]``,
    ``acc [(E,) O, I]``."""
    if E is None:
        acc.addmm_(gy.t(), x)
    else:
        M = x.shape[0] // E
        acc.baddbmm_(gy.view(E, M, gy.shape[-1]).transpose(1, 2), x.view(E, M, x.shape[-1]))


def _sum_rows(x: Tensor, E: int | None) -> Tensor:
    """Sum over the rows of each block. Shapes: ``[N, W]`` -> ``[(E,) W]``."""
    if E is None:
        return x.sum(0)
    return x.view(E, -1, x.shape[-1]).sum(1)


def _channels_steps(x: Tensor, E: int) -> Tensor:
    """Per-step rows in the diffusion's channels layout: ``[S, N, L]`` (``E`` blocks) -> ``[S,
    E L, N / E]``, contiguous (a view of ``x`` where the shapes allow one)."""
    S, N, L = x.shape
    return x.reshape(S, E, N // E, L).transpose(2, 3).reshape(S, E * L, N // E)


def _to_channels(x: Tensor, E: int) -> Tensor:
    """``[N, L]`` (``E`` blocks) -> ``[E L, N / E, 1]``: one batch entry per member and channel."""
    N, L = x.shape
    return x.view(E, N // E, L).transpose(1, 2).reshape(E * L, N // E, 1)


class _BufferPool:
    """Large CPU work buffers of the fused kernels, kept for the next call of the same shape.

    A training step allocates the same few large buffers every time (the activations of every
    solver step, the GRU's gradients; ~0.2 GB in the small benchmark configuration). Freed
    and allocated again each step, they often come back as fresh pages from the OS (the C
    allocator hands large blocks back), and the first touch of each page is a page fault:
    ~15% of a small CPU training step. Kept here instead, a buffer is reused as it is.

    Buffers of a forward pass return when its autograd node is freed (:meth:`lease`), those
    of a backward pass when it ends. At most ``max_bytes`` are kept; CUDA tensors are never
    kept (the CUDA caching allocator already does this).
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.kept = 0
        self.free: dict[tuple, list[Tensor]] = {}

    def take(self, like: Tensor, *shape: int) -> Tensor:
        """An uninitialised ``[*shape]`` tensor of ``like``'s dtype and device."""
        if like.device.type == "cpu":
            try:
                buf = self.free[(shape, like.dtype)].pop()
            except (KeyError, IndexError):  # none kept (or taken meanwhile by another thread)
                pass
            else:
                self.kept -= buf.nbytes
                return buf
        return like.new_empty(shape)

    def give(self, bufs: list[Tensor]) -> None:
        """Return buffers (no other references may remain to them). Inference tensors (made
        under ``torch.inference_mode``) are not kept: outside it they cannot be written."""
        for buf in bufs:
            if buf.device.type != "cpu" or buf.is_inference():
                continue
            if self.kept + buf.nbytes > self.max_bytes:
                continue
            self.free.setdefault((tuple(buf.shape), buf.dtype), []).append(buf)
            self.kept += buf.nbytes

    def lease(self, owner, bufs: list[Tensor]) -> None:
        """Return ``bufs`` once ``owner`` (an autograd context) is freed."""
        token = _Lease()
        owner.lease = token
        weakref.finalize(token, self.give, bufs).atexit = False

    def clear(self) -> None:
        """Drop every kept buffer."""
        self.free.clear()
        self.kept = 0


class _Lease:
    """A token whose end returns leased buffers to the pool (see :meth:`_BufferPool.lease`)."""

    __slots__ = ("__weakref__",)


_POOL = _BufferPool(max_bytes=1 << 30)


def release_kernel_buffers() -> int:
    """Free the work buffers the fused CPU kernels keep between training steps.

    Between steps the fused Euler and GRU kernels keep their large buffers (up to 1 GiB, about
    0.2 GB in a 256-series, 100-step problem) so that the next step reuses them instead of
    page-faulting fresh memory. :func:`bayesdyn.fit` calls this when it returns; call it after a
    hand-written training loop to give the memory back.

    Returns:
        the number of bytes released.
    """
    freed = _POOL.kept
    _POOL.clear()
    return freed


#: Rows (steps x series) per block of deferred weight gradients in :class:`_MLPSteps`.
_GRAD_BLOCK_ROWS = 8192


class _MLPSteps:
    """Forward and hand-written backward of one softplus drift MLP, one solver step at a time.

    ``pre`` is the grid-known part of the first layer (``[(E,) H]`` or ``[..., U, H]``); its
    gradient is accumulated per step and mapped back onto its shape by :meth:`grads`. With
    ``E`` (ensemble members) every parameter has a leading member dimension and the rows are
    ``E`` member blocks.

    The activations of all steps live in ``[U - 1, N, H]`` buffers; the pre-activations are
    not kept: with ``h = softplus(a)``, ``sigmoid(a) = 1 - exp(-h) = -expm1(-h)`` (this frees
    the memory that keeps the diffusion's hidden layer instead, see :class:`_FusedEulerFn`).
    Backwards, the per-step
    work is only the chain through the layers (the sequential part); the parameter gradients
    of a block of steps are formed from the buffered activations and pre-activation gradients
    in one large matmul per weight (see :meth:`_flush`), instead of several small ones per step.
    """

    def __init__(
        self, pre: Tensor, params: list[Tensor], zb: torch.Size, N: int, U: int, E, rows=None
    ):
        self.E = E
        self.w_z = params[0]
        n_lin = (len(params) - 1) // 2
        self.lin = [(params[1 + 2 * i], params[2 + 2 * i]) for i in range(n_lin)]
        self.w_z_t = self.w_z.transpose(-1, -2)
        bias = (lambda b: b) if E is None else (lambda b: b.unsqueeze(-2))
        self.lin_t = [(w.transpose(-1, -2), bias(b)) for w, b in self.lin]
        self.pre_shape = pre.shape
        H = self.w_z.shape[-2]
        self.per_step = pre.dim() - (E is not None) >= 2
        if self.per_step:
            self.pre_rows = pre.expand(zb + pre.shape[-2:]).movedim(-2, 0)  # [U, ..., H]
        else:
            self.pre_2d = pre.expand(N, H) if E is None else pre.unsqueeze(-2)
        self.zb, self.N, self.U, self.H = zb, N, U, H
        # Activations of each hidden layer, all steps: [U - 1, N, H].
        self.h_buf = [_POOL.take(self.w_z, U - 1, N, H) for _ in range(n_lin)]
        # Per-step views made once (indexing a buffer per step is an op of its own).
        self.h_steps = [b.unbind(0) for b in self.h_buf]
        self.block = max(1, min(U - 1, _GRAD_BLOCK_ROWS // max(N, 1)))
        self.rows = None
        if rows is not None:  # factored features (RowFeatures): one gathered row per step
            per_row, index, tau, w_tau = rows
            T = per_row.shape[-2]
            self.row_shape = per_row.shape
            # A constant pre (a bias) is folded into the rows once: pre_k = rows_k + tau_k w.
            self.fold = not self.per_step
            if self.fold:
                lead = pre.shape[:-1] + (1,) * (per_row.dim() - pre.dim())
                per_row = per_row + pre.reshape(lead + (H,))
            # Rows of all series flattened to [N T, H]; step k reads row n T + index[n, k].
            self.rows = per_row.expand(zb + per_row.shape[-2:]).reshape(N * T, H)
            ix = index.expand(zb + index.shape[-1:]).reshape(N, U)
            offset = torch.arange(N, device=ix.device).mul_(T).unsqueeze(-1)
            self.row_index_all = (ix + offset).t()  # [U, N]
            self.row_index = self.row_index_all.unbind(0)  # U x [N]
            # Whether step k reads other rows than step k - 1 (else the last gather is reused).
            self.new_rows = [True] + (ix[:, 1:] != ix[:, :-1]).any(0).tolist()
            self.last_rows = None
            self.tau_steps = _per_step(tau, zb, N, U)
            self.w_tau = w_tau
            if w_tau is not None:
                self.w_tau_b = w_tau if E is None else w_tau.unsqueeze(-2)  # [H] or [E, 1, H]
                self.tau_all = tau.expand(zb + tau.shape[-2:]).reshape(N, U).t()  # [U, N]

    def _row_features(self, k: int) -> Tensor:
        """``per_row[index_k] + tau_k w_tau`` of step ``k``. Shapes: ``[N, H]``."""
        if self.new_rows[k] or self.last_rows is None:
            self.last_rows = self.rows.index_select(0, self.row_index[k])
        f = self.last_rows
        if self.w_tau is None:
            return f
        if self.E is None:
            return torch.addcmul(f, self.tau_steps[k], self.w_tau_b)
        E, M = self.E, self.N // self.E
        tk = self.tau_steps[k].view(E, M, 1)
        return torch.addcmul(f.view(E, M, self.H), tk, self.w_tau_b).view(self.N, self.H)

    def forward(self, k: int, z: Tensor) -> Tensor:
        E = self.E
        if self.per_step:
            pk = self.pre_rows[k].reshape(self.N, self.H)
            pk = pk if E is None else pk.view(E, self.N // E, self.H)
        else:
            pk = self.pre_2d
        if self.rows is not None:
            rk = self._row_features(k)
            if E is not None:
                rk = rk.view(E, self.N // E, self.H)
            pk = rk if self.fold else rk + pk
        # Each layer's pre-activation is overwritten by its softplus in place.
        h_steps = self.h_steps
        a = _linear_rows(pk, z, self.w_z_t, E, out=h_steps[0][k])
        h = F.softplus(a, out=a)
        for i, (w_t, b) in enumerate(self.lin_t[:-1], 1):
            a = _linear_rows(b, h, w_t, E, out=h_steps[i][k])
            h = F.softplus(a, out=a)
        w_out_t, b_out = self.lin_t[-1]
        return _linear_rows(b_out, h, w_out_t, E)

    def start_backward(self, z_steps: Tensor) -> None:
        """Zero the gradient accumulators. ``z_steps [U - 1, N, L]``: the states the steps
        read (for the first-layer weight gradient)."""
        like = self.w_z
        self.z_steps = z_steps
        # Accumulated transposed ([(E,) L, H]): z^T ga is a fast matmul, ga^T z a slow one.
        self.g_wz_t = torch.zeros_like(self.w_z_t, memory_format=torch.contiguous_format)
        self.g_lin = [(torch.zeros_like(w), torch.zeros_like(b)) for w, b in self.lin]
        self.lin_neg = [-w for w, _ in self.lin]
        B, N, H = self.block, self.N, self.H
        # Per block: the drift gradients and the pre-activation gradients of each layer.
        self.gf_buf = like.new_empty(B, N, self.lin[-1][0].shape[-2])
        if self.per_step:  # the first layer's pre-activation gradient is the grad of pre_k
            self.g_pre = like.new_empty(self.U, N, H)
            self.g_pre[self.U - 1].zero_()
            self.ga_buf = [None] + [like.new_empty(B, N, H) for _ in self.lin[1:]]
        else:
            self.g_pre = like.new_zeros(self.pre_2d.shape[:-2] + (H,))
            self.ga_buf = [like.new_empty(B, N, H) for _ in self.lin]
        # Per-step slots of each layer's pre-activation gradient (block buffers, or g_pre).
        U1 = self.U - 1
        self.ga_slots = [
            self.g_pre.unbind(0)[:U1] if b is None else b.unbind(0) * -(-U1 // B)
            for b in self.ga_buf
        ]
        self.gf_slots = self.gf_buf.unbind(0) * -(-U1 // B)
        if self.rows is not None:
            self.g_rows = torch.zeros_like(self.rows)
            if self.w_tau is not None:
                self.g_w_tau = self.w_tau.new_zeros(self.w_tau.shape[:-1] + (1, self.H))

    def backward(self, k: int, gf: Tensor) -> Tensor:
        """Chain the drift gradient ``gf [N, L]`` of step ``k`` through the layers; return the
        gradient wrt the state. Steps must come in decreasing order; the parameter gradients
        of a block of steps are accumulated when its first step is reached."""
        E = self.E
        self.gf_slots[k].copy_(gf)
        # gh = -(d loss / d h) (negated weights), so ga = sigmoid(a) (-gh) = expm1(-h) gh.
        gh = _matmul_rows(gf, self.lin_neg[-1], E)
        for i in reversed(range(len(self.lin))):
            ga = torch.neg(self.h_steps[i][k], out=self.ga_slots[i][k])
            ga = torch.expm1(ga, out=ga).mul_(gh)
            if i > 0:
                gh = _matmul_rows(ga, self.lin_neg[i - 1], E)
        if k % self.block == 0:
            self._flush(k, min(k + self.block, self.U - 1))
        if E is None:  # (_matmul_rows_narrow with the transposed weight made once)
            return torch.mm(self.w_z_t, ga.t()).t()
        return _matmul_rows_narrow(ga, self.w_z, E)

    def _flush(self, k0: int, k1: int) -> None:
        """Parameter gradients of steps ``k0 .. k1 - 1``, one matmul per weight."""
        E, c = self.E, k1 - k0

        def rows(x):  # [c, N, W] step-major -> [N c, W] member-major rows (E blocks)
            if E is None:
                return x.reshape(-1, x.shape[-1])
            return x.view(c, E, -1, x.shape[-1]).transpose(0, 1).reshape(-1, x.shape[-1])

        gy = rows(self.gf_buf[:c])
        for i in reversed(range(len(self.lin))):
            g_w, g_b = self.g_lin[i]
            x = rows(self.h_buf[i][k0:k1])
            _add_outer_rows(g_w, gy, x, E)
            g_b.add_(_sum_rows(gy, E))
            ga = self.g_pre[k0:k1] if i == 0 and self.per_step else self.ga_buf[i][:c]
            gy = rows(ga)
        _add_outer_rows(self.g_wz_t, rows(self.z_steps[k0:k1]), gy, E)
        if not self.per_step:
            self.g_pre.add_(_sum_rows(gy, E))
        if self.rows is not None:
            idx = self.row_index_all[k0:k1].reshape(-1)  # step-major, like ga
            self.g_rows.index_add_(0, idx, ga.reshape(-1, self.H))
            if self.w_tau is not None:
                tau = rows(self.tau_all[k0:k1].unsqueeze(-1))
                _add_outer_rows(self.g_w_tau, tau, gy, E)

    def grads(self) -> tuple[Tensor, list[Tensor]]:
        """``(grad of pre, [grad w_z, grad w, grad b, ...])``."""
        if self.per_step:
            g = self.g_pre.view((self.U,) + self.zb + (self.H,)).movedim(0, -2)
            grad_pre = g.sum_to_size(self.pre_shape)
        else:
            grad_pre = self.g_pre
        flat = [self.g_wz_t.transpose(-1, -2)] + [t for pair in self.g_lin for t in pair]
        return grad_pre, flat

    def row_grads(self) -> tuple[Tensor | None, Tensor | None]:
        """Gradients of ``per_row`` and ``w_tau`` of the factored features (None without)."""
        if self.rows is None:
            return None, None
        T = self.row_shape[-2]
        g_rows = self.g_rows.view(self.zb + (T, self.H)).sum_to_size(self.row_shape)
        g_w = None if self.w_tau is None else self.g_w_tau.view(self.w_tau.shape)
        return g_rows, g_w


class _FusedEulerFn(torch.autograd.Function):
    """The fused Euler–Maruyama node (see :func:`fused_euler_path`).

    ``meta = (dts, lo, hi, n_lin, n_prior, E)``; ``E`` None: ordinary parameters; ``E`` an int:
    every tensor has a leading member dimension ``E`` (the vmap rule of
    :class:`_FusedEulerMembers` calls it so) and the matmuls are batched over members.
    """

    @staticmethod
    def forward(ctx, meta, z0, scaled, pre, prior_pre, active, target, rate, *rest):
        dt_list, lo, hi, n_lin, n_prior, E = meta
        rows, params = rest[:4], rest[4:]
        rows = None if rows[0] is None else rows
        n_q = 1 + 2 * n_lin
        n_p = 1 + 2 * n_prior if n_prior else 0
        q_params, p_params = params[:n_q], params[n_q : n_q + n_p]
        w1, b1, w2, out_bias = params[n_q + n_p :]
        zb, L = z0.shape[:-1], z0.shape[-1]
        num_steps = len(dt_list)
        U = num_steps + 1
        N = zb.numel()
        z = z0.reshape(N, L)
        noise = scaled.expand(zb + scaled.shape[-2:]).reshape(N, num_steps, L)
        mlp_q = _MLPSteps(pre, list(q_params), zb, N, U, E, rows)
        mlp_p = _MLPSteps(prior_pre, list(p_params), zb, N, U, E) if n_prior else None
        act_steps = None
        if active is not None:
            act = active.expand(zb + active.shape[-1:]).reshape(N, U)
            if not bool(act[:, :num_steps].all()):  # else the posterior drift applies everywhere
                act_steps = act.unsqueeze(-1).unbind(1)  # U x [N, 1] bool
        tgt_steps = _per_step(target, zb, N, U)
        rate_steps = _per_step(rate, zb, N, U)
        # Diffusion in [E L, N / E, Hd] layout: per-dimension nets become batched matmuls.
        Ee = E or 1
        Hd = w1.shape[-1]
        w1t, b1t = w1.reshape(Ee * L, 1, Hd), b1.reshape(Ee * L, 1, Hd)
        w2r, ob = w2.reshape(Ee * L, 1, Hd), out_bias.reshape(Ee * L, 1, 1)
        span = hi - lo
        M = N // Ee
        # g noise = lo noise + span s noise with s = sigmoid(raw): the affine map is folded
        # into the noise once, and g itself is formed for all steps after the loop.
        noise_lo = (noise * lo).unbind(1) if lo != 0 else None
        noise_span = (noise * span).view(Ee, M, num_steps, L).unbind(2)  # S x [E, M, L]
        # The diffusion's hidden layer of every step, kept for the w2 gradient (the drift
        # MLPs keep no pre-activations, which pays for it; see _MLPSteps).
        hd_all = _POOL.take(z0, Ee * L, num_steps, M, Hd)  # channel-major: see backward
        hd_steps = hd_all.unbind(1)
        # s of every step, channels layout, and per-step views of it in rows layout.
        sig_all = z0.new_empty(num_steps, Ee * L, 1, M)
        sig_s = sig_all.unbind(0)
        sig_rows_s = sig_all.view(num_steps, Ee, L, M).transpose(2, 3).unbind(0)  # [E, M, L]
        states, drifts, prior_drifts = [z], [], []
        for k in range(num_steps):
            f = mlp_q.forward(k, z)
            if tgt_steps is not None:
                f = torch.addcmul(f, tgt_steps[k] - z, rate_steps[k])
            if mlp_p is not None:
                fp = mlp_p.forward(k, z)
                prior_drifts.append(fp)
                if act_steps is not None:
                    f = torch.where(act_steps[k], f, fp)
            z_ch = z.t().unsqueeze(-1) if E is None else _to_channels(z, Ee)  # [E L, M, 1]
            hd = torch.addcmul(b1t, z_ch, w1t, out=hd_steps[k])
            hd = F.softplus(hd, out=hd)
            # w2 hd^T [E L, 1, M]: the BLAS is much faster this way round than hd w2.
            torch.baddbmm(ob, w2r, hd.transpose(1, 2), out=sig_s[k]).sigmoid_()
            z_next = torch.add(z, f, alpha=dt_list[k])
            if noise_lo is not None:
                z_next.add_(noise_lo[k])
            z = torch.addcmul(z_next.view(Ee, M, L), sig_rows_s[k], noise_span[k]).view(N, L)
            states.append(z)
            drifts.append(f)
        path = torch.stack(states, 1).view(zb + (U, L))
        if num_steps:
            drift = torch.stack(drifts, 1).view(zb + (num_steps, L))
            sig = sig_all.view(num_steps, Ee * L, M)  # channels layout
            sig_rows = sig.view(num_steps, Ee, L, M).permute(1, 3, 0, 2).reshape(N, num_steps, L)
            diff = z0.new_empty(N, num_steps, L)  # (sig_rows may be a view of sig)
            torch.mul(sig_rows, span, out=diff).add_(lo)
            diff = diff.view(zb + (num_steps, L))
        else:
            drift = diff = z0.new_zeros(zb + (0, L))
            sig = z0.new_zeros(0, Ee * L, M)
        if mlp_p is not None:
            f_p = torch.stack(prior_drifts, 1).view(zb + (num_steps, L)) if num_steps else drift
        else:
            f_p = z0.new_zeros(zb[:1] + (0,)) if E is not None else z0.new_zeros(0)
        ctx.meta = meta
        ctx.shapes = (zb, N, U, L)
        ctx.bridge_shapes = None if target is None else (target.shape, rate.shape)
        ctx.cache = (states, sig, hd_all, noise, mlp_q, mlp_p, act_steps, tgt_steps, rate_steps)
        ctx.save_for_backward(w1, b1, w2, out_bias)
        _POOL.lease(ctx, [hd_all, *mlp_q.h_buf, *(mlp_p.h_buf if mlp_p is not None else [])])
        return path, drift, diff, f_p

    @staticmethod
    def backward(ctx, grad_path, grad_drift, grad_diff, grad_prior):
        dt_list, lo, hi, _, _, E = ctx.meta
        zb, N, U, L = ctx.shapes
        w1, b1, w2, out_bias = ctx.saved_tensors
        states, sig, hd_all, noise, mlp_q, mlp_p, act_steps, tgt_steps, rate_steps = ctx.cache
        num_steps = U - 1
        span = hi - lo
        gp = grad_path.reshape(N, U, L).unbind(1)
        if grad_drift is None:
            gd = states[0].new_zeros(N, L).expand(num_steps, N, L)
        else:
            gd = grad_drift.reshape(N, num_steps, L).unbind(1)
        gfp_all = None
        if mlp_p is not None and grad_prior is not None:
            gfp_all = grad_prior.reshape(N, num_steps, L).unbind(1)
        z_steps = torch.stack(states[:-1]) if num_steps else states[0].new_empty(0, N, L)
        mlp_q.start_backward(z_steps)
        if mlp_p is not None:
            mlp_p.start_backward(z_steps)
        g_tgt = g_rate = None
        if tgt_steps is not None:
            g_tgt = states[0].new_zeros(N, U, L)
            g_rate = states[0].new_zeros(N, U, L)
        # Diffusion, [E L, M, Hd] layout (M = N / E). Everything that does not depend on the
        # adjoint is prepared for all steps at once: with s = sigmoid(raw), dg/draw = span s
        # (1 - s), and the gradient wrt raw at step k is
        # (grad_diff_k + adj_k noise_k) dg/draw = A_k + adj_k B_k (channels layout).
        Ee = E or 1
        M = N // Ee
        Hd = w1.shape[-1]
        w1t, b1t = w1.reshape(Ee * L, 1, Hd), b1.reshape(Ee * L, 1, Hd)
        w2r = w2.reshape(Ee * L, Hd)
        w12 = (w1.reshape(Ee * L, Hd) * w2r).unsqueeze(1)  # [E L, 1, Hd]
        dg = (1.0 - sig).mul_(sig).mul_(span)  # [S, E L, M]
        # (_channels_steps may return a view of its input: no in-place ops on it.)
        B = (_channels_steps(noise.transpose(0, 1), Ee) * dg).view(-1, Ee, L, M).unbind(0)
        A = None
        if grad_diff is not None:
            gg = grad_diff.reshape(N, num_steps, L).transpose(0, 1)
            A = (_channels_steps(gg, Ee) * dg).view(-1, Ee, L, M).unbind(0)
        z_ch = _channels_steps(z_steps, Ee)  # [S, E L, M]
        one_z = torch.stack([torch.ones_like(z_ch), z_ch], 2)  # [S, E L, 2, M]
        z_cols = one_z[:, :, 1].unsqueeze(-1).unbind(0)  # S x [E L, M, 1]
        one_z = one_z.unbind(0)
        g_bw1 = w1.new_zeros(Ee * L, 2, Hd)  # sums of q and of z q (times w2: b1, w1 grads)
        graw_all = w1.new_empty(Ee * L, num_steps, M)  # for the w2, out_bias grads after the loop
        graw_steps = graw_all.view(Ee, L, num_steps, M).unbind(2)
        graw_cols = graw_all.unsqueeze(-1).unbind(1)  # S x [E L, M, 1]
        adj = gp[num_steps].clone()
        adj_ch = adj.view(Ee, M, L).transpose(1, 2)  # [E, L, M] view, follows adj in place
        for k in reversed(range(num_steps)):
            z = states[k]
            gf = torch.add(gd[k], adj, alpha=dt_list[k])
            if A is None:
                torch.mul(B[k], adj_ch, out=graw_steps[k])  # the raw gradient [E, L, M]
            else:
                torch.addcmul(A[k], adj_ch, B[k], out=graw_steps[k])
            # Drift: split the gradient between the posterior and the prior drift.
            gfp = None if gfp_all is None else gfp_all[k]
            if act_steps is not None:
                a = act_steps[k]
                off = torch.where(a, 0.0, gf)
                gfp = off if gfp is None else gfp + off
                gf = torch.where(a, gf, 0.0)
            gz = mlp_q.backward(k, gf)
            if tgt_steps is not None:
                g_tgt[:, k] = gf * rate_steps[k]
                g_rate[:, k] = gf * (tgt_steps[k] - z)
                gz.addcmul_(gf, rate_steps[k], value=-1.0)
            if mlp_p is not None:
                gz.add_(mlp_p.backward(k, gfp if gfp is not None else torch.zeros_like(gf)))
            # The pre-activation a = z * w1 + b1 [E L, M, Hd] is recomputed for its sigmoid
            # (cheaper than 1 - exp(-softplus(a)) from the kept hidden layer).
            a = torch.addcmul(b1t, z_cols[k], w1t)
            q = a.sigmoid_().mul_(graw_cols[k])  # d loss / d a, over w2
            g_bw1.baddbmm_(one_z[k], q)
            adj.add_(gz)
            adj_ch.add_(torch.bmm(w12, q.transpose(1, 2)).view(Ee, L, M))
            adj.add_(gp[k])
        grad_pre, q_flat = mlp_q.grads()
        g_rows, g_w_tau = mlp_q.row_grads()
        grad_prior_pre, p_flat = (None, [])
        if mlp_p is not None:
            grad_prior_pre, p_flat = mlp_p.grads()
        grad_tgt = grad_rate = None
        if g_tgt is not None:
            t_shape, r_shape = ctx.bridge_shapes
            grad_tgt = g_tgt.view(zb + (U, L)).sum_to_size(t_shape)
            grad_rate = g_rate.view(zb + (U, L)).sum_to_size(r_shape)
        g_b1, g_w1 = g_bw1.mul_(w2r.unsqueeze(1)).unbind(1)
        # Over all steps at once: sum_k graw_k hd_k (one matmul per channel) and sum_k graw_k.
        SM = num_steps * M
        g_w2 = torch.bmm(graw_all.view(Ee * L, 1, SM), hd_all.view(Ee * L, SM, Hd))
        g_ob = graw_all.sum((1, 2))
        return (
            None,
            adj.view(zb + (L,)),
            None,
            grad_pre,
            grad_prior_pre,
            None,
            grad_tgt,
            grad_rate,
            g_rows,
            None,
            None,
            g_w_tau,
            *q_flat,
            *p_flat,
            g_w1.view(w1.shape),
            g_b1.view(b1.shape),
            g_w2.view(w2.shape),
            g_ob.view(out_bias.shape),
        )


class _FusedEulerMembers(_MembersOnly):
    """:class:`_FusedEulerFn` under ``torch.func.vmap`` (ensemble members stacked by
    :class:`~bayesdyn.models.MemberStack`): its vmap rule moves the member dimension of every
    input to the front (expanding unbatched ones) and runs the kernel once for all members,
    which the ordinary autograd graph outside vmap then differentiates.
    """

    @staticmethod
    def vmap(info, in_dims, meta, *args):
        E = info.batch_size
        args = _members_first(E, args, in_dims[1:])
        out = _FusedEulerFn.apply(meta[:-1] + (E,), *args)
        return out, (0, 0, 0, 0)
