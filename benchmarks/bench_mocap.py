"""Motion capture, setup 1 (ODE2VAE preprocessing of CMU subject 35 walking; Li et al. 2020).

Reproduces the protocol of ../shared/data/README.md:

* train on ``Xtr`` (16 sequences x 300 frames x 50 channels, frames 0.1 apart);
* condition on the first 3 frames of each sequence and predict the remaining 297;
* 50 posterior samples per prediction; test MSE averaged over the samples, reported as the
  mean over the 4 ``Xtest`` sequences +- a 95% Student-t interval over sequences, in the raw
  units of the file;
* the model (here: the training checkpoint) is selected on ``Xval`` by the same MSE.

Also reported: the MSE of the 50-sample mean prediction, the CRPS of the predictive
distribution (observation samples, raw units), and the coverage of the central 90% interval.

Model (after the paper's, about 11.6k parameters there): ``LatentSDE`` with
``encoder="first_k"`` (an MLP over the first 3 frames gives the context), latent 6, context 3,
softplus MLPs, KL annealing. The posterior drift reads only that context
(``next_obs_features=False``, ``bridge=False``), so the posterior SDE conditioned on 3 frames is
itself the forecaster: test sequences are passed with every frame after the third masked out
(and zeroed), and the posterior drift stays active over the whole 300-frame window
(``"forecast": "prior"`` instead passes only the 3 frames, so the prior SDE takes over after
them).

Config options beyond the paper's (``benchmarks/configs/mocap.json``, see its ``_comment`` and
the README for the measurements behind them): training windows (``train_window``,
``window_stride``), time-warped copies of them (``time_warp``: walking tempo varies between
walks), a fixed observation scale in training, and ``calibrate_obs_scale``: after selection
the decoder's scale is reset from the forecast residuals on ``Xval`` (bands only; the test MSE
uses decoder means and does not change).

Usage::

    .venv/bin/python benchmarks/bench_mocap.py --seed 0 [--config benchmarks/configs/mocap.json]
        [--steps N] [--out benchmarks/results]

``--steps`` overrides the config's ``num_steps`` (for quick development runs; the results
JSON records the override). Prints the training time, a results table, and as its last line
``mocap_test_mse=<number>``.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _bench_common as common  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import bayesdyn  # noqa: E402
from bayesdyn import IrregularTimeSeries, LatentSDE, LatentSDEConfig, Scaler  # noqa: E402
from bayesdyn._validation import BayesdynValueError  # noqa: E402
from bayesdyn.diagnostics.metrics import crps_ensemble, interval_coverage  # noqa: E402

NAME = "mocap"
FRAME_DT = 0.1
NUM_FRAMES = 300
PUBLISHED = {
    "Latent SDE (Li et al. 2020)": "4.03 ± 0.20",
    "Latent ODE": "5.98 ± 0.28",
    "ODE2VAE-KL": "8.09 ± 1.95",
    "SDE matching (Bartosh et al. 2025)": "4.50 ± 0.32",
    "NCDSSM (Ansari et al. 2023)": "5.69",
    "training-set global mean": "33.7",
    "repeat last conditioning frame": "61.3",
}

SCHEMA = {
    "model": dict,
    "scaling": ("none", "global", "channel"),
    "context_frames": int,
    "num_steps": int,
    "lr": float,
    "lr_final": float,
    "batch_size": ("optional", int),
    "num_particles": int,
    "kl_anneal_steps": int,
    "kl_min": float,
    "clip_norm": float,
    "eval_every": int,
    "val_samples": int,
    "num_samples": int,
    "max_train_minutes": ("optional", float),
    "train_window": ("optional", int),
    "window_stride": int,
    "forecast": ("posterior", "prior"),
    "time_warp": list,
    "calibrate_obs_scale": bool,
}


def load_mocap_config(path: str | os.PathLike) -> dict:
    """Read and check the mocap config; the model options must keep the protocol honest."""
    cfg = common.load_config(path, SCHEMA)
    where = f"config {Path(path).name}"
    common.check_positive_keys(
        cfg,
        ["context_frames", "num_steps", "lr", "lr_final", "num_particles", "eval_every"]
        + ["val_samples", "num_samples", "clip_norm", "kl_min"],
        where,
    )
    if cfg["batch_size"] is not None and cfg["batch_size"] < 1:
        raise BayesdynValueError(
            f"{where}: 'batch_size' must be >= 1 or null; got {cfg['batch_size']}"
        )
    if cfg["max_train_minutes"] is not None and cfg["max_train_minutes"] <= 0:
        raise BayesdynValueError(f"{where}: 'max_train_minutes' must be > 0 or null")
    w = cfg["train_window"]
    if w is not None and not cfg["context_frames"] < w <= NUM_FRAMES:
        raise BayesdynValueError(
            f"{where}: 'train_window' must lie in ({cfg['context_frames']}, {NUM_FRAMES}] or be "
            f"null; got {w}"
        )
    if cfg["window_stride"] < 1:
        raise BayesdynValueError(
            f"{where}: 'window_stride' must be >= 1; got {cfg['window_stride']}"
        )
    warp = cfg["time_warp"]
    if not warp or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and 0.5 <= v <= 2.0 for v in warp
    ):
        raise BayesdynValueError(
            f"{where}: 'time_warp' must be a non-empty list of speed factors in [0.5, 2]; "
            f"got {warp!r}"
        )
    cfg["time_warp"] = [float(v) for v in warp]
    if cfg["train_window"] is not None and max(warp) * (cfg["train_window"] - 1) > NUM_FRAMES - 1:
        raise BayesdynValueError(
            f"{where}: a train_window of {cfg['train_window']} frames at speed {max(warp)} "
            f"needs more than the {NUM_FRAMES} frames of a sequence"
        )
    if cfg["val_samples"] < 2 or cfg["num_samples"] < 2:
        raise BayesdynValueError(f"{where}: 'val_samples' and 'num_samples' must be >= 2")
    model = dict(cfg["model"])
    if "obs_dim" in model:
        raise BayesdynValueError(f"{where}: model.obs_dim is fixed by the data (50); remove it")
    mc = LatentSDEConfig.from_dict({"obs_dim": 50, **model})
    # Conditioning on the first frames only: the posterior must not read later frames.
    if mc.encoder != "first_k" or mc.num_context_obs != cfg["context_frames"]:
        raise BayesdynValueError(
            f"{where}: model.encoder must be 'first_k' with num_context_obs = context_frames "
            f"({cfg['context_frames']}); got encoder={mc.encoder!r}, "
            f"num_context_obs={mc.num_context_obs}"
        )
    if mc.next_obs_features or mc.bridge:
        raise BayesdynValueError(
            f"{where}: model.next_obs_features and model.bridge must be false (they let the "
            "posterior read frames after the conditioning window)"
        )
    cfg["model_config"] = mc
    return cfg


def load_mocap(path: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """Read ``mocap35.mat`` (MATLAB v5) with scipy: ``Xtr``, ``Xval``, ``Xtest``.

    Shapes: ``Xtr [16, 300, 50]``, ``Xval [3, 300, 50]``, ``Xtest [4, 300, 50]``.
    """
    from scipy.io import loadmat

    path = Path(path) if path is not None else common.SHARED_DATA / "mocap" / "mocap35.mat"
    if not path.is_file():
        raise BayesdynValueError(f"mocap file {str(path)!r} not found (see ../shared/data)")
    mat = loadmat(path)
    out = {}
    for key in ("Xtr", "Xval", "Xtest"):
        x = np.asarray(mat[key], dtype=np.float64)
        if x.ndim != 3 or x.shape[1:] != (NUM_FRAMES, 50):
            raise BayesdynValueError(f"{key} must have shape [N, 300, 50]; got {x.shape}")
        out[key] = x
    return out


def make_scaler(x: np.ndarray, scaling: str) -> Scaler:
    """Affine scaler fitted on training frames: per-channel means, and per-channel or one
    global standard deviation (``"none"``: identity)."""
    d = x.shape[-1]
    if scaling == "none":
        return Scaler(np.zeros(d), np.ones(d))
    flat = x.reshape(-1, d)
    mean = flat.mean(0)
    if scaling == "global":
        return Scaler(mean, np.full(d, (flat - mean).std()))
    std = flat.std(0)
    return Scaler(mean, np.where(std < 1e-8, 1.0, std))


def to_series(
    x: np.ndarray, context_frames: int | None = None, tempo: float = 1.0
) -> IrregularTimeSeries:
    """Sequences ``[N, 300, D]`` as series on ``t = 0.1 * tempo * arange(300)``.

    With ``context_frames=k`` only the first ``k`` frames are observed: later frames keep their
    times (so the posterior runs over the whole window) but are masked out and zeroed.
    ``tempo < 1`` puts the frames closer in model time, so the model's dynamics walk slower.
    """
    t = FRAME_DT * tempo * np.arange(x.shape[1])
    mask = np.ones(x.shape, dtype=bool)
    vals = x.copy()
    if context_frames is not None:
        mask[:, context_frames:] = False
        vals[:, context_frames:] = 0.0
    return IrregularTimeSeries([t] * len(x), list(vals), list(mask))


def windows(
    x: np.ndarray, length: int | None, stride: int, speeds: Sequence[float] = (1.0,)
) -> np.ndarray:
    """Training windows ``[N * n_w, length, D]`` starting every ``stride`` frames.

    Each window is a sequence of its own (its times restart at 0): the model is trained to
    continue a walk from the first frames of any phase, not only from frame 0, which keeps the
    first-frames context from identifying (and replaying) one of the 16 training sequences.
    ``length=None`` returns ``x`` unchanged (speed 1 only).

    ``speeds`` time-warps the walks: at speed ``s`` window frame ``j`` is the sequence at frame
    ``start + s * j``, linearly interpolated, so one window covers ``s * (length - 1)`` frames.
    Walking pace varies between sequences (gait periods of 131-140 frames in ``Xtr``, up to
    160 in ``Xval``), and the warped copies teach the dynamics a range of paces.
    """
    if length is None:
        if any(s != 1.0 for s in speeds):
            raise BayesdynValueError("time-warped training needs a train_window")
        return x
    n = x.shape[1]
    out = []
    for speed in speeds:
        span = speed * (length - 1)
        for start in range(0, int(np.floor(n - 1 - span)) + 1, stride):
            q = start + speed * np.arange(length)
            lo = np.minimum(np.floor(q).astype(int), n - 2)
            w = (q - lo)[None, :, None]
            out.append((1 - w) * x[:, lo] + w * x[:, lo + 1])
    return np.concatenate(out)


def predict(
    model,
    x_scaled: np.ndarray,
    scaler: Scaler,
    cfg: dict,
    num_samples: int,
    seed: int,
    tempo: float = 1.0,
):
    """Condition on the first frames; return decoder-mean and observation samples, raw units.

    ``tempo`` scales every time (conditioning frames and queries; see :func:`to_series`).
    Shapes: ``x_scaled [N, 300, D]`` -> ``(mean_samples, obs_samples)`` each ``[S, N, 300, D]``.
    """
    k = cfg["context_frames"]
    if cfg["forecast"] == "prior":
        # Series of the k conditioning frames: the posterior runs to frame k - 1, then the
        # prior SDE continues alone.
        cond = to_series(x_scaled[:, :k], tempo=tempo)
    else:
        cond = to_series(x_scaled, k, tempo=tempo)
    times = FRAME_DT * tempo * np.arange(x_scaled.shape[1])
    traj = bayesdyn.posterior_predictive(
        model, cond, times=times, num_samples=num_samples, seed=seed
    )
    with torch.no_grad():
        mean = model.decoder(traj.latent).mean
    return scaler.inverse_values(mean).double(), scaler.inverse_values(traj.observations).double()


def seq_mse(samples: torch.Tensor, x: np.ndarray, k: int) -> np.ndarray:
    """MSE per sequence over frames ``k:`` and channels, averaged over samples. ``[N]``."""
    y = torch.as_tensor(x, dtype=torch.float64)
    return ((samples[:, :, k:] - y[:, k:]) ** 2).mean(dim=(0, 2, 3)).numpy()


def train(model, data: dict, scaler: Scaler, cfg: dict, seed: int, log) -> dict:
    """Fit in chunks of ``eval_every`` steps; keep the checkpoint with the best ``Xval`` MSE.

    The chunks continue one run (``fit(..., resume=True)`` restores optimiser, RNG and step),
    and each chunk's ``lr_final`` is set so the learning rate follows one exponential decay
    from ``lr`` to ``lr_final`` over ``num_steps``.
    """
    train_scaled = scaler.transform_values(data["Xtr"])
    train_s = to_series(
        windows(train_scaled, cfg["train_window"], cfg["window_stride"], cfg["time_warp"])
    )
    log(f"training on {len(train_s)} sequences of {train_s.lengths[0]} frames")
    val_scaled = scaler.transform_values(data["Xval"])
    n, every = cfg["num_steps"], cfg["eval_every"]
    decay = (cfg["lr_final"] / cfg["lr"]) ** (1.0 / n)
    best = {"val_mse": float("inf"), "step": 0, "state": None}
    history = []
    fit_seconds = 0.0
    eval_seconds = 0.0
    cap = cfg["max_train_minutes"]
    t_start = time.perf_counter()
    stopped_by_cap = False
    with tempfile.TemporaryDirectory(prefix="bench_mocap_") as ckpt:
        step = 0
        while step < n:
            if cap is not None and time.perf_counter() - t_start > 60 * cap:
                stopped_by_cap = True
                log(f"stopped at step {step} of {n}: the {cap:g}-minute training cap was reached")
                break
            step = min(step + every, n)
            res = bayesdyn.fit(
                model,
                train_s,
                num_steps=step,
                lr=cfg["lr"],
                lr_final=cfg["lr"] * decay**step,
                batch_size=cfg["batch_size"],
                kl_anneal_steps=cfg["kl_anneal_steps"],
                kl_min=cfg["kl_min"],
                clip_norm=cfg["clip_norm"],
                num_particles=cfg["num_particles"],
                checkpoint_dir=ckpt,
                checkpoint_every=10**9,
                resume=True,
                seed=seed,
                progress=False,
            )
            fit_seconds += res.seconds
            t0 = time.perf_counter()
            mean_s, _ = predict(model, val_scaled, scaler, cfg, cfg["val_samples"], seed + 1)
            val_mse = float(seq_mse(mean_s, data["Xval"], cfg["context_frames"]).mean())
            # The same score on the training sequences tells under- from over-fitting.
            tr_s, _ = predict(model, train_scaled, scaler, cfg, 2, seed + 1)
            train_mse = float(seq_mse(tr_s, data["Xtr"], cfg["context_frames"]).mean())
            eval_seconds += time.perf_counter() - t0
            loss = float(np.mean([h["loss"] for h in res.history[-every:]]))
            history.append(
                {"step": step, "train_loss": loss, "train_mse": train_mse, "val_mse": val_mse}
            )
            mark = ""
            if val_mse < best["val_mse"]:
                best = {
                    "val_mse": val_mse,
                    "step": step,
                    "state": copy.deepcopy(model.state_dict()),
                }
                mark = " *"
            log(
                f"step {step:5d}  loss {loss:9.4f}  Xtr MSE {train_mse:7.3f}  "
                f"Xval MSE {val_mse:7.3f}{mark}  "
                f"(train {fit_seconds:6.0f} s, eval {eval_seconds:4.0f} s)"
            )
    model.load_state_dict(best["state"])
    return {
        "best_step": best["step"],
        "best_val_mse": best["val_mse"],
        "fit_seconds": fit_seconds,
        "eval_seconds": eval_seconds,
        "history": history,
        "steps_done": step,
        "stopped_by_time_cap": stopped_by_cap,
    }


def calibrate_obs_scale(model, data: dict, scaler: Scaler, cfg: dict, seed: int) -> np.ndarray:
    """Set the decoder's observation scale from the forecast residuals on ``Xval``.

    Per channel ``c`` (scaled units), with decoder-mean samples ``m_s`` over frames after the
    conditioning window: ``sigma_c^2 = mean((mean_s m_s - x)^2) - mean(var_s m_s)``, floored at
    ``(2 * min_scale)^2``, so that the predictive variance (spread of the paths plus
    observation noise) equals the squared error of the predictive mean on held-out walks.
    This recalibrates the bands only: the decoder means, and so the MSE, do not change.

    Returns the new scale, ``[D]``.
    """
    k = cfg["context_frames"]
    x = scaler.transform_values(data["Xval"])
    mean_s, _ = predict(model, x, scaler, cfg, cfg["num_samples"], seed)
    m = scaler.transform_values(mean_s.numpy())[:, :, k:]  # [S, N, T-k, D], scaled units
    err = ((m.mean(0) - x[:, k:]) ** 2).mean(axis=(0, 1))
    spread = m.var(axis=0).mean(axis=(0, 1))
    floor = 2 * model.decoder.min_scale
    scale = np.sqrt(np.maximum(err - spread, floor**2))
    model.decoder.set_scale(torch.as_tensor(scale))
    return scale


def evaluate(model, data: dict, scaler: Scaler, cfg: dict, seed: int) -> dict:
    """Test metrics on ``Xtest`` (raw units), frames after the conditioning window."""
    k = cfg["context_frames"]
    x = data["Xtest"]
    mean_s, obs_s = predict(
        model, scaler.transform_values(x), scaler, cfg, cfg["num_samples"], seed
    )
    per_seq = seq_mse(mean_s, x, k)
    mse, half = common.t_interval(per_seq)
    y = torch.as_tensor(x, dtype=torch.float64)
    point = ((mean_s.mean(0)[:, k:] - y[:, k:]) ** 2).mean(dim=(1, 2)).numpy()
    obs_mse = seq_mse(obs_s, x, k)
    crps = float(crps_ensemble(obs_s[:, :, k:], y[:, k:]).mean())
    cov = interval_coverage(obs_s[:, :, k:], y[:, k:], levels=(0.5, 0.9))
    return {
        "test_mse": mse,
        "test_mse_ci95": half,
        "test_mse_per_sequence": per_seq.tolist(),
        "test_mse_of_sample_mean": float(point.mean()),
        "test_mse_obs_samples": float(obs_mse.mean()),
        "test_crps": crps,
        "test_coverage_90": cov[0.9],
        "test_coverage_50": cov[0.5],
        "num_test_points": int(y[:, k:].numel()),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(common.CONFIG_DIR / "mocap.json"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="override num_steps (dev runs)")
    p.add_argument("--out", default=str(common.RESULTS_DIR), help="results directory")
    p.add_argument("--data", default=None, help="path to mocap35.mat")
    p.add_argument(
        "--save-model", default=None, help="write the selected model's state_dict here (torch.save)"
    )
    args = p.parse_args(argv)
    common.setup_torch()
    cfg = load_mocap_config(args.config)
    if args.steps is not None:
        if args.steps < 1:
            raise BayesdynValueError(f"--steps must be >= 1; got {args.steps}")
        cfg["num_steps"] = args.steps
    data = load_mocap(args.data)
    scaler = make_scaler(data["Xtr"], cfg["scaling"])
    torch.manual_seed(args.seed)
    model = LatentSDE(config=cfg["model_config"])
    num_params = sum(p.numel() for p in model.parameters())
    print(f"mocap setup 1: LatentSDE with {num_params} parameters; config {args.config}")
    print(f"training {cfg['num_steps']} steps, Xval check every {cfg['eval_every']}", flush=True)

    t0 = time.perf_counter()
    tr = train(model, data, scaler, cfg, args.seed, lambda s: print(s, flush=True))
    wall_train = time.perf_counter() - t0
    if args.save_model:
        torch.save(model.state_dict(), args.save_model)
    t1 = time.perf_counter()
    res = evaluate(model, data, scaler, cfg, args.seed + 2)
    if cfg["calibrate_obs_scale"]:
        before = res
        scale = calibrate_obs_scale(model, data, scaler, cfg, args.seed + 1)
        res = evaluate(model, data, scaler, cfg, args.seed + 2)
        res["uncalibrated"] = {
            key: before[key] for key in ("test_crps", "test_coverage_90", "test_coverage_50")
        }
        res["calibrated_obs_scale"] = scale.tolist()
        print(
            "observation scale recalibrated on Xval residuals: 90% coverage "
            f"{before['test_coverage_90']:.3f} -> {res['test_coverage_90']:.3f}, CRPS "
            f"{before['test_crps']:.3f} -> {res['test_crps']:.3f} (test MSE {res['test_mse']:.3f} "
            f"unchanged from {before['test_mse']:.3f})"
        )
    eval_s = time.perf_counter() - t1
    print(
        f"training time: {wall_train:.0f} s wall ({tr['fit_seconds']:.0f} s optimisation, "
        f"{tr['eval_seconds']:.0f} s Xval checks); test evaluation {eval_s:.0f} s"
    )
    print(f"selected checkpoint: step {tr['best_step']} (Xval MSE {tr['best_val_mse']:.3f})")
    if tr["stopped_by_time_cap"]:
        print(
            f"training stopped by the time cap after {tr['steps_done']} of {cfg['num_steps']} "
            f"steps; rerun with --steps {tr['steps_done']} to repeat this budget exactly"
        )
    print()
    rows = [
        {
            "metric": "test MSE (50 samples, ±95% t over 4 seqs)",
            "bayesdyn": f"{res['test_mse']:.2f} ± {res['test_mse_ci95']:.2f}",
            "published": "4.03 ± 0.20 (Latent SDE, Li et al. 2020)",
        },
        {
            "metric": "test MSE of the 50-sample mean",
            "bayesdyn": f"{res['test_mse_of_sample_mean']:.2f}",
            "published": "-",
        },
        {
            "metric": "test CRPS (raw units)",
            "bayesdyn": f"{res['test_crps']:.3f}",
            "published": "-",
        },
        {
            "metric": "90% interval coverage",
            "bayesdyn": f"{res['test_coverage_90']:.3f}",
            "published": "-",
        },
        {
            "metric": "Xval MSE (selected checkpoint)",
            "bayesdyn": f"{tr['best_val_mse']:.2f}",
            "published": "-",
        },
    ]
    common.print_table(rows, ["metric", "bayesdyn", "published"])
    print("published test MSE:", "; ".join(f"{k} {v}" for k, v in PUBLISHED.items()))
    argv_used = sys.argv[1:] if argv is None else argv
    payload = {
        "command": common.command_line("bench_mocap.py", argv_used),
        "seed": args.seed,
        "config_file": os.path.relpath(args.config, common.REPO_ROOT),
        "config": {k: v for k, v in cfg.items() if k != "model_config"},
        "num_params": num_params,
        "train_wall_seconds": wall_train,
        "fit_seconds": tr["fit_seconds"],
        "train_threads": torch.get_num_threads(),
        "selected_step": tr["best_step"],
        "steps_done": tr["steps_done"],
        "stopped_by_time_cap": tr["stopped_by_time_cap"],
        "val_mse": tr["best_val_mse"],
        "val_history": tr["history"],
        **res,
        "table": [
            {
                "metric": "test MSE (setup 1)",
                "bayesdyn": f"{res['test_mse']:.2f} ± {res['test_mse_ci95']:.2f}",
                "published": "4.03 ± 0.20 (Latent SDE); 4.50 ± 0.32 (SDE matching); 5.98 ± 0.28 (Latent ODE)",
            },
            {
                "metric": "test CRPS / 90% coverage",
                "bayesdyn": f"{res['test_crps']:.3f} / {res['test_coverage_90']:.3f}",
                "published": "not reported",
            },
            {
                "metric": "training time (2-core CPU)",
                "bayesdyn": f"{wall_train / 60:.0f} min, {tr['steps_done']} steps",
                "published": "-",
            },
        ],
    }
    path = common.write_results(NAME, payload, args.out)
    print(f"results written to {path}")
    print(f"mocap_test_mse={res['test_mse']:.4f}")
    return payload


if __name__ == "__main__":
    main()
