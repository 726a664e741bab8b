"""Mocap diagnostics behind the README's account of the gap to the published MSE.

Prints, for ``Xtr``, ``Xval`` and ``Xtest`` of ``mocap35.mat``:

* the gait period of every walk (frames; the highest autocorrelation of the centred walk at
  lags 20-199, pooled over channels);

and, with ``--model`` (a state_dict written by ``bench_mocap.py --save-model``), the test and
validation MSE when the trained dynamics are run at tempo ``s`` (every time, conditioning
frames included, multiplied by ``s``; ``s < 1`` walks slower). Choosing ``s`` on ``Xval`` is
model selection; choosing it on ``Xtest`` would not be, so the table is a diagnosis only.

Usage::

    .venv/bin/python benchmarks/mocap_tempo.py [--model m.pt --config benchmarks/configs/mocap.json]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _bench_common as common  # noqa: E402
import bench_mocap as mocap  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from bayesdyn import LatentSDE  # noqa: E402


def gait_period(walk: np.ndarray, min_lag: int = 20, max_lag: int = 200) -> int:
    """Lag (frames) of the highest autocorrelation of ``walk [T, D]`` in ``[min_lag, max_lag)``.

    The autocorrelation at lag ``l`` is the correlation of frames ``:T-l`` with ``l:``, centred
    on the walk's mean and pooled over channels.
    """
    x = walk - walk.mean(0)
    lags = range(min_lag, min(max_lag, len(x) - 1))
    ac = [
        (x[:-lag] * x[lag:]).sum() / np.sqrt((x[:-lag] ** 2).sum() * (x[lag:] ** 2).sum())
        for lag in lags
    ]
    return int(min_lag + np.argmax(ac))


def tempo_table(model, data: dict, cfg: dict, tempos, num_samples: int, seed: int) -> list[dict]:
    """Xval and Xtest MSE (raw units, frames after the conditioning window) at each tempo."""
    scaler = mocap.make_scaler(data["Xtr"], cfg["scaling"])
    k = cfg["context_frames"]
    rows = []
    for s in tempos:
        row = {"tempo": s}
        for key in ("Xval", "Xtest"):
            x = data[key]
            mean_s, _ = mocap.predict(
                model, scaler.transform_values(x), scaler, cfg, num_samples, seed, tempo=s
            )
            row[key] = mocap.seq_mse(mean_s, x, k)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(common.CONFIG_DIR / "mocap.json"))
    p.add_argument("--model", default=None, help="state_dict from bench_mocap.py --save-model")
    p.add_argument("--data", default=None, help="path to mocap35.mat")
    p.add_argument("--samples", type=int, default=20)
    p.add_argument("--seed", type=int, default=2)
    args = p.parse_args(argv)
    common.setup_torch()
    data = mocap.load_mocap(args.data)
    for key in ("Xtr", "Xval", "Xtest"):
        periods = [gait_period(w) for w in data[key]]
        print(f"{key:5s} gait periods (frames): {periods}")
    if args.model is None:
        return
    cfg = mocap.load_mocap_config(args.config)
    model = LatentSDE(config=cfg["model_config"])
    model.load_state_dict(torch.load(args.model, weights_only=True))
    tempos = [1.0, 0.98, 0.96, 0.94, 0.92, 0.9]
    print(f"\nMSE at tempo s ({args.samples} samples; per walk in brackets)")
    for row in tempo_table(model, data, cfg, tempos, args.samples, args.seed):
        print(
            f"s={row['tempo']:.2f}  Xval {row['Xval'].mean():6.2f} {np.round(row['Xval'], 1)}  "
            f"Xtest {row['Xtest'].mean():6.2f} {np.round(row['Xtest'], 1)}"
        )


if __name__ == "__main__":
    main()
