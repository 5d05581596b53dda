"""replearn.nn normalization layers and weight_norm against their torch.nn counterparts.

Each case builds one small network twice — stem, norm, ReLU, head — once with the torch.nn norm and
once with ours, loads the torch state_dict into ours (strict), then checks over a few optimizer
steps in training mode and a forward in evaluation mode: same outputs, same gradient of every
parameter, same running buffers, same state_dict keys and metadata.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Callable

import pytest
import torch
from torch import nn as tnn

import replearn
from replearn import nn as rnn

TOLERANCES = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-5)}
DTYPES = [pytest.param(torch.float64, id="float64"), pytest.param(torch.float32, id="float32")]


@dataclasses.dataclass
class Case:
    """A network: stem → norm → ReLU → flatten → Linear(head_in, 3), fed inputs of `input_shape`."""

    name: str
    norm: Callable  # norm(namespace) -> the norm layer, namespace being torch.nn or replearn.nn
    stem: Callable[[], tnn.Module]
    input_shape: tuple[int, ...]
    head_in: int


def _conv(dims: int, channels: int = 4) -> Callable[[], tnn.Module]:
    conv = {1: tnn.Conv1d, 2: tnn.Conv2d, 3: tnn.Conv3d}[dims]
    return lambda: conv(3, channels, kernel_size=3, padding=1)


CASES = [
    # batch norm: vectors, sequences, images, volumes; momentum None; no running stats; no affine.
    Case("bn1d-vector", lambda ns: ns.BatchNorm1d(8), lambda: tnn.Linear(5, 8), (6, 5), 8),
    Case("bn1d-vector-cumulative", lambda ns: ns.BatchNorm1d(8, momentum=None), lambda: tnn.Linear(5, 8), (6, 5), 8),
    Case("bn1d-sequence", lambda ns: ns.BatchNorm1d(4, momentum=0.3), _conv(1), (3, 3, 7), 28),
    Case("bn2d", lambda ns: ns.BatchNorm2d(4), _conv(2), (3, 3, 5, 4), 80),
    Case("bn2d-cumulative", lambda ns: ns.BatchNorm2d(4, momentum=None), _conv(2), (3, 3, 5, 4), 80),
    Case("bn2d-no-running", lambda ns: ns.BatchNorm2d(4, track_running_stats=False), _conv(2), (3, 3, 5, 4), 80),
    Case("bn2d-no-affine", lambda ns: ns.BatchNorm2d(4, affine=False), _conv(2), (3, 3, 5, 4), 80),
    Case("bn2d-no-bias", lambda ns: ns.BatchNorm2d(4, eps=1e-3, bias=False), _conv(2), (3, 3, 5, 4), 80),
    Case("bn3d", lambda ns: ns.BatchNorm3d(4, momentum=None), _conv(3), (2, 3, 3, 4, 2), 96),
    # instance norm: torch's defaults (no affine, no running stats), then both, and momentum None.
    Case("in1d", lambda ns: ns.InstanceNorm1d(4), _conv(1), (3, 3, 7), 28),
    Case(
        "in1d-tracked",
        lambda ns: ns.InstanceNorm1d(4, affine=True, track_running_stats=True),
        _conv(1), (3, 3, 7), 28,
    ),  # fmt: skip
    Case("in2d", lambda ns: ns.InstanceNorm2d(4), _conv(2), (3, 3, 5, 4), 80),
    Case(
        "in2d-tracked",
        lambda ns: ns.InstanceNorm2d(4, momentum=0.2, affine=True, track_running_stats=True),
        _conv(2), (3, 3, 5, 4), 80,
    ),  # fmt: skip
    Case(
        "in2d-tracked-momentum-none",
        lambda ns: ns.InstanceNorm2d(4, momentum=None, track_running_stats=True),
        _conv(2), (3, 3, 5, 4), 80,
    ),  # fmt: skip
    Case("in3d", lambda ns: ns.InstanceNorm3d(4, affine=True), _conv(3), (2, 3, 3, 4, 2), 96),
    # layer and RMS norm: any leading shape, one or two normalized dims.
    Case("ln", lambda ns: ns.LayerNorm(8), lambda: tnn.Linear(5, 8), (2, 3, 5), 24),
    Case("ln-2d", lambda ns: ns.LayerNorm((4, 7), eps=1e-4), _conv(1), (3, 3, 7), 28),
    Case("ln-no-affine", lambda ns: ns.LayerNorm(8, elementwise_affine=False), lambda: tnn.Linear(5, 8), (6, 5), 8),
    Case("ln-no-bias", lambda ns: ns.LayerNorm(8, bias=False), lambda: tnn.Linear(5, 8), (6, 5), 8),
    Case("rms", lambda ns: ns.RMSNorm(8), lambda: tnn.Linear(5, 8), (2, 3, 5), 24),
    Case("rms-eps", lambda ns: ns.RMSNorm([4, 7], eps=1e-6), _conv(1), (3, 3, 7), 28),
    Case("rms-no-affine", lambda ns: ns.RMSNorm(8, elementwise_affine=False), lambda: tnn.Linear(5, 8), (6, 5), 8),
    # group norm: images, vectors, no affine, no bias.
    Case("gn", lambda ns: ns.GroupNorm(2, 4), _conv(2), (3, 3, 5, 4), 80),
    Case("gn-vector", lambda ns: ns.GroupNorm(4, 8), lambda: tnn.Linear(5, 8), (6, 5), 8),
    Case("gn-no-affine", lambda ns: ns.GroupNorm(4, 4, affine=False), _conv(2), (3, 3, 5, 4), 80),
    Case("gn-no-bias", lambda ns: ns.GroupNorm(1, 4, eps=1e-3, bias=False), _conv(1), (3, 3, 7), 28),
]


def _network(case: Case, namespace, dtype: torch.dtype) -> tnn.Sequential:
    return tnn.Sequential(
        case.stem(), case.norm(namespace), tnn.ReLU(), tnn.Flatten(), tnn.Linear(case.head_in, 3)
    ).to(dtype)


def _randomize(network: tnn.Module, gen: torch.Generator) -> None:
    """Moves every parameter and running buffer off its initial value, so parity is not trivial."""
    with torch.no_grad():
        for p in network.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype))
        for name, b in network.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.2 * torch.randn(b.shape, generator=gen, dtype=torch.float64))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=gen, dtype=torch.float64))
            elif name.endswith("num_batches_tracked"):
                b.fill_(3)


def _twins(case: Case, dtype: torch.dtype, gen: torch.Generator) -> tuple[tnn.Module, tnn.Module]:
    """The torch network (randomized) and ours, loaded from its state_dict."""
    theirs = _network(case, tnn, dtype)
    _randomize(theirs, gen)
    ours = _network(case, rnn, dtype)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return theirs, ours


def _assert_same_state(theirs: tnn.Module, ours: tnn.Module, tol: dict) -> None:
    ours_state, theirs_state = ours.state_dict(), theirs.state_dict()
    assert list(ours_state) == list(theirs_state)
    for key, value in theirs_state.items():
        torch.testing.assert_close(ours_state[key], value, **tol, msg=lambda m: f"{key}: {m}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_network_parity(case: Case, dtype: torch.dtype, gen: torch.Generator) -> None:
    tol = TOLERANCES[dtype]
    theirs, ours = _twins(case, dtype, gen)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert ours.state_dict()._metadata == theirs.state_dict()._metadata
    optimizers = [torch.optim.SGD(net.parameters(), lr=0.1) for net in (theirs, ours)]

    # Training: three steps, so running averages (and the cumulative average for momentum=None)
    # accumulate over several batches and the updated parameters feed the next step.
    for step in range(3):
        x = torch.randn(case.input_shape, generator=gen, dtype=torch.float64).to(dtype) * 1.5 + 0.2
        target = torch.randn(case.input_shape[0], 3, generator=gen, dtype=torch.float64).to(dtype)
        outputs = []
        for net, optimizer in zip((theirs, ours), optimizers):
            net.train()
            optimizer.zero_grad()
            out = net(x)
            ((out - target) ** 2).mean().backward()
            outputs.append(out.detach())
        torch.testing.assert_close(outputs[1], outputs[0], **tol, msg=lambda m: f"step {step} output: {m}")
        for (name, p_theirs), p_ours in zip(theirs.named_parameters(), ours.parameters()):
            torch.testing.assert_close(p_ours.grad, p_theirs.grad, **tol, msg=lambda m: f"step {step} grad {name}: {m}")
        for optimizer in optimizers:
            optimizer.step()
        _assert_same_state(theirs, ours, tol)

    # Evaluation: running averages where tracked, batch statistics otherwise.
    x = torch.randn(case.input_shape, generator=gen, dtype=torch.float64).to(dtype)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), theirs.eval()(x), **tol)
    _assert_same_state(theirs, ours, tol)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_forward_uses_replearn_ops(case: Case, monkeypatch: pytest.MonkeyPatch) -> None:
    """Our layers never fall back on torch.nn.functional's normalization."""

    def refuse(*args, **kwargs):
        raise AssertionError("a torch.nn.functional norm was called")

    for fn in ("batch_norm", "instance_norm", "layer_norm", "rms_norm", "group_norm"):
        monkeypatch.setattr(torch.nn.functional, fn, refuse)
    ours = _network(case, rnn, torch.float32)
    x = torch.randn(case.input_shape)
    ours(x).sum().backward()
    ours.eval()(x)


@pytest.mark.parametrize(
    "make",
    [
        lambda ns: ns.BatchNorm1d(3, momentum=None, affine=False, device="cpu", dtype=torch.float64),
        lambda ns: ns.BatchNorm2d(3, 1e-3, 0.2, True, False),
        lambda ns: ns.InstanceNorm2d(3, affine=True, track_running_stats=True, bias=False),
        lambda ns: ns.LayerNorm([2, 3], 1e-6, True, False, dtype=torch.float64),
        lambda ns: ns.RMSNorm(3, 1e-6, False),
        lambda ns: ns.GroupNorm(1, 3, 1e-4, True, bias=False),
    ],
)
def test_construction_matches_torch(make: Callable) -> None:
    """Same positional/keyword arguments, repr, attributes, parameters, buffers and their dtypes."""
    theirs, ours = make(tnn), make(rnn)
    assert repr(ours) == repr(theirs)
    for attr in ("num_features", "eps", "momentum", "affine", "track_running_stats", "normalized_shape",
                 "elementwise_affine", "num_groups", "num_channels"):  # fmt: skip
        assert getattr(ours, attr, None) == getattr(theirs, attr, None), attr
    for kind in ("parameters", "buffers"):
        theirs_named = [(n, t.dtype, t.shape) for n, t in getattr(theirs, f"named_{kind}")()]
        assert [(n, t.dtype, t.shape) for n, t in getattr(ours, f"named_{kind}")()] == theirs_named
    for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        assert hasattr(ours, name) == hasattr(theirs, name)
        assert (getattr(ours, name, None) is None) == (getattr(theirs, name, None) is None), name


def test_reset_parameters_and_running_stats() -> None:
    norm = rnn.BatchNorm1d(3)
    with torch.no_grad():
        norm.weight.fill_(2.0)
        norm.bias.fill_(1.0)
    norm(torch.randn(4, 3))
    assert norm.num_batches_tracked.item() == 1
    norm.reset_parameters()
    reference = tnn.BatchNorm1d(3)
    _assert_same_state(reference, norm, TOLERANCES[torch.float32])


def test_loads_checkpoint_without_num_batches_tracked() -> None:
    """A state_dict saved before version 2 carries no num_batches_tracked; torch fills in 0, so do we."""
    state = tnn.BatchNorm2d(3).state_dict()
    del state["num_batches_tracked"]
    state._metadata[""]["version"] = 1
    norm = rnn.BatchNorm2d(3)
    norm.num_batches_tracked.fill_(5)
    norm.load_state_dict(state, strict=True)
    assert norm.num_batches_tracked.item() == 5  # as torch: the module's own count is kept


@pytest.mark.parametrize("track", [False, True], ids=["default", "tracked"])
@pytest.mark.parametrize("dims", [1, 2])
def test_instance_norm_unbatched(dims: int, track: bool, gen: torch.Generator) -> None:
    make = lambda ns: getattr(ns, f"InstanceNorm{dims}d")(3, momentum=0.3, affine=track, track_running_stats=track)
    theirs, ours = make(tnn).double(), make(rnn).double()
    x = torch.randn((3,) + (5,) * dims, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(ours(x), theirs(x))
    _assert_same_state(theirs, ours, TOLERANCES[torch.float64])
    torch.testing.assert_close(ours.eval()(x), theirs.eval()(x))


@pytest.mark.parametrize("cls", ["LayerNorm", "RMSNorm"])
@pytest.mark.parametrize("shape", [(7,), (2, 7), (2, 3, 4, 7)], ids=str)
def test_row_norms_any_leading_shape(cls: str, shape: tuple, gen: torch.Generator) -> None:
    theirs, ours = getattr(tnn, cls)(7).double(), getattr(rnn, cls)(7).double()
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(ours(x), theirs(x))


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("make,shape", [
    (lambda: tnn.BatchNorm2d(3), (0, 3, 4, 4)),
    (lambda: tnn.BatchNorm1d(3), (0, 3)),
    (lambda: tnn.BatchNorm1d(3), (2, 3, 0)),
    (lambda: tnn.InstanceNorm1d(3, track_running_stats=True), (0, 3, 5)),
], ids=["bn2d-batch0", "bn1d-batch0", "bn1d-length0", "instancenorm-batch0"])  # fmt: skip
def test_empty_inputs(make, shape, training) -> None:
    """An empty input gives an empty output, as in torch: evaluation normalizes with the running
    statistics (the kernel once read x's first value anyway), and batch norm's training leaves them
    alone (there are none to take); zero gradients for the parameters."""
    theirs = make().train(training)
    ours = getattr(rnn, type(theirs).__name__)(3, track_running_stats=True).train(training)
    ours.load_state_dict(theirs.state_dict())
    if training and isinstance(theirs, tnn.InstanceNorm1d):  # torch fills the running statistics with NaN
        with pytest.raises(ValueError, match="'batch, channels'"):
            ours(torch.randn(shape))
        return
    x = torch.randn(shape, requires_grad=True)
    results = []
    for module in (theirs, ours):
        y = module(x)
        params = [p for p in module.parameters()]
        results.append((y, torch.autograd.grad(y.sum(), [x, *params], allow_unused=True)))
    (y_t, g_t), (y_o, g_o) = results
    assert y_o.shape == y_t.shape
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(g_o, g_t))
    assert all(torch.equal(a, b) for a, b in zip(ours.buffers(), theirs.buffers()))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("make", [
    lambda ns: ns.BatchNorm2d(3),
    lambda ns: ns.InstanceNorm2d(3, track_running_stats=True),
    lambda ns: ns.GroupNorm(3, 3),
], ids=["batchnorm", "instancenorm", "groupnorm"])  # fmt: skip
def test_non_finite_input_reaches_outputs_and_running_stats(make, bad) -> None:
    """A NaN or inf in a training batch makes its channel's statistics NaN, in the outputs and the
    running variance as in torch (a variance clamp once turned NaN into 0: finite running_var, -inf y)."""
    x = torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    x[2, 1, 0, 0] = bad
    theirs, ours = make(tnn), make(rnn)
    y_t, y_o = theirs(x), ours(x)
    assert torch.equal(y_o.isnan(), y_t.isnan())
    torch.testing.assert_close(y_o.nan_to_num(), y_t.nan_to_num())
    for name in ("running_mean", "running_var"):
        if getattr(theirs, name, None) is not None:
            torch.testing.assert_close(getattr(ours, name), getattr(theirs, name), equal_nan=True)


def test_evaluation_gradient_does_not_read_x() -> None:
    """In evaluation dx = γ·rstd·dy: a NaN in x stays out of the other elements' and its own dx."""
    x = torch.randn(4, 3, 5)
    x[1, 2, 3] = float("nan")
    grads = []
    for ns in (tnn, rnn):
        module = ns.BatchNorm1d(3).eval()
        with torch.no_grad():
            module.running_var.uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(3))
        inp = x.clone().requires_grad_(True)
        grads.append(torch.autograd.grad(module(inp).sum(), inp)[0])
    assert torch.isfinite(grads[1]).all()
    torch.testing.assert_close(grads[1], grads[0])


def test_momentum_as_torch_takes_it() -> None:
    """Unused in evaluation, so any value passes there; the functional ops want a number, as torch's."""
    x, mean, var = torch.randn(4, 3), torch.zeros(3), torch.ones(3)
    ours = rnn.BatchNorm1d(3, momentum=1.5).eval()
    torch.testing.assert_close(ours(x), tnn.BatchNorm1d(3, momentum=1.5).eval()(x))
    for fn in (replearn.ops.batch_norm, replearn.ops.instance_norm):
        with pytest.raises(TypeError, match="'momentum'"):
            fn(x.reshape(4, 3, 1).expand(4, 3, 2), mean, var, momentum=None)


@pytest.mark.parametrize(
    "layer, shape, match",
    [
        (lambda: rnn.BatchNorm1d(3), (2, 3, 4, 4), r"BatchNorm1d: expected 2D or 3D input \(got 4D input\)"),
        (lambda: rnn.BatchNorm1d(3), (3,), r"expected 2D or 3D input \(got 1D input\)"),
        (lambda: rnn.BatchNorm2d(3), (2, 3, 4), r"BatchNorm2d: expected 4D input \(got 3D input\)"),
        (lambda: rnn.BatchNorm3d(3), (2, 3, 4, 4), r"BatchNorm3d: expected 5D input \(got 4D input\)"),
        (lambda: rnn.InstanceNorm1d(3), (2, 3, 4, 4), r"InstanceNorm1d: expected 2D or 3D input \(got 4D"),
        (lambda: rnn.InstanceNorm2d(3), (3, 4), r"InstanceNorm2d: expected 3D or 4D input \(got 2D"),
        (lambda: rnn.InstanceNorm3d(3), (2, 3, 4, 4, 4, 4), r"InstanceNorm3d: expected 4D or 5D input \(got 6D"),
        (lambda: rnn.InstanceNorm2d(3, affine=True), (2, 4, 5, 5), r"size at dim=1 to match num_features \(3\)"),
        (lambda: rnn.GroupNorm(1, 3), (3,), r"GroupNorm: expected at least 2D input"),
        (lambda: rnn.GroupNorm(1, 3), (2, 4, 5), r"num_channels \(3\)"),
        (lambda: rnn.BatchNorm1d(3), (1, 3), r"'x'"),  # one value per channel in training
        (lambda: rnn.LayerNorm(4), (2, 5), r"'normalized_shape'"),
    ],
)
def test_bad_input_raises_value_error(layer: Callable, shape: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        layer()(torch.randn(shape))


def test_group_norm_channels_must_divide() -> None:
    with pytest.raises(ValueError, match=r"num_channels \(6\) must be divisible by num_groups \(4\)"):
        rnn.GroupNorm(4, 6)


def test_instance_norm_mismatch_without_affine_warns_like_torch() -> None:
    with pytest.warns(UserWarning, match="does not match num_features"):
        rnn.InstanceNorm1d(3)(torch.randn(2, 4, 5))


# ================================================================================== weight_norm


def _torch_weight_norm(module: tnn.Module, name: str = "weight", dim: int | None = 0) -> tnn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch deprecates the hook API
        return tnn.utils.weight_norm(module, name, dim)


WEIGHT_NORM_CASES = [
    pytest.param(lambda: tnn.Linear(5, 4), (6, 5), 0, id="linear-dim0"),
    pytest.param(lambda: tnn.Linear(5, 4), (6, 5), 1, id="linear-dim1"),
    pytest.param(lambda: tnn.Linear(5, 4), (6, 5), None, id="linear-whole"),
    pytest.param(lambda: tnn.Conv2d(3, 4, 3), (2, 3, 6, 5), 0, id="conv2d-dim0"),
    pytest.param(lambda: tnn.Conv1d(3, 4, 3), (2, 3, 8), None, id="conv1d-whole"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("make, input_shape, dim", WEIGHT_NORM_CASES)
def test_weight_norm_parity(make: Callable, input_shape: tuple, dim: int | None, dtype, gen) -> None:
    tol = TOLERANCES[dtype]
    base = make().to(dtype)
    theirs, ours = make().to(dtype), make().to(dtype)
    theirs.load_state_dict(base.state_dict())
    ours.load_state_dict(base.state_dict())
    _torch_weight_norm(theirs, dim=dim)
    replearn.nn.utils.weight_norm(ours, dim=dim)

    # Same parameters, shapes, order and state_dict keys; the weight itself is unchanged.
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [(n, p.shape) for n, p in theirs.named_parameters()]
    assert list(ours.state_dict()) == list(theirs.state_dict())
    _assert_same_state(theirs, ours, tol)
    torch.testing.assert_close(ours.weight, base.weight, **tol)

    optimizers = [torch.optim.SGD(m.parameters(), lr=0.2) for m in (theirs, ours)]
    for step in range(3):  # the hook must recompute the weight from the updated g and v each step
        x = torch.randn(input_shape, generator=gen, dtype=torch.float64).to(dtype)
        outs = []
        for module, optimizer in zip((theirs, ours), optimizers):
            optimizer.zero_grad()
            out = module(x)
            (out**2).mean().backward()
            outs.append(out.detach())
            optimizer.step()
        torch.testing.assert_close(outs[1], outs[0], **tol, msg=lambda m: f"step {step}: {m}")
        for (name, p_theirs), p_ours in zip(theirs.named_parameters(), ours.parameters()):
            torch.testing.assert_close(p_ours.grad, p_theirs.grad, **tol, msg=lambda m: f"grad {name}: {m}")
    _assert_same_state(theirs, ours, tol)

    replearn.nn.utils.remove_weight_norm(ours)
    tnn.utils.remove_weight_norm(theirs)
    assert list(ours.state_dict()) == list(theirs.state_dict()) == ["bias", "weight"]
    assert isinstance(ours.weight, tnn.Parameter)
    _assert_same_state(theirs, ours, tol)


@pytest.mark.parametrize("make,name,input_shape", [
    (lambda: tnn.Linear(7, 5), "bias", (3, 7)),
    (lambda: tnn.PReLU(5), "weight", (3, 5)),
    (lambda: tnn.LayerNorm(5), "weight", (3, 5)),
], ids=["linear-bias", "prelu", "layernorm"])  # fmt: skip
def test_weight_norm_of_a_vector(make, name, input_shape, gen) -> None:
    """A 1-D parameter with dim=0 gets one magnitude per element, g = |v| (torch.norm_except_dim)."""
    theirs, ours = make().double(), make().double()
    ours.load_state_dict(theirs.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        tnn.utils.weight_norm(theirs, name)
    replearn.nn.utils.weight_norm(ours, name)
    assert getattr(ours, name + "_g").shape == getattr(theirs, name + "_g").shape
    x = torch.randn(input_shape, generator=gen, dtype=torch.float64)
    outs = [module(x) for module in (theirs, ours)]
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-12, atol=1e-12)
    grads = [torch.autograd.grad((out**2).sum(), [getattr(m, name + "_g"), getattr(m, name + "_v")])
             for out, m in zip(outs, (theirs, ours))]  # fmt: skip
    for a, b in zip(grads[1], grads[0]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_weight_norm_state_dict_round_trip(gen: torch.Generator) -> None:
    """A torch weight-normed module's state_dict loads into ours (strict) and ours into torch's."""
    theirs = _torch_weight_norm(tnn.Conv2d(3, 4, 3))
    with torch.no_grad():
        theirs.weight_g.mul_(2.0)  # a trained magnitude, not the initial ‖v‖
    ours = replearn.nn.utils.weight_norm(tnn.Conv2d(3, 4, 3))
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 3, 5, 5, generator=gen)
    torch.testing.assert_close(ours(x), theirs(x))

    back = _torch_weight_norm(tnn.Conv2d(3, 4, 3))
    back.load_state_dict(ours.state_dict(), strict=True)
    torch.testing.assert_close(back(x), ours(x))


def test_weight_norm_errors() -> None:
    module = replearn.nn.utils.weight_norm(tnn.Linear(3, 2))
    with pytest.raises(RuntimeError, match="Cannot register two weight_norm hooks"):
        replearn.nn.utils.weight_norm(module)
    with pytest.raises(ValueError, match="weight_norm of 'bias' not found"):
        replearn.nn.utils.remove_weight_norm(module, "bias")
    with pytest.raises(ValueError, match="no parameter named 'kernel'"):
        replearn.nn.utils.weight_norm(tnn.Linear(3, 2), name="kernel")
    with pytest.raises(ValueError, match="'dim'"):
        replearn.nn.utils.weight_norm(tnn.Linear(3, 2), dim=2)


@pytest.mark.parametrize(
    "make",
    [lambda nn: nn.LayerNorm(8), lambda nn: nn.RMSNorm(8), lambda nn: nn.GroupNorm(2, 8)],
    ids=["LayerNorm", "RMSNorm", "GroupNorm"],
)
def test_per_sample_gradients_with_torch_func(make) -> None:
    """The per-sample gradient recipe (functional_call, vmap of grad) through our norm layers gives
    torch's layers' per-sample gradients; torch refuses its own custom ops there."""
    generator = torch.Generator().manual_seed(0)

    def network(nn):
        return tnn.Sequential(tnn.Linear(6, 8), make(nn), tnn.ReLU(), tnn.Linear(8, 3)).double()

    ours, theirs = network(rnn), network(tnn)
    with torch.no_grad():
        for p in ours.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype))
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(5, 6, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 3, (5,), generator=generator)

    def per_sample(model):
        params = {k: v.detach() for k, v in model.named_parameters()}

        def loss(p, xi, yi):
            return torch.nn.functional.cross_entropy(torch.func.functional_call(model, p, (xi[None],)), yi[None])

        return torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(params, x, y)

    got, expected = per_sample(ours), per_sample(theirs)
    assert got.keys() == expected.keys()
    for k in expected:
        assert got[k].shape == (5, *dict(ours.named_parameters())[k].shape)
        torch.testing.assert_close(got[k], expected[k], rtol=1e-10, atol=1e-12, msg=k)
