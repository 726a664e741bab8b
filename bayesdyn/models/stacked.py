"""Member-stacked models: ``E`` copies of one network trained as one vectorised model.

A deep ensemble's members share an architecture, so their parameters stack along a new
leading member dimension ``E``. :class:`MemberStack` keeps those stacked tensors and evaluates
any function of the model for all members at once with ``torch.func.vmap`` over
``torch.func.functional_call``: each operation runs once on ``[E, ...]`` tensors (matmuls
become batched matmuls) and nothing loops over members in Python.

The template model is a *module transformation* of the user's model, made once:

- a bare ``nn.GRU`` (no batching rule for stacked weights) becomes :class:`StackableGRU`,
  the same recurrence in plain tensor operations, with the same parameter names; the GRU of
  a :class:`~bayesdyn.models.GRUEncoder` stays, because its hand-written kernel
  (:func:`~bayesdyn.models.nets.gru_sequence`) has a vmap rule that runs all members at once;
- :class:`~bayesdyn.models.DiagonalDiffusion`'s fused autograd Function (no vmap rule)
  is replaced by the same formula in plain operations (:class:`StackableDiagonalDiffusion`);
- the fused Euler kernel needs nothing: its vmap rule runs the training pass once for all
  members, with matmuls batched over the member dimension (see
  :func:`~bayesdyn.models.nets.fused_euler_path`).

State-dict keys are unchanged, so member ``k`` loads back into an ordinary model.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from .._validation import BayesdynTypeError, BayesdynValueError
from .nets import DiagonalDiffusion, GRUEncoder

__all__ = [
    "MemberStack",
    "StackableDiagonalDiffusion",
    "StackableGRU",
    "make_stackable",
]

_GRU_PARAMS = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")


class StackableGRU(nn.Module):
    r"""Single-layer, batch-first GRU in plain tensor operations (vmap-compatible).

    The recurrence of ``torch.nn.GRU``:

    .. math::
        r = \sigma(W_{ir} x + b_{ir} + W_{hr} h + b_{hr}),\quad
        u = \sigma(W_{iu} x + b_{iu} + W_{hu} h + b_{hu}),\\
        n = \tanh(W_{in} x + b_{in} + r \odot (W_{hn} h + b_{hn})),\quad
        h' = (1 - u) \odot n + u \odot h.

    Parameters have ``nn.GRU``'s names, so state dicts are interchangeable.

    Shapes: ``x [B, T, I]`` -> ``(out [B, T, H], h_last [1, B, H])``.
    """

    def __init__(self, gru: nn.GRU):
        super().__init__()
        if gru.num_layers != 1 or gru.bidirectional or not gru.batch_first or not gru.bias:
            raise BayesdynValueError(
                "only single-layer, unidirectional, batch-first GRUs with biases can be "
                f"stacked; got num_layers={gru.num_layers}, bidirectional={gru.bidirectional}, "
                f"batch_first={gru.batch_first}, bias={gru.bias}"
            )
        self.hidden_size = gru.hidden_size
        for name in _GRU_PARAMS:
            setattr(self, name, nn.Parameter(getattr(gru, name).detach().clone()))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """See class docstring."""
        # The input part of all gates for all rows at once; only the hidden part is sequential.
        gi = F.linear(x, self.weight_ih_l0, self.bias_ih_l0)  # [B, T, 3H]
        h = x.new_zeros(x.shape[:-2] + (self.hidden_size,))
        outs = []
        # unbind (not gi[:, t]) so the backward pass stacks once instead of scattering per step
        for gi_t in gi.unbind(-2):
            gh = F.linear(h, self.weight_hh_l0, self.bias_hh_l0)
            i_r, i_u, i_n = gi_t.chunk(3, -1)
            h_r, h_u, h_n = gh.chunk(3, -1)
            r = torch.sigmoid(i_r + h_r)
            u = torch.sigmoid(i_u + h_u)
            n = torch.tanh(i_n + r * h_n)
            h = n + u * (h - n)
            outs.append(h)
        return torch.stack(outs, -2), h.unsqueeze(0)


class StackableDiagonalDiffusion(DiagonalDiffusion):
    """:class:`DiagonalDiffusion` evaluated with plain tensor operations (vmap-compatible).

    Same parameters and the same function ``lo + (hi - lo) * sigmoid(sum_h w2 *
    softplus(z * w1 + b1) + out_bias)``; autograd differentiates it.

    Shapes: ``z [..., L] -> [..., L]``.
    """

    def forward(self, z: Tensor) -> Tensor:
        """Diffusion at ``z``."""
        span = self.max_scale - self.min_scale
        if not self.state_dependent:
            return self.min_scale + span * torch.sigmoid(self.out_bias.expand_as(z))
        h = F.softplus(z.unsqueeze(-1) * self.w1 + self.b1)  # [..., L, Hd]
        return self.min_scale + span * torch.sigmoid((h * self.w2).sum(-1) + self.out_bias)


def make_stackable(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose submodules all run under ``torch.func.vmap``.

    A bare ``nn.GRU`` becomes :class:`StackableGRU` (a :class:`GRUEncoder`'s GRU is left to
    its vmap-aware kernel) and :class:`DiagonalDiffusion` becomes
    :class:`StackableDiagonalDiffusion`; parameter names and values are unchanged.
    """
    if not isinstance(model, nn.Module):
        raise BayesdynTypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    out = copy.deepcopy(model)
    encoder_grus = {id(m.gru) for m in out.modules() if isinstance(m, GRUEncoder)}
    for name, module in list(out.named_modules()):
        if isinstance(module, nn.GRU) and id(module) not in encoder_grus:
            if not name:  # the model is a bare GRU
                return StackableGRU(module)
            parent, _, attr = name.rpartition(".")
            setattr(out.get_submodule(parent) if parent else out, attr, StackableGRU(module))
        elif type(module) is DiagonalDiffusion:
            module.__class__ = StackableDiagonalDiffusion  # same state, plain-ops forward
    return out


class _Apply(nn.Module):
    """Calls ``fn(module, *args)`` as its forward, so ``functional_call`` can run any method."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, fn: Callable[..., Any], *args):
        return fn(self.module, *args)


class MemberStack:
    """``E`` members of one architecture with stacked parameters ``[E, ...]``.

    Args:
        members: ``E >= 1`` models of the same class and parameter shapes.

    Attributes:
        params: parameter name -> leaf tensor ``[E, *shape]`` (``requires_grad=True``).
        buffers: buffer name -> tensor ``[E, *shape]``.
        template: the vmap-compatible copy of ``members[0]`` (see :func:`make_stackable`)
            whose parameters are replaced by each member's during :meth:`vmap`.

    Shapes: every stacked tensor has the member dimension ``E`` first.
    """

    def __init__(self, members: Sequence[nn.Module]):
        members = list(members)
        if not members:
            raise BayesdynValueError("members must hold at least one model; got none")
        cls = type(members[0])
        shapes = {k: v.shape for k, v in members[0].state_dict().items()}
        for k, m in enumerate(members):
            if type(m) is not cls:
                raise BayesdynTypeError(
                    f"members must share one class; member {k} is {type(m).__name__}, "
                    f"member 0 is {cls.__name__}"
                )
            got = {n: v.shape for n, v in m.state_dict().items()}
            if got != shapes:
                raise BayesdynValueError(
                    f"members must share parameter shapes; member {k} differs from member 0"
                )
        params, buffers = stack_module_state(members)
        self.params: dict[str, Tensor] = {k: v.detach().requires_grad_() for k, v in params.items()}
        self.buffers: dict[str, Tensor] = {k: v.detach() for k, v in buffers.items()}
        self.template = make_stackable(members[0]).eval()
        self._apply = _Apply(self.template)

    @property
    def num_members(self) -> int:
        """``E``."""
        return next(iter(self.params.values())).shape[0]

    def state_dict(self, k: int) -> dict[str, Tensor]:
        """Member ``k``'s state dict (detached copies), loadable into an ordinary model."""
        out = {n: v[k].detach().clone() for n, v in {**self.params, **self.buffers}.items()}
        return {n: out[n] for n in self.template.state_dict()}

    def vmap(
        self,
        fn: Callable[..., Any],
        *args,
        in_dims: tuple | None = None,
        randomness: Literal["different", "same"] = "different",
    ):
        """``fn(model, *args)`` for every member at once: outputs gain a leading ``E``.

        Args:
            fn: called as ``fn(model, *args)`` where ``model`` carries one member's parameters;
                it must return tensors (or tuples/lists/dicts of tensors).
            in_dims: vmap ``in_dims`` for ``args`` (default: none are member-stacked).
            randomness: ``"different"``: each member draws its own random numbers;
                ``"same"``: all members see the draws of one unstacked call (common random
                numbers: the same stream a lone model would draw under the same seed).
        """
        if randomness not in ("different", "same"):
            raise BayesdynValueError(
                f"randomness must be 'different' or 'same'; got {randomness!r}"
            )
        in_dims = (None,) * len(args) if in_dims is None else tuple(in_dims)
        if len(in_dims) != len(args):
            raise BayesdynValueError(
                f"in_dims has {len(in_dims)} entries for {len(args)} arguments"
            )

        def one(params, buffers, *a):
            state = {"module." + k: v for k, v in {**params, **buffers}.items()}
            return functional_call(self._apply, state, (fn, *a), strict=True)

        return vmap(one, in_dims=(0, 0, *in_dims), randomness=randomness)(
            self.params, self.buffers, *args
        )
