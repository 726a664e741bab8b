import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Predictive

from bayesdyn import FunctionalSDE, SDEPath
from bayesdyn._validation import BayesdynTypeError, BayesdynValueError
from tests.oracles import euler_ou_log_prob_loop


def ou_sde(theta=1.0, mu=0.0, sigma=0.5, dim=1):
    return FunctionalSDE(lambda t, z: theta * (mu - z), sigma, state_dim=dim)


GRID = torch.tensor([0.0, 0.2, 0.25, 0.9, 1.4])


@pytest.mark.parametrize("batch_shape", [(), (4,), (3, 2)], ids=str)
@pytest.mark.parametrize("sample_shape", [(), (5,)], ids=str)
def test_shapes(batch_shape, sample_shape):
    d = SDEPath(ou_sde(dim=3), torch.zeros(*batch_shape, 3), GRID)
    assert d.batch_shape == batch_shape
    assert d.event_shape == (5, 3)
    x = d.rsample(sample_shape)
    assert x.shape == sample_shape + batch_shape + (5, 3)
    assert d.log_prob(x).shape == sample_shape + batch_shape
    e = d.expand((7,) + batch_shape)
    assert e.sample().shape == (7,) + batch_shape + (5, 3)


def test_first_row_is_z0_and_log_prob_matches_oracle():
    z0 = torch.tensor([[0.3], [-1.0]])
    d = SDEPath(ou_sde(1.3, 0.2, 0.6), z0, GRID)
    x = d.sample()
    assert torch.equal(x[:, 0], z0)
    lp = d.log_prob(x)
    for b in range(2):
        ref = euler_ou_log_prob_loop(x[b].numpy(), GRID.numpy(), 1.3, 0.2, 0.6)
        assert float(lp[b]) == pytest.approx(ref, rel=1e-12)


def test_gradcheck_log_prob_wrt_parameters():
    x = SDEPath(ou_sde(), torch.zeros(2, 1), GRID).sample()

    def f(theta, sigma):
        sde = FunctionalSDE(lambda t, z: -theta * z, lambda t, z: sigma.expand_as(z), 1)
        return SDEPath(sde, torch.zeros(2, 1), GRID).log_prob(x)

    theta = torch.tensor(0.8, requires_grad=True)
    sigma = torch.tensor(0.4, requires_grad=True)
    assert torch.autograd.gradcheck(f, (theta, sigma))


def test_rsample_is_differentiable_wrt_z0_and_drift():
    theta = torch.tensor(1.0, requires_grad=True)
    z0 = torch.tensor([[1.0]], requires_grad=True)
    sde = FunctionalSDE(lambda t, z: -theta * z, 0.3, 1)
    x = SDEPath(sde, z0, GRID).rsample()

    def f(theta_, z0_):
        torch.manual_seed(3)
        sde_ = FunctionalSDE(lambda t, z: -theta_ * z, 0.3, 1)
        return SDEPath(sde_, z0_, GRID).rsample()

    assert torch.autograd.gradcheck(f, (theta, z0))
    x.sum().backward()
    assert theta.grad is not None and z0.grad is not None


def _model(obs=None):
    theta = pyro.param("theta", torch.tensor(1.0), constraint=dist.constraints.positive)
    sde = FunctionalSDE(lambda t, z: -theta * z, 0.5, 1)
    with pyro.plate("series", 3, dim=-1):
        z0 = pyro.sample("z0", dist.Normal(0.0, 1.0).expand([1]).to_event(1))
        z = pyro.sample("z", SDEPath(sde, z0, GRID))
        pyro.sample("y", dist.Normal(z[..., -1, 0], 0.1), obs=obs)
    return z


def test_under_plate_trace_condition_do_and_predictive():
    tr = poutine.trace(_model).get_trace()
    assert tr.nodes["z"]["value"].shape == (3, 5, 1)
    assert tr.nodes["z"]["fn"].batch_shape == (3,)
    tr.compute_log_prob()
    assert tr.nodes["z"]["log_prob"].shape == (3,)

    fixed = torch.zeros(3, 5, 1)
    cond = poutine.trace(poutine.condition(_model, data={"z": fixed})).get_trace()
    assert torch.equal(cond.nodes["z"]["value"], fixed)
    assert cond.nodes["z"]["is_observed"]

    z0 = torch.full((3, 1), 7.0)
    intervened = poutine.trace(poutine.do(_model, data={"z0": z0})).get_trace()
    assert torch.equal(intervened.nodes["z"]["value"][:, 0], z0)

    for parallel in (False, True):
        samples = Predictive(_model, num_samples=4, parallel=parallel)()
        assert samples["z"].shape == (4, 3, 5, 1)
        assert samples["y"].shape == (4, 3)


@pytest.mark.parametrize(
    "args, err, match",
    [
        (("not an sde", torch.zeros(1), GRID), BayesdynTypeError, "sde must be a bayesdyn"),
        ((None, torch.zeros(2), GRID), BayesdynValueError, "z0 has 2 latent dims, the sde"),
        (
            (None, torch.zeros(1), torch.tensor([0.0, 0.5, 0.5])),
            BayesdynValueError,
            r"grid must be strictly increasing; grid\[2\]=0.5 follows grid\[1\]=0.5",
        ),
        (
            (None, torch.zeros(1), torch.tensor(0.5)),
            BayesdynValueError,
            r"grid must be a tensor \[U\] \(or per series \[\*gbatch, U\]\) with U >= 1",
        ),
        (
            (None, torch.zeros(2, 1), torch.zeros(2, 2)),
            BayesdynValueError,
            r"strictly increasing; grid\[0, 1\]=0.0 follows grid\[0, 0\]=0.0",
        ),
    ],
)
def test_errors(args, err, match):
    sde = ou_sde() if args[0] is None else args[0]
    with pytest.raises(err, match=match):
        SDEPath(sde, args[1], args[2])
