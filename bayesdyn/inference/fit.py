"""``fit``: the SVI training loop for latent SDEs, with annealing, checkpoints and early stopping."""

from __future__ import annotations

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
from .elbo import PathELBO

__all__ = ["FitResult", "fit", "load_checkpoint", "save_checkpoint"]

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
    """

    history: list[dict[str, float]] = field(default_factory=list)
    best_step: int = 0
    best_val_loss: float | None = None
    num_steps: int = 0
    seconds: float = 0.0
    stopped_early: bool = False

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
    torch.save({"format": CHECKPOINT_FORMAT, **payload}, tmp)
    os.replace(tmp, path)


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
            f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        ) from e
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise BayesdynValueError(f"{str(path)!r} is not a bayesdyn checkpoint")
    return payload


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
) -> FitResult:
    """Train a model (``model.model`` / ``model.guide``) by stochastic variational inference.

    Each step draws a mini-batch of series, evaluates :class:`PathELBO` and takes an Adam step.
    The loss is the negative ELBO divided by the number of observed values, so ``lr`` does not
    depend on the data size. Features:

    - KL annealing: the path and ``z0`` KL weight rises linearly from ``kl_min`` to 1 over
      ``kl_anneal_steps``;
    - gradient clipping (``clip_norm``) and an exponential learning-rate decay to ``lr_final``;
    - early stopping on the validation loss (``val_data``, ``patience``), restoring the best
      parameters at the end;
    - checkpoints every ``checkpoint_every`` steps (model, optimiser, RNG states, history),
      written atomically, and ``resume=True`` to continue from the last one;
    - a non-finite loss or gradient stops training with :class:`FitDiverged`; the model is
      rolled back to the last good state and the last good checkpoint is kept.

    Args:
        model: a :class:`~bayesdyn.models.LatentSDE` (anything with ``model``, ``guide`` and
            ``parameters()``).
        data: :class:`~bayesdyn.data.IrregularTimeSeries` or ``IrregularBatch``.
        num_steps: optimisation steps.
        lr, lr_final: initial and final learning rates (default: ``lr_final = lr``).
        batch_size: series per step (default: all).
        val_data: held-out series for validation (same types as ``data``).
        seed: seeds torch, numpy and Python for the run (None to leave them).
        progress: show a progress bar (default: when stderr is a terminal).

    Returns:
        :class:`FitResult`.

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

    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.Adam(params, lr=lr)
    decay = (lr_final / lr) ** (1.0 / max(num_steps, 1))
    result = FitResult()
    start = 0
    best_state = None
    bad_vals = 0
    ckpt_path = None if checkpoint_dir is None else Path(checkpoint_dir) / "checkpoint.pt"
    if resume and ckpt_path is not None and ckpt_path.exists():
        ck = load_checkpoint(ckpt_path)
        model.load_state_dict(ck["model"])
        optim.load_state_dict(ck["optim"])
        _set_rng_state(ck["rng"])
        start = int(ck["step"])
        result.history = [dict(h) for h in ck["history"]]
        result.best_step = int(ck["best_step"])
        result.best_val_loss = ck["best_val_loss"]
        best_state = ck.get("best_state")
        bad_vals = int(ck["bad_vals"])

    def checkpoint(step: int) -> None:
        if ckpt_path is None:
            return
        save_checkpoint(
            ckpt_path,
            {
                "model": model.state_dict(),
                "optim": optim.state_dict(),
                "rng": _rng_state(),
                "step": step,
                "history": result.history,
                "best_step": result.best_step,
                "best_val_loss": result.best_val_loss,
                "best_state": best_state,
                "bad_vals": bad_vals,
            },
        )

    n_obs_full = max(int(batch.mask.sum()), 1)
    n_obs_val = None if val_batch is None else max(int(val_batch.mask.sum()), 1)
    last_good = copy.deepcopy(model.state_dict())
    if progress is None:
        progress = sys.stderr.isatty()
    bar = tqdm(total=num_steps, initial=start, disable=not progress, desc="fit", dynamic_ncols=True)
    t_start = time.perf_counter()
    step = start
    try:
        for step in range(start, num_steps):
            kl_scale = (
                1.0
                if kl_anneal_steps <= 0
                else min(1.0, kl_min + (1.0 - kl_min) * step / kl_anneal_steps)
            )
            for g in optim.param_groups:
                g["lr"] = lr * decay**step
            if bs < B:
                idx = torch.randperm(B)[:bs]
                mb = _subset(batch, idx)
                n_obs = max(int(mb.mask.sum()), 1)
            else:
                mb, n_obs = batch, n_obs_full
            optim.zero_grad(set_to_none=True)
            try:
                loss = (
                    elbo.differentiable_loss(model.model, model.guide, mb, kl_scale=kl_scale)
                    / n_obs
                )
            except SolverDiverged as e:
                raise FitDiverged(
                    f"the SDE solve diverged at step {step}; rolled back to the last good "
                    f"parameters. {e}"
                ) from e
            loss_val = loss.detach().item()
            if not math.isfinite(loss_val):
                raise FitDiverged(
                    f"the loss became {loss_val} at step {step}; rolled back to the last good "
                    "parameters. Try a smaller lr, a smaller dt, stable_drift=True or standardised data."
                )
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(params, clip_norm or float("inf"))
            if not math.isfinite(float(gnorm)):
                raise FitDiverged(
                    f"the gradient norm became {float(gnorm)} at step {step}; rolled back to the "
                    "last good parameters. Try a smaller lr or clip_norm."
                )
            optim.step()
            last_good = {k: v.detach().clone() for k, v in model.state_dict().items()}
            rec = {
                "step": step + 1,
                "loss": loss_val,
                "kl_scale": kl_scale,
                "lr": optim.param_groups[0]["lr"],
            }
            if val_batch is not None and ((step + 1) % val_every == 0 or step + 1 == num_steps):
                with torch.no_grad():
                    v = elbo.differentiable_loss(model.model, model.guide, val_batch) / n_obs_val
                rec["val_loss"] = float(v)
                if result.best_val_loss is None or rec["val_loss"] < result.best_val_loss:
                    result.best_val_loss = rec["val_loss"]
                    result.best_step = step + 1
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    bad_vals = 0
                else:
                    bad_vals += 1
            if (step + 1) % log_every == 0 or "val_loss" in rec:
                result.history.append(rec)
            bar.update(1)
            post = {"loss": f"{loss_val:.4f}", "kl": f"{kl_scale:.2f}"}
            if result.best_val_loss is not None:
                post["val"] = f"{result.best_val_loss:.4f}"
            bar.set_postfix(post, refresh=False)
            if (step + 1) % checkpoint_every == 0:
                checkpoint(step + 1)
            if patience is not None and bad_vals >= patience:
                result.stopped_early = True
                step += 1
                break
        else:
            step = num_steps
    except FitDiverged:
        model.load_state_dict(last_good)
        raise
    finally:
        bar.close()
    result.num_steps = step
    result.seconds = time.perf_counter() - t_start
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        result.best_step = step
    checkpoint(step)
    return result
