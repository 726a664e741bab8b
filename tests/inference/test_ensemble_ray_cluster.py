"""fit_ensemble(backend="ray", ray_address=...) on an existing Ray cluster.

A real head node is started with the ``ray`` CLI (``ray start --head``, 2 CPUs, token
authentication with a fresh token), as a user's cluster would be. A user's script, run as
its own process with the cluster's token in its environment (Ray reads the authentication
settings when it is imported), connects by address, trains and saves the ensemble. With
``common_noise=True`` the members do not depend on their group, so the result must equal the
local vectorised fit of this process to float rounding (the 1e-9 tolerance of
tests/inference/test_ensemble.py).
"""

import os
import secrets
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bayesdyn.inference import Ensemble, fit_ensemble

pytest.importorskip("ray", reason="the ray extra is not installed (pip install bayesdyn[ray])")

ROOT = Path(__file__).resolve().parents[2]
SETUP = """
import torch

torch.set_default_dtype(torch.float64)  # as tests/conftest.py
from bayesdyn.models import LatentSDEConfig
from tests.common import lattice_ou

series, _ = lattice_ou(num_series=6, num_obs=8, seed=3)
cfg = LatentSDEConfig(obs_dim=1, latent_dim=2, hidden_dim=8, context_dim=4, dt=0.2)
kw = dict(num_steps=2, seed=4, method="bootstrap", common_noise=True)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"ray start exited with {proc.returncode}"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"the Ray head did not listen on port {port} within {timeout} s")


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """``(address, env)`` of a running 2-CPU head node, stopped at the end.

    ``ray start --block`` keeps the head in the foreground, so terminating it stops this
    cluster only (``ray stop`` would stop every Ray instance on the machine). Its own temp
    dir keeps its session files (``ray_current_cluster``) away from later local
    ``ray.init()`` calls, which would otherwise try to join it.
    """
    ray_cli = Path(sys.executable).with_name("ray")
    cli = str(ray_cli) if ray_cli.exists() else shutil.which("ray")
    assert cli is not None, "the ray extra is installed but its 'ray' command is not on PATH"
    port = _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    cmd = [cli, "start", "--head", "--block", f"--port={port}", "--num-cpus=2"]
    temp = tmp_path_factory.mktemp("ray")
    cmd += ["--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_port(port, proc)
        yield f"127.0.0.1:{port}", env
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_fit_ensemble_on_an_existing_cluster_by_address(ray_cluster, tmp_path):
    address, env = ray_cluster
    out = tmp_path / "ensemble.pt"
    script = SETUP + textwrap.dedent(f"""
        import ray
        from bayesdyn.inference import fit_ensemble

        ens = fit_ensemble(cfg, series, 3, backend="ray", ray_address={address!r}, **kw)
        res = ens.fit_result
        assert res.backend == "ray" and res.failures == [], res.failures
        print("groups", res.groups)
        assert not ray.is_initialized()  # disconnected again; the cluster keeps running
        ens.save({str(out)!r})
        ray.init(address={address!r}, logging_level="ERROR")
        print("cluster CPUs", int(ray.cluster_resources().get("CPU", 0)))
        ray.shutdown()
    """)
    env = {**env, "PYTHONPATH": os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "groups [[0, 1], [2]]" in proc.stdout  # the cluster's 2 CPUs -> 2 groups
    assert "cluster CPUs 2" in proc.stdout  # still up after the script disconnected
    ns: dict = {}
    exec(SETUP, ns)
    local = fit_ensemble(ns["cfg"], ns["series"], 3, **ns["kw"])
    remote = Ensemble.load(out)
    assert remote.num_members == 3
    for name, value in local.state.items():
        assert float((value - remote.state[name]).abs().max()) < 1e-9, name
