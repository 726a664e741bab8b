"""Accuracy-benchmark plumbing (issue 7): config validation, protocol helpers, README block.

The benchmarks themselves read ../shared/data and run for minutes to an hour, so they are
never run here; these tests cover the parts whose mistakes would silently change a reported
number: config checking, the conditioning mask of the mocap protocol, the Brusselator task
split, the t-interval and the README rewrite. No test reads ../shared.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bayesdyn import IrregularTimeSeries, LatentSDE, LatentSDEConfig
from bayesdyn._validation import BayesdynTypeError, BayesdynValueError

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


common = _load("_bench_common")
mocap = _load("bench_mocap")
bxl = _load("bench_brusselator")
lynx = _load("bench_lynx_hare")
run_all = _load("run_all")


# ------------------------------------------------------------------ configs
SCHEMA = {"steps": int, "lr": float, "mode": ("a", "b"), "bs": ("optional", int), "m": dict}
GOOD = {"steps": 3, "lr": 1, "mode": "a", "bs": None, "m": {}}


def test_check_config_accepts_and_promotes():
    out = common.check_config(dict(GOOD), SCHEMA, "config x.json")
    assert out["lr"] == 1.0 and isinstance(out["lr"], float)
    assert out["bs"] is None


@pytest.mark.parametrize(
    "change, exc, match",
    [
        (
            {"steps": "3"},
            BayesdynTypeError,
            r"config x.json: 'steps' must be an integer; got str '3'",
        ),
        ({"steps": True}, BayesdynTypeError, r"'steps' must be an integer; got bool True"),
        ({"steps": 2.5}, BayesdynTypeError, r"'steps' must be an integer; got float 2.5"),
        ({"lr": "0.1"}, BayesdynTypeError, r"'lr' must be a number; got str '0.1'"),
        ({"lr": float("nan")}, BayesdynValueError, r"'lr' must be finite"),
        ({"mode": "c"}, BayesdynValueError, r"'mode' must be one of \['a', 'b'\]; got str 'c'"),
        ({"bs": 1.5}, BayesdynTypeError, r"'bs' must be an integer; got float 1.5"),
        ({"m": []}, BayesdynTypeError, r"'m' must be an object; got list"),
        ({"stpes": 3}, BayesdynValueError, r"unknown key\(s\) \['stpes'\]"),
    ],
)
def test_check_config_errors(change, exc, match):
    cfg = {**GOOD, **change}
    with pytest.raises(exc, match=match):
        common.check_config(cfg, SCHEMA, "config x.json")


def test_check_config_missing_key_and_not_object():
    with pytest.raises(BayesdynValueError, match=r"missing key\(s\) \['lr'\]"):
        common.check_config({k: v for k, v in GOOD.items() if k != "lr"}, SCHEMA, "c")
    with pytest.raises(BayesdynTypeError, match="must be a JSON object; got list"):
        common.check_config([], SCHEMA, "c")


def test_load_config_file_errors(tmp_path):
    with pytest.raises(BayesdynValueError, match="does not exist"):
        common.load_config(tmp_path / "nope.json", SCHEMA)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(BayesdynValueError, match="bad.json' is not valid JSON"):
        common.load_config(bad, SCHEMA)


def test_committed_configs_are_valid():
    mocap.load_mocap_config(BENCH / "configs" / "mocap.json")
    mocap.load_mocap_config(BENCH / "configs" / "mocap_fullseq.json")
    bxl.load_brusselator_config(BENCH / "configs" / "brusselator.json")
    lynx.load_lynx_hare_config(BENCH / "configs" / "lynx_hare.json")


def _mocap_cfg(tmp_path, **model):
    cfg = json.loads((BENCH / "configs" / "mocap.json").read_text())
    cfg["model"].update(model)
    path = tmp_path / "m.json"
    path.write_text(json.dumps(cfg))
    return path


@pytest.mark.parametrize(
    "model, match",
    [
        ({"encoder": "gru"}, "model.encoder must be 'first_k'"),
        ({"num_context_obs": 5}, "num_context_obs = context_frames"),
        ({"next_obs_features": True}, "next_obs_features and model.bridge must be false"),
        ({"bridge": True}, "next_obs_features and model.bridge must be false"),
        ({"latent_dims": 3}, r"unknown LatentSDE option\(s\) \['latent_dims'\]"),
        ({"obs_dim": 50}, "obs_dim is fixed by the data"),
    ],
)
def test_mocap_config_keeps_the_protocol(tmp_path, model, match):
    """A posterior that could read frames after the third would break 'condition on 3'."""
    with pytest.raises(BayesdynValueError, match=match):
        mocap.load_mocap_config(_mocap_cfg(tmp_path, **model))


# ------------------------------------------------------------------ protocol helpers
def test_mocap_conditioning_masks_and_zeroes_later_frames():
    x = np.arange(2 * 6 * 3, dtype=float).reshape(2, 6, 3) + 1.0
    s = mocap.to_series(x, context_frames=3)
    for b in range(2):
        np.testing.assert_allclose(s.times[b], 0.1 * np.arange(6))
        assert s.mask[b][:3].all() and not s.mask[b][3:].any()
        np.testing.assert_array_equal(s.values[b][3:], 0.0)
        np.testing.assert_array_equal(s.values[b][:3], x[b, :3])
    full = mocap.to_series(x)
    assert all(m.all() for m in full.mask)


def test_mocap_scaler_global_keeps_channel_ratios():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 10, 4)) * np.array([1.0, 2.0, 0.0, 5.0]) + 7.0
    sc = mocap.make_scaler(x, "global")
    assert np.unique(sc.std).size == 1  # one scale for every channel
    np.testing.assert_allclose(sc.mean, x.reshape(-1, 4).mean(0))
    np.testing.assert_allclose(sc.inverse_values(sc.transform_values(x)), x)
    ident = mocap.make_scaler(x, "none")
    np.testing.assert_array_equal(ident.transform_values(x), x)


def test_seq_mse_matches_definition():
    import torch

    s = torch.zeros(2, 1, 5, 2, dtype=torch.float64)
    s[1] = 2.0
    x = np.ones((1, 5, 2))
    # frames 3..4: sample 0 errors 1, sample 1 errors 1 -> mean 1; frames 0..2 ignored
    s[:, :, :3] = 100.0
    assert mocap.seq_mse(s, x, 3).tolist() == [1.0]


def test_brusselator_tasks_follow_the_protocol():
    t = np.arange(0.0, 50.0, 2.0)  # 25 rows, 18 of them at t <= 35
    v = np.stack([t, -t], -1)
    m = np.ones_like(v, dtype=bool)
    m[20, 1] = False  # a missing channel among the forecast targets
    late = np.array([40.0, 45.0])
    s = IrregularTimeSeries(
        [t, t + 0.5, late], [v, v + 1, np.ones((2, 2))], [m, m, np.ones((2, 2), bool)]
    )
    cfg = {"t_val": 35.0, "max_val_samples": 3, "interp_fraction": 0.25}
    tasks = bxl.make_tasks(s, cfg, seed=0)
    assert len(tasks["cond"]) == 2  # the third series has no row at or before t_val: dropped
    for b in range(2):
        tc = tasks["cond"].times[b]
        assert tc.max() <= 35.0 and tc[0] == s.times[b][0]  # the first row is never held out
        fc = tasks["fc_mask"][b].any(-1)
        ip = tasks["ip_mask"][b].any(-1)
        q = tasks["query"][b]
        after = s.times[b][s.times[b] > 35.0][:3]
        np.testing.assert_allclose(np.sort(q[fc]), after)  # the first 3 rows after t_val
        held = q[ip]
        assert held.size == round(0.25 * (18 - 1))
        assert np.intersect1d(held, tc).size == 0  # held-out rows are not conditioned on
        assert np.all(held <= 35.0)
    # the missing channel of row 20 (t=40) is not a target
    i = int(np.flatnonzero(tasks["query"][0] == 40.0)[0])
    assert tasks["fc_mask"][0, i].tolist() == [True, False]
    np.testing.assert_allclose(tasks["target"][0, i, 0], 40.0)


def test_brusselator_split_is_a_partition():
    s = IrregularTimeSeries([np.arange(3.0)] * 10, [np.zeros((3, 2))] * 10)
    tr, te = bxl.split(s, 432)
    assert sorted(tr + te) == list(range(10)) and len(te) == 2


def test_t_interval_closed_form():
    m, h = common.t_interval([1.0, 2.0, 3.0, 4.0])
    # sd = sqrt(5/3); t_{0.975, 3} = 3.182446305 (tables); half = t * sd / 2
    assert m == 2.5
    assert math.isclose(h, 3.182446305 * math.sqrt(5 / 3) / 2, rel_tol=1e-8)
    assert math.isnan(common.t_interval([3.0])[1])


# ------------------------------------------------------------------ README table
def test_rewrite_block_changes_only_the_block():
    text = f"head\n{run_all.BEGIN}\nold\n{run_all.END}\ntail\n"
    out = run_all.rewrite_block(text, "new table")
    assert out == f"head\n{run_all.BEGIN}\nnew table\n{run_all.END}\ntail\n"
    assert run_all.rewrite_block(out, "new table") == out  # idempotent


@pytest.mark.parametrize(
    "text, match",
    [
        ("no markers", "exactly one"),
        (f"{run_all.BEGIN}{run_all.BEGIN}{run_all.END}", "found 2 and 1"),
        (f"{run_all.END} x {run_all.BEGIN}", "comes before"),
    ],
)
def test_rewrite_block_errors(text, match):
    with pytest.raises(BayesdynValueError, match=match):
        run_all.rewrite_block(text, "x")


def test_render_table_puts_numbers_next_to_references():
    res = {
        "mocap": {
            "command": ".venv/bin/python benchmarks/bench_mocap.py --seed 0",
            "date": "2025-01-01T00:00:00Z",
            "git_commit": "abc",
            "machine": "x86_64",
            "train_wall_seconds": 600.0,
            "table": [{"metric": "test MSE", "bayesdyn": "5.0 ± 1.0", "published": "4.03 ± 0.20"}],
        }
    }
    out = run_all.render_table(res)
    row = next(line for line in out.splitlines() if "test MSE" in line)
    assert "**5.0 ± 1.0**" in row and "4.03 ± 0.20" in row and "bench_mocap.py --seed 0" in row
    assert "not run yet" in out  # the other benchmarks
    assert "training 10.0 min wall" in out


def test_readme_has_one_results_block():
    text = (BENCH.parent / "README.md").read_text()
    assert text.count(run_all.BEGIN) == 1 and text.count(run_all.END) == 1


def test_mocap_training_windows():
    x = np.arange(2 * 10 * 1, dtype=float).reshape(2, 10, 1)
    w = mocap.windows(x, 4, 3)  # starts 0, 3, 6 per sequence
    assert w.shape == (6, 4, 1)
    np.testing.assert_array_equal(w[1, :, 0], x[1, 0:4, 0])  # sequence 1, start 0
    np.testing.assert_array_equal(w[2, :, 0], x[0, 3:7, 0])  # sequence 0, start 3
    assert mocap.windows(x, None, 3) is x


def test_mocap_time_warped_windows_interpolate_the_walk():
    """At speed s, window frame j is the walk at frame start + s*j (linear interpolation)."""
    x = (np.arange(2 * 10, dtype=float) ** 2).reshape(2, 10, 1)
    w = mocap.windows(x, 4, 3, [1.0, 0.5, 2.0])
    # speed 1: starts 0, 3, 6; speed 0.5 (span 1.5 frames): starts 0, 3, 6; speed 2 (span 6): 0, 3
    assert w.shape == ((3 + 3 + 2) * 2, 4, 1)
    np.testing.assert_array_equal(w[:6], mocap.windows(x, 4, 3))
    half = w[6 + 2]  # speed 0.5, start 3, sequence 0
    np.testing.assert_allclose(
        half[:, 0], np.interp(3 + 0.5 * np.arange(4), np.arange(10), x[0, :, 0])
    )
    double = w[12 + 3]  # speed 2, start 3, sequence 1: frames 3, 5, 7, 9 exactly
    np.testing.assert_array_equal(double[:, 0], x[1, [3, 5, 7, 9], 0])
    with pytest.raises(BayesdynValueError, match="needs a train_window"):
        mocap.windows(x, None, 3, [0.9, 1.0])


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"time_warp": []}, "non-empty list of speed factors"),
        ({"time_warp": [1.0, 3.0]}, "non-empty list of speed factors"),
        ({"time_warp": [1.0, True]}, "non-empty list of speed factors"),
        ({"time_warp": [1.0, 1.6], "train_window": 200}, "200 frames at speed 1.6 needs more"),
        ({"forecast": "prior_only"}, "'forecast' must be one of"),
    ],
)
def test_mocap_config_checks_warp_and_forecast(tmp_path, overrides, match):
    cfg = json.loads((BENCH / "configs" / "mocap.json").read_text())
    cfg.update(overrides)
    path = tmp_path / "m.json"
    path.write_text(json.dumps(cfg))
    with pytest.raises(BayesdynValueError, match=match):
        mocap.load_mocap_config(path)


def test_mocap_prior_forecast_conditions_on_the_first_frames_only():
    """forecast="prior": the series holds only the conditioning frames, so later frames cannot
    reach the model; the forecast still covers all 300 frame times."""
    import torch

    from bayesdyn import LatentSDE

    cfg = mocap.load_mocap_config(BENCH / "configs" / "mocap.json")
    cfg["forecast"] = "prior"
    torch.manual_seed(0)
    model = LatentSDE(config=cfg["model_config"])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, mocap.NUM_FRAMES, 50))
    sc = mocap.make_scaler(x, "none")
    a, _ = mocap.predict(model, x, sc, cfg, 2, seed=3)
    y = x.copy()
    y[:, 3:] = 1e3  # later frames changed: the forecast must not move
    b, _ = mocap.predict(model, y, sc, cfg, 2, seed=3)
    assert a.shape == (2, 2, mocap.NUM_FRAMES, 50)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    y[:, 0] += 1.0  # a conditioning frame changed: it must
    c, _ = mocap.predict(model, y, sc, cfg, 2, seed=3)
    assert not torch.allclose(a, c)


pp = _load("bench_point_processes")


def _pp_cfg(tmp_path, overrides):
    cfg = json.loads((BENCH / "configs" / "point_processes.json").read_text())
    cfg["overrides"] = overrides
    path = tmp_path / "pp.json"
    path.write_text(json.dumps(cfg))
    return path


def test_point_process_config_overrides_apply_per_data_set(tmp_path):
    cfg = pp.load_pp_config(BENCH / "configs" / "point_processes.json")  # the committed one
    shared = json.loads((BENCH / "configs" / "point_processes.json").read_text())
    for name in pp.DATASETS:
        out = pp.dataset_config(cfg, name)
        ov = {k: v for k, v in shared["overrides"].get(name, {}).items() if k != "_comment"}
        for key in ("num_steps", "lr", "batch_size"):
            assert out[key] == ov.get(key, shared[key]), (name, key)
        model = {**shared["model"], **ov.get("model", {})}
        assert out["model"] == model and out["model_config"].stable_drift == model["stable_drift"]
    cfg = pp.load_pp_config(_pp_cfg(tmp_path, {"poisson": {"lr": 0.5, "model": {"dt": 0.1}}}))
    out = pp.dataset_config(cfg, "poisson")
    assert out["lr"] == 0.5 and out["model_config"].dt == 0.1
    assert pp.dataset_config(cfg, "self_inhibiting")["lr"] == cfg["lr"]  # others untouched


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"hawkes": {"lr": 0.1}}, r"overrides: unknown data set 'hawkes'"),
        ({"poisson": {"epochs": 3}}, r"overrides.poisson: unknown key\(s\) \['epochs'\]"),
        ({"poisson": {"num_steps": 0}}, r"overrides.poisson"),
        ({"poisson": 3}, r"overrides.poisson must be an object"),
        ({"poisson": {"model": {"widths": 3}}}, r"overrides.poisson.model"),
        (
            {"poisson": {"average_last": 1.0}},
            r"'average_last' must be a fraction in \[0, 1\); got 1.0",
        ),
        (
            {"poisson": {"average_last": -0.1}},
            r"overrides.poisson: 'average_last' must be a fraction",
        ),
        ({"poisson": {"model": {"init_intensity": 2.0}}}, r"init_intensity is set from the data"),
        (
            {"poisson": {"refine_rounds": -1}},
            r"overrides.poisson: 'refine_rounds' must be >= 0 \(0: no L-BFGS refinement\); got -1",
        ),
        ({"poisson": {"refine_iters": 0}}, r"overrides.poisson"),
    ],
)
def test_point_process_config_override_errors(tmp_path, overrides, match):
    with pytest.raises(BayesdynValueError, match=match):
        pp.load_pp_config(_pp_cfg(tmp_path, overrides))


def test_mocap_training_loop_runs_in_chunks(tmp_path):
    # The benchmark trains in chunks of eval_every steps (fit(..., resume=True) with num_steps
    # and lr_final extended together) and scores Xval between chunks; a resume check once
    # refused that schedule and the script could not run. Tiny synthetic walks, 3 chunks.
    cfg = mocap.load_mocap_config(BENCH / "configs" / "mocap.json")
    cfg.update(num_steps=6, eval_every=2, batch_size=4, val_samples=2, kl_anneal_steps=2)
    cfg["train_window"], cfg["window_stride"] = 20, 10
    rng = np.random.default_rng(0)
    t = np.arange(30)[None, :, None] * 0.3
    data = {
        "Xtr": np.sin(t + rng.normal(size=(4, 1, 3))) + 0.05 * rng.normal(size=(4, 30, 3)),
        "Xval": np.sin(t + rng.normal(size=(2, 1, 3))),
    }
    torch.manual_seed(0)
    cfg["model"].update(latent_dim=2, hidden_dim=8, encoder_hidden_dim=8, diffusion_hidden_dim=4)
    model = LatentSDE(config=LatentSDEConfig.from_dict({"obs_dim": 3, **cfg["model"]}))
    scaler = mocap.make_scaler(data["Xtr"], cfg["scaling"])
    out = mocap.train(model, data, scaler, cfg, seed=0, log=lambda s: None)
    assert out["steps_done"] == 6 and [h["step"] for h in out["history"]] == [2, 4, 6]
    assert out["best_step"] in (2, 4, 6) and np.isfinite(out["best_val_mse"])


def test_mocap_obs_scale_calibration_matches_held_out_errors():
    """After recalibration the predictive variance per channel (path spread plus observation
    noise) equals the squared error of the predictive mean on Xval, and the decoder means (so
    the MSE) do not move."""
    import torch

    from bayesdyn import LatentSDE

    cfg = mocap.load_mocap_config(BENCH / "configs" / "mocap.json")
    cfg["num_samples"] = 6
    torch.manual_seed(0)
    model = LatentSDE(config=cfg["model_config"])
    rng = np.random.default_rng(1)
    data = {"Xval": rng.normal(size=(2, mocap.NUM_FRAMES, 50)) * 3.0 + 1.0}
    sc = mocap.make_scaler(data["Xval"], "channel")
    before, _ = mocap.predict(model, sc.transform_values(data["Xval"]), sc, cfg, 6, seed=5)
    scale = mocap.calibrate_obs_scale(model, data, sc, cfg, seed=5)
    after, _ = mocap.predict(model, sc.transform_values(data["Xval"]), sc, cfg, 6, seed=5)
    torch.testing.assert_close(before, after, rtol=0, atol=0)
    np.testing.assert_allclose(model.decoder.scale().detach().numpy(), scale, rtol=1e-5)
    m = sc.transform_values(after.numpy())[:, :, 3:]
    x = sc.transform_values(data["Xval"])[:, 3:]
    err = ((m.mean(0) - x) ** 2).mean(axis=(0, 1))
    np.testing.assert_allclose(m.var(axis=0).mean(axis=(0, 1)) + scale**2, err, rtol=1e-4)


tempo = _load("mocap_tempo")


def test_gait_period_recovers_a_known_period():
    t = np.arange(300)[:, None]
    walk = np.concatenate([np.sin(2 * np.pi * t / 137), np.cos(2 * np.pi * t / 137 + 1)], 1)
    assert tempo.gait_period(walk) == 137
    # Negative control: another period is not reported as 137.
    assert tempo.gait_period(np.sin(2 * np.pi * t / 90)) == 90


def test_tempo_table_at_tempo_one_is_the_bench_mse():
    import torch

    from bayesdyn import LatentSDE

    cfg = mocap.load_mocap_config(BENCH / "configs" / "mocap.json")
    torch.manual_seed(0)
    model = LatentSDE(config=cfg["model_config"])
    rng = np.random.default_rng(2)
    data = {k: rng.normal(size=(2, mocap.NUM_FRAMES, 50)) for k in ("Xtr", "Xval", "Xtest")}
    rows = tempo.tempo_table(model, data, cfg, [1.0, 0.9], num_samples=2, seed=4)
    sc = mocap.make_scaler(data["Xtr"], cfg["scaling"])
    ref, _ = mocap.predict(model, sc.transform_values(data["Xtest"]), sc, cfg, 2, seed=4)
    np.testing.assert_array_equal(rows[0]["Xtest"], mocap.seq_mse(ref, data["Xtest"], 3))
    slow, _ = mocap.predict(
        model, sc.transform_values(data["Xtest"]), sc, cfg, 2, seed=4, tempo=0.9
    )
    np.testing.assert_array_equal(rows[1]["Xtest"], mocap.seq_mse(slow, data["Xtest"], 3))
    assert not np.array_equal(rows[1]["Xtest"], rows[0]["Xtest"])
