"""Abstract base for SDEs that :class:`~bayesdyn.models.SDEPath` can sample and score."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["AbstractSDE", "FunctionalSDE"]


class AbstractSDE(nn.Module):
    r"""An Itô SDE with diagonal noise, :math:`dz = f(t, z)\,dt + g(t, z) \odot dW`.

    Subclasses implement :meth:`drift_and_diffusion`. Two solver hooks have defaults that call it
    and may be overridden for speed:

    - :meth:`step` is called once per grid step inside the sampling loop (``k`` is the step
      index, so grid-bound features such as an encoder context can be precomputed);
    - :meth:`on_path` evaluates the drift and diffusion at every left end point of a path in
      one batched call (used by ``log_prob`` and by the low-variance path KL).

    The class also offers torchsde's ``f``/``g`` protocol, so an instance can be passed to
    ``torchsde.sdeint`` directly.

    Shapes:
        - ``t``: scalar tensor, or ``[U-1, 1]`` in :meth:`on_path`
        - ``z``: ``[..., L]``; drift and diffusion have the shape of ``z``.
    """

    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self, state_dim: int):
        super().__init__()
        self.state_dim = int(state_dim)

    @abstractmethod
    def drift_and_diffusion(self, t: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        """Return drift ``f`` and diagonal diffusion ``g`` (both shaped like ``z [..., L]``)."""
        raise NotImplementedError

    def step(self, k: int, t: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        """Drift and diffusion at grid step ``k`` (time ``t``). Shapes: ``z [..., L]``."""
        return self.drift_and_diffusion(t, z)

    def on_path(self, ts: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        """Drift and diffusion at all left end points.

        Shapes:
            - ``ts``: ``[U-1]``; ``z``: ``[..., U-1, L]``; returns two ``[..., U-1, L]``.
        """
        return self.drift_and_diffusion(ts.unsqueeze(-1), z)

    # torchsde protocol
    def f(self, t: Tensor, y: Tensor) -> Tensor:
        """torchsde drift. Shapes: ``y [B, L]`` -> ``[B, L]``."""
        return self.drift_and_diffusion(t, y)[0]

    def g(self, t: Tensor, y: Tensor) -> Tensor:
        """torchsde diagonal diffusion. Shapes: ``y [B, L]`` -> ``[B, L]``."""
        return self.drift_and_diffusion(t, y)[1]

    def f_and_g(self, t: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """torchsde fused drift and diffusion."""
        return self.drift_and_diffusion(t, y)


class FunctionalSDE(AbstractSDE):
    """An SDE from two plain callables, for quick model scripts.

    Example::

        theta, sigma = pyro.param("theta", ...), pyro.param("sigma", ...)
        sde = FunctionalSDE(lambda t, z: -theta * z, lambda t, z: sigma.expand_as(z), state_dim=1)

    Args:
        drift: ``(t, z [..., L]) -> [..., L]``.
        diffusion: ``(t, z [..., L]) -> [..., L]`` (positive), or a positive number or tensor
            ``[L]`` for additive noise.
        state_dim: ``L``.
    """

    def __init__(
        self,
        drift: Callable[[Tensor, Tensor], Tensor],
        diffusion: Callable[[Tensor, Tensor], Tensor] | float | Tensor,
        state_dim: int,
    ):
        super().__init__(state_dim)
        self._drift = drift
        self._diffusion = diffusion

    def drift_and_diffusion(self, t: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        """See :class:`AbstractSDE`."""
        f = self._drift(t, z)
        if callable(self._diffusion):
            g = self._diffusion(t, z)
        else:
            g = torch.as_tensor(self._diffusion, dtype=z.dtype, device=z.device).expand_as(z)
        return f, g
