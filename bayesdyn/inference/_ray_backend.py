"""Ray backend of :func:`~bayesdyn.inference.fit_ensemble`: groups of members as Ray tasks.

Each task trains one group of members as one vectorised model (the same code as the local
backend, :func:`bayesdyn.inference.ensemble._train_group`), so a member's result does not
depend on where it ran: with ``common_noise=True`` it is the local result up to float
rounding, otherwise it is a draw from the same distribution.

Failures are never dropped: a task that raises, or whose worker process dies, is resubmitted
up to ``max_retries`` times; every failed attempt is logged and returned in the failure list,
and when the retries run out :class:`EnsembleTrainingFailed` names every failed group.
Scheduling is Ray's; this module only resubmits failed groups.

Ray is an optional extra: ``pip install bayesdyn[ray]``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import torch

from .._validation import BayesdynValueError

__all__ = ["EnsembleTrainingFailed", "train_on_ray"]

logger = logging.getLogger("bayesdyn.ensemble")


class EnsembleTrainingFailed(RuntimeError):
    """A group of ensemble members failed on every attempt; ``failures`` lists the attempts."""

    def __init__(self, message: str, failures: list[dict]):
        super().__init__(message)
        self.failures = failures


def _import_ray():
    try:
        import ray
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError("backend='ray' needs Ray: pip install 'bayesdyn[ray]'") from e
    return ray


def _task(spec, batch, val_batch, ids: list[int], attempt: int, crash_on: int) -> dict[str, Any]:
    """Body of one Ray task: train members ``ids`` (vectorised) and return their states.

    ``crash_on`` > ``attempt`` kills this worker process (fault injection for tests).
    """
    from .ensemble import _train_group

    if attempt < crash_on:
        os._exit(17)  # a dead worker, as after an out-of-memory kill or a lost node
    torch.set_num_threads(1)  # one CPU per task; Ray runs tasks side by side
    torch.set_default_dtype(getattr(torch, spec.dtype))
    return _train_group(spec, batch, ids, val_batch=val_batch)


def train_on_ray(
    spec,
    batch,
    val_batch,
    num_members: int,
    *,
    num_groups: int | None = None,
    address: str | None = None,
    max_retries: int = 2,
    inject_failures: dict[int, int] | None = None,
) -> tuple[list[dict], list[list[int]], list[dict]]:
    """Train ``num_members`` members as Ray tasks, one vectorised group per task.

    Args:
        spec: training settings (``bayesdyn.inference.ensemble._Spec``).
        batch, val_batch: training and validation ``IrregularBatch`` (sent once to the
            object store).
        num_groups: tasks (default: the cluster's CPUs, at most ``num_members``).
        address: ``ray.init(address=...)``; default: the running Ray instance, else a new
            local one (shut down again at the end).
        max_retries: resubmissions of a failed group.
        inject_failures: ``{group: n}`` kills the worker of ``group`` on its first ``n``
            attempts (tests of the retry path).

    Returns:
        ``(results, groups, failures)``: one result dict per group in member order, the
        groups' member ids, and one dict per failed attempt (``group``, ``members``,
        ``attempt``, ``error``).

    Raises:
        EnsembleTrainingFailed: a group failed ``max_retries + 1`` times.
    """
    ray = _import_ray()
    started = False
    if not ray.is_initialized():
        if address is None:  # a new local instance, without the dashboard
            ray.init(include_dashboard=False, logging_level=logging.WARNING)
        else:  # an existing cluster: options of a new instance are refused there
            ray.init(address=address, logging_level=logging.WARNING)
        started = True
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        G = min(num_members, cpus) if num_groups is None else num_groups
        if not (isinstance(G, int) and 1 <= G <= num_members):
            raise BayesdynValueError(
                f"num_groups must be an integer in [1, num_members={num_members}]; got {G!r}"
            )
        groups = [g.tolist() for g in np.array_split(np.arange(num_members), G)]
        remote = ray.remote(num_cpus=1, max_retries=0)(_task)
        batch_ref = ray.put(batch)
        val_ref = ray.put(val_batch)
        inject = dict(inject_failures or {})

        def submit(g: int, attempt: int):
            return remote.remote(spec, batch_ref, val_ref, groups[g], attempt, inject.get(g, 0))

        pending = {submit(g, 0): (g, 0) for g in range(G)}
        results: dict[int, dict] = {}
        failures: list[dict] = []
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            ref = done[0]
            g, attempt = pending.pop(ref)
            try:
                results[g] = ray.get(ref)
            except Exception as e:  # a RayTaskError, WorkerCrashedError, lost node, ...
                msg = str(e).strip().splitlines()
                record = {
                    "group": g,
                    "members": groups[g],
                    "attempt": attempt,
                    "error": f"{type(e).__name__}: {msg[0] if msg else ''}"[:500],
                }
                failures.append(record)
                logger.warning(
                    "ensemble group %d (members %s) failed on attempt %d: %s",
                    g,
                    groups[g],
                    attempt + 1,
                    record["error"],
                )
                if attempt >= max_retries:
                    for other in pending:
                        ray.cancel(other)
                    raise EnsembleTrainingFailed(
                        f"ensemble group {g} (members {groups[g]}) failed on all "
                        f"{attempt + 1} attempts; last error: {record['error']}",
                        failures,
                    ) from e
                pending[submit(g, attempt + 1)] = (g, attempt + 1)
        return [results[g] for g in range(G)], groups, failures
    finally:
        if started:
            ray.shutdown()
