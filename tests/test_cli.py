"""The ``bayesdyn`` command line: demo, fit, forecast, resume and error paths."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from bayesdyn.cli import main

TINY = ["--steps", "3", "--latent-dim", "2", "--hidden-dim", "8", "--context-dim", "4", "--quiet"]


def _write_csv(path, num_series=12, seed=0):
    """Long-format CSV ``id,time,a,b``: lattice times (spacing 0.5 on [0, 10]), some NaN."""
    rng = np.random.default_rng(seed)
    lattice = np.round(np.arange(0.0, 10.01, 0.5), 6)
    rows = []
    for i in range(num_series):
        t = np.sort(rng.choice(lattice, size=8, replace=False))
        a = np.sin(t + i) + 0.1 * rng.normal(size=t.size)
        b = np.cos(t + i) + 0.1 * rng.normal(size=t.size)
        a[rng.random(t.size) < 0.2] = np.nan
        b[rng.random(t.size) < 0.2] = np.nan
        rows.append(pd.DataFrame({"id": f"s{i}", "time": t, "a": a, "b": b}))
    df = pd.concat(rows, ignore_index=True)
    df.to_csv(path, index=False)
    return df


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One finished ``bayesdyn fit`` run shared by the tests of this module."""
    root = tmp_path_factory.mktemp("cli")
    csv = root / "data.csv"
    df = _write_csv(csv)
    run = root / "run"
    rc = main(["fit", str(csv), "--out", str(run), "--checkpoint-every", "1", *TINY])
    assert rc == 0
    return csv, run, df


def test_fit_writes_run(fitted):
    _, run, _ = fitted
    for name in ("model.pt", "checkpoint.pt", "data.csv", "history.csv", "summary.json"):
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    assert len(pd.read_csv(run / "history.csv")) >= 1


def test_forecast_beyond_data(fitted, tmp_path, capsys):
    _, run, df = fitted
    out = tmp_path / "f.csv"
    argv = ["forecast", str(run), "--horizon", "2", "--out", str(out)]
    rc = main([*argv, "--num-samples", "20", "--num-points", "30"])
    assert rc == 0
    assert "written to" in capsys.readouterr().out
    fc = pd.read_csv(out)
    for col in ("id", "time", "channel", "region", "mean", "median", "lower_0.9", "upper_0.9"):
        assert col in fc.columns
    assert set(fc["channel"]) == {"a", "b"}
    assert set(fc["id"]) == set(df["id"])
    t_last = df["time"].max()
    beyond = fc[fc["time"] > t_last]
    assert len(beyond) > 0
    assert (beyond["region"] == "forecast").all()
    assert fc["time"].max() == pytest.approx(t_last + 2)
    for lv in ("0.5", "0.9"):
        assert (fc[f"lower_{lv}"] <= fc["median"] + 1e-9).all()
        assert (fc["median"] <= fc[f"upper_{lv}"] + 1e-9).all()
    assert np.isfinite(fc[["mean", "median", "lower_0.9", "upper_0.9"]].to_numpy()).all()
    assert (tmp_path / "f_samples.csv").stat().st_size > 0
    assert (tmp_path / "f.png").stat().st_size > 0


def test_resume_after_finished_fit(fitted, tmp_path):
    csv, run, _ = fitted
    run2 = tmp_path / "run"
    shutil.copytree(run, run2)
    rc = main(["fit", str(csv), "--out", str(run2), "--resume", "--checkpoint-every", "1", *TINY])
    assert rc == 0
    assert (run2 / "model.pt").is_file()


def test_forecast_missing_run_dir(tmp_path, capsys):
    rc = main(["forecast", str(tmp_path / "nope"), "--horizon", "1", "--out", "f.csv"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "bayesdyn forecast: error" in err and "no model.pt" in err


def test_forecast_dir_without_model(tmp_path, capsys):
    rc = main(["forecast", str(tmp_path), "--horizon", "1", "--out", str(tmp_path / "f.csv")])
    assert rc == 2
    assert "no model.pt" in capsys.readouterr().err


@pytest.mark.parametrize("horizon", ["0", "-1.5"])
def test_forecast_nonpositive_horizon(fitted, tmp_path, capsys, horizon):
    _, run, _ = fitted
    rc = main(["forecast", str(run), "--horizon", horizon, "--out", str(tmp_path / "f.csv")])
    assert rc == 2
    assert "--horizon must be positive" in capsys.readouterr().err
    assert not (tmp_path / "f.csv").exists()


def test_fit_bad_column(fitted, tmp_path, capsys):
    csv, _, _ = fitted
    rc = main(["fit", str(csv), "--out", str(tmp_path / "r"), "--value-cols", "a,zzz", *TINY])
    assert rc == 2
    err = capsys.readouterr().err
    assert "bayesdyn fit: error" in err and "'zzz' not found" in err


def _refused(csv, tmp_path, capsys, *args) -> str:
    """``bayesdyn fit`` with ``args`` exits with status 2; returns what it wrote to stderr."""
    capsys.readouterr()  # drop earlier output
    assert main(["fit", str(csv), "--out", str(tmp_path / "r"), *args, *TINY]) == 2
    return capsys.readouterr().err


def test_fit_bad_time_column(fitted, tmp_path, capsys):
    csv, _, _ = fitted
    assert "'when' not found" in _refused(csv, tmp_path, capsys, "--time-col", "when")


def test_fit_average_last(fitted, tmp_path, capsys):
    csv, _, _ = fitted
    run = tmp_path / "avg"
    assert main(["fit", str(csv), "--out", str(run), "--average-last", "0.5", *TINY]) == 0
    assert (run / "model.pt").exists()
    err = _refused(csv, tmp_path, capsys, "--average-last", "1.0")
    assert "--average-last must be a fraction in [0, 1); got 1.0" in err


def test_fit_refine_rounds(fitted, tmp_path, capsys):
    csv, _, _ = fitted
    run = tmp_path / "refined"
    assert main(["fit", str(csv), "--out", str(run), "--refine-rounds", "1", *TINY]) == 0
    out = capsys.readouterr().out
    assert "L-BFGS refinement: 1 round(s)" in out
    summary = json.loads((run / "summary.json").read_text())
    ref = summary["refine"]
    assert ref["rounds"] == 1 and ref["loss_after"] < ref["loss_before"]
    assert ref["val_loss_after"] <= ref["val_loss_before"]
    novalid = ["--refine-rounds", "1", "--val-fraction", "0", *TINY]
    assert main(["fit", str(csv), "--out", str(tmp_path / "nv"), *novalid]) == 0
    assert "without validation series" in capsys.readouterr().err
    err = _refused(csv, tmp_path, capsys, "--refine-rounds", "-1")
    assert "--refine-rounds must be an integer >= 0 (0: no refinement); got -1" in err


def test_fit_missing_csv(tmp_path, capsys):
    rc = main(["fit", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "r"), *TINY])
    assert rc == 2
    assert "file not found" in capsys.readouterr().err


def test_demo_subprocess(tmp_path):
    """End to end in a fresh interpreter (float32 default dtype, as users run it)."""
    out = tmp_path / "demo"
    argv = ["demo", "--steps", "3", "--num-series", "20", "--num-samples", "20", "--quiet"]
    argv += ["--latent-dim", "2", "--hidden-dim", "16", "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "bayesdyn.cli", *argv],
        cwd=tmp_path,
        env={**os.environ, "MPLBACKEND": "Agg"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("forecast.csv", "forecast_samples.csv", "forecast.png", "calibration.csv"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    fc = pd.read_csv(out / "forecast.csv")
    expected = ["id", "time", "channel", "region", "mean", "median"]
    expected += ["lower_0.5", "upper_0.5", "lower_0.9", "upper_0.9"]
    assert list(fc.columns) == expected
    assert set(fc["region"]) == {"interpolation", "forecast"}
    cal = pd.read_csv(out / "calibration.csv")
    assert list(cal.columns) == ["level", "coverage", "stderr", "n"]
    assert cal["coverage"].between(0, 1).all()
    assert "held-out forecast calibration" in proc.stdout
