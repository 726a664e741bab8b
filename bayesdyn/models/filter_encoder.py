r"""A causal encoder for irregular series: continuous-time evolution between observations, a
mask-aware jump at each observation (ODE-RNN / GRU-ODE-Bayes style).

Between observations the hidden state follows the GRU-ODE of De Brouwer et al. (2019),

.. math::
    \frac{dh}{dt} = \kappa\,(1 - u(h)) \odot (c(h) - h), \quad
    u = \sigma(W_u h + b_u),\ r = \sigma(W_r h + b_r),\ c = \tanh(W_c (r \odot h) + b_c),

with a learned rate :math:`\kappa > 0` per hidden unit. It is integrated by an exponential
(exponential-Euler) scheme over ``num_substeps`` equal sub-steps of each gap,
:math:`h \leftarrow c + (h - c)\,e^{-\kappa (1-u)\delta}` with ``u, c`` frozen over a sub-step: the
exact solution of the frozen linear ODE, so it is stable for any gap, keeps ``h`` in
``[-1, 1]`` and leaves ``h`` unchanged over a zero gap.

At an observation the state jumps, ``h <- GRUCell(x, h)``, where ``x`` concatenates a learned
per-channel embedding ``m_d * tanh(a_d y_d + e_d)`` (zero for a missing channel, so a missing
value never leaks in) and the mask itself. A row with no observed channel (and every padding
row) makes no jump. The context at row ``i`` is a linear read-out of the state just after the
jump at ``t_i``, so it depends on rows ``<= i`` only: the encoder is causal, and a posterior
drift that reads it is a filter.

References:
    1. Y. Rubanova, R. T. Q. Chen, D. Duvenaud, "Latent ODEs for irregularly-sampled time
       series", NeurIPS 2019 (ODE-RNN).
    2. E. De Brouwer, J. Simm, A. Arany, Y. Moreau, "GRU-ODE-Bayes: continuous modeling of
       sporadically-observed time series", NeurIPS 2019.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import BayesdynValueError

__all__ = ["FilterEncoder"]


class FilterEncoder(nn.Module):
    """Causal ODE-RNN / GRU-ODE-Bayes encoder (see the module docstring).

    Drop-in for :class:`~bayesdyn.models.GRUEncoder` (``LatentSDE(encoder="filter")``); it also
    exposes the recursion one step at a time (:meth:`initial_state`, :meth:`step`,
    :meth:`forward_from`) so a streaming filter can carry the state forward at a cost that does
    not grow with the history.

    Args:
        obs_dim: ``D``; hidden_dim: ``H``; context_dim: ``C``.
        embed_dim: per-channel embedding size of the jump input.
        num_substeps: exponential-Euler sub-steps per gap.
        init_rate: initial rate ``kappa`` of the continuous-time evolution (per time unit).

    Shapes: ``times [B, T]``, ``values [B, T, D]``, ``mask [B, T, D]``, ``lengths [B]`` ->
    context ``[B, T, C]``; the carried state is ``h [B, H]`` with ``last_time [B]``.
    """

    def __init__(
        self,
        obs_dim: int,
        hidden_dim: int,
        context_dim: int,
        *,
        embed_dim: int = 4,
        num_substeps: int = 2,
        init_rate: float = 1.0,
    ):
        super().__init__()
        for name, v in (("obs_dim", obs_dim), ("hidden_dim", hidden_dim), ("embed_dim", embed_dim)):
            if not isinstance(v, int) or v < 1:
                raise BayesdynValueError(f"{name} must be a positive integer; got {v!r}")
        if not isinstance(num_substeps, int) or num_substeps < 1:
            raise BayesdynValueError(
                f"num_substeps must be a positive integer; got {num_substeps!r}"
            )
        if not init_rate > 0:
            raise BayesdynValueError(f"init_rate must be positive; got {init_rate!r}")
        self.obs_dim = obs_dim
        self.hidden_dim = hidden_dim
        self.context_dim = context_dim
        self.num_substeps = num_substeps
        # GRU-ODE gates: one matmul for (u, r), one for the candidate.
        self.ode_ur = nn.Linear(hidden_dim, 2 * hidden_dim)
        self.ode_c = nn.Linear(hidden_dim, hidden_dim)
        self.raw_rate = nn.Parameter(torch.full((hidden_dim,), math.log(math.expm1(init_rate))))
        # Per-channel embedding of the observed values (GRU-ODE-Bayes' per-dimension "prep").
        self.embed_scale = nn.Parameter(torch.randn(obs_dim, embed_dim) / math.sqrt(embed_dim))
        self.embed_bias = nn.Parameter(torch.zeros(obs_dim, embed_dim))
        self.cell = nn.GRUCell(obs_dim * embed_dim + obs_dim, hidden_dim)
        self.h0 = nn.Parameter(torch.zeros(hidden_dim))
        self.out = nn.Linear(hidden_dim, context_dim)

    def initial_state(self, batch_size: int) -> Tensor:
        """Learned initial state. Shapes: ``[B, H]``."""
        return self.h0.expand(batch_size, self.hidden_dim)

    def evolve(self, h: Tensor, gap: Tensor) -> Tensor:
        """Continuous-time evolution over ``gap`` (exponential-Euler sub-steps).

        Shapes: ``h [B, H]``, ``gap [B]`` (non-negative) -> ``[B, H]``.
        """
        rate = F.softplus(self.raw_rate)
        delta = (gap / self.num_substeps).unsqueeze(-1)  # [B, 1]
        for _ in range(self.num_substeps):
            u, r = torch.sigmoid(self.ode_ur(h)).chunk(2, dim=-1)
            c = torch.tanh(self.ode_c(r * h))
            # h + (c - h)(1 - e^{-x}): exactly h at a zero gap (padding rows stay put).
            h = h - (c - h) * torch.expm1(-rate * (1 - u) * delta)
        return h

    def jump(self, h: Tensor, values: Tensor, mask: Tensor) -> Tensor:
        """Mask-aware update at an observation; rows with no observed channel keep ``h``.

        Shapes: ``h [B, H]``, ``values [B, D]``, ``mask [B, D]`` -> ``[B, H]``.
        """
        m = mask.to(h.dtype)
        emb = torch.tanh(values.unsqueeze(-1) * self.embed_scale + self.embed_bias)
        x = torch.cat([(emb * m.unsqueeze(-1)).flatten(-2), m], -1)
        return torch.where(mask.any(-1, keepdim=True), self.cell(x, h), h)

    def step(self, h: Tensor, gap: Tensor, values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Evolve over ``gap``, jump with the row, and read out the context.

        Shapes: ``h [B, H]``, ``gap [B]``, ``values [B, D]``, ``mask [B, D]`` ->
        ``(h [B, H], context [B, C])``.
        """
        h = self.jump(self.evolve(h, gap), values, mask)
        return h, self.out(h)

    def forward_from(
        self,
        h: Tensor,
        last_time: Tensor | None,
        times: Tensor,
        values: Tensor,
        mask: Tensor,
        lengths: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Continue the recursion from state ``h`` at ``last_time`` over new rows.

        ``last_time=None`` starts at each series' first new row (zero first gap), which is what
        :meth:`forward` does. Padding rows (``>= lengths``) make neither a jump nor a move.

        Shapes: ``h [B, H]``, ``last_time [B]``, ``times [B, T]``, ``values [B, T, D]``,
        ``mask [B, T, D]``, ``lengths [B]`` -> ``(context [B, T, C], h [B, H], last_time [B])``.
        """
        B, T = times.shape
        if values.shape[-1] != self.obs_dim:
            raise BayesdynValueError(
                f"values has {values.shape[-1]} channels, the encoder expects {self.obs_dim}"
            )
        prev = times[:, 0] if last_time is None else last_time.to(times.dtype)
        if lengths is not None:
            valid = torch.arange(T, device=times.device) < lengths.unsqueeze(-1)
            mask = mask & valid.unsqueeze(-1)
        else:
            valid = torch.ones(B, T, dtype=torch.bool, device=times.device)
        hs = []
        for i in range(T):
            gap = torch.where(valid[:, i], (times[:, i] - prev).clamp(min=0), 0.0)
            h = self.jump(self.evolve(h, gap), values[:, i], mask[:, i])
            prev = torch.where(valid[:, i], times[:, i], prev)
            hs.append(h)
        context = self.out(torch.stack(hs, 1)) if hs else h.new_zeros(B, 0, self.context_dim)
        return context, h, prev

    def forward(self, times: Tensor, values: Tensor, mask: Tensor, lengths: Tensor) -> Tensor:
        """Context at every row from rows up to it. Shapes: see the class docstring."""
        h = self.initial_state(times.shape[0]).to(values.dtype)
        return self.forward_from(h, None, times, values, mask, lengths)[0]
