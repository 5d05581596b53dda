"""replearn.nn.utils.spectral_norm against torch.nn.utils.spectral_norm (the hook API).

The op itself (replearn.ops.spectral_norm) is covered by the registry-driven tests in test_ops.py;
here: the same outputs and gradients as torch's module wrapper given the same u (training and
eval, dim 0 and transposed convolutions), state_dicts that load both ways, remove_spectral_norm,
the i-ResNet coefficient, and the argument errors.
"""

from __future__ import annotations

import copy

import pytest
import torch

import replearn
from replearn.nn.utils import remove_spectral_norm, spectral_norm

MODULES = [
    ("linear", lambda: torch.nn.Linear(7, 5), (3, 7)),
    ("conv2d", lambda: torch.nn.Conv2d(3, 4, 3), (2, 3, 6, 6)),
    ("conv_transpose2d", lambda: torch.nn.ConvTranspose2d(4, 3, 3), (2, 4, 5, 5)),
    ("replearn_conv2d", lambda: replearn.nn.Conv2d(3, 4, 3), (2, 3, 6, 6)),
]


def _pair(factory, n_power_iterations=1, dim=None, seed=0):
    """A module normalized by torch and a copy normalized by replearn, with identical weights, u and v."""
    torch.manual_seed(seed)
    module = factory()
    theirs = torch.nn.utils.spectral_norm(copy.deepcopy(module), n_power_iterations=n_power_iterations, dim=dim)
    ours = spectral_norm(copy.deepcopy(module), n_power_iterations=n_power_iterations, dim=dim)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


@pytest.mark.parametrize("name,factory,shape", MODULES, ids=[m[0] for m in MODULES])
@pytest.mark.parametrize("n_power_iterations", [1, 3])
def test_matches_torch_in_training_and_eval(name, factory, shape, n_power_iterations):
    theirs, ours = _pair(factory, n_power_iterations)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    for step in range(3):  # training: u, v move at every forward
        y_theirs, y_ours = theirs(x), ours(x)
        torch.testing.assert_close(y_ours, y_theirs, rtol=1e-5, atol=1e-6, msg=f"{name} output, step {step}")
        g = torch.randn(y_theirs.shape, generator=torch.Generator().manual_seed(step))
        grad_theirs = torch.autograd.grad(y_theirs, theirs.weight_orig, g)[0]
        grad_ours = torch.autograd.grad(y_ours, ours.weight_orig, g)[0]
        torch.testing.assert_close(grad_ours, grad_theirs, rtol=1e-5, atol=1e-6, msg=f"{name} grad, step {step}")
        torch.testing.assert_close(ours.weight_u, theirs.weight_u, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours.weight_v, theirs.weight_v, rtol=1e-5, atol=1e-6)
    theirs.eval(), ours.eval()
    u_before = ours.weight_u.clone()
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-6)
    assert torch.equal(ours.weight_u, u_before), "eval mode must not update u"


def test_state_dict_loads_both_ways():
    torch.manual_seed(0)
    theirs = torch.nn.utils.spectral_norm(torch.nn.Linear(6, 4))
    ours = spectral_norm(torch.nn.Linear(6, 4))
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    fresh_torch = torch.nn.utils.spectral_norm(torch.nn.Linear(6, 4))
    fresh_torch.load_state_dict(ours.state_dict())  # torch's loader needs the version metadata we write
    x = torch.randn(5, 6)
    ours.eval(), fresh_torch.eval()
    torch.testing.assert_close(ours(x), fresh_torch(x), rtol=1e-6, atol=1e-6)


def test_remove_folds_the_normalized_weight():
    _, ours = _pair(lambda: torch.nn.Linear(5, 4))
    ours.eval()
    expected = ours(torch.eye(5)).detach() - ours.bias.detach()
    remove_spectral_norm(ours)
    assert isinstance(ours.weight, torch.nn.Parameter)
    assert not hasattr(ours, "weight_orig") and "weight_u" not in ours.state_dict()
    torch.testing.assert_close(ours.weight.t(), expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="not found"):
        remove_spectral_norm(ours)


def test_normalized_weight_has_unit_spectral_norm_after_power_iteration():
    layer = spectral_norm(torch.nn.Linear(30, 20), n_power_iterations=50)
    layer(torch.randn(1, 30))
    assert torch.linalg.matrix_norm(layer.weight.detach(), ord=2).item() == pytest.approx(1.0, rel=1e-4)


@pytest.mark.parametrize("scale,expected", [(10.0, 0.9), (1e-3, None)])
def test_coeff_bounds_the_spectral_norm(scale, expected):
    layer = torch.nn.Linear(12, 8)
    with torch.no_grad():
        layer.weight.mul_(scale / torch.linalg.matrix_norm(layer.weight, ord=2))
    original = layer.weight.detach().clone()
    spectral_norm(layer, n_power_iterations=100, coeff=0.9)
    layer(torch.randn(2, 12))
    sigma = torch.linalg.matrix_norm(layer.weight.detach(), ord=2).item()
    if expected is None:  # σ ≤ coeff: the weight is left as it is
        torch.testing.assert_close(layer.weight.detach(), original)
    else:
        assert sigma == pytest.approx(expected, rel=1e-4)


def test_errors():
    layer = spectral_norm(torch.nn.Linear(3, 2))
    with pytest.raises(RuntimeError, match="two spectral_norm hooks"):
        spectral_norm(layer)
    with pytest.raises(ValueError, match="no parameter named 'kernel'"):
        spectral_norm(torch.nn.Linear(3, 2), name="kernel")
    with pytest.raises(ValueError, match="'n_power_iterations'"):
        spectral_norm(torch.nn.Linear(3, 2), n_power_iterations=0)
    with pytest.raises(ValueError, match="'dim'"):
        spectral_norm(torch.nn.Linear(3, 2), dim=2)
    with pytest.raises(ValueError, match="'coeff'"):
        spectral_norm(torch.nn.Linear(3, 2), coeff=-1.0)
