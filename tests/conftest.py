"""Suite-wide fixtures: float64, a fixed seed per test, a clean param store, validation on."""

import pyro
import pytest
import torch

import bayesdyn._validation as validation

#: Suite-wide false-alarm budget for statistical tests: each test's tolerance is set so
#: that a correct implementation fails with probability below this (like pyro's TEST_FAILURE_RATE).
TEST_FAILURE_RATE = 1e-3


@pytest.fixture(autouse=True)
def _setup_each_test():
    old_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    validation.enable_validation(True)
    yield
    torch.set_default_dtype(old_dtype)
    pyro.clear_param_store()
