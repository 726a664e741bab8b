"""``fit``: the SVI training loop for latent SDEs, with annealing, checkpoints and early stopping."""

from __future__ import annotations

import contextlib
import copy
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .._validation import (
    BayesdynTypeError,
    BayesdynValueError,
    FitDiverged,
    SolverDiverged,
    check_positive,
)
from ..models.nets import release_kernel_buffers
from .elbo import PathELBO

__all__ = ["FitResult", "average_after_for", "fit", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT = "bayesdyn.checkpoint/1"


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        history: one dict per logged step: ``step``, ``loss`` (negative ELBO per observed
            value), ``kl_scale``, ``lr`` and, at validation steps, ``val_loss``.
        best_step: step of the best validation loss (or the last step without validation).
        best_val_loss: that loss, or None.
        num_steps: steps taken (may be fewer than asked after early stopping).
        seconds: wall time.
        stopped_early: whether early stopping ended training.
        divergences: one dict per rollback after a divergence: ``step`` (the 1-based step
            that diverged), ``reason``, ``rolled_back_to`` (the checkpoint's step) and ``lr_scale``
            (the learning-rate factor from then on).
    """

    history: list[dict[str, float]] = field(default_factory=list)
    best_step: int = 0
    best_val_loss: float | None = None
    num_steps: int = 0
    seconds: float = 0.0
    stopped_early: bool = False
    divergences: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> str:
        """One-paragraph text summary."""
        last = self.history[-1]["loss"] if self.history else float("nan")
        s = (
            f"trained {self.num_steps} steps in {self.seconds:.1f} s; "
            f"final loss {last:.4f} (negative ELBO per observed value)"
        )
        if self.best_val_loss is not None:
            s += f"; best validation loss {self.best_val_loss:.4f} at step {self.best_step}"
        if self.stopped_early:
            s += "; stopped early"
        if self.divergences:
            s += (
                f"; recovered from {len(self.divergences)} divergence(s) (learning rate "
                f"scaled by {self.divergences[-1]['lr_scale']:g})"
            )
        return s


def _as_batch(data, name: str):
    if hasattr(data, "to_batch"):
        return data.to_batch()
    if all(hasattr(data, a) for a in ("times", "values", "mask", "lengths")):
        return data
    raise BayesdynTypeError(
        f"{name} must be an IrregularTimeSeries or IrregularBatch; got {type(data).__name__}"
    )


def _subset(batch, idx: torch.Tensor):
    if hasattr(batch, "subset"):  # batches with more fields (JumpBatch: events) subset themselves
        return batch.subset(idx)
    T = int(batch.lengths[idx].max())
    fields_ = {
        "times": batch.times[idx, :T],
        "values": batch.values[idx, :T],
        "mask": batch.mask[idx, :T],
        "lengths": batch.lengths[idx],
    }
    if getattr(batch, "covariates", None) is not None:
        fields_["covariates"] = batch.covariates[idx, :T]
    return type(batch)(**fields_)


def _rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(
            np.frombuffer(np.random.get_state()[1].astype("<u4").tobytes(), dtype=np.uint8).copy()
        ),
        "numpy_pos": int(np.random.get_state()[2]),
        "python": torch.tensor(list(random.getstate()[1]), dtype=torch.int64),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    keys = np.frombuffer(state["numpy"].numpy().tobytes(), dtype="<u4").astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(int(x) for x in state["python"].tolist()), None))


def save_checkpoint(path: str | os.PathLike, payload: dict) -> None:
    """Write a checkpoint atomically (temporary file, then rename).

    A kill during the write leaves the previous checkpoint intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save({"format": CHECKPOINT_FORMAT, **payload}, fh)
        fh.flush()
        os.fsync(fh.fileno())  # the bytes are on disk before the rename makes them current
    os.replace(tmp, path)
    try:  # make the rename itself durable (POSIX); not possible on every platform
        dfd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary unpickling).

    Raises:
        BayesdynValueError: if the file is missing, truncated, not a bayesdyn checkpoint, or
            carries pickled objects.
    """
    path = Path(path)
    if not path.is_file():
        raise BayesdynValueError(f"checkpoint {str(path)!r} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for corrupt or unsafe files
        raise BayesdynValueError(
            f"checkpoint {str(path)!r} could not be loaded safely (weights_only=True): "
            f"{type(e).__name__}: {(str(e).strip().splitlines() or ['(no message)'])[0][:200]}"
        ) from e
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise BayesdynValueError(f"{str(path)!r} is not a bayesdyn checkpoint")
    return payload


class _Diverged(Exception):
    """Internal signal: this step's loss or gradient was non-finite (``reason`` says which)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _MinibatchObjective:
    """One step of the default loop: a random mini-batch of series, its loss and gradients.

    The mini-batch order comes from its own generator (``state_dict`` saves it in every
    checkpoint), so the data order survives a resume independently of the model's noise.
    """

    def __init__(self, model, batch, batch_size: int, elbo, seed: int | None):
        self.model, self.batch, self.bs, self.elbo = model, batch, batch_size, elbo
        self.B = batch.times.shape[0]
        self.n_obs_full = max(int(batch.mask.sum()), 1)
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()))
        self.order = torch.Generator().manual_seed(int(seed))

    def minibatch(self):
        """Next mini-batch and its number of observed values."""
        if self.bs < self.B:
            idx = torch.randperm(self.B, generator=self.order)[: self.bs]
            mb = _subset(self.batch, idx)
            return mb, max(int(mb.mask.sum()), 1)
        return self.batch, self.n_obs_full

    def __call__(self, step: int, kl_scale: float) -> float:
        """Loss of step ``step`` (gradients accumulated into the parameters)."""
        mb, n_obs = self.minibatch()
        loss = _loss(self.elbo, self.model, mb, kl_scale) / n_obs
        loss_val = _finite_loss(loss)
        loss.backward()
        return loss_val

    def state_dict(self) -> dict:
        return {"order": self.order.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if "order" in state:
            self.order.set_state(state["order"])


def _loss(elbo, model, batch, kl_scale: float) -> torch.Tensor:
    """Negative ELBO of ``batch``; a diverged SDE solve becomes a :class:`_Diverged` signal."""
    try:
        return elbo.differentiable_loss(model.model, model.guide, batch, kl_scale=kl_scale)
    except SolverDiverged as e:
        # Pyro appends a trace of the sample sites to errors raised inside them: keep line 1.
        raise _Diverged(f"the SDE solve diverged ({str(e).splitlines()[0]})") from e


def _same(a, b) -> bool:
    """Schedule entries agree (floats to a relative 1e-9: a decay rate recomputed from
    ``lr_final = lr * decay**num_steps`` differs from the original in its last bits)."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9)
    return a == b


def _finite_loss(loss: torch.Tensor) -> float:
    v = loss.detach().item()
    if not math.isfinite(v):
        raise _Diverged(f"the loss became {v}")
    return v


def _snapshot(x):
    """Deep copy of a (nested) checkpoint payload with tensors cloned."""
    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    if isinstance(x, dict):
        return {k: _snapshot(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_snapshot(v) for v in x)
    return copy.deepcopy(x)


def average_after_for(num_steps: int, fraction: float, name: str = "fraction") -> int | None:
    """``fit``'s ``average_after`` that averages over the last ``fraction`` of ``num_steps``.

    Returns None for ``fraction == 0`` (no averaging) or ``num_steps == 0``; otherwise the step
    after which averaging starts, at most ``num_steps - 1`` (so at least the last step counts).

    Raises:
        BayesdynValueError: naming ``name``, unless ``0 <= fraction < 1``.
    """
    if not 0.0 <= fraction < 1.0:
        raise BayesdynValueError(f"{name} must be a fraction in [0, 1); got {fraction}")
    if fraction == 0.0 or num_steps <= 0:
        return None
    return min(int(round(num_steps * (1.0 - fraction))), num_steps - 1)


class _IterateAverage:
    """Running mean of parameter tensors (Polyak–Ruppert averaging of optimiser iterates).

    ``update()`` folds in the current values; ``swapped_in()`` temporarily puts the average
    into the parameters (no-op before the first update); ``copy_to_params()`` keeps it there.
    """

    def __init__(self, params: list[torch.Tensor]):
        self.params = params
        self.count = 0
        self.mean: list[torch.Tensor] | None = None

    @torch.no_grad()
    def update(self) -> None:
        self.count += 1
        if self.mean is None:
            self.mean = [p.detach().clone() for p in self.params]
            return
        for m, p in zip(self.mean, self.params, strict=True):
            m.add_(p.detach() - m, alpha=1.0 / self.count)

    @contextlib.contextmanager
    def swapped_in(self):
        if self.mean is None:
            yield
            return
        saved = [p.detach().clone() for p in self.params]
        self.copy_to_params()
        try:
            yield
        finally:
            with torch.no_grad():
                for p, s in zip(self.params, saved, strict=True):
                    p.copy_(s)

    @torch.no_grad()
    def copy_to_params(self) -> None:
        if self.mean is not None:
            for p, m in zip(self.params, self.mean, strict=True):
                p.copy_(m)

    def state_dict(self) -> dict:
        return {"count": self.count, "mean": None if self.mean is None else list(self.mean)}

    def load_state_dict(self, d: dict | None) -> None:
        d = d or {"count": 0, "mean": None}
        self.count = int(d["count"])
        self.mean = None if d["mean"] is None else [m.clone() for m in d["mean"]]


def fit(
    model,
    data,
    *,
    num_steps: int = 1000,
    lr: float = 1e-2,
    lr_final: float | None = None,
    batch_size: int | None = None,
    kl_anneal_steps: int = 0,
    kl_min: float = 0.01,
    clip_norm: float | None = 10.0,
    num_particles: int = 1,
    elbo: PathELBO | None = None,
    val_data=None,
    val_every: int = 50,
    patience: int | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 100,
    resume: bool = False,
    seed: int | None = 0,
    progress: bool | None = None,
    log_every: int = 1,
    max_divergences: int = 4,
    chunk_size: int | None = None,
    data_parallel=None,
    average_after: int | None = None,
) -> FitResult:
    """Train a model (``model.model`` / ``model.guide``) by stochastic variational inference.

    Each step draws a mini-batch of series, evaluates :class:`PathELBO` and takes an Adam step.
    The loss is the negative ELBO divided by the number of observed values, so ``lr`` does not
    depend on the data size. Features:

    - KL annealing: the path and ``z0`` KL weight rises linearly from ``kl_min`` to 1 over
      ``kl_anneal_steps``;
    - gradient clipping (``clip_norm``) and an exponential learning-rate decay to ``lr_final``;
    - iterate averaging (Polyak–Ruppert; ``average_after``): from that step on the parameters'
      running mean is kept, validated and returned, which removes most of the noise that
      mini-batch Adam steps leave in the final parameters (it matters where the likelihood is
      very sensitive to a few parameters, e.g. a drift integrated over a long window);
    - early stopping on the validation loss (``val_data``, ``patience``), restoring the best
      parameters at the end;
    - checkpoints every ``checkpoint_every`` steps, written atomically (temporary file, fsync,
      rename), holding everything a resumed run needs to continue exactly as an uninterrupted
      one: model and optimiser state, the RNG states (torch, numpy, Python), the data order
      (the mini-batch generator's state), the annealing and learning-rate schedule, the
      learning-rate scale after divergences, history and early-stopping state;
      ``resume=True`` continues from the last one;
    - divergence recovery: when the loss, the gradient norm or the SDE solve turns
      non-finite, training rolls back to the last good checkpoint (the one written last, or
      the starting state), halves the learning rate and continues; the ``max_divergences``-th
      failure stops with :class:`FitDiverged`, the model rolled back to that checkpoint,
      which stays intact on disk. Each rollback is recorded in ``FitResult.divergences``.

    Long series: ``chunk_size`` trains by truncated backpropagation through time over time
    windows of about ``chunk_size`` observations (memory bounded by the window, see
    :mod:`bayesdyn.inference._chunked`). Several processes: ``data_parallel`` (see
    :mod:`bayesdyn.inference.distributed`) shards each global mini-batch across
    ``torch.distributed`` ranks and all-reduces the gradients.

    Args:
        model: a :class:`~bayesdyn.models.LatentSDE` (anything with ``model``, ``guide`` and
            ``parameters()``).
        data: :class:`~bayesdyn.data.IrregularTimeSeries` or ``IrregularBatch``.
        num_steps: optimisation steps.
        lr, lr_final: initial and final learning rates (default: ``lr_final = lr``).
        batch_size: series per step (default: all); the global batch under data parallelism.
        val_data: held-out series for validation (same types as ``data``).
        seed: seeds torch, numpy and Python and the data order (None to leave the RNGs).
        progress: show a progress bar (default: when stderr is a terminal).
        max_divergences: the number of divergences that stops training (1: stop at the first).
        chunk_size: observations per truncated-BPTT window (None: whole series).
        data_parallel: a :class:`~bayesdyn.inference.distributed.DataParallel`, or None.
        average_after: start averaging the parameters after this many steps (None: never);
            validation and the returned model then use the average of the iterates since.

    Returns:
        :class:`FitResult`.

    Raises:
        FitDiverged: after ``max_divergences`` divergences.
        BayesdynValueError: for invalid arguments, or when ``resume`` finds a checkpoint
            written with a different schedule.

    Shapes:
        ``data`` batches as ``times [B, T]``, ``values [B, T, D]``, ``mask [B, T, D]``.
    """
    num_steps = int(num_steps)
    if num_steps < 0:
        raise BayesdynValueError(f"num_steps must be >= 0; got {num_steps}")
    lr = check_positive("lr", lr)
    lr_final = lr if lr_final is None else check_positive("lr_final", lr_final)
    if clip_norm is not None:
        clip_norm = check_positive("clip_norm", clip_norm)
    if not 0.0 < kl_min <= 1.0:
        raise BayesdynValueError(f"kl_min must lie in (0, 1]; got {kl_min}")
    if resume and checkpoint_dir is None:
        raise BayesdynValueError("resume=True needs checkpoint_dir")
    for name, v in (("max_divergences", max_divergences), ("checkpoint_every", checkpoint_every)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise BayesdynValueError(f"{name} must be a positive integer; got {v!r}")
    if chunk_size is not None and data_parallel is not None:
        raise BayesdynValueError("chunk_size and data_parallel cannot be combined yet")
    if average_after is not None and (
        isinstance(average_after, bool)
        or not isinstance(average_after, int)
        or not 0 <= average_after < max(num_steps, 1)
    ):
        raise BayesdynValueError(
            f"average_after must be an integer in [0, num_steps={num_steps}); got {average_after!r}"
        )
    batch = _as_batch(data, "data")
    model.check_batch(batch)
    val_batch = None if val_data is None else _as_batch(val_data, "val_data")
    if val_batch is not None:
        model.check_batch(val_batch)
    B = batch.times.shape[0]
    if batch_size is not None and not (isinstance(batch_size, int) and batch_size >= 1):
        raise BayesdynValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    bs = B if batch_size is None else min(batch_size, B)
    elbo = elbo or PathELBO(
        num_particles=num_particles,
        vectorize_particles=num_particles > 1,
        max_plate_nesting=getattr(model, "max_plate_nesting", 2),
    )
    if seed is not None:
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
    if chunk_size is not None:
        from ._chunked import ChunkedObjective

        objective = ChunkedObjective(model, batch, chunk_size, elbo)
    elif data_parallel is not None:
        objective = data_parallel.objective(model, batch, bs, elbo, seed)
    else:
        objective = _MinibatchObjective(model, batch, bs, elbo, seed)
    is_writer = data_parallel is None or data_parallel.is_writer
    decay = (lr_final / lr) ** (1.0 / max(num_steps, 1))
    # The learning rate at step k is lr * decay**k: a resumed run may be longer (num_steps and
    # lr_final extended together, as when training in chunks), as long as the per-step decay
    # is the same.
    schedule = {
        "lr": lr,
        "lr_decay_per_step": decay,
        "kl_anneal_steps": int(kl_anneal_steps),
        "kl_min": float(kl_min),
        "batch_size": bs,
        "num_series": B,
        "seed": seed,
        "chunk_size": chunk_size,
        "world_size": 1 if data_parallel is None else data_parallel.num_shards,
        "average_after": average_after,
    }

    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.Adam(params, lr=lr)
    result = FitResult()
    start = 0
    state = {"best_state": None, "bad_vals": 0, "lr_scale": 1.0}
    average = _IterateAverage(params)
    ckpt_path = None if checkpoint_dir is None else Path(checkpoint_dir) / "checkpoint.pt"

    def payload(step: int) -> dict:
        return {
            "model": model.state_dict(),
            "optim": optim.state_dict(),
            "rng": _rng_state(),
            "data_order": objective.state_dict(),
            "schedule": schedule,
            "lr_scale": state["lr_scale"],
            "divergences": result.divergences,
            "step": step,
            "history": result.history,
            "best_step": result.best_step,
            "best_val_loss": result.best_val_loss,
            "best_state": state["best_state"],
            "bad_vals": state["bad_vals"],
            "average": average.state_dict(),
        }

    def restore(ck: dict) -> int:
        model.load_state_dict(ck["model"])
        optim.load_state_dict(ck["optim"])
        _set_rng_state(ck["rng"])
        objective.load_state_dict(ck.get("data_order", {}))
        state["lr_scale"] = float(ck.get("lr_scale", 1.0))
        state["best_state"] = ck.get("best_state")
        state["bad_vals"] = int(ck["bad_vals"])
        average.load_state_dict(ck.get("average"))
        result.history = [dict(h) for h in ck["history"]]
        result.divergences = [dict(d) for d in ck.get("divergences", [])]
        result.best_step = int(ck["best_step"])
        result.best_val_loss = ck["best_val_loss"]
        return int(ck["step"])

    if resume and ckpt_path is not None and ckpt_path.exists():
        ck = load_checkpoint(ckpt_path)
        old = ck.get("schedule")
        if old is not None:
            diff = {k: (old.get(k), v) for k, v in schedule.items() if not _same(old.get(k), v)}
            if diff:
                what = "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in diff.items())
                raise BayesdynValueError(
                    f"resume: checkpoint {str(ckpt_path)!r} was written with another schedule "
                    f"({what}); resume with the same settings or start a new run directory"
                )
        start = restore(ck)

    last_good = _snapshot(payload(start))  # the in-memory twin of the last good checkpoint

    def checkpoint(step: int) -> None:
        nonlocal last_good
        last_good = _snapshot(payload(step))
        if ckpt_path is not None and is_writer:
            save_checkpoint(ckpt_path, last_good)

    n_obs_val = None if val_batch is None else max(int(val_batch.mask.sum()), 1)
    if progress is None:
        progress = sys.stderr.isatty()
    bar = tqdm(total=num_steps, initial=start, disable=not progress, desc="fit", dynamic_ncols=True)
    t_start = time.perf_counter()
    step = start
    try:
        while step < num_steps:
            kl_scale = (
                1.0
                if kl_anneal_steps <= 0
                else min(1.0, kl_min + (1.0 - kl_min) * step / kl_anneal_steps)
            )
            for g in optim.param_groups:
                g["lr"] = lr * decay**step * state["lr_scale"]
            optim.zero_grad(set_to_none=True)
            try:
                loss_val = objective(step, kl_scale)
                gnorm = torch.nn.utils.clip_grad_norm_(params, clip_norm or float("inf"))
                if not math.isfinite(float(gnorm)):
                    raise _Diverged(f"the gradient norm became {float(gnorm)}")
            except _Diverged as d:
                optim.zero_grad(set_to_none=True)
                good = int(last_good["step"])
                event = {
                    "step": step + 1,  # 1-based, as in the history
                    "reason": d.reason,
                    "rolled_back_to": good,
                    "lr_scale": state["lr_scale"] * 0.5,
                }
                events = result.divergences + [event]  # the record outlives the rollback
                n_div = len(events)
                step = restore(_snapshot(last_good))
                result.divergences = events
                bar.n = step
                if n_div >= max_divergences:
                    raise FitDiverged(
                        f"training diverged {n_div} times (max_divergences={max_divergences}); "
                        f"the last time at step {event['step']}: {d.reason}. Each time it "
                        f"rolled back to the last good checkpoint and halved the learning "
                        f"rate; it now stops, rolled back to the last good parameters (step "
                        f"{good}), and the last good checkpoint is kept. Try a smaller lr, a "
                        "smaller dt, stable_drift=True or standardised data."
                    ) from None
                state["lr_scale"] = event["lr_scale"]
                bar.write(
                    f"fit: {d.reason} at step {event['step']}; rolled back to step {good} and "
                    f"halved the learning rate (scale {state['lr_scale']:g})"
                )
                continue
            optim.step()
            if average_after is not None and step + 1 > average_after:
                average.update()
            rec = {
                "step": step + 1,
                "loss": loss_val,
                "kl_scale": kl_scale,
                "lr": optim.param_groups[0]["lr"],
            }
            if val_batch is not None and ((step + 1) % val_every == 0 or step + 1 == num_steps):
                with torch.no_grad(), average.swapped_in():
                    v = elbo.differentiable_loss(model.model, model.guide, val_batch) / n_obs_val
                    best = result.best_val_loss is None or float(v) < result.best_val_loss
                    if best:
                        state["best_state"] = {
                            k: t.detach().clone() for k, t in model.state_dict().items()
                        }
                rec["val_loss"] = float(v)
                if best:
                    result.best_val_loss = rec["val_loss"]
                    result.best_step = step + 1
                    state["bad_vals"] = 0
                else:
                    state["bad_vals"] += 1
            if (step + 1) % log_every == 0 or "val_loss" in rec:
                result.history.append(rec)
            step += 1
            bar.update(1)
            post = {"loss": f"{loss_val:.4f}", "kl": f"{kl_scale:.2f}"}
            if result.best_val_loss is not None:
                post["val"] = f"{result.best_val_loss:.4f}"
            bar.set_postfix(post, refresh=False)
            if step % checkpoint_every == 0:
                checkpoint(step)
            if patience is not None and state["bad_vals"] >= patience:
                result.stopped_early = True
                break
    finally:
        bar.close()
        release_kernel_buffers()  # the kernels' step-to-step work buffers (up to 1 GiB)
    result.num_steps = step
    result.seconds = time.perf_counter() - t_start
    if state["best_state"] is None:
        result.best_step = step
    # The checkpoint keeps the last iterate (and the best state and running mean beside it),
    # so that a longer run resumed from it continues exactly; the model returned holds the
    # best (or averaged) parameters.
    checkpoint(step)
    if state["best_state"] is not None:
        model.load_state_dict(state["best_state"])
    else:
        average.copy_to_params()
    return result
