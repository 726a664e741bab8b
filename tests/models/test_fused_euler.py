"""The fused Euler kernel (one autograd node, hand-written backward) against the generic loop.

The generic loop (``euler_maruyama`` stepping ``_BoundSDE.step``, differentiated by autograd)
is the reference: same noise, same numbers, same gradients, for every feature the fused pass
supports (per-step features, the bridge term, the switch to the prior drift after each
series' last observation, and the prior drift returned for the path KL).
"""

import pytest
import torch

from bayesdyn import LatentSDE
from bayesdyn.models import GRUEncoder
from bayesdyn.models.nets import RowFeatures, fused_euler_path, gru_sequence
from bayesdyn.models.stacked import MemberStack
from bayesdyn.solvers import euler_maruyama
from tests.common import ragged_batch


def _setup(bridge: bool, time_input: bool, samples: tuple = ()):
    torch.manual_seed(3)
    model = LatentSDE(
        2, latent_dim=3, hidden_dim=6, context_dim=2, dt=0.2, diffusion_hidden_dim=5,
        bridge=bridge, time_input=time_input,
    )  # fmt: skip
    batch = ragged_batch(B=3, T=5)  # ragged: series 1 has one point, so 'active' switches
    grid = model.make_grid(batch).grid
    post = model.posterior_sde(batch, grid, model.encode(batch))
    prior = model.prior_sde(batch, grid)
    shape = samples + (3, 1)
    z0 = torch.randn(shape + (3,), requires_grad=True)
    noise = torch.randn(shape + (grid.numel() - 1, 3))
    return model, post, prior, grid, z0, noise


def _grads(loss, model, z0):
    params = [p for p in model.parameters() if p.requires_grad]
    gs = torch.autograd.grad(loss, params + [z0], allow_unused=True, retain_graph=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params + [z0], gs, strict=True)]


@pytest.mark.parametrize("bridge", [False, True])
@pytest.mark.parametrize("time_input", [False, True])
@pytest.mark.parametrize("samples", [(), (2,)])
def test_fused_pass_equals_generic_loop_values_and_gradients(bridge, time_input, samples):
    model, post, prior, grid, z0, noise = _setup(bridge, time_input, samples)
    assert not all(post._all_active[:-1])  # the prior switch is exercised
    fused = post.sample_path(z0, grid, noise)
    assert fused is not None and fused[3] is not None
    path, f, g, f_p = fused
    ref = euler_maruyama(post.step, z0, grid, noise)
    ref_fp = prior.drift_on_path(grid[:-1], ref.path[..., :-1, :])
    for a, b in [(path, ref.path), (f, ref.drift), (g, ref.diffusion), (f_p, ref_fp)]:
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # A generic scalar of all four outputs: every backward branch gets a gradient.
    w = [torch.randn_like(t) for t in (path, f, g, f_p)]

    def scalar(outs):
        return sum((wi * o).sum() for wi, o in zip(w, outs, strict=True))

    g_fused = _grads(scalar(fused), model, z0)
    g_ref = _grads(scalar((ref.path, ref.drift, ref.diffusion, ref_fp)), model, z0)
    for a, b in zip(g_fused, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_fused_gradient_matches_finite_differences():
    """gradcheck (central differences) of the fused node in z0, the bridge inputs and ``pre``."""
    model, post, prior, grid, z0, noise = _setup(bridge=True, time_input=True)
    target, rate = (t.detach().clone().requires_grad_() for t in post.bridge)
    pre = post.pre.detach().clone().requires_grad_()
    prior_pre = prior.pre.detach().clone().requires_grad_()
    z0 = z0.detach().clone().requires_grad_()

    def fn(z0, pre, prior_pre, target, rate):
        out = fused_euler_path(
            model.post_drift, model.diffusion, z0, pre, grid, noise,
            prior=(model.prior_drift, prior_pre), active=post.active, bridge=(target, rate),
        )  # fmt: skip
        return tuple(out)

    # fast_mode compares random projections v^T J u of the two Jacobians (Chen et al.).
    assert torch.autograd.gradcheck(fn, (z0, pre, prior_pre, target, rate), fast_mode=True)


def test_fused_gradient_matches_finite_differences_with_factored_row_features():
    """gradcheck of the fused node in the factored features (rows gathered per step)."""
    model, post, prior, grid, z0, noise = _setup(bridge=False, time_input=False)
    rows = post.rows
    assert rows is not None and rows.tau is not None  # the posterior keeps them factored
    per_row = rows.per_row.detach().clone().requires_grad_()
    w_tau = rows.w_tau.detach().clone().requires_grad_()
    base = post._base.detach().clone().requires_grad_()
    z0 = z0.detach().clone().requires_grad_()

    def fn(z0, base, per_row, w_tau):
        r = RowFeatures(per_row, rows.index, rows.tau, w_tau)
        out = fused_euler_path(
            model.post_drift, model.diffusion, z0, base, grid, noise,
            prior=(model.prior_drift, prior.pre), active=post.active, rows=r,
        )  # fmt: skip
        return tuple(out)

    assert torch.autograd.gradcheck(fn, (z0, base, per_row, w_tau), fast_mode=True)
    # The factored features are the dense ones.
    dense = RowFeatures(per_row, rows.index, rows.tau, w_tau).dense() + base
    torch.testing.assert_close(post.pre, dense.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("bridge", [False, True])
def test_fused_kernel_under_vmap_over_members_equals_each_member(bridge):
    """Stacked members (vmap rule: one kernel call, batched matmuls) = each member alone."""
    model, post, prior, grid, z0, noise = _setup(bridge, time_input=True)
    torch.manual_seed(5)
    other = LatentSDE(
        2, latent_dim=3, hidden_dim=6, context_dim=2, dt=0.2, diffusion_hidden_dim=5,
        bridge=bridge, time_input=True,
    )  # fmt: skip
    members = [model, other]
    stack = MemberStack(members)
    batch = ragged_batch(B=3, T=5)
    z0 = z0.detach()
    w = torch.randn(4)

    def run(m):
        post = m.posterior_sde(batch, grid, m.encode(batch))
        out = post.sample_path(z0, grid, noise)
        return sum(wi * o.square().sum() for wi, o in zip(w, out, strict=True))

    stacked = stack.vmap(run)  # [E]
    grads = torch.autograd.grad(stacked.sum(), list(stack.params.values()), allow_unused=True)
    for k, m in enumerate(members):
        params = dict(m.named_parameters())
        loss = run(m)
        torch.testing.assert_close(stacked[k], loss, rtol=1e-12, atol=1e-12)
        ref = torch.autograd.grad(loss, [params[n] for n in stack.params], allow_unused=True)
        for name, g, r in zip(stack.params, grads, ref, strict=True):
            assert (g is None) == (r is None), name  # unused by both (e.g. decoder) or neither
            if g is not None:
                torch.testing.assert_close(g[k], r, rtol=1e-10, atol=1e-12, msg=name)


def test_path_kl_reuses_the_fused_prior_drift():
    model, post, prior, grid, z0, noise = _setup(bridge=False, time_input=True)
    from bayesdyn.models import SDEPath

    q = SDEPath(post, z0.detach(), grid)
    p = SDEPath(prior, z0.detach(), grid)
    z = q.rsample()
    assert q._prior_drift is not None and post.same_prior(prior)
    kl_fused = q.path_kl(p, z)
    q._prior_drift = None  # force the on-path evaluation of the prior drift
    kl_generic = q.path_kl(p, z)
    torch.testing.assert_close(kl_fused, kl_generic, rtol=1e-12, atol=1e-12)
    # A prior bound to another grid, or with other features, is not the same prior.
    assert not post.same_prior(model.prior_sde(ragged_batch(B=3, T=5), grid * 1.1))
    shifted = model.prior_sde(ragged_batch(B=3, T=5), grid)
    shifted.pre = shifted.pre + 1.0
    assert not post.same_prior(shifted)


def _assert_same_values_and_gradients(out, ref, inputs):
    """``out == ref`` (1e-12) and their gradients along a random direction w.r.t. ``inputs``
    agree (1e-10)."""
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    w = torch.randn_like(out)
    g_out = torch.autograd.grad((w * out).sum(), inputs)
    g_ref = torch.autograd.grad((w * ref).sum(), inputs)
    for a, b in zip(g_out, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("B, T", [(3, 6), (1, 1)])
def test_hand_written_gru_equals_torch_gru_values_and_gradients(B, T):
    from bayesdyn.models.nets import gru_sequence

    torch.manual_seed(0)
    gru = torch.nn.GRU(7, 5, batch_first=True)
    x = torch.randn(B, T, 7, requires_grad=True)
    _assert_same_values_and_gradients(gru_sequence(gru, x), gru(x)[0], [x, *gru.parameters()])


def test_hand_written_gru_under_vmap_over_members_equals_each_member():
    """The GRU kernel's vmap rule (one batched recurrence for all members) = each member."""
    torch.manual_seed(1)
    encoders = [GRUEncoder(1, 5, 2) for _ in range(3)]  # GRUs with 2 * 1 + 1 = 3 inputs
    grus = [e.gru for e in encoders]
    stack = MemberStack(encoders)
    x = torch.randn(4, 6, 3)

    out = stack.vmap(lambda e: gru_sequence(e.gru, x))  # [E, B, T, H]
    w = torch.randn_like(out)
    grads = torch.autograd.grad((w * out).sum(), list(stack.params.values()), allow_unused=True)
    for k, gru in enumerate(grus):
        ref = gru(x)[0]
        torch.testing.assert_close(out[k], ref, rtol=1e-12, atol=1e-12)
        names = [n for n in stack.params if n.startswith("gru.")]
        params = dict(encoders[k].named_parameters())
        ref_g = torch.autograd.grad((w[k] * ref).sum(), [params[n] for n in names])
        for name, r in zip(names, ref_g, strict=True):
            g = grads[list(stack.params).index(name)]
            torch.testing.assert_close(g[k], r, rtol=1e-10, atol=1e-12, msg=name)
    # Gradients flow to a member-batched input too.
    xs = torch.randn(3, 4, 6, 3, requires_grad=True)
    out = stack.vmap(lambda e, xi: gru_sequence(e.gru, xi), xs, in_dims=(0,))
    gx = torch.autograd.grad(out.square().sum(), xs)[0]
    for k, gru in enumerate(grus):
        xk = xs[k].detach().requires_grad_()
        ref = torch.autograd.grad(gru(xk)[0].square().sum(), xk)[0]
        torch.testing.assert_close(gx[k], ref, rtol=1e-10, atol=1e-12)


def test_gru_encoder_without_padding_equals_per_series_reversal():
    """With every series at full length the encoder flips instead of gathering: the same
    context and gradients as the general (ragged) reversal, here forced by one extra padding
    row that the full-length series never read."""
    torch.manual_seed(2)
    enc = GRUEncoder(2, 5, 3)
    batch = ragged_batch(B=3, T=4)
    full = torch.full((3,), 4)
    values = batch.values.clone().requires_grad_()
    ctx = enc(batch.times, values, batch.mask, full)
    # The same series with a padding row appended: the general path (lengths < T).
    pad = lambda t: torch.cat([t, t[:, -1:]], 1)  # noqa: E731
    mask = pad(batch.mask)
    mask[:, -1] = False
    ctx_ref = enc(pad(batch.times), pad(values), mask, full)[:, :4]
    _assert_same_values_and_gradients(ctx, ctx_ref, [values, *enc.parameters()])


def test_fused_kernel_buffers_are_reused_only_after_their_graph_is_freed():
    """The kernel's large buffers go back to a pool when its autograd node is freed: a second
    pass while the first graph lives gets other buffers (same gradients as alone), and a pass
    after the graph is freed reuses them."""
    import gc

    from bayesdyn.models.nets import _POOL

    model, post, prior, grid, z0, noise = _setup(bridge=False, time_input=False)
    params = [p for p in model.parameters() if p.requires_grad]

    def loss(noise):
        path, f, g, f_p = post.sample_path(z0, grid, noise)
        return path.square().sum() + (f * f_p).sum() + g.sum()

    def grads(x):
        return torch.autograd.grad(x, params, allow_unused=True, retain_graph=True)

    alone = [grads(loss(n)) for n in (noise, -noise)]
    gc.collect()
    first, second = loss(noise), loss(-noise)  # both graphs alive at once
    both = [grads(x) for x in (first, second)]
    for ga, gb in zip(alone, both, strict=True):
        for a, b in zip(ga, gb, strict=True):
            if a is not None:
                torch.testing.assert_close(a, b, rtol=0, atol=0)
    kept = {t.data_ptr() for bufs in _POOL.free.values() for t in bufs}
    del first, second
    gc.collect()
    freed = {t.data_ptr() for bufs in _POOL.free.values() for t in bufs} - kept
    assert freed  # the two graphs' buffers are back
    again = loss(noise)  # noqa: F841 (its graph holds the buffers it took)
    assert freed - {t.data_ptr() for bufs in _POOL.free.values() for t in bufs}  # reused


def test_buffer_pool_caps_what_it_keeps():
    from bayesdyn.models.nets import _BufferPool

    pool = _BufferPool(max_bytes=100 * 8)
    a, b = torch.empty(60, dtype=torch.float64), torch.empty(60, dtype=torch.float64)
    pool.give([a, b])  # only the first fits
    assert pool.kept == 60 * 8
    assert pool.take(a, 60).data_ptr() == a.data_ptr()
    assert pool.take(a, 60).data_ptr() != b.data_ptr()  # nothing kept: a fresh tensor
    assert pool.kept == 0


def test_kernels_after_inference_mode():
    """Buffers made under torch.inference_mode are not pooled (they cannot be written outside
    it): a training pass after an inference pass works and gives the same numbers."""
    torch.manual_seed(4)
    enc = GRUEncoder(2, 5, 3)
    batch = ragged_batch(B=3, T=4)
    full = torch.full((3,), 4)
    with torch.inference_mode():
        ref = enc(batch.times, batch.values, batch.mask, full)
    ctx = enc(batch.times, batch.values, batch.mask, full)
    torch.testing.assert_close(ctx, ref, rtol=0, atol=0)
    ctx.sum().backward()
    model, post, prior, grid, z0, noise = _setup(bridge=False, time_input=False)
    with torch.inference_mode():
        out = fused_euler_path(
            model.post_drift, model.diffusion, z0, post.pre, grid, noise,
            prior=(model.prior_drift, prior.pre), active=post.active,
        )  # fmt: skip
    path = post.sample_path(z0, grid, noise)[0]  # (factored features: rounding differs)
    torch.testing.assert_close(path, out[0], rtol=1e-12, atol=1e-12)
    path.sum().backward()
