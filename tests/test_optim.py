"""replearn.optim against torch.optim: parity over many steps, checkpoints both ways, schedulers,
convergence, gradient clipping, and bad input.

The optimizers are not torch library ops (docs/design.md, "Optimizers"), so the registry-driven
tests of test_ops.py do not apply; this file holds their equivalents. Parity is against torch's
for-loop implementation (foreach=False), the reference the native rules follow operation by
operation: float64 within 1e-12 relative, float32 within 2× torch's own float32 drift from float64
(plus a few ulps), measured on the same problem. AdaBound/AMSBound, which torch lacks, are checked
against `adabound_reference` below, written from the authors' published update.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

import replearn.optim as ro
from replearn.optim.adabound import adabound_reference_step
from conftest import device_dtype_params, device_params, has_gpu
from op_harness import EPS

STEPS = 20
SHAPES = [(7, 3), (5,), (33, 17), (1,), (2, 3, 4), (129,)]

# (torch class or None, replearn class, constructor kwargs of group 0, overrides of group 1)
CASES = {
    "sgd": (torch.optim.SGD, ro.SGD, dict(lr=0.05), dict(lr=0.02, weight_decay=1e-2)),
    "sgd-momentum": (torch.optim.SGD, ro.SGD, dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-2),
                     dict(weight_decay=0.0)),
    "sgd-nesterov-maximize": (torch.optim.SGD, ro.SGD, dict(lr=0.05, momentum=0.8, nesterov=True, maximize=True),
                              dict(lr=0.01, weight_decay=0.1)),
    "adagrad": (torch.optim.Adagrad, ro.Adagrad, dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1),
                dict(weight_decay=0.05, lr=0.05)),
    "adagrad-maximize": (torch.optim.Adagrad, ro.Adagrad, dict(lr=0.1, weight_decay=1e-2, maximize=True), dict()),
    "rmsprop": (torch.optim.RMSprop, ro.RMSprop, dict(lr=0.01), dict(weight_decay=0.1)),
    "rmsprop-centered": (torch.optim.RMSprop, ro.RMSprop, dict(lr=0.01, alpha=0.9, centered=True),
                         dict(lr=0.001, weight_decay=0.01)),
    "rmsprop-momentum": (torch.optim.RMSprop, ro.RMSprop, dict(lr=0.01, momentum=0.9, weight_decay=0.01),
                         dict(weight_decay=0.0)),
    "rmsprop-centered-momentum-maximize": (torch.optim.RMSprop, ro.RMSprop,
                                           dict(lr=0.01, momentum=0.5, centered=True, maximize=True), dict(lr=0.02)),
    "adam": (torch.optim.Adam, ro.Adam, dict(lr=0.01), dict(lr=0.02, weight_decay=0.1)),
    "adam-amsgrad": (torch.optim.Adam, ro.Adam, dict(lr=0.01, amsgrad=True, weight_decay=0.05), dict(weight_decay=0.0)),
    "adam-maximize-betas": (torch.optim.Adam, ro.Adam, dict(lr=0.01, betas=(0.5, 0.9), maximize=True), dict()),
    "adam-decoupled": (torch.optim.Adam, ro.Adam, dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True),
                       dict(lr=0.001)),
    "adamw": (torch.optim.AdamW, ro.AdamW, dict(lr=0.01), dict(weight_decay=0.0)),
    "adamw-amsgrad": (torch.optim.AdamW, ro.AdamW, dict(lr=0.01, amsgrad=True, weight_decay=0.3), dict(lr=0.05)),
}


def make_problem(dtype, device="cpu", seed=0):
    """Initial parameters and a fixed sequence of gradients, as float64 (cast per run)."""
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=g, dtype=torch.float64) for s in SHAPES]
    grads = [[torch.randn(s, generator=g, dtype=torch.float64) * (0.5 + step % 3) for s in SHAPES]
             for step in range(STEPS)]
    return params, grads


def run(cls, kwargs, overrides, params0, grads, dtype, device="cpu", scheduler=None):
    """Runs STEPS steps of `cls` on two param groups; parameter 3 has no gradient every 4th step
    (skipped: its step count falls behind, so per-tensor bias corrections differ)."""
    params = [p.detach().to(device=device, dtype=dtype).clone().requires_grad_() for p in params0]
    groups = [{"params": params[:3]}, {"params": params[3:], **overrides}]
    opt = cls(groups, **kwargs)
    sched = scheduler(opt) if scheduler else None
    for step, gs in enumerate(grads):
        for i, (p, g) in enumerate(zip(params, gs)):
            p.grad = None if (i == 3 and step % 4 == 1) else g.to(device=device, dtype=dtype)
        opt.step()
        if sched:
            sched.step()
    return [p.detach() for p in params], opt


def torch_kwargs(cls, kwargs):
    kw = dict(kwargs)
    if cls is not None and "foreach" in cls.__init__.__code__.co_varnames:
        kw["foreach"] = False
    return kw


def relative_error(values, reference):
    return max(((v.double() - r.double()).abs().max() / r.double().abs().max().clamp_min(1e-300)).item()
               for v, r in zip(values, reference))


def assert_float32_within_torch_drift(ours32, torch32, reference64):
    """Our float32 error against the float64 trajectory is at most 2× torch's own plus 4 ulps of scale."""
    for i, (o, t, r) in enumerate(zip(ours32, torch32, reference64)):
        scale = r.abs().max().item()
        torch_error = (t.double() - r).abs().max().item()
        ours_error = (o.double() - r).abs().max().item()
        bound = 2 * torch_error + 4 * EPS[torch.float32] * max(scale, 1e-3)
        assert ours_error <= bound, f"tensor {i}: error {ours_error:.3g} > {bound:.3g} (torch's {torch_error:.3g})"


@pytest.mark.parametrize("case", list(CASES))
def test_parity_with_torch(case):
    torch_cls, our_cls, kwargs, overrides = CASES[case]
    params0, grads = make_problem(torch.float64)
    theirs64, _ = run(torch_cls, torch_kwargs(torch_cls, kwargs), overrides, params0, grads, torch.float64)
    ours64, _ = run(our_cls, kwargs, overrides, params0, grads, torch.float64)
    assert relative_error(ours64, theirs64) <= 1e-12
    # float32: both start from the same float32 values; the float64 trajectory from those values is the reference
    params32 = [p.float().double() for p in params0]
    grads32 = [[g.float().double() for g in gs] for gs in grads]
    reference, _ = run(torch_cls, torch_kwargs(torch_cls, kwargs), overrides, params32, grads32, torch.float64)
    theirs32, _ = run(torch_cls, torch_kwargs(torch_cls, kwargs), overrides, params32, grads32, torch.float32)
    ours32, _ = run(our_cls, kwargs, overrides, params32, grads32, torch.float32)
    assert_float32_within_torch_drift(ours32, theirs32, reference)


@pytest.mark.parametrize("case", ["adam", "sgd-momentum", "rmsprop-centered-momentum-maximize", "adagrad"])
def test_state_matches_torch(case):
    """Same state keys, dtypes, devices and values as torch after the same steps."""
    torch_cls, our_cls, kwargs, overrides = CASES[case]
    params0, grads = make_problem(torch.float64)
    _, theirs = run(torch_cls, torch_kwargs(torch_cls, kwargs), overrides, params0, grads, torch.float64)
    _, ours = run(our_cls, kwargs, overrides, params0, grads, torch.float64)
    a, b = theirs.state_dict(), ours.state_dict()
    assert sorted(a["state"]) == sorted(b["state"])
    for key in a["state"]:
        assert sorted(a["state"][key]) == sorted(b["state"][key])
        for name, value in a["state"][key].items():
            other = b["state"][key][name]
            assert type(other) is type(value)
            if isinstance(value, torch.Tensor):
                assert (other.dtype, other.device, other.shape) == (value.dtype, value.device, value.shape), name
                torch.testing.assert_close(other, value, rtol=1e-12, atol=1e-14)
    for ga, gb in zip(a["param_groups"], b["param_groups"]):
        assert {k: v for k, v in ga.items() if k not in ("foreach",)} == \
            {k: v for k, v in gb.items() if k not in ("foreach",)}


# ------------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("direction", ["torch-to-replearn", "replearn-to-torch"])
@pytest.mark.parametrize("case", ["adam-amsgrad", "adamw", "sgd-momentum", "rmsprop-centered-momentum-maximize",
                                  "adagrad"])
def test_checkpoint_round_trip(case, direction):
    """Train 8 steps with one library, load its optimizer state into the other, train 12 more: the
    trajectory equals 20 steps of the first library."""
    torch_cls, our_cls, kwargs, overrides = CASES[case]
    first, second = (torch_cls, our_cls) if direction == "torch-to-replearn" else (our_cls, torch_cls)
    params0, grads = make_problem(torch.float64)
    straight, _ = run(first, torch_kwargs(first, kwargs), overrides, params0, grads, torch.float64)

    params = [p.clone().requires_grad_() for p in params0]
    groups = lambda: [{"params": params[:3]}, {"params": params[3:], **overrides}]  # noqa: E731
    opt = first(groups(), **torch_kwargs(first, kwargs))
    for step, gs in enumerate(grads[:8]):
        for i, (p, g) in enumerate(zip(params, gs)):
            p.grad = None if (i == 3 and step % 4 == 1) else g.clone()
        opt.step()
    saved = copy.deepcopy(opt.state_dict())
    resumed = second(groups(), **torch_kwargs(second, kwargs))
    resumed.load_state_dict(saved)
    for step, gs in enumerate(grads[8:], start=8):
        for i, (p, g) in enumerate(zip(params, gs)):
            p.grad = None if (i == 3 and step % 4 == 1) else g.clone()
        resumed.step()
    assert relative_error([p.detach() for p in params], straight) <= 1e-12
    # and the state dict saved now loads back into the first library's optimizer
    first(groups(), **torch_kwargs(first, kwargs)).load_state_dict(resumed.state_dict())


def test_checkpoint_from_fused_torch():
    """A fused torch optimizer's checkpoint (its 'step' lives on the parameters' device) resumes here."""
    p = torch.randn(10, dtype=torch.float64, requires_grad=True)
    theirs = torch.optim.Adam([p], lr=0.1, fused=True)
    p.grad = torch.randn(10, dtype=torch.float64)
    theirs.step()
    q = p.detach().clone().requires_grad_()
    ours = ro.Adam([q], lr=0.1)
    ours.load_state_dict(copy.deepcopy(theirs.state_dict()))
    q.grad = p.grad.clone()
    theirs.step()
    ours.step()
    torch.testing.assert_close(q, p, rtol=1e-12, atol=0)
    assert ours.state[q]["step"].item() == 2


# ------------------------------------------------------------------------------- schedules, lr


@pytest.mark.parametrize("case", ["adam", "sgd-momentum", "rmsprop-momentum"])
def test_lr_scheduler(case):
    torch_cls, our_cls, kwargs, overrides = CASES[case]
    params0, grads = make_problem(torch.float64)

    def schedule(opt):
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[0.05, 0.02], total_steps=STEPS)

    theirs, _ = run(torch_cls, torch_kwargs(torch_cls, kwargs), overrides, params0, grads, torch.float64,
                    scheduler=schedule)
    ours, _ = run(our_cls, kwargs, overrides, params0, grads, torch.float64, scheduler=schedule)
    assert relative_error(ours, theirs) <= 1e-12


def test_tensor_lr_is_read_at_each_step():
    """A tensor lr (torch allows one) is read when step() runs: updating it in place takes effect."""
    params0, grads = make_problem(torch.float64)
    lr = torch.tensor(0.01, dtype=torch.float64)
    p = params0[0].clone().requires_grad_()
    q = params0[0].clone().requires_grad_()
    ours, theirs = ro.Adam([p], lr=lr), torch.optim.Adam([q], lr=0.01, foreach=False)
    for step in range(4):
        if step == 2:
            lr.fill_(0.05)
            theirs.param_groups[0]["lr"] = 0.05
        p.grad, q.grad = grads[step][0].clone(), grads[step][0].clone()
        ours.step()
        theirs.step()
    torch.testing.assert_close(p, q, rtol=1e-12, atol=0)


def test_zero_grad_and_params_without_grads():
    p, q = torch.randn(4, requires_grad=True), torch.randn(3, requires_grad=True)
    opt = ro.Adam([p, q], lr=0.1)
    p.grad = torch.ones(4)
    before = q.detach().clone()
    opt.step()
    assert q not in opt.state or len(opt.state[q]) == 0
    torch.testing.assert_close(q.detach(), before, rtol=0, atol=0)
    opt.zero_grad()
    assert p.grad is None
    snapshot = p.detach().clone()
    opt.step()  # nothing has a gradient: nothing moves
    torch.testing.assert_close(p.detach(), snapshot, rtol=0, atol=0)
    assert opt.state[p]["step"].item() == 1


def test_closure_is_evaluated_with_grad():
    w = torch.tensor([1.0, -2.0], requires_grad=True)
    opt = ro.SGD([w], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (w ** 2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.item() == 5.0
    torch.testing.assert_close(w.detach(), torch.tensor([0.8, -1.6]))


# ------------------------------------------------------------------------------- AdaBound


def adabound_reference(params, grads_seq, lr, betas, final_lr, gamma, eps, weight_decay, amsbound,
                       lr_at_step=None):
    """`replearn.optim.adabound_reference_step` (plain torch, the authors' update) over a gradient
    sequence; a None gradient skips that parameter for the step."""
    states = [{} for _ in params]
    for step, grads in enumerate(grads_seq):
        for p, g in zip(params, grads):
            p.grad = g
        adabound_reference_step(params, states, lr=lr_at_step(step) if lr_at_step else lr, betas=betas,
                                final_lr=final_lr, base_lr=lr, gamma=gamma, eps=eps, weight_decay=weight_decay,
                                amsbound=amsbound)
    return [p.detach() for p in params]


@pytest.mark.parametrize("cls,amsbound", [(ro.AdaBound, False), (ro.AMSBound, True), (ro.AdaBound, True)])
@pytest.mark.parametrize("weight_decay", [0.0, 5e-3])
def test_adabound_against_reference(cls, amsbound, weight_decay):
    params0, grads = make_problem(torch.float64)
    kw = dict(lr=0.01, betas=(0.9, 0.99), final_lr=0.1, gamma=0.05, eps=1e-8, weight_decay=weight_decay)
    gamma_kw = dict(kw, amsbound=amsbound) if cls is ro.AdaBound else kw

    def ours(dtype, p0, gs):
        params = [p.detach().to(dtype).clone().requires_grad_() for p in p0]
        opt = cls(params, **gamma_kw)
        for step, g_step in enumerate(gs):
            for i, (p, g) in enumerate(zip(params, g_step)):
                p.grad = None if (i == 3 and step % 4 == 1) else g.to(dtype)
            opt.step()
        return [p.detach() for p in params]

    def reference(dtype, p0, gs):
        seq = [[None if (i == 3 and step % 4 == 1) else g.to(dtype) for i, g in enumerate(g_step)]
               for step, g_step in enumerate(gs)]
        return adabound_reference([p.to(dtype).clone() for p in p0], seq, amsbound=amsbound, **kw)

    assert relative_error(ours(torch.float64, params0, grads), reference(torch.float64, params0, grads)) <= 1e-12
    params32 = [p.float().double() for p in params0]
    grads32 = [[g.float().double() for g in gs] for gs in grads]
    assert_float32_within_torch_drift(ours(torch.float32, params32, grads32), reference(torch.float32, params32, grads32),
                                      reference(torch.float64, params32, grads32))


def test_adabound_final_lr_follows_the_schedule():
    """The bounds scale with lr/base_lr (the authors' workaround so that schedules move final_lr)."""
    params0, grads = make_problem(torch.float64)
    params = [p.clone().requires_grad_() for p in params0]
    opt = ro.AdaBound(params, lr=0.02, final_lr=0.1, gamma=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = g.clone()
        opt.step()
        sched.step()
    expected = adabound_reference([p.clone() for p in params0], grads, lr=0.02, betas=(0.9, 0.999), final_lr=0.1,
                                  gamma=0.1, eps=1e-8, weight_decay=0, amsbound=False,
                                  lr_at_step=lambda s: 0.02 * 0.5 ** (s // 5))
    assert relative_error([p.detach() for p in params], expected) <= 1e-12
    assert opt.state_dict()["param_groups"][0]["base_lr"] == 0.02


def test_adabound_state_dict_round_trip():
    params0, grads = make_problem(torch.float64)
    a = [p.clone().requires_grad_() for p in params0]
    opt = ro.AMSBound(a, lr=0.01)
    for gs in grads[:5]:
        for p, g in zip(a, gs):
            p.grad = g.clone()
        opt.step()
    b = [p.detach().clone().requires_grad_() for p in a]
    other = ro.AMSBound(b, lr=0.5)  # a different lr: the checkpoint's groups (and base_lr) win
    other.load_state_dict(copy.deepcopy(opt.state_dict()))
    for gs in grads[5:]:
        for p, q, g in zip(a, b, gs):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        other.step()
    assert relative_error([q.detach() for q in b], [p.detach() for p in a]) == 0
    assert set(opt.state[a[0]]) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}


# ------------------------------------------------------------------------------- convergence

CONVERGENCE = {
    ro.SGD: dict(lr=1e-3, momentum=0.9),
    ro.Adagrad: dict(lr=0.5),
    ro.RMSprop: dict(lr=1e-3, momentum=0.5),
    ro.Adam: dict(lr=0.02),
    ro.AdamW: dict(lr=0.02, weight_decay=1e-4),
    ro.AdaBound: dict(lr=0.02, final_lr=0.01),
    ro.AMSBound: dict(lr=0.02, final_lr=0.01),
}


@pytest.mark.parametrize("cls", list(CONVERGENCE), ids=lambda c: c.__name__)
def test_minimizes_rosenbrock(cls):
    """f(x, y) = (1 − x)² + 100(y − x²)² from (−1.5, 2): the minimum is 0 at (1, 1)."""
    xy = torch.tensor([-1.5, 2.0], dtype=torch.float64, requires_grad=True)
    opt = cls([xy], **CONVERGENCE[cls])

    def f(v):
        return (1 - v[0]) ** 2 + 100 * (v[1] - v[0] ** 2) ** 2

    start = f(xy).item()
    for _ in range(4000):
        opt.zero_grad()
        f(xy).backward()
        opt.step()
    end = f(xy).item()
    assert end < 1e-2 * start and end < 0.1, f"{cls.__name__}: f went from {start:.3g} to {end:.3g}"


@pytest.mark.parametrize("cls", list(CONVERGENCE), ids=lambda c: c.__name__)
def test_trains_a_digits_classifier(cls):
    """A 64-64-10 MLP on the bundled digits: test accuracy ≥ 0.9 after 60 full-batch steps."""
    from replearn.data import load_digits

    data = load_digits(seed=0)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 10))
    lr = {ro.SGD: 0.1, ro.Adagrad: 0.05, ro.RMSprop: 3e-3}.get(cls, 1e-2)
    kwargs = dict(CONVERGENCE[cls], lr=lr)
    if cls in (ro.AdaBound, ro.AMSBound):
        kwargs["final_lr"] = 0.1
    opt = cls(model.parameters(), **kwargs)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(data.x_train), data.y_train).backward()
        opt.step()
    accuracy = (model(data.x_test).argmax(1) == data.y_test).double().mean().item()
    assert accuracy >= 0.9, f"{cls.__name__}: test accuracy {accuracy:.3f}"


# ------------------------------------------------------------------------------- clipping


def _params_with_grads(dtype, device="cpu", seed=0, shapes=SHAPES, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    params = []
    for s in shapes:
        p = torch.randn(s, generator=g, dtype=torch.float64).to(device, dtype).requires_grad_()
        p.grad = (torch.randn(s, generator=g, dtype=torch.float64) * scale).to(device, dtype)
        params.append(p)
    return params


@pytest.mark.parametrize("device,dtype", device_dtype_params())
@pytest.mark.parametrize("norm_type", [2.0, "inf", 1.0, 3.0])
@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clip_grad_norm_matches_torch(device, dtype, norm_type, max_norm):
    ours = _params_with_grads(dtype, device)
    theirs = _params_with_grads(dtype, device)
    reference = _params_with_grads(torch.float64, "cpu")
    total = ro.clip_grad_norm_(ours, max_norm, norm_type)
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type, foreach=False)
    exact = torch.nn.utils.clip_grad_norm_(reference, max_norm, norm_type)
    assert total.dtype == expected.dtype and total.device == expected.device
    tol = 8 * EPS[dtype] if dtype != torch.float64 else 1e-14
    assert abs(total.double().item() - exact.item()) <= tol * exact.item() + 2 * abs(expected.double().item() - exact.item())
    for p, q, r in zip(ours, theirs, reference):
        torch_error = (q.grad.double().cpu() - r.grad).abs().max().item()
        ours_error = (p.grad.double().cpu() - r.grad).abs().max().item()
        assert ours_error <= 2 * torch_error + tol * max(1.0, r.grad.abs().max().item())


def test_clip_grad_norm_coefficient_one_leaves_grads_bitwise():
    params = _params_with_grads(torch.float32)
    before = [p.grad.clone() for p in params]
    ro.clip_grad_norm_(params, 1e9)
    for p, b in zip(params, before):
        assert torch.equal(p.grad, b)


def test_clip_grad_norm_mixed_dtypes_and_missing_grads():
    a = _params_with_grads(torch.float32, seed=1)
    b = _params_with_grads(torch.float64, seed=2)
    a[1].grad = None
    mine = a + b
    theirs = [p.detach().clone().requires_grad_() for p in mine]
    for p, q in zip(mine, theirs):
        q.grad = None if p.grad is None else p.grad.clone()
    total = ro.clip_grad_norm_(mine, 1.0)
    expected = torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    torch.testing.assert_close(total.double(), expected.double(), rtol=1e-6, atol=0)
    for p, q in zip(mine, theirs):
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-7)
    assert ro.clip_grad_norm_([torch.zeros(3, requires_grad=True)], 1.0).item() == 0.0


def test_clip_grad_norm_nonfinite():
    params = _params_with_grads(torch.float32)
    params[2].grad[0, 0] = float("inf")
    before = [p.grad.clone() for p in params]
    with pytest.raises(RuntimeError, match="non-finite"):
        ro.clip_grad_norm_(params, 1.0, error_if_nonfinite=True)
    for p, b in zip(params, before):
        assert torch.equal(p.grad, b)
    theirs = [p.detach().clone().requires_grad_() for p in params]
    for p, q in zip(params, theirs):
        q.grad = p.grad.clone()
    total = ro.clip_grad_norm_(params, 1.0)
    expected = torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    assert math.isinf(total.item()) and math.isinf(expected.item())
    for p, q in zip(params, theirs):
        torch.testing.assert_close(p.grad, q.grad, equal_nan=True)
    params[0].grad[0, 0] = float("nan")
    assert math.isnan(ro.clip_grad_norm_(params, 1.0, norm_type="inf").item())
    with pytest.raises(ValueError, match="norm_type"):
        ro.clip_grad_norm_(params, 1.0, norm_type=0)


@pytest.mark.parametrize("clip_value", [0.7, -0.7], ids=["positive", "negative"])  # negative: torch's clamp gives -0.7
@pytest.mark.parametrize("device,dtype", device_dtype_params())
def test_clip_grad_value_matches_torch(device, dtype, clip_value):
    ours = _params_with_grads(dtype, device, scale=2.0)
    ours[0].grad[0, 0] = float("nan")
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    for p, q in zip(ours, theirs):
        q.grad = p.grad.clone()
    ro.clip_grad_value_(ours, clip_value)
    torch.nn.utils.clip_grad_value_(theirs, clip_value)
    for p, q in zip(ours, theirs):
        assert torch.equal(p.grad.isnan(), q.grad.isnan())
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0, equal_nan=True)


# ------------------------------------------------------------------------------- bad input


def _adam_with_grads():
    params = [torch.randn(4, 3, requires_grad=True), torch.randn(5, requires_grad=True)]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = ro.Adam(params, lr=0.1)
    opt.step()  # state exists
    return params, opt


def _snapshot(params, opt):
    return [p.detach().clone() for p in params] + [v.clone() for s in opt.state.values() for v in s.values()]


def _assert_untouched(params, opt, snapshot):
    now = _snapshot(params, opt)
    assert len(now) == len(snapshot)
    for a, b in zip(now, snapshot):
        assert torch.equal(a, b)


@pytest.mark.parametrize("corrupt,error,match", [
    (lambda ps, opt: ps[1].grad.set_(torch.randn(6)), ValueError, r"'grads\[1\]' expected shape \(5\)"),
    (lambda ps, opt: opt.state[ps[0]].__setitem__("exp_avg", torch.zeros(4, 3, dtype=torch.float64)), TypeError,
     r"'exp_avgs\[0\]' expected dtype float32"),
    (lambda ps, opt: opt.state[ps[1]].__setitem__("exp_avg_sq", torch.zeros(4)), ValueError, r"'exp_avg_sqs\[1\]'"),
])
def test_bad_input_is_refused_before_anything_moves(corrupt, error, match):
    params, opt = _adam_with_grads()
    corrupt(params, opt)
    snapshot = _snapshot(params, opt)
    with pytest.raises(error, match=match):
        opt.step()
    _assert_untouched(params, opt, snapshot)


@pytest.mark.parametrize("case", list(CASES))
def test_layouts_torch_accepts(case):
    """A channels-last and a transposed parameter, one with gaps between its elements, gradients in
    the parameter's layout or not, an expanded (stride 0) gradient: torch.optim takes them all, and
    so do we, with the same result."""
    torch_cls, our_cls, kwargs, overrides = CASES[case]
    gen = torch.Generator().manual_seed(5)
    base = [torch.randn(4, 3, 3, 3, generator=gen, dtype=torch.float64).contiguous(memory_format=torch.channels_last),
            torch.randn(3, 5, generator=gen, dtype=torch.float64).t(), torch.randn(6, generator=gen, dtype=torch.float64),
            torch.randn(4, 10, generator=gen, dtype=torch.float64)]  # sliced below: gaps, updated through a copy
    results = []
    for cls, kw in ((torch_cls, torch_kwargs(torch_cls, kwargs)), (our_cls, kwargs)):
        params = [b.clone().requires_grad_() for b in base[:3]]  # clone keeps each layout
        params.append(base[3].clone()[:, ::3].requires_grad_())
        opt = cls([{"params": params[:2]}, {"params": params[2:], **overrides}], **kw)
        grads_gen = torch.Generator().manual_seed(6)
        for step in range(5):
            grads = [torch.randn(p.shape, generator=grads_gen, dtype=torch.float64) for p in params]
            params[0].grad = grads[0] if step % 2 else grads[0].contiguous(memory_format=torch.channels_last)
            params[1].grad = grads[1] if step % 2 else grads[1].t().contiguous().t()
            params[2].grad = grads[2][:1].expand(6)
            params[3].grad = grads[3]
            opt.step()
        results.append(params)
    for ours, theirs in zip(results[1], results[0]):
        assert ours.stride() == theirs.stride()
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("clip", ["norm", "value"])
def test_clipping_layouts_torch_accepts(clip):
    gen = torch.Generator().manual_seed(7)
    shapes = [(4, 3, 3, 3), (3, 5)]
    runs = []
    for fn in ((torch.nn.utils.clip_grad_norm_, ro.clip_grad_norm_) if clip == "norm"
               else (torch.nn.utils.clip_grad_value_, ro.clip_grad_value_)):  # fmt: skip
        gen.manual_seed(7)
        params = [torch.zeros(s, dtype=torch.float64, requires_grad=True) for s in shapes]
        params[0].grad = torch.randn(shapes[0], generator=gen, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
        params[1].grad = torch.randn(shapes[1][::-1], generator=gen, dtype=torch.float64).t()
        total = fn(params, 0.5)
        runs.append((total, [p.grad for p in params]))
    (total_t, grads_t), (total_o, grads_o) = runs
    if clip == "norm":
        torch.testing.assert_close(total_o, total_t, rtol=1e-12, atol=0)
    for ours, theirs in zip(grads_o, grads_t):
        assert ours.stride() == theirs.stride()
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=0)


def test_bad_bucket_leaves_other_buckets_untouched():
    a = torch.randn(3, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    opt = ro.Adam([a, b], lr=0.1)
    a.grad, b.grad = torch.randn(3), torch.randn(4, dtype=torch.float64)
    opt.step()
    opt.state[b]["exp_avg"] = torch.zeros(5, dtype=torch.float64)  # wrong shape, in the second (float64) bucket
    snapshot = [a.detach().clone(), b.detach().clone(), opt.state[a]["exp_avg"].clone()]
    with pytest.raises(ValueError, match="shape"):
        opt.step()
    assert torch.equal(a.detach(), snapshot[0]) and torch.equal(b.detach(), snapshot[1])
    assert torch.equal(opt.state[a]["exp_avg"], snapshot[2])
    assert all(s["step"].item() == 1 for s in opt.state.values())


def test_sparse_and_complex_are_refused():
    w = torch.randn(5, 3, requires_grad=True)
    w.grad = torch.randn(5, 3).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        ro.Adagrad([w], lr=0.1).step()
    z = torch.randn(4, dtype=torch.complex64, requires_grad=True)
    z.grad = torch.randn(4, dtype=torch.complex64)
    with pytest.raises(TypeError, match="complex"):
        ro.Adam([z], lr=0.1).step()


def test_unsupported_options_are_refused():
    w = torch.randn(3, requires_grad=True)
    w.grad = torch.randn(3)
    with pytest.raises(ValueError, match="differentiable"):
        ro.Adam([w], differentiable=True).step()
    with pytest.raises(ValueError, match="capturable"):
        ro.RMSprop([w], capturable=True).step()
    with pytest.raises(ValueError, match="gamma"):
        ro.AdaBound([w], gamma=1.5)
    # torch.amp.GradScaler must unscale before a native step, even when fused=True was asked for
    assert ro.Adam([w], fused=True)._step_supports_amp_scaling is False


# ------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.skipif(not has_gpu(), reason="needs a CUDA device and the CUDA kernels")
@pytest.mark.parametrize("case", ["sgd-momentum", "adagrad", "rmsprop-centered-momentum-maximize", "adam-amsgrad",
                                  "adamw"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_parity(case, dtype):
    """CUDA (float32 arithmetic) against torch's for-loop on CUDA at the same dtype and the float64 CPU run."""
    torch_cls, our_cls, kwargs, overrides = CASES[case]
    params0, grads = make_problem(torch.float64)
    params0 = [p.to(dtype).double() for p in params0]
    grads = [[g.to(dtype).double() for g in gs] for gs in grads]
    reference, _ = run(torch_cls, torch_kwargs(torch_cls, kwargs), overrides, params0, grads, torch.float64)
    theirs, _ = run(torch_cls, torch_kwargs(torch_cls, kwargs), overrides, params0, grads, dtype, "cuda")
    ours, opt = run(our_cls, kwargs, overrides, params0, grads, dtype, "cuda")
    for o, t, r in zip(ours, theirs, reference):
        scale = max(r.abs().max().item(), 1.0)
        torch_error = (t.cpu().double() - r).abs().max().item()
        if not math.isfinite(torch_error):  # torch overflowed at this dtype (amsgrad's v̂ in float16): the floor alone
            torch_error = 0.0
        bound = 2 * torch_error + 8 * EPS[dtype] * scale
        assert (o.cpu().double() - r).abs().max().item() <= bound
    assert all(s["step"].device.type == "cpu" for s in opt.state.values() if "step" in s)


@pytest.mark.parametrize("device", device_params())
def test_many_tensors_one_group(device):
    """More tensors than one CUDA launch holds (and many tiny ones on the CPU): all updated."""
    params0 = [torch.randn(1 + i % 7, dtype=torch.float64) for i in range(300)]
    grads = [[torch.randn_like(p) for p in params0] for _ in range(3)]
    results = []
    for cls, kw in ((torch.optim.Adam, dict(foreach=False)), (ro.Adam, {})):
        params = [p.to(device, torch.float32).clone().requires_grad_() for p in params0]
        opt = cls(params, lr=0.1, amsgrad=True, **kw)
        for gs in grads:
            for p, g in zip(params, gs):
                p.grad = g.to(device, torch.float32)
            opt.step()
        results.append([p.detach().cpu() for p in params])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_bench_family_runs(tmp_path):
    """bench/optim.py is found by bench/run.py and its rows are well formed (a smoke test: --quick)."""
    from test_bench import _check_row, _run_bench

    rows, stdout = _run_bench(tmp_path, "optim", "--quick", "--malloc", "default", "--filter", "SGD momentum",
                              "--repeat", "1")
    assert [row["op"] for row in rows] == ["SGD momentum step vs fused"]
    for row in rows:
        _check_row(row)
    assert "| optim | SGD momentum step vs fused |" in stdout
