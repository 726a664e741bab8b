"""Data-parallel training of one model with ``torch.distributed`` (gloo on CPU, any backend).

Each optimiser step draws one *global* mini-batch of series (the same on every rank: all ranks
share the data-order generator), cuts it into ``num_shards`` contiguous shards and gives shard
``j`` to rank ``j % world_size``. A rank computes the ELBO of its shards, each divided by the
number of observed values in the whole global mini-batch, so that the sum over shards is the
loss of the global mini-batch; gradients are summed across ranks with ``all_reduce``. Every
rank then takes the same clipped Adam step, so the replicas stay identical (no parameter
broadcast after the start).

The random numbers of shard ``j`` at step ``s`` come from a generator seeded by
``(seed, s, j)`` (forked from, and leaving untouched, the global RNG). A shard therefore draws
the same noise whichever rank computes it, and a single process with ``num_shards=N`` computes
exactly the gradients of ``N`` processes: it reproduces a cluster run on one machine, up to
the floating-point order of the sums.

Launching follows the ``torchrun`` conventions (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``): ``bayesdyn fit DATA --out RUN --nproc 4`` starts 4 local
workers through ``torch.distributed.run``; on a cluster, ``--nnodes``, ``--node-rank``,
``--master-addr`` and ``--master-port`` are passed on to it, or the same ``bayesdyn fit``
command is started by ``torchrun`` directly. Rank 0 writes checkpoints and outputs; every rank
can resume from the checkpoint.

Example (Python API, inside a process started by torchrun)::

    import torch.distributed as dist
    dist.init_process_group("gloo")
    fit(model, series, batch_size=64, data_parallel=DataParallel())

Shapes follow DESIGN.md: a batch holds ``times [B, T]``, ``values [B, T, D]``, ``mask [B, T, D]``.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from .._validation import BayesdynValueError
from .fit import _Diverged, _loss, _MinibatchObjective, _subset

__all__ = ["DataParallel", "in_torchrun_worker", "launch"]


def in_torchrun_worker() -> bool:
    """Whether this process was started by ``torchrun`` (``torch.distributed.run``)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or (
        "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ
    )


class DataParallel:
    """Shard each global mini-batch across ``torch.distributed`` ranks; sum the gradients.

    Args:
        num_shards: shards per global mini-batch (default: the world size); a multiple of the
            world size. ``num_shards=N`` in one process reproduces an ``N``-process run.
        group: the process group (default: the global one, if initialised; else one process).

    Raises:
        BayesdynValueError: if ``num_shards`` is not a positive multiple of the world size.
    """

    def __init__(self, num_shards: int | None = None, group=None):
        if dist.is_available() and dist.is_initialized():
            self.group = group
            self.rank = dist.get_rank(group)
            self.world_size = dist.get_world_size(group)
        else:
            self.group, self.rank, self.world_size = None, 0, 1
        n = self.world_size if num_shards is None else num_shards
        if isinstance(n, bool) or not isinstance(n, int) or n < 1 or n % self.world_size:
            raise BayesdynValueError(
                f"num_shards must be a positive multiple of the world size {self.world_size}; "
                f"got {num_shards!r}"
            )
        self.num_shards = n

    @property
    def is_writer(self) -> bool:
        """Whether this rank writes checkpoints and outputs (rank 0)."""
        return self.rank == 0

    def all_reduce_(self, x: torch.Tensor) -> torch.Tensor:
        """Sum ``x`` over ranks in place (no-op in one process)."""
        if self.world_size > 1:
            dist.all_reduce(x, op=dist.ReduceOp.SUM, group=self.group)
        return x

    def broadcast_(self, x: torch.Tensor) -> torch.Tensor:
        """Copy rank 0's ``x`` to every rank in place (no-op in one process)."""
        if self.world_size > 1:
            dist.broadcast(x, src=0, group=self.group)
        return x

    def objective(self, model, batch, batch_size: int, elbo, seed: int | None):
        """The per-step loss-and-gradient callable used by :func:`~bayesdyn.inference.fit`."""
        return _ShardedObjective(self, model, batch, batch_size, elbo, seed)


class _ShardedObjective(_MinibatchObjective):
    def __init__(self, dp: DataParallel, model, batch, batch_size: int, elbo, seed):
        if seed is None:
            # Ranks must draw the same numbers (mini-batches, validation noise): a seed is
            # what makes their global RNGs agree.
            raise BayesdynValueError("data-parallel training needs a seed; got seed=None")
        base = torch.tensor([int(seed)], dtype=torch.int64)
        # Every rank must use the same seed and start from the same parameters: rank 0's.
        dp.broadcast_(base)
        super().__init__(model, batch, batch_size, elbo, int(base))
        self.dp, self.base = dp, int(base)
        with torch.no_grad():
            for t in model.state_dict().values():
                if t.is_floating_point():
                    dp.broadcast_(t)
        self.params = [p for p in model.parameters() if p.requires_grad]
        if batch_size < dp.num_shards:
            raise BayesdynValueError(
                f"batch_size ({batch_size}) must be at least num_shards ({dp.num_shards})"
            )

    def __call__(self, step: int, kl_scale: float) -> float:
        mb, n_obs = self.minibatch()
        bounds = torch.linspace(0, mb.times.shape[0], self.dp.num_shards + 1).round().long()
        loss_sum, failed = 0.0, ""
        for j in range(self.dp.rank, self.dp.num_shards, self.dp.world_size):
            shard = _subset(mb, torch.arange(int(bounds[j]), int(bounds[j + 1])))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(_shard_seed(self.base, step, j))
                try:
                    loss = _loss(self.elbo, self.model, shard, kl_scale) / n_obs
                except _Diverged as d:
                    failed = d.reason
                    break
                v = loss.detach().item()
                if not torch.isfinite(loss.detach()):
                    failed = f"the loss became {v}"
                    break
                loss.backward()
            loss_sum += v
        status = torch.tensor([loss_sum, 1.0 if failed else 0.0], dtype=torch.float64)
        self.dp.all_reduce_(status)
        if status[1] > 0:  # every rank stops the step together, so none waits in all_reduce
            raise _Diverged(failed or "a shard diverged on another rank")
        self._all_reduce_grads()
        return float(status[0])

    def _all_reduce_grads(self) -> None:
        if self.dp.world_size == 1:
            return
        # Parameters without a gradient on every rank keep grad None (Adam skips them, as in
        # one process); the rest are summed in one flat buffer.
        has = torch.tensor([p.grad is not None for p in self.params], dtype=torch.float64)
        self.dp.all_reduce_(has)
        live = [p for p, h in zip(self.params, has.tolist(), strict=True) if h > 0]
        if not live:
            return
        flat = torch.cat(
            [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in live]
        )
        self.dp.all_reduce_(flat)
        offset = 0
        for p in live:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n


def _shard_seed(base: int, step: int, shard: int) -> int:
    """Seed of shard ``shard`` at step ``step``: the same on every rank."""
    return (base * 2_654_435_761 + step * 1_000_003 + shard) % (2**63)


def launch(argv: list[str], nproc: int, nnodes: int = 1, node_rank: int = 0,
           master_addr: str | None = None, master_port: int | None = None) -> int:  # fmt: skip
    """Run ``bayesdyn <argv>`` in ``nproc`` worker processes per node via ``torch.distributed.run``.

    The programmatic form of ``torchrun``: one node uses a standalone rendezvous on a free
    local port (``--standalone``); several nodes use a static rendezvous at
    ``master_addr:master_port`` with this node's ``node_rank``. Workers get ``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` as with ``torchrun``.

    Returns:
        0 when every worker succeeded, else 1 (the failure is reported on stderr).
    """
    import sys
    import uuid

    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    for name, v, lo in (
        ("--nproc", nproc, 1),
        ("--nnodes", nnodes, 1),
        ("--node-rank", node_rank, 0),
    ):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise BayesdynValueError(f"{name} must be an integer >= {lo}; got {v!r}")
    if nnodes == 1 and master_addr is None:
        # torchrun --standalone: a c10d rendezvous on a free local port
        backend, endpoint, configs = "c10d", "localhost:0", {}
    else:
        if master_addr is None:
            raise BayesdynValueError("--nnodes > 1 needs --master-addr (the rank-0 node)")
        # torchrun --master-addr/--master-port/--node-rank: a static rendezvous
        backend = "static"
        endpoint = f"{master_addr}:{master_port or 29500}"
        configs = {"rank": node_rank}
    config = LaunchConfig(
        min_nodes=nnodes,
        max_nodes=nnodes,
        nproc_per_node=nproc,
        run_id=str(uuid.uuid4()),
        rdzv_backend=backend,
        rdzv_endpoint=endpoint,
        rdzv_configs=configs,
        max_restarts=0,
        logs_specs=DefaultLogsSpecs(),
    )
    try:
        elastic_launch(config, sys.executable)("-m", "bayesdyn.cli", *argv)
    except ChildFailedError as e:
        print(f"bayesdyn: a worker failed: {e}", file=sys.stderr, flush=True)
        return 1
    return 0
