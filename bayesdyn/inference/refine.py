"""Full-batch L-BFGS refinement of a fitted model (a deterministic finish after Adam).

Mini-batch Adam leaves every parameter jittering by about one step. Where the likelihood is
very sensitive to a few directions (a drift integrated over a long window: a drift error
``delta`` shifts a log-intensity by ``delta t``), that jitter alone costs a measurable share of
the log-likelihood, and averaging the iterates only removes part of it. :func:`refine_lbfgs`
instead minimises the negative ELBO of the *whole* training set with quasi-Newton steps
(``torch.optim.LBFGS`` with a strong-Wolfe line search). The noise of the Monte Carlo ELBO
is frozen: every evaluation reseeds torch with the same seed, so the paths use common random
numbers and the objective is one smooth deterministic function (a sample-average
approximation of the ELBO; with a small diffusion it is close to the expectation).

This is cheap when a full-data evaluation is: for event sequences use per-series grids
(``LatentJumpSDE(grid="per_series")``), where the whole training split is one batched solve.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .._validation import BayesdynValueError
from .elbo import PathELBO
from .fit import _as_batch, _Diverged, _finite_loss, _loss

__all__ = ["RefineResult", "refine_lbfgs"]


@dataclass
class RefineResult:
    """What :func:`refine_lbfgs` returns.

    Attributes:
        history: one dict per round: ``round`` (1-based), ``loss`` (the frozen-noise negative
            ELBO per observed value after the round), ``evaluations`` (cumulative objective
            evaluations), ``seconds`` and, with validation data, ``val_loss``.
        initial_loss, initial_val_loss: the same before the first round.
        best_round: the round whose parameters were kept (0: the starting parameters).
        best_val_loss: the validation loss of the kept parameters (None without validation).
        divergences: one dict per round that hit a non-finite loss or SDE solve: ``round``,
            ``reason`` and ``lr`` (the L-BFGS step scale of the retry).
        stopped: why the rounds ended early (``"converged"``, ``"diverged: ..."``), or None.
        seconds: wall time.
    """

    history: list[dict[str, float]] = field(default_factory=list)
    initial_loss: float = math.nan
    initial_val_loss: float | None = None
    best_round: int = 0
    best_val_loss: float | None = None
    divergences: list[dict] = field(default_factory=list)
    stopped: str | None = None
    seconds: float = 0.0

    def summary(self) -> str:
        """One-line text summary."""
        last = self.history[-1]["loss"] if self.history else self.initial_loss
        s = (
            f"L-BFGS refinement: {len(self.history)} round(s) in {self.seconds:.1f} s; loss "
            f"{self.initial_loss:.6g} -> {last:.6g} (negative ELBO per observed value)"
        )
        if self.best_val_loss is not None:
            s += (
                f"; validation {self.initial_val_loss:.6g} -> {self.best_val_loss:.6g} "
                f"(kept round {self.best_round})"
            )
        if self.divergences:
            s += f"; {len(self.divergences)} divergence(s) retried with smaller steps"
        if self.stopped:
            s += f"; stopped: {self.stopped}"
        return s


def _positive_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise BayesdynValueError(f"{name} must be a positive integer; got {v!r}")
    return v


def refine_lbfgs(
    model,
    data,
    *,
    num_rounds: int = 4,
    max_iter: int = 25,
    history_size: int = 50,
    val_data=None,
    seed: int = 0,
    num_particles: int = 1,
    max_divergences: int = 3,
    progress: bool | None = None,
) -> RefineResult:
    """Refine a fitted model by full-batch L-BFGS on the frozen-noise ELBO (see the module).

    Each round is one ``LBFGS.step`` of up to ``max_iter`` iterations (each iteration costs
    one or a few evaluations of the whole data set, forward and backward). After each round
    the loss (and the validation loss) is recorded; with ``val_data`` the parameters of the
    best validation loss, the starting ones included, are kept, so refinement never makes the
    validation score worse. When a line search steps so far that the loss or the SDE solve
    turns non-finite, the round restarts from the parameters of the last finished round with a
    fresh L-BFGS memory and half the step scale; the ``max_divergences``-th such failure stops
    the rounds there. Rounds also stop once a round no longer changes the loss.

    Args:
        model: a fitted model with ``model``/``guide``/``parameters()``/``check_batch`` (a
            :class:`~bayesdyn.models.LatentSDE` or :class:`~bayesdyn.models.LatentJumpSDE`).
        data: the training series (``IrregularTimeSeries`` or a batch; a ``JumpBatch`` for
            jump models), evaluated as one batch.
        num_rounds: L-BFGS steps (validation points).
        max_iter: iterations per round.
        history_size: L-BFGS memory.
        val_data: held-out series for selection (same types as ``data``), or None.
        seed: the seed of the frozen noise.
        num_particles: Monte Carlo particles of the ELBO.
        max_divergences: non-finite rounds tolerated (each retried with half the step scale).
        progress: show a progress bar over rounds (default: when stderr is a terminal).

    Returns:
        :class:`RefineResult`; the model holds the kept parameters.

    Raises:
        BayesdynValueError: for invalid arguments, or a model whose starting loss (or
            validation loss) is not finite.

    Shapes:
        ``data`` batches as ``times [B, T]``, ``values [B, T, D]``, ``mask [B, T, D]`` (and
        ``events`` for jump models).
    """
    for name, v in (
        ("num_rounds", num_rounds),
        ("max_iter", max_iter),
        ("history_size", history_size),
        ("num_particles", num_particles),
        ("max_divergences", max_divergences),
    ):
        _positive_int(name, v)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise BayesdynValueError(f"seed must be an integer; got {seed!r}")
    batch = _as_batch(data, "data")
    model.check_batch(batch)
    val_batch = None
    if val_data is not None:
        val_batch = _as_batch(val_data, "val_data")
        model.check_batch(val_batch)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise BayesdynValueError("model has no trainable parameters to refine")
    if progress is None:
        progress = sys.stderr.isatty()
    elbo = PathELBO(num_particles=num_particles)
    n_obs = max(int(batch.mask.sum()), 1)
    n_val = None if val_batch is None else max(int(val_batch.mask.sum()), 1)
    evaluations = 0

    def frozen(b, n) -> torch.Tensor:
        # Same seed at every evaluation: common random numbers, a deterministic objective.
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return _loss(elbo, model, b, 1.0) / n

    def closure() -> torch.Tensor:
        nonlocal evaluations
        opt.zero_grad()
        loss = frozen(batch, n_obs)
        evaluations += 1
        _finite_loss(loss)
        loss.backward()
        return loss

    def val_loss() -> float | None:
        if val_batch is None:
            return None
        with torch.no_grad():
            return float(frozen(val_batch, n_val))

    def snapshot() -> dict:
        return {k: t.detach().clone() for k, t in model.state_dict().items()}

    def make_opt(lr: float) -> torch.optim.LBFGS:
        return torch.optim.LBFGS(
            params,
            lr=lr,
            max_iter=max_iter,
            history_size=history_size,
            line_search_fn="strong_wolfe",
            tolerance_grad=1e-10,
            tolerance_change=1e-14,
        )

    start = time.perf_counter()
    result = RefineResult()
    step_scale = 1.0
    opt = make_opt(step_scale)
    try:
        with torch.no_grad():
            result.initial_loss = _finite_loss(frozen(batch, n_obs))
        v0 = result.initial_val_loss = result.best_val_loss = val_loss()
        if v0 is not None and not math.isfinite(v0):
            raise _Diverged(f"the validation loss is {v0}")
    except _Diverged as d:
        raise BayesdynValueError(
            f"refine_lbfgs needs a model whose loss is finite to start from; {d.reason} "
            "(fit it first, or check the data)"
        ) from None
    best = snapshot()
    last_good = best
    prev = result.initial_loss
    bar = tqdm(total=num_rounds, disable=not progress, desc="L-BFGS refine")
    r = 0
    while r < num_rounds:
        try:
            opt.step(closure)
            with torch.no_grad():
                loss = _finite_loss(frozen(batch, n_obs))
            v = val_loss()
        except _Diverged as d:
            model.load_state_dict(last_good)
            step_scale *= 0.5
            result.divergences.append({"round": r + 1, "reason": d.reason, "lr": step_scale})
            if len(result.divergences) >= max_divergences:
                result.stopped = f"diverged: {d.reason} in round {r + 1}"
                break
            opt = make_opt(step_scale)  # a fresh memory: the old one led there
            continue
        r += 1
        bar.update(1)
        rec = {
            "round": r,
            "loss": loss,
            "evaluations": evaluations,
            "seconds": time.perf_counter() - start,
        }
        last_good = snapshot()
        if v is not None:
            rec["val_loss"] = v
            if v < result.best_val_loss:
                result.best_val_loss, result.best_round, best = v, r, last_good
        else:
            result.best_round, best = r, last_good
        result.history.append(rec)
        bar.set_postfix(loss=f"{loss:.6g}", **({} if v is None else {"val": f"{v:.6g}"}))
        if abs(prev - loss) <= 1e-12 * max(1.0, abs(loss)):
            result.stopped = "converged"
            break
        prev = loss
    bar.close()
    model.load_state_dict(best)
    result.seconds = time.perf_counter() - start
    return result
