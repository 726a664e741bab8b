"""Reference latent SDE written directly against torchsde, for the speed benchmark.

Same architecture as the latent SDE of torchsde's ``examples/latent_sde_lorenz.py``
(Li et al. 2020, section 7.2), written independently here:

* encoder: GRU run over the observations in reverse time, then a Linear layer to the
  context size; the context sequence is flipped back into forward time;
* ``qz0_net``: Linear(context -> 2 * latent) on the first context vector gives q(z0);
  the prior p(z0) has learnable ``pz0_mean`` / ``pz0_logstd`` of shape (1, latent);
* posterior drift ``f_net``: MLP(latent + context -> hidden -> hidden -> latent), Softplus;
* prior drift ``h_net``: MLP(latent -> hidden -> hidden -> latent), Softplus;
* diffusion: one small net per latent dimension, (1 -> hidden -> 1), Softplus then
  Sigmoid, so the noise is diagonal (Ito);
* decoder ``projector``: Linear(latent -> data size);
* likelihood: the example uses a Normal with a *fixed* scale ``noise_std = 0.01`` (not a
  learnable scale and not a Laplace), so that is what this reference does too.

The loss is ``-log p(x | z) + KL``, with the KL weight fixed at 1 (no annealing), where KL is
the z0 KL plus the path KL that ``torchsde.sdeint(..., logqp=True)`` accumulates, summed over
time and averaged over the batch.  Data are time-major: ``xs`` is ``[T, B, D]``, ``ts`` ``[T]``.
"""

from __future__ import annotations

import torch
import torchsde
from torch import nn
from torch.distributions import Normal, kl_divergence

NOISE_STD = 0.01  # fixed observation scale of the torchsde Lorenz example


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(n_in, hidden),
        nn.Softplus(),
        nn.Linear(hidden, hidden),
        nn.Softplus(),
        nn.Linear(hidden, n_out),
    )


class _ReverseGRUEncoder(nn.Module):
    def __init__(self, data_size: int, hidden: int, context: int) -> None:
        super().__init__()
        self.gru = nn.GRU(input_size=data_size, hidden_size=hidden)
        self.out = nn.Linear(hidden, context)

    def forward(self, xs: torch.Tensor) -> torch.Tensor:
        # Read the sequence backwards so that ctx[i] summarises observations i..T-1.
        hs, _ = self.gru(torch.flip(xs, dims=(0,)))
        return torch.flip(self.out(hs), dims=(0,))


class ReferenceLatentSDE(nn.Module):
    """Plain torchsde latent SDE (diagonal noise, Ito)."""

    sde_type = "ito"
    noise_type = "diagonal"

    def __init__(
        self,
        data_size: int,
        latent: int,
        hidden: int,
        context: int,
        dt: float,
        noise_std: float = NOISE_STD,
    ) -> None:
        super().__init__()
        self.dt = float(dt)
        self.noise_std = float(noise_std)
        self.encoder = _ReverseGRUEncoder(data_size, hidden, context)
        self.qz0_net = nn.Linear(context, 2 * latent)
        self.f_net = _mlp(latent + context, hidden, latent)
        self.h_net = _mlp(latent, hidden, latent)
        self.g_nets = nn.ModuleList(
            nn.Sequential(nn.Linear(1, hidden), nn.Softplus(), nn.Linear(hidden, 1), nn.Sigmoid())
            for _ in range(latent)
        )
        self.projector = nn.Linear(latent, data_size)
        self.pz0_mean = nn.Parameter(torch.zeros(1, latent))
        self.pz0_logstd = nn.Parameter(torch.zeros(1, latent))
        self._ts: torch.Tensor | None = None
        self._ctx: torch.Tensor | None = None

    # --- SDE functions called by torchsde -------------------------------------------------
    def f(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Posterior drift; conditions on the context vector of the current interval."""
        ts, ctx = self._ts, self._ctx
        i = min(int(torch.searchsorted(ts, t, right=True)), len(ts) - 1)
        return self.f_net(torch.cat([y, ctx[i]], dim=1))

    def h(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Prior drift."""
        return self.h_net(y)

    def g(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Diagonal diffusion: dimension k only sees y[:, k]."""
        cols = torch.split(y, 1, dim=1)
        return torch.cat([net(col) for net, col in zip(self.g_nets, cols, strict=True)], dim=1)

    # --- ELBO pieces -----------------------------------------------------------------------
    def forward(self, xs: torch.Tensor, ts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(log_pxs, kl)``, each a scalar averaged over the batch."""
        ctx = self.encoder(xs)
        self._ts, self._ctx = ts, ctx

        qz0_mean, qz0_logstd = self.qz0_net(ctx[0]).chunk(2, dim=1)
        qz0_std = qz0_logstd.exp()
        z0 = qz0_mean + qz0_std * torch.randn_like(qz0_mean)

        zs, log_ratio = torchsde.sdeint(
            self,
            z0,
            ts,
            dt=self.dt,
            logqp=True,
            method="euler",
            names={"drift": "f", "diffusion": "g", "prior_drift": "h"},
        )
        x_mean = self.projector(zs)
        log_pxs = Normal(x_mean, self.noise_std).log_prob(xs).sum(dim=(0, 2)).mean(dim=0)

        logqp0 = (
            kl_divergence(Normal(qz0_mean, qz0_std), Normal(self.pz0_mean, self.pz0_logstd.exp()))
            .sum(dim=1)
            .mean(dim=0)
        )
        logqp_path = log_ratio.sum(dim=0).mean(dim=0)
        return log_pxs, logqp0 + logqp_path


def make_reference(
    data_size: int, latent: int, hidden: int, context: int, dt: float
) -> ReferenceLatentSDE:
    """Build the reference model (float32, CPU)."""
    return ReferenceLatentSDE(data_size, latent, hidden, context, dt).float()


def reference_loss(module: ReferenceLatentSDE, xs: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
    """Negative ELBO with KL weight 1: ``-log_pxs + kl``.  ``xs`` is ``[T, B, D]``, ``ts`` ``[T]``."""
    log_pxs, kl = module(xs, ts)
    return -log_pxs + kl


def num_steps(module: ReferenceLatentSDE, xs: torch.Tensor, ts: torch.Tensor) -> int:
    """Euler steps torchsde takes for one forward pass (counted as prior-drift calls)."""
    calls = []
    h = module.h
    module.h = lambda t, y: calls.append(1) or h(t, y)
    try:
        with torch.no_grad():
            module(xs[:, :2], ts)
    finally:
        del module.h
    return len(calls)


def make_step_fn(module: ReferenceLatentSDE, xs: torch.Tensor, ts: torch.Tensor, lr: float = 1e-2):
    """One Adam training iteration (forward + backward + step), as in the example's loop."""
    import _harness  # benchmarks/ is on sys.path in benchmark scripts

    return _harness.adam_step_fn(module.parameters(), lambda: reference_loss(module, xs, ts), lr)


def memory_probe(seed: int = 0, **config):
    """Build model + data and return a zero-argument training-step callable.

    Used via ``_harness.peak_rss_in_subprocess("_reference_torchsde:memory_probe", kwargs)``:
    the child records RSS after this returns (model and data built), then calls the step
    ``steps`` times (2 by default), so the reported delta covers training iterations only.
    """
    import _harness  # benchmarks/ is on sys.path in benchmark scripts and probe children

    c, ts, xs = _harness.probe_data(config, seed)
    torch.manual_seed(seed)
    module = make_reference(c["data_size"], c["latent"], c["hidden"], c["context"], c["dt"])
    return make_step_fn(module, xs, ts)
