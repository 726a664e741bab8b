"""Injected faults for the divergence tests: a latent SDE whose drift explodes on demand."""

from __future__ import annotations

import torch

from bayesdyn import LatentSDE
from bayesdyn.models import AbstractSDE


class _ExplodingSDE(AbstractSDE):
    """Wraps a posterior SDE; while ``on`` its drift is 1e300 * (1 + z^2): the path overflows."""

    def __init__(self, inner: AbstractSDE, on: bool):
        super().__init__(inner.state_dim)
        object.__setattr__(self, "inner", inner)  # a view, not a submodule
        self.on = on

    def drift_and_diffusion(self, t, z):
        return self.inner.drift_and_diffusion(t, z)

    def step(self, k, t, z):
        f, g = self.inner.step(k, t, z)
        if self.on:
            f = f + 1e300 * (1.0 + z.square())
        return f, g

    def on_path(self, ts, z):
        return self.inner.on_path(ts, z)

    def drift_on_path(self, ts, z):
        return self.inner.drift_on_path(ts, z)

    def shares_diffusion_with(self, other):
        return self.inner.shares_diffusion_with(other)


class FaultyLatentSDE(LatentSDE):
    """A LatentSDE with a fault clock: the posterior drift explodes on chosen guide calls.

    ``explode(call)`` decides for the 1-based guide call number; ``nan_grad(call)`` makes the
    gradient of one parameter NaN on that call (the loss stays finite).
    """

    def __init__(self, *args, explode=lambda call: False, nan_grad=lambda call: False, **kw):
        super().__init__(*args, **kw)
        self.calls = 0
        self._explode, self._nan_grad = explode, nan_grad

    def guide(self, batch, *args, **kw):
        self.calls += 1
        if self._nan_grad(self.calls):
            fired = []

            def once(g):  # NaN gradient in this backward pass only
                if fired:
                    return g
                fired.append(True)
                return g * float("nan")

            self.decoder.raw_scale.register_hook(once)
        return super().guide(batch, *args, **kw)

    def posterior_sde(self, batch, grid, context):
        return _ExplodingSDE(super().posterior_sde(batch, grid, context), self._explode(self.calls))


def params(model) -> dict[str, torch.Tensor]:
    """Detached copies of a model's state."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
