"""Command line: ``bayesdyn demo | fit | forecast | report``.

- ``bayesdyn demo --out runs/demo``: train on the bundled Brusselator data, forecast the
  held-out window, write forecasts, a calibration table and plots.
- ``bayesdyn fit DATA --out RUN_DIR``: train on a long-format CSV (or ``bundled:brusselator``,
  ``bundled:lynx_hare``).
- ``bayesdyn forecast RUN_DIR --horizon H --out FILE``: quantile bands (CSV), sample paths and
  the ArviZ InferenceData (netCDF, next to FILE).
- ``bayesdyn report RUN_DIR --out report.html``: one self-contained HTML diagnostics report.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from ._validation import BayesdynTypeError, BayesdynValueError, FitDiverged

__all__ = ["main"]

BUNDLED = ("bundled:brusselator", "bundled:lynx_hare")


def _load_data(spec: str, args) -> object:
    from .data import IrregularTimeSeries, load_brusselator, load_lynx_hare

    if spec == "bundled:brusselator":
        return load_brusselator()
    if spec == "bundled:lynx_hare":
        return load_lynx_hare()
    value_cols = args.value_cols.split(",") if getattr(args, "value_cols", None) else None
    return IrregularTimeSeries.from_csv(
        spec, id_col=args.id_col, time_col=args.time_col, value_cols=value_cols
    )


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--latent-dim", type=int, default=4)
    g.add_argument("--hidden-dim", type=int, default=64)
    g.add_argument("--context-dim", type=int, default=16)
    g.add_argument("--dt", type=float, default=None, help="solver step (default: span/100)")
    g.add_argument("--decoder", choices=["gaussian", "student_t"], default="gaussian")
    g.add_argument(
        "--no-stable-drift",
        dest="stable_drift",
        action="store_false",
        help="use an unconstrained prior drift (default: mean-reverting)",
    )
    t = p.add_argument_group("training")
    t.add_argument("--steps", type=int, default=500)
    t.add_argument("--lr", type=float, default=1e-2)
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument(
        "--kl-anneal-steps", type=int, default=None, help="KL warm-up steps (default: steps/3)"
    )
    t.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="fraction of series held out for early stopping (0 for none)",
    )
    t.add_argument("--patience", type=int, default=None)
    t.add_argument(
        "--average-last",
        type=float,
        default=0.0,
        help="average the parameters over this last fraction of the steps (Polyak-Ruppert; "
        "0 for none); validation and the saved model use the average",
    )
    t.add_argument(
        "--refine-rounds",
        type=int,
        default=0,
        help="after training, this many rounds of full-batch L-BFGS on the frozen-noise ELBO "
        "(bayesdyn.inference.refine_lbfgs), keeping the round with the best validation loss "
        "(0 for none)",
    )
    t.add_argument("--checkpoint-every", type=int, default=50)
    t.add_argument("--resume", action="store_true")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument(
        "--max-divergences",
        type=int,
        default=4,
        help="divergences (non-finite loss/gradient) that stop training; each earlier one "
        "rolls back to the last good checkpoint and halves the learning rate",
    )
    t.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help="truncated backprop through time over windows of about this many observations "
        "(bounded memory for long series)",
    )


def _train(series, out: Path, args) -> dict:
    """Standardise, split, fit, save (:func:`~bayesdyn.diagnostics.save_run`). Returns the run
    summary."""
    from .diagnostics.report import save_run
    from .inference import average_after_for, fit, refine_lbfgs
    from .models import LatentSDE

    average_after = average_after_for(args.steps, args.average_last, "--average-last")
    if isinstance(args.refine_rounds, bool) or args.refine_rounds < 0:
        raise BayesdynValueError(
            f"--refine-rounds must be an integer >= 0 (0: no refinement); got {args.refine_rounds}"
        )
    dp = _data_parallel(args)
    if dp is not None and args.refine_rounds:
        raise BayesdynValueError(
            "--refine-rounds runs in one process; it cannot be combined with data parallelism"
        )
    writer = dp is None or dp.is_writer
    out.mkdir(parents=True, exist_ok=True)
    scaled, scaler = series.standardize()
    train, val = scaled, None
    if args.val_fraction and len(scaled) >= 10:
        train, val = scaled.split_series(args.val_fraction, seed=args.seed)
    span = series.t_max - series.t_min
    dt = args.dt if args.dt is not None else span / 100
    # Seed before building the model: torch's default seed differs between processes, so an
    # unseeded initialisation would make runs with the same --seed differ.
    torch.manual_seed(args.seed)
    model = LatentSDE(
        series.obs_dim,
        latent_dim=args.latent_dim,
        hidden_dim=args.hidden_dim,
        context_dim=args.context_dim,
        dt=dt,
        decoder=args.decoder,
        stable_drift=args.stable_drift,
        t0=float(series.t_min),
    )
    anneal = args.kl_anneal_steps if args.kl_anneal_steps is not None else args.steps // 3
    torch.manual_seed(args.seed)
    result = fit(
        model,
        train,
        num_steps=args.steps,
        lr=args.lr,
        lr_final=args.lr / 10,
        batch_size=args.batch_size,
        kl_anneal_steps=anneal,
        val_data=val,
        val_every=max(args.steps // 20, 1),
        patience=args.patience,
        average_after=average_after,
        checkpoint_dir=out,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        seed=args.seed,
        progress=not args.quiet and writer,
        max_divergences=args.max_divergences,
        chunk_size=args.chunk_size,
        data_parallel=dp,
    )
    if not writer:  # rank 0 writes the outputs of a data-parallel run
        return {}
    refined = None
    if args.refine_rounds:
        if val is None:
            print(
                "bayesdyn fit: note: --refine-rounds without validation series (fewer than 10 "
                "series, or --val-fraction 0): every round is kept, none is checked on held-out "
                "data, and full-batch L-BFGS can overfit the training series",
                file=sys.stderr,
            )
        refined = refine_lbfgs(
            model,
            train,
            val_data=val,
            num_rounds=args.refine_rounds,
            seed=args.seed,
            progress=not args.quiet,
        )
    summary = {
        "num_series": len(series),
        "channels": list(series.channels),
        "num_observed": int(series.num_observed),
        "steps": result.num_steps,
        "seconds": round(result.seconds, 2),
        "final_loss": result.history[-1]["loss"] if result.history else None,
        "best_val_loss": result.best_val_loss,
        "best_step": result.best_step,
        "t_min": float(series.t_min),
        "t_max": float(series.t_max),
    }
    if refined is not None:
        summary["refine"] = {
            "rounds": len(refined.history),
            "kept_round": refined.best_round,
            "loss_before": refined.initial_loss,
            "loss_after": refined.history[-1]["loss"] if refined.history else None,
            "val_loss_before": refined.initial_val_loss,
            "val_loss_after": refined.best_val_loss,
            "seconds": round(refined.seconds, 2),
        }
    save_run(out, model, series, scaler, history=result.history, summary=summary)
    print(result.summary())
    if refined is not None:
        print(refined.summary())
    return summary


def _forecast(run: Path, series, query: np.ndarray, num_samples: int, seed: int):
    """Posterior predictive in data units at ``query`` for ``series``."""
    from .data import Scaler
    from .inference import load_model, posterior_predictive

    model, extra = load_model(run / "model.pt")
    scaler = Scaler.from_state_dict(extra["scaler"])
    scaled, _ = series.standardize(scaler)
    traj = posterior_predictive(model, scaled, torch.as_tensor(query), num_samples, seed=seed)
    return traj.inverse_transform(scaler), model


def _write_forecast(traj, out: Path, levels) -> None:
    df = traj.to_dataframe(levels=levels)
    df.to_csv(out, index=False)
    # sample paths, long format: sample, id, time, channel, value
    obs = traj.observations.numpy()
    S, B, Q, D = obs.shape
    keep = min(S, 20)
    t = traj._times_bq().numpy()
    ids = traj.ids or list(range(B))
    chans = traj.channels or [f"y{d}" for d in range(D)]
    import pandas as pd

    samples = pd.DataFrame(
        {
            "sample": np.repeat(np.arange(keep), B * Q * D),
            "id": np.tile(np.repeat(np.asarray(ids, dtype=object), Q * D), keep),
            "time": np.tile(np.repeat(t.reshape(-1), D), keep),
            "channel": np.tile(np.asarray(chans, dtype=object), keep * B * Q),
            "value": obs[:keep].reshape(-1),
        }
    )
    samples.to_csv(out.with_name(out.stem + "_samples.csv"), index=False)


def _data_parallel(args):
    """The DataParallel strategy for a torchrun worker or ``--shards``, else None."""
    shards = getattr(args, "shards", None)
    if not getattr(args, "distributed", False) and not shards:
        return None
    from .inference.distributed import DataParallel

    return DataParallel(num_shards=shards)


def cmd_fit(args) -> int:
    from .inference.distributed import in_torchrun_worker, launch

    if args.nproc > 1 and not in_torchrun_worker():
        return launch(
            args.argv,
            args.nproc,
            nnodes=args.nnodes,
            node_rank=args.node_rank,
            master_addr=args.master_addr,
            master_port=args.master_port,
        )
    if in_torchrun_worker():
        import torch.distributed as dist

        dist.init_process_group("gloo")
        args.distributed = True
        try:
            return _cmd_fit(args)
        finally:
            dist.destroy_process_group()
    return _cmd_fit(args)


def _cmd_fit(args) -> int:
    series = _load_data(args.data, args)
    if _train(series, Path(args.out), args):  # empty on ranks other than 0
        print(f"run written to {args.out}")
    return 0


def cmd_forecast(args) -> int:
    from .data import IrregularTimeSeries

    run = Path(args.run_dir)
    if not (run / "model.pt").is_file():
        raise BayesdynValueError(f"run_dir {str(run)!r} has no model.pt; run `bayesdyn fit` first")
    if args.horizon <= 0:
        raise BayesdynValueError(f"--horizon must be positive; got {args.horizon}")
    series = (
        IrregularTimeSeries.from_csv(run / "data.csv")
        if args.data is None
        else _load_data(args.data, args)
    )
    t_end = series.t_max + args.horizon
    query = np.linspace(series.t_min, t_end, args.num_points)
    traj, _ = _forecast(run, series, query, args.num_samples, args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    levels = [float(x) for x in args.levels.split(",")]
    _write_forecast(traj, out, levels)
    fig = traj.plot(data=series, level=max(levels))
    fig.savefig(out.with_suffix(".png"), dpi=110)
    from .diagnostics.report import write_run_inference_data

    fc_times = query[query > series.t_max]
    write_run_inference_data(
        run, series, fc_times, out.with_suffix(".nc"), num_samples=args.num_samples, seed=args.seed
    )
    print(
        f"forecast of {len(series)} series to t={t_end:g} written to {out} "
        f"(+ {out.stem}_samples.csv, {out.with_suffix('.png').name}, "
        f"{out.with_suffix('.nc').name})"
    )
    return 0


def cmd_demo(args) -> int:
    from .data import load_brusselator
    from .diagnostics import calibration_table

    out = Path(args.out)
    series = load_brusselator(num_series=args.num_series)
    origin = args.origin
    past, future = series.split_time(origin)
    print(f"bundled Brusselator data: {series}")
    print(f"training on t <= {origin}; the window ({origin}, {series.t_max:g}] is held out")
    _train(past, out, args)
    future.to_dataframe().to_csv(out / "heldout.csv", index=False)
    query = np.round(np.arange(series.t_min, series.t_max + 1e-9, 0.5), 6)
    traj, _ = _forecast(out, past, query, args.num_samples, args.seed)
    _write_forecast(traj, out / "forecast.csv", [0.5, 0.9])
    fig = traj.plot(data=series, level=0.9, max_series=4)
    fig.savefig(out / "forecast.png", dpi=110)
    # Calibration on held-out future points: forecast at exactly their times.
    fut_ids = set(future.ids)
    keep = [i for i, sid in enumerate(past.ids) if sid in fut_ids]
    past_f = past[keep]
    fb = future.to_batch()
    ftraj, _ = _forecast(out, past_f, fb.times, args.num_samples, args.seed + 1)
    table = calibration_table(ftraj.observations, fb.values.to(ftraj.observations.dtype), fb.mask)
    table.to_csv(out / "calibration.csv", index=False)
    print("\nheld-out forecast calibration (central intervals):")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"mean CRPS (data units): {table.attrs['crps']:.4f}")
    from .diagnostics.report import write_report

    report = write_report(
        out, out / "report.html", num_samples=min(args.num_samples, 100), max_series=4
    )
    print(
        f"\nwrote {out}/forecast.csv, forecast_samples.csv, forecast.png, calibration.csv, "
        f"heldout.csv, model.pt and {report.name}"
    )
    return 0


def cmd_report(args) -> int:
    from .diagnostics.report import write_report

    out = write_report(
        args.run_dir,
        args.out,
        num_samples=args.num_samples,
        horizon=args.horizon,
        max_series=args.max_series,
        seed=args.seed,
    )
    print(f"report written to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``bayesdyn`` argument parser."""
    p = argparse.ArgumentParser(prog="bayesdyn", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="train on bundled data and write forecasts + calibration")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--num-series", type=int, default=None)
    d.add_argument("--origin", type=float, default=40.0, help="forecast origin")
    d.add_argument("--num-samples", type=int, default=200)
    _add_model_args(d)
    d.set_defaults(func=cmd_demo, steps=300, dt=0.5, batch_size=64)
    f = sub.add_parser("fit", help="train a latent SDE on a CSV")
    f.add_argument("data", help="long-format CSV, or bundled:brusselator / bundled:lynx_hare")
    f.add_argument("--out", required=True, help="run directory")
    f.add_argument("--id-col", default="id")
    f.add_argument("--time-col", default="time")
    f.add_argument("--value-cols", default=None, help="comma-separated channel columns")
    _add_model_args(f)
    f.add_argument(
        "--config",
        default=None,
        help='JSON file of options (keys as the long options, e.g. {"steps": 200}); '
        "options on the command line win",
    )
    dp = f.add_argument_group("data-parallel training (torchrun conventions)")
    dp.add_argument("--nproc", type=int, default=1, help="worker processes on this node")
    dp.add_argument("--nnodes", type=int, default=1)
    dp.add_argument("--node-rank", type=int, default=0)
    dp.add_argument("--master-addr", default=None, help="address of the rank-0 node")
    dp.add_argument("--master-port", type=int, default=None)
    dp.add_argument(
        "--shards",
        type=int,
        default=None,
        help="shards per global batch (default: the number of workers); --shards N in one "
        "process reproduces an N-process run",
    )
    f.set_defaults(func=cmd_fit, config_parser=f)
    fc = sub.add_parser("forecast", help="posterior predictive bands from a fitted run")
    fc.add_argument("run_dir")
    fc.add_argument("--horizon", type=float, required=True)
    fc.add_argument("--out", required=True, help="CSV of quantile bands")
    fc.add_argument("--num-samples", type=int, default=200)
    fc.add_argument("--num-points", type=int, default=200)
    fc.add_argument("--levels", default="0.5,0.9")
    fc.add_argument("--data", default=None, help="conditioning data (default: the run's)")
    fc.add_argument("--id-col", default="id")
    fc.add_argument("--time-col", default="time")
    fc.add_argument("--value-cols", default=None)
    fc.add_argument("--seed", type=int, default=0)
    fc.set_defaults(func=cmd_forecast)
    r = sub.add_parser("report", help="self-contained HTML diagnostics report of a fitted run")
    r.add_argument("run_dir")
    r.add_argument("--out", default=None, help="HTML file (default RUN_DIR/report.html)")
    r.add_argument("--num-samples", type=int, default=100, help="posterior draws per member")
    r.add_argument(
        "--horizon", type=float, default=None, help="forecast length without held-out data"
    )
    r.add_argument("--max-series", type=int, default=6, help="series drawn in the figures")
    r.add_argument("--seed", type=int, default=0)
    r.set_defaults(func=cmd_report)
    return p


def _load_config(path: str, parser: argparse.ArgumentParser) -> dict:
    """Read a JSON config of option values, checking each name and type against ``parser``.

    Raises:
        BayesdynValueError: for an unreadable file, invalid JSON, or an unknown option.
        BayesdynTypeError: for a value of the wrong type (e.g. ``"steps": "many"``).
    """
    try:
        cfg = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BayesdynValueError(f"--config {path!r}: could not read a JSON object: {e}") from e
    if not isinstance(cfg, dict):
        raise BayesdynTypeError(
            f"--config {path!r} must hold a JSON object of options; got {type(cfg).__name__}"
        )
    skip = {"help", "config", "out", "data"}
    actions = {a.dest: a for a in parser._actions if a.option_strings and a.dest not in skip}
    out = {}
    for key, value in cfg.items():
        dest = str(key).lstrip("-").replace("-", "_")
        a = actions.get(dest)
        if a is None:
            known = sorted(d.replace("_", "-") for d in actions)
            raise BayesdynValueError(f"--config {path!r}: unknown option {key!r}; known: {known}")
        if isinstance(a, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            want, ok = "true or false", isinstance(value, bool)
        elif value is None:
            want, ok = "not null", a.default is None
        elif a.type is int:
            want, ok = "an integer", isinstance(value, int) and not isinstance(value, bool)
        elif a.type is float:
            want = "a finite number"
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            ok = ok and np.isfinite(value)
        else:
            want, ok = "a string", isinstance(value, str)
        if not ok:
            raise BayesdynTypeError(
                f"--config {path!r}: option {key!r} must be {want}; got "
                f"{type(value).__name__} {value!r}"
            )
        if a.choices is not None and value not in a.choices:
            raise BayesdynValueError(
                f"--config {path!r}: option {key!r} must be one of {list(a.choices)}; got {value!r}"
            )
        out[dest] = value
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``bayesdyn`` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "config", None):
            args.config_parser.set_defaults(**_load_config(args.config, args.config_parser))
            args = parser.parse_args(argv)
        args.argv = argv
        return args.func(args)
    except (BayesdynValueError, BayesdynTypeError, FitDiverged) as e:
        print(f"bayesdyn {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
