"""Flow family: round trips, logdets against the autograd Jacobian, modules.

The registry-driven tests (test_ops.py) cover parity, gradcheck, opcheck, compile and bad inputs of
the four ops; here are the properties that make them flows:
- inverse(forward(x)) ≈ x within 1e-5 relative in float32, for every op and module;
- every logdet equals torch.linalg.slogdet of the autograd Jacobian (float64, small dimensions),
  forward and reverse;
- planar flows stay invertible for adversarial u, w (wᵀu ≪ −1);
- modules: state_dict round trips, ActNorm's data-dependent initialization.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import replearn
from conftest import device_params
from replearn.nn.flows import ActNorm, AdditiveCoupling, AffineCoupling, InvConv1x1, PlanarFlow
from replearn.ops import actnorm, affine_coupling, channel_mask, checkerboard_mask, invconv1x1, planar_flow


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape, gen, dtype=torch.float32, device="cpu", scale=1.0):
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype).to(device)


def _invconv_params(c, gen, dtype=torch.float32, device="cpu"):
    perm = torch.randperm(c, generator=gen).to(device)
    lower, upper = _randn(c, c, gen=gen, dtype=dtype, device=device, scale=0.3), _randn(c, c, gen=gen, dtype=dtype,
                                                                                          device=device, scale=0.3)
    s = (torch.rand(c, generator=gen, dtype=torch.float64) + 0.5) * torch.where(torch.arange(c) % 2 == 0, 1.0, -1.0)
    return perm, lower, upper, s.to(dtype).to(device)


def _assert_round_trip(x, back, rtol=1e-5):
    scale = x.abs().max().item()
    err = (back - x).abs().max().item()
    assert err <= rtol * max(scale, 1.0), f"round trip error {err:.3g} (scale {scale:.3g})"


# Each case: (name, forward(x, reverse) -> (y, logdet), input shape). float64 parameters are cast per call.
def _op_cases(device, dtype, gen, batch=2):
    cases = []
    t = _randn(batch, 4, 3, 3, gen=gen, dtype=dtype, device=device)
    s = _randn(batch, 4, 3, 3, gen=gen, dtype=dtype, device=device, scale=0.5)
    for scale in ("exp", "tanh", "sigmoid"):
        for name, mask in (("checkerboard", checkerboard_mask(3, 3, device=device)), ("channel", channel_mask(4, 1, device=device)),
                           ("split", None)):  # fmt: skip
            cases.append((f"coupling-{scale}-{name}", lambda x, r, m=mask, sc=scale: affine_coupling(x, t, s, m, r, sc),
                          (batch, 4, 3, 3)))  # fmt: skip
    cases.append(("coupling-additive", lambda x, r: affine_coupling(x, t, None, checkerboard_mask(3, 3, device=device), r),
                  (batch, 4, 3, 3)))  # fmt: skip
    a = torch.tensor([0.7, -1.3, 1.1, 0.5], dtype=dtype, device=device)
    b = _randn(4, gen=gen, dtype=dtype, device=device)
    cases.append(("actnorm", lambda x, r: actnorm(x, a, b, r), (2, 4, 3, 3)))
    params = _invconv_params(4, gen, dtype, device)
    cases.append(("invconv1x1", lambda x, r: invconv1x1(x, *params, r), (2, 4, 3, 3)))
    cases.append(("invconv1x1-flat", lambda x, r: invconv1x1(x, *params, r), (3, 4)))
    u, w = _randn(5, gen=gen, dtype=dtype, device=device), _randn(5, gen=gen, dtype=dtype, device=device)
    bias = torch.tensor(0.3, dtype=dtype, device=device)
    cases.append(("planar", lambda x, r: planar_flow(x, u, w, bias, r), (6, 5)))
    return cases


@pytest.mark.parametrize("device", device_params())
def test_every_op_round_trips_in_float32(device):
    gen = _gen(1)
    for name, fn, shape in _op_cases(device, torch.float32, gen):
        x = _randn(*shape, gen=gen, device=device)
        y, logdet = fn(x, False)
        back, logdet_back = fn(y, True)
        _assert_round_trip(x, back)
        torch.testing.assert_close(logdet_back, -logdet, rtol=1e-5, atol=1e-5, msg=name)


def _jacobian_logdet(fn, x):
    """log|det ∂fn/∂x| of one sample by torch.linalg.slogdet of the autograd Jacobian."""
    flat = x.reshape(-1)
    jac = torch.autograd.functional.jacobian(lambda v: fn(v.reshape(x.shape))[0].reshape(-1), flat)
    return torch.linalg.slogdet(jac)[1]


def test_every_logdet_equals_slogdet_of_the_autograd_jacobian():
    gen = _gen(2)
    for name, fn, shape in _op_cases("cpu", torch.float64, gen, batch=1):
        # one sample: the Jacobian of the whole batch is block diagonal
        x = _randn(1, *shape[1:], gen=gen, dtype=torch.float64)
        for reverse in (False, True):
            _, logdet = fn(x, reverse)
            expected = _jacobian_logdet(lambda v: fn(v, reverse), x)
            torch.testing.assert_close(logdet[0], expected, rtol=1e-10, atol=1e-10, msg=f"{name} reverse={reverse}")


def test_planar_flow_inverts_for_adversarial_u_and_w():
    """wᵀu ≪ −1 puts m = wᵀû at −1 + e^{wᵀu}: the map flattens where tanh' = 1 (wᵀz + b = 0), and the
    solver must still find the unique root (Newton alone overshoots there; the bracket keeps it).

    At the flat spot the inverse itself is ill-conditioned (wᵀf ≈ α³/3 near it, so a rounding δ of f
    moves α by ~δ^(1/3)), so there the check is the residual f(f⁻¹(y)) = y, which a solver that finds
    the root meets on every point; the round trip is checked away from it."""
    gen = _gen(3)
    for dtype, rtol in ((torch.float64, 1e-9), (torch.float32, 1e-5)):
        for d, factor in ((2, -50.0), (8, -5.0), (32, -1.0)):
            w = _randn(d, gen=gen, dtype=dtype)
            u = factor * w + 0.01 * _randn(d, gen=gen, dtype=dtype)
            assert (w @ u).item() < -1
            b = torch.tensor([0.1], dtype=dtype)
            z = _randn(256, d, gen=gen, dtype=dtype, scale=2.0)
            z[:8] = -b / (w @ w) * w + 1e-3 * torch.arange(8, dtype=dtype)[:, None]  # at and near the flat spot
            f, _ = planar_flow(z, u, w, b)
            back, _ = planar_flow(f, u, w, b, reverse=True)
            again, _ = planar_flow(back, u, w, b)
            _assert_round_trip(f, again, rtol)
            away = (z @ w + b).abs() > 0.2
            assert away.sum() > 100
            _assert_round_trip(z[away], back[away], rtol)


def test_planar_reverse_gradients_are_the_implicit_function_gradients():
    """The reverse op's gradients equal those of autograd through the reference's solve."""
    gen = _gen(4)
    f = _randn(5, 3, gen=gen, dtype=torch.float64).requires_grad_()
    u, w = _randn(3, gen=gen, dtype=torch.float64).requires_grad_(), _randn(3, gen=gen, dtype=torch.float64).requires_grad_()
    b = torch.tensor([0.2], dtype=torch.float64, requires_grad=True)
    ours = planar_flow(f, u, w, b, reverse=True)
    ref = replearn.ops.flow.planar_flow_reference(f, u, w, b, reverse=True)
    cot = [_randn(5, 3, gen=gen, dtype=torch.float64), _randn(5, gen=gen, dtype=torch.float64)]
    g_ours = torch.autograd.grad(sum((o * c).sum() for o, c in zip(ours, cot)), (f, u, w, b))
    g_ref = torch.autograd.grad(sum((o * c).sum() for o, c in zip(ref, cot)), (f, u, w, b))
    for a, e in zip(g_ours, g_ref):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-10)


def test_masks_have_the_documented_shapes_and_parities():
    m = checkerboard_mask(3, 4)
    assert m.shape == (1, 1, 3, 4) and m[0, 0, 0, 0] == 1 and m[0, 0, 0, 1] == 0 and m.sum() == 6
    assert torch.equal(checkerboard_mask(3, 4, 1), 1 - m)
    c = channel_mask(5)
    assert c.shape == (1, 5, 1, 1) and c.flatten().tolist() == [1, 1, 1, 0, 0]
    assert channel_mask(5, 1).flatten().tolist() == [0, 0, 0, 1, 1]


def test_coupling_masked_elements_pass_through_and_take_no_parameter_gradient():
    gen = _gen(5)
    x = _randn(2, 3, 4, 4, gen=gen, dtype=torch.float64)
    t = _randn(2, 3, 4, 4, gen=gen, dtype=torch.float64).requires_grad_()
    s = _randn(2, 3, 4, 4, gen=gen, dtype=torch.float64).requires_grad_()
    mask = checkerboard_mask(4, 4, dtype=torch.bool)
    y, logdet = affine_coupling(x, t, s, mask)
    keep = mask.expand_as(x)
    assert torch.equal(y[keep], x[keep])
    (y.sum() + logdet.sum()).backward()
    assert (t.grad[keep] == 0).all() and (s.grad[keep] == 0).all()
    torch.testing.assert_close(logdet, (s * ~keep).sum((1, 2, 3)))


def test_coupling_sees_in_place_changes_of_a_reused_mask():
    # The op caches the flattened mask per mask tensor (ops/flow.py: _native_mask); the cache must
    # follow in-place changes of that tensor, a new shape of x, and inference tensors.
    from replearn.ops.flow import affine_coupling_reference

    gen = _gen(7)
    x, t, s = (_randn(2, 3, 4, 4, gen=gen) for _ in range(3))
    for mask in (checkerboard_mask(4, 4, dtype=torch.bool), checkerboard_mask(4, 4)):
        for _ in range(2):
            y, logdet = affine_coupling(x, t, s, mask)
            y_ref, logdet_ref = affine_coupling_reference(x, t, s, mask)
            torch.testing.assert_close(y, y_ref)
            torch.testing.assert_close(logdet, logdet_ref)
            with torch.no_grad():
                mask.copy_(~mask.bool())  # flip the parity in place
        x_wide, t_wide, s_wide = (_randn(1, 5, 4, 4, gen=gen) for _ in range(3))
        torch.testing.assert_close(affine_coupling(x_wide, t_wide, s_wide, mask)[0],
                                   affine_coupling_reference(x_wide, t_wide, s_wide, mask)[0])  # fmt: skip
    float_mask = checkerboard_mask(4, 4)
    affine_coupling(x, t, s, float_mask)
    with torch.no_grad():
        float_mask.mul_(0.5)
    with pytest.raises(ValueError, match="'mask'"):
        affine_coupling(x, t, s, float_mask)
    from replearn.ops import flow as flow_ops

    dying_mask = checkerboard_mask(4, 4, dtype=torch.bool)
    affine_coupling(x, t, s, dying_mask)
    ident = id(dying_mask)
    assert ident in flow_ops._FLAT_MASKS
    del dying_mask
    assert ident not in flow_ops._FLAT_MASKS  # the cache holds no mask that is gone
    with torch.inference_mode():
        inference_mask = checkerboard_mask(4, 4, dtype=torch.bool)
        torch.testing.assert_close(affine_coupling(x, t, s, inference_mask)[0],
                                   affine_coupling_reference(x, t, s, inference_mask)[0])  # fmt: skip


# ========================================================================================= modules


class _Conditioner(nn.Module):
    """A small CNN conditioner: (B, C_in, H, W) -> (B, C_out, H, W), zero-initialized last layer (Glow)."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(c_in, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, c_out, 3, padding=1))

    def forward(self, x):
        return self.net(x)


def _modules():
    torch.manual_seed(0)
    checker = AffineCoupling(_Conditioner(4, 8), mask=checkerboard_mask(4, 4))
    channel = AffineCoupling(_Conditioner(4, 8), mask=channel_mask(4), scale="sigmoid")
    split = AffineCoupling(_Conditioner(2, 4), scale="tanh")
    additive = AdditiveCoupling(_Conditioner(2, 2))
    mlp_split = AffineCoupling(nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 4)))  # (B, 5): x₁ 3, x₂ 2
    return [
        ("coupling-checkerboard", checker, (3, 4, 4, 4)),
        ("coupling-channel", channel, (3, 4, 4, 4)),
        ("coupling-split", split, (3, 4, 4, 4)),
        ("coupling-additive", additive, (3, 4, 4, 4)),
        ("coupling-vector", mlp_split, (7, 5)),
        ("actnorm", ActNorm(4), (3, 4, 4, 4)),
        ("invconv", InvConv1x1(4), (3, 4, 4, 4)),
        ("planar", PlanarFlow(5), (7, 5)),
    ]


def _perturb(module):
    """Random non-trivial parameters of moderate size (large log-scales make any float32 affine
    inverse lose digits to the cancellation y − t, whatever computes it)."""
    gen = _gen(6)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))


def test_every_module_round_trips_and_sums_logdets():
    gen = _gen(7)
    for name, module, shape in _modules():
        _perturb(module)
        x = _randn(*shape, gen=gen)
        y, logdet = module(x)
        assert logdet.shape == (shape[0],), name
        back, logdet_back = module.inverse(y)
        _assert_round_trip(x, back)
        torch.testing.assert_close(logdet_back, -logdet, rtol=1e-5, atol=1e-4, msg=name)


def test_module_logdets_equal_slogdet_of_the_autograd_jacobian():
    gen = _gen(8)
    for name, module, shape in _modules():
        _perturb(module)
        module.double()
        x = _randn(1, *shape[1:], gen=gen, dtype=torch.float64)  # up to 64 dims
        module.eval()
        _, logdet = module(x)
        torch.testing.assert_close(logdet[0], _jacobian_logdet(module, x), rtol=1e-9, atol=1e-9, msg=name)


def test_module_state_dict_round_trip():
    gen = _gen(9)
    for (name, module, shape), (_, fresh, _) in zip(_modules(), _modules()):
        _perturb(module)
        x = _randn(*shape, gen=gen)
        module.train()
        expected = module(x)  # initializes ActNorm
        fresh.load_state_dict(module.state_dict())
        fresh.train()  # a loaded ActNorm is initialized: training mode must not re-initialize it
        got = fresh(x)
        for a, e in zip(got, expected):
            torch.testing.assert_close(a, e, msg=name)


def test_actnorm_initializes_from_the_first_training_batch_only():
    gen = _gen(10)
    layer = ActNorm(3)
    x = _randn(64, 3, 5, 5, gen=gen) * torch.tensor([2.0, 0.5, 3.0]).reshape(1, 3, 1, 1) + torch.tensor(
        [1.0, -4.0, 0.5]).reshape(1, 3, 1, 1)  # fmt: skip
    y, logdet = layer(x)
    assert bool(layer.initialized)
    torch.testing.assert_close(y.mean((0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(logdet, (25 * torch.log(layer.scale.abs()).sum()).expand(64).detach())
    scale = layer.scale.detach().clone()
    layer(x * 10)  # a second batch does not re-initialize
    assert torch.equal(layer.scale.detach(), scale)
    fresh = ActNorm(3).eval()
    fresh(x)  # evaluation mode never initializes
    assert not bool(fresh.initialized)


def test_invconv_module_starts_as_a_rotation_and_trains_only_strict_triangles():
    layer = InvConv1x1(6)
    w = layer.weight_matrix().detach().double()
    torch.testing.assert_close(w @ w.T, torch.eye(6, dtype=torch.float64), atol=1e-5, rtol=0)
    x = torch.randn(2, 6, 3, 3)
    y, logdet = layer(x)
    torch.testing.assert_close(logdet, torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(y, torch.einsum("ij,bjhw->bihw", layer.weight_matrix(), x), atol=1e-5, rtol=1e-5)
    (y.sum() + logdet.sum()).backward()
    assert torch.equal(torch.triu(layer.lower.grad), torch.zeros(6, 6))
    assert torch.equal(torch.tril(layer.upper.grad), torch.zeros(6, 6))
    assert layer.log_s.grad is not None


def test_flow_modules_train_a_density_on_a_2d_toy_set():
    """A short maximum-likelihood run of coupling + ActNorm + planar layers: the NLL must fall."""
    torch.manual_seed(0)
    data = torch.cat([torch.randn(256, 2) * 0.3 + torch.tensor([2.0, 0.0]), torch.randn(256, 2) * 0.3 - 2.0])
    layers = nn.ModuleList([
        ActNorm(2),
        AffineCoupling(nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 2)), scale="tanh"),
        InvConv1x1(2),
        AffineCoupling(nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 2)), scale="tanh"),
        PlanarFlow(2),
    ])  # fmt: skip

    def nll():
        z, total = data, torch.zeros(data.shape[0])
        for layer in layers:
            z, logdet = layer(z)
            total = total + logdet
        return -(torch.distributions.Normal(0, 1).log_prob(z).sum(1) + total).mean()

    opt = torch.optim.Adam(layers.parameters(), lr=2e-2)
    first = nll().item()
    for _ in range(80):
        opt.zero_grad()
        loss = nll()
        loss.backward()
        opt.step()
    assert loss.item() < first - 0.5, (first, loss.item())
