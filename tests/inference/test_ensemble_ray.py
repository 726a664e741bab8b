"""Ray backend of fit_ensemble: a local 2-CPU Ray instance, one per module (start-up is slow).

With ``common_noise=True`` a member's training does not depend on its group (seeds derive from
the member id), so the Ray result must equal the local vectorised one to float rounding (the
same 1e-9 tolerance as tests/inference/test_ensemble.py, derived there). A worker killed on its
first attempt must be retried and reported; a group that keeps failing must raise.
"""

import pytest
import torch

from bayesdyn.inference import fit_ensemble
from bayesdyn.inference._ray_backend import EnsembleTrainingFailed
from bayesdyn.models import LatentSDEConfig
from tests.common import lattice_ou

ray = pytest.importorskip(
    "ray", reason="the ray extra is not installed (pip install bayesdyn[ray])"
)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def problem():
    series, _ = lattice_ou(num_series=6, num_obs=8, seed=3)
    cfg = LatentSDEConfig(obs_dim=1, latent_dim=2, hidden_dim=8, context_dim=4, dt=0.2)
    return series, cfg


def test_ray_round_trip_with_a_killed_worker(local_ray, problem, caplog):
    series, cfg = problem
    kw = dict(num_steps=2, seed=4, method="bootstrap", common_noise=True)
    local = fit_ensemble(cfg, series, 3, **kw)
    with caplog.at_level("WARNING", logger="bayesdyn.ensemble"):
        remote = fit_ensemble(cfg, series, 3, backend="ray", _inject_failures={1: 1}, **kw)
    res = remote.fit_result
    assert res.backend == "ray" and res.groups == [[0, 1], [2]]
    # the killed worker is reported, never dropped: one failure, then a successful retry
    assert len(res.failures) == 1
    assert res.failures[0]["group"] == 1 and res.failures[0]["members"] == [2]
    assert res.failures[0]["attempt"] == 0 and "WorkerCrashedError" in res.failures[0]["error"]
    assert "failed on attempt 1" in caplog.text
    assert remote.num_members == 3
    for name, value in local.state.items():
        assert float((value - remote.state[name]).abs().max()) < 1e-9, name
    assert torch.allclose(local.fit_result.loss, res.loss, atol=1e-9, rtol=0)


def test_ray_raises_when_retries_run_out(local_ray, problem):
    series, cfg = problem
    with pytest.raises(
        EnsembleTrainingFailed, match=r"group 0 \(members \[0\]\) failed on all 2"
    ) as e:
        fit_ensemble(
            cfg, series, 1, num_steps=1, backend="ray", max_retries=1, _inject_failures={0: 5}
        )
    assert [(f["group"], f["attempt"]) for f in e.value.failures] == [(0, 0), (0, 1)]


def test_ray_num_groups_error(local_ray, problem):
    series, cfg = problem
    with pytest.raises(
        ValueError, match=r"num_groups must be an integer in \[1, num_members=2\]; got 3"
    ):
        fit_ensemble(cfg, series, 2, num_steps=1, backend="ray", num_groups=3)
