"""Point-process benchmark: LatentJumpSDE on the Neural Jump SDE data sets (Jia & Benson 2019).

Usage::

    nice -n 10 .venv/bin/python benchmarks/bench_point_processes.py [--seed 0]
        [--config benchmarks/configs/point_processes.json] [--datasets poisson,self_inhibiting]
        [--steps N] [--out benchmarks/results]

Protocol, per data set (``../shared/data/point_processes/<name>_{training,validation,testing}.csv``,
sequences on ``[0, 100]``):

- train a :class:`~bayesdyn.models.LatentJumpSDE` on the training split with ``bayesdyn.fit``
  (mini-batches of sequences; ``guide="prior"`` makes the ELBO the expected log-likelihood of
  the events along prior paths);
- with ``average_last`` > 0, average the parameters over that last fraction of the steps
  (Polyak–Ruppert, ``fit(average_after=...)``), so validation scores and the test uses the
  running mean of the iterates;
- every ``eval_every`` steps score the validation split (its ELBO, i.e. its log-likelihood
  along a prior path) and keep the parameters with the best score;
- with ``refine_rounds`` > 0, finish with that many rounds of ``refine_iters`` full-batch
  L-BFGS iterations on the whole training split (``bayesdyn.inference.refine_lbfgs``: the
  ELBO with frozen noise), keeping the round with the best validation score (the Adam result
  included). Per-series grids (``model.grid = "per_series"``) make a whole-split evaluation
  one batched solve of ~n steps instead of a union grid of ~300 n;
- report the test log-likelihood per event and per unit time (importance estimate over
  ``test_samples`` prior paths) and the gap to the true process's exact log-likelihood;
- intensity MAPE: the model's predictive intensity (mean over prior paths, which jump at the
  sequence's own past events) against the true intensity on the grid ``mape_dt, 2 mape_dt, ...,
  100`` of every test sequence, ``mean |lambda_hat - lambda| / lambda``.

The true processes (parameters of the data generator in the jj585 branch of
000Justin000/torchdiffeq, ``examples/point_processes*.py``), checked here by reproducing the
oracle log-likelihoods of ../shared/data/README.md on the test split:

- poisson: rate 1;
- exponential_hawkes: ``lambda(t) = 0.2 + 0.8 sum_{t_i < t} exp(-(t - t_i))``;
- self_inhibiting (self-correcting): ``lambda(t) = exp(0.5 t - 0.2 N(t-))``;
- powerlaw_hawkes: the file does not match its stated parameters, so it has no oracle (its
  log-likelihood is reported without a gap or MAPE).

The config's ``overrides`` section sets per-data-set values over the shared ones
(``{"self_inhibiting": {"num_steps": 450}}``; keys ``num_steps``, ``batch_size``, ``lr``,
``lr_final``, ``clip_norm``, ``eval_every``, ``average_last``, ``refine_rounds``,
``refine_iters`` and ``model``, whose entries merge into the model section); unknown data sets or keys are errors. ``--steps`` replaces every ``num_steps``.

The last line printed is ``worst_gap_to_oracle_pct=<number>`` (the largest relative gap of the
test log-likelihood per event over the data sets with an oracle; positive = worse than the
truth). Results go to ``benchmarks/results/point_processes.json``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _bench_common as common  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import bayesdyn  # noqa: E402
from bayesdyn._validation import BayesdynValueError  # noqa: E402
from bayesdyn.data import (  # noqa: E402
    hawkes_intensity,
    hawkes_log_likelihood,
    load_point_process,
    self_correcting_intensity,
    self_correcting_log_likelihood,
)
from bayesdyn.inference import (  # noqa: E402
    average_after_for,
    event_log_likelihood,
    refine_lbfgs,
)
from bayesdyn.models import LatentJumpSDE, LatentJumpSDEConfig  # noqa: E402

NAME = "point_processes"
T_END = 100.0
#: Exact test log-likelihood of the true process (../shared/data/README.md): per event, per time.
ORACLE = {
    "poisson": (-1.0051, -1.0000),
    "exponential_hawkes": (-0.4470, -0.4494),
    "self_inhibiting": (-0.0474, -0.1164),
}
#: Intensity MAPE reported by the Neural Jump SDE paper (Jia & Benson 2019, Table 1).
PAPER_MAPE = {"exponential_hawkes": 5.9, "self_inhibiting": 9.3, "powerlaw_hawkes": 17.1}
HAWKES = dict(baseline=0.2, alpha=0.8, beta=1.0)  # alpha: branching ratio; kernel 0.8 e^{-t}
SELF_INHIBITING = dict(mu=0.5, beta=0.2)
DATASETS = ("poisson", "exponential_hawkes", "self_inhibiting", "powerlaw_hawkes")

SCHEMA = {
    "datasets": list,
    "model": dict,
    "num_steps": int,
    "batch_size": int,
    "lr": float,
    "lr_final": float,
    "clip_norm": float,
    "eval_every": int,
    "average_last": float,
    "refine_rounds": int,
    "refine_iters": int,
    "val_samples": int,
    "test_samples": int,
    "eval_chunk_size": int,
    "mape_dt": float,
    "mape_samples": int,
    "mape_chunk_size": int,
    "overrides": dict,
}

#: Keys a per-data-set entry of ``overrides`` may set (``model`` merges into the model section).
OVERRIDE_KEYS = (
    "num_steps",
    "batch_size",
    "lr",
    "lr_final",
    "clip_norm",
    "eval_every",
    "average_last",
    "refine_rounds",
    "refine_iters",
    "model",
)


def load_pp_config(path) -> dict:
    """Read and check the config (names, types, positive values, known data sets)."""
    cfg = common.load_config(path, SCHEMA)
    where = f"config {os.path.basename(str(path))}"
    common.check_positive_keys(
        cfg,
        ["num_steps", "batch_size", "lr", "lr_final", "clip_norm", "eval_every", "refine_iters"]
        + ["val_samples", "test_samples", "eval_chunk_size", "mape_dt", "mape_samples"]
        + ["mape_chunk_size"],
        where,
    )
    check_average_last(cfg, where)
    check_refine_rounds(cfg, where)
    bad = [d for d in cfg["datasets"] if d not in DATASETS]
    if bad or not cfg["datasets"]:
        raise BayesdynValueError(
            f"{where}: 'datasets' must be a non-empty list drawn from {list(DATASETS)}; got {bad}"
        )
    if "init_intensity" in cfg["model"]:
        raise BayesdynValueError(
            f"{where}: model.init_intensity is set from the training data's event rate; remove it"
        )
    cfg["model_config"] = LatentJumpSDEConfig.from_dict(cfg["model"])  # checks the names
    for name, ov in cfg["overrides"].items():
        if name == "_comment":
            continue
        if name not in DATASETS:
            raise BayesdynValueError(
                f"{where}: overrides: unknown data set {name!r}; known {list(DATASETS)}"
            )
        if not isinstance(ov, dict):
            raise BayesdynValueError(f"{where}: overrides.{name} must be an object; got {ov!r}")
        bad = sorted(set(ov) - set(OVERRIDE_KEYS) - {"_comment"})
        if bad:
            raise BayesdynValueError(
                f"{where}: overrides.{name}: unknown key(s) {bad}; allowed {list(OVERRIDE_KEYS)}"
            )
        dataset_config(cfg, name, where)  # checks the types, values and model names
    return cfg


def check_average_last(cfg: dict, where: str) -> None:
    """Raise unless ``average_last`` (the fraction of the steps, at the end, whose iterates are
    averaged; 0: none) lies in ``[0, 1)``."""
    average_after_for(1, cfg["average_last"], f"{where}: 'average_last'")


def check_refine_rounds(cfg: dict, where: str) -> None:
    """Raise unless ``refine_rounds`` (L-BFGS rounds after Adam; 0: none) is ``>= 0``."""
    if cfg["refine_rounds"] < 0:
        raise BayesdynValueError(
            f"{where}: 'refine_rounds' must be >= 0 (0: no L-BFGS refinement); got "
            f"{cfg['refine_rounds']}"
        )


def dataset_config(cfg: dict, name: str, where: str = "config") -> dict:
    """The config of data set ``name``: the shared one with ``overrides[name]`` applied (its
    ``model`` entries merge into ``model``)."""
    ov = {k: v for k, v in cfg["overrides"].get(name, {}).items() if k != "_comment"}
    out = dict(cfg)
    for k, v in ov.items():
        if k == "model":
            if not isinstance(v, dict):
                raise BayesdynValueError(f"{where}: overrides.{name}.model must be an object")
            if "init_intensity" in v:
                raise BayesdynValueError(
                    f"{where}: overrides.{name}.model.init_intensity is set from the data; remove it"
                )
            out["model"] = {**cfg["model"], **v}
        else:
            out[k] = common.check_value(f"{where}: overrides.{name}", k, v, SCHEMA[k])
            if k == "average_last":
                check_average_last(out, f"{where}: overrides.{name}")
            elif k == "refine_rounds":
                check_refine_rounds(out, f"{where}: overrides.{name}")
            else:
                common.check_positive_keys(out, [k], f"{where}: overrides.{name}")
    try:
        out["model_config"] = LatentJumpSDEConfig.from_dict(out["model"])
    except (BayesdynValueError, TypeError) as e:
        if name not in cfg["overrides"]:
            raise
        raise BayesdynValueError(f"{where}: overrides.{name}.model: {e}") from e
    return out


# ------------------------------------------------------------------ the true processes
def true_log_likelihood(name: str, events: np.ndarray) -> float | None:
    """Exact log-likelihood of one sequence on ``[0, 100]`` under the generating process."""
    if name == "poisson":
        return -T_END  # rate 1: N log 1 - 1 * 100
    if name == "exponential_hawkes":
        return hawkes_log_likelihood(events, 0.0, T_END, **HAWKES)
    if name == "self_inhibiting":
        return self_correcting_log_likelihood(events, 0.0, T_END, **SELF_INHIBITING)
    return None


def true_intensity(name: str, t: np.ndarray, events: np.ndarray) -> np.ndarray | None:
    """True intensity (left limits) at ``t [Q]``, or None without an oracle."""
    if name == "poisson":
        return np.ones_like(t)
    if name == "exponential_hawkes":
        return hawkes_intensity(t, events, **HAWKES)
    if name == "self_inhibiting":
        return self_correcting_intensity(t, events, **SELF_INHIBITING)
    return None


# ------------------------------------------------------------------ training and scoring
def train(model, train_b, val_b, cfg: dict, seed: int, log) -> dict:
    """One ``bayesdyn.fit`` run on mini-batches of ``batch_size`` training sequences, with
    validation every ``eval_every`` steps; ``fit`` keeps the parameters of the best validation
    score (with ``guide="prior"`` the validation ELBO is the log-likelihood of the validation
    events along one prior path: a selection on the validation log-likelihood)."""
    num_series = train_b.times.shape[0]
    n_val_events = int(val_b.events.counts.sum())
    res = bayesdyn.fit(
        model,
        train_b,
        num_steps=cfg["num_steps"],
        lr=cfg["lr"],
        lr_final=cfg["lr_final"],
        batch_size=cfg["batch_size"],
        clip_norm=cfg["clip_norm"],
        val_data=val_b,
        val_every=cfg["eval_every"],
        average_after=average_after_for(cfg["num_steps"], cfg["average_last"], "average_last"),
        seed=seed,
        progress=False,
    )
    epochs = res.num_steps * cfg["batch_size"] / num_series
    history = []
    for h in res.history:
        if "val_loss" in h:
            k = h["step"]
            loss = float(
                np.mean([r["loss"] for r in res.history[max(0, k - cfg["eval_every"]) : k]])
            )
            val = -h["val_loss"] / n_val_events
            history.append({"step": k, "train_loss": loss, "val_ll_per_event": val})
            mark = " *" if k == res.best_step else ""
            log(
                f"  step {k:4d}  epoch {k * cfg['batch_size'] / num_series:5.2f}  "
                f"-ELBO/batch {loss:9.2f}  val ll/event {val:8.4f}{mark}"
            )
    log(f"  {res.summary()}; {res.seconds / max(epochs, 1e-9):.1f} s per epoch")
    out = {
        "best_step": res.best_step,
        "best_val_ll_per_event": -res.best_val_loss / n_val_events,
        "steps_done": res.num_steps,
        "epochs": epochs,
        "fit_seconds": res.seconds,
        "seconds_per_epoch": res.seconds / max(epochs, 1e-9),
        "history": history,
    }
    if cfg["refine_rounds"]:
        # Full-batch L-BFGS on the frozen-noise ELBO of the whole training split, selected on
        # the validation split (the starting point included, so it cannot make that worse).
        ref = refine_lbfgs(
            model,
            train_b,
            val_data=val_b,
            num_rounds=cfg["refine_rounds"],
            max_iter=cfg["refine_iters"],
            seed=seed,
            progress=False,
        )
        n_train_events = int(train_b.events.counts.sum())
        for h in ref.history:
            log(
                f"  L-BFGS round {h['round']}  evaluations {h['evaluations']:3d}  train ll/event "
                f"{-h['loss'] / n_train_events:8.5f}  val ll/event "
                f"{-h['val_loss'] / n_val_events:8.5f}{' *' if h['round'] == ref.best_round else ''}"
            )
        log(f"  {ref.summary()}")
        out["refine"] = {
            "seconds": ref.seconds,
            "best_round": ref.best_round,
            "stopped": ref.stopped,
            "val_ll_per_event_before": -ref.initial_val_loss / n_val_events,
            "val_ll_per_event_after": -ref.best_val_loss / n_val_events,
            "history": ref.history,
        }
        out["best_val_ll_per_event"] = -ref.best_val_loss / n_val_events
        out["fit_seconds"] += ref.seconds
    return out


def evaluate(name: str, model, test_s, cfg: dict, seed: int) -> dict:
    """Test log-likelihood (per event, per time), gap to the oracle and intensity MAPE.

    The log-likelihood is scored on union grids of ``eval_chunk_size`` sequences, the
    training batch size, so test grids are as fine as the training grids (the model is the
    Euler discretisation on such a grid). The MAPE pass adds the query grid (every
    ``mape_dt``), on chunks of ``mape_chunk_size`` sequences.
    """
    ll = event_log_likelihood(
        model, test_s, cfg["test_samples"], chunk_size=cfg["eval_chunk_size"], seed=seed
    )
    out = {
        "test_ll_per_event": ll.per_event(),
        "test_ll_per_time": ll.per_time(),
        "num_test_events": int(ll.num_events.sum()),
        # Spread of one prior path's score around the importance estimate.
        "test_ll_per_event_single_path_sd": float(ll.per_sample.sum(1).std() / ll.num_events.sum()),
    }
    events = [np.asarray(e) for e in test_s.events]
    n_ev = sum(e.size for e in events)
    true = [true_log_likelihood(name, e) for e in events]
    if true[0] is None:
        return out
    o_ev, o_t = sum(true) / n_ev, sum(true) / (T_END * len(events))
    ref_ev, ref_t = ORACLE[name]
    if abs(o_ev - ref_ev) > 5e-4 or abs(o_t - ref_t) > 5e-4:
        raise BayesdynValueError(
            f"{name}: the true process's log-likelihood {o_ev:.4f}/event does not reproduce "
            f"the README's {ref_ev}: wrong generator parameters"
        )
    out["oracle_ll_per_event"] = o_ev
    out["oracle_ll_per_time"] = o_t
    out["gap_to_oracle_pct"] = 100.0 * (o_ev - out["test_ll_per_event"]) / abs(o_ev)
    q = cfg["mape_dt"] * torch.arange(1, int(round(T_END / cfg["mape_dt"])) + 1)
    q = q.to(torch.get_default_dtype())
    lam = event_log_likelihood(
        model,
        test_s,
        cfg["mape_samples"],
        query_times=q,
        chunk_size=cfg["mape_chunk_size"],
        seed=seed + 1,
    ).mean_intensity()  # [B, Q]
    tq = q.numpy()
    ape = [
        np.abs(lam[b].numpy() - lt) / lt
        for b, e in enumerate(events)
        for lt in [true_intensity(name, tq, e)]
    ]
    out["intensity_mape_pct"] = 100.0 * float(np.mean(ape))
    return out


def poisson_baseline(train_s, test_s) -> float:
    """Test log-likelihood per event of a constant intensity fitted to the training split."""
    rate = sum(len(e) for e in train_s.events) / (T_END * len(train_s))
    n = sum(len(e) for e in test_s.events)
    return (n * math.log(rate) - rate * T_END * len(test_s)) / n


def run_dataset(name: str, cfg: dict, seed: int, log) -> dict:
    """Train, select and test on one data set (with its ``overrides`` entry applied)."""
    cfg = dataset_config(cfg, name)
    path = common.SHARED_DATA / "point_processes"
    splits = {
        s: load_point_process(path / f"{name}_{s}.csv")
        for s in ("training", "validation", "testing")
    }
    rate = sum(len(e) for e in splits["training"].events) / (T_END * len(splits["training"]))
    torch.manual_seed(seed)
    model = LatentJumpSDE(config=LatentJumpSDEConfig(**{**cfg["model"], "init_intensity": rate}))
    n_par = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(
        f"{name}: {len(splits['training'])}/{len(splits['validation'])}/{len(splits['testing'])} "
        f"sequences; training rate {rate:.3f} events per unit time; {n_par} parameters"
    )
    train_b = splits["training"].to_jump_batch()
    tr = train(model, train_b, splits["validation"].to_jump_batch(), cfg, seed, log)
    t0 = time.perf_counter()
    res = evaluate(name, model, splits["testing"], cfg, seed + 2)
    res["test_seconds"] = time.perf_counter() - t0
    res["poisson_baseline_ll_per_event"] = poisson_baseline(splits["training"], splits["testing"])
    res["paper_intensity_mape_pct"] = PAPER_MAPE.get(name)
    res["num_parameters"] = n_par
    res["training"] = tr
    with torch.no_grad():
        res["diffusion"] = float(
            model.core.diffusion(torch.zeros(1, model.config.latent_dim)).max()
        )
        res["z0_prior_scale"] = model.core.z0_prior.scale().tolist()
    gap = res.get("gap_to_oracle_pct")
    log(
        f"  test ll/event {res['test_ll_per_event']:.4f} (per time {res['test_ll_per_time']:.4f})"
        + (
            f"; oracle {res['oracle_ll_per_event']:.4f}: gap {gap:.2f}%; intensity MAPE "
            f"{res['intensity_mape_pct']:.1f}% (paper {PAPER_MAPE.get(name, '-')}%); "
            f"diffusion {res['diffusion']:.4f}; p(z0) scale "
            + ", ".join(f"{v:.3g}" for v in res["z0_prior_scale"])
            if gap is not None
            else "; no oracle"
        )
        + f"; Poisson baseline {res['poisson_baseline_ll_per_event']:.4f}"
    )
    return res


def summary_table(results: dict) -> list[dict]:
    """README rows (``metric``, ``bayesdyn``, ``published``) from the per-data-set results of
    :func:`run_dataset`: the test log-likelihood per event next to the true process's, and
    the intensity MAPE next to the Neural Jump SDE paper's."""
    rows = []
    for name, r in results.items():
        if "oracle_ll_per_event" in r:
            rows.append(
                {
                    "metric": f"{name}: test log-lik / event (gap to the true process)",
                    "bayesdyn": f"{r['test_ll_per_event']:.4f} ({r['gap_to_oracle_pct']:.2f}%)",
                    "published": f"true process {r['oracle_ll_per_event']:.4f}; target gap < 1%",
                }
            )
        else:
            rows.append(
                {
                    "metric": f"{name}: test log-lik / event",
                    "bayesdyn": f"{r['test_ll_per_event']:.4f}",
                    "published": "no trustworthy oracle",
                }
            )
        if r.get("paper_intensity_mape_pct") is not None and "intensity_mape_pct" in r:
            rows.append(
                {
                    "metric": f"{name}: intensity MAPE",
                    "bayesdyn": f"{r['intensity_mape_pct']:.1f}%",
                    "published": f"{r['paper_intensity_mape_pct']}% (Jia & Benson 2019)",
                }
            )
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(common.CONFIG_DIR / "point_processes.json"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--datasets", default=None, help="comma-separated subset of the config's")
    p.add_argument("--steps", type=int, default=None, help="override num_steps (dev runs)")
    p.add_argument("--out", default=str(common.RESULTS_DIR), help="results directory")
    args = p.parse_args(argv)
    common.setup_torch()
    torch.set_default_dtype(torch.float64)  # likelihoods compared at the 0.1% level
    cfg = load_pp_config(args.config)
    if args.steps is not None:
        if args.steps < 1:
            raise BayesdynValueError(f"--steps must be >= 1; got {args.steps}")
        cfg["num_steps"] = args.steps
        for ov in cfg["overrides"].values():  # --steps wins over per-data-set num_steps too
            if isinstance(ov, dict):
                ov.pop("num_steps", None)
    names = cfg["datasets"] if args.datasets is None else args.datasets.split(",")
    bad = [n for n in names if n not in DATASETS]
    if bad:
        raise BayesdynValueError(f"--datasets: unknown {bad}; known {list(DATASETS)}")

    def log(s):
        print(s, flush=True)

    t_all = time.perf_counter()
    results = {n: run_dataset(n, cfg, args.seed, log) for n in names}
    total = time.perf_counter() - t_all
    rows = []
    for n, r in results.items():
        rows.append(
            {
                "data set": n,
                "test ll/event": f"{r['test_ll_per_event']:.4f}",
                "oracle": f"{r['oracle_ll_per_event']:.4f}" if "oracle_ll_per_event" in r else "-",
                "gap %": f"{r['gap_to_oracle_pct']:.2f}" if "gap_to_oracle_pct" in r else "-",
                "ll/time": f"{r['test_ll_per_time']:.4f}",
                "MAPE %": f"{r['intensity_mape_pct']:.1f}" if "intensity_mape_pct" in r else "-",
                "paper MAPE %": r["paper_intensity_mape_pct"] or "-",
                "Poisson ll/event": f"{r['poisson_baseline_ll_per_event']:.4f}",
                "s/epoch": f"{r['training']['seconds_per_epoch']:.1f}",
                "epochs": f"{r['training']['epochs']:.1f}",
            }
        )
    print()
    common.print_table(rows, list(rows[0]))
    gaps = [r["gap_to_oracle_pct"] for r in results.values() if "gap_to_oracle_pct" in r]
    worst = max(gaps) if gaps else float("nan")
    cmd_args = [f"--seed={args.seed}"] + ([f"--datasets={args.datasets}"] if args.datasets else [])
    cmd_args += [f"--steps={args.steps}"] if args.steps is not None else []
    cfg_out = {k: v for k, v in cfg.items() if k != "model_config"}
    path = common.write_results(
        NAME,
        {
            "command": "nice -n 10 " + common.command_line(os.path.basename(__file__), cmd_args),
            "seed": args.seed,
            "config": cfg_out,
            "results": results,
            "worst_gap_to_oracle_pct": worst,
            "total_seconds": total,
            "train_wall_seconds": sum(r["training"]["fit_seconds"] for r in results.values()),
            "table": summary_table(results),
        },
        args.out,
    )
    print(f"results: {path}; total {total / 60:.1f} min")
    print(f"worst_gap_to_oracle_pct={worst:.3f}")
    return results


if __name__ == "__main__":
    main()
