"""Flows composed across the family: RealNVP and Glow-style stacks in a FlowSequence.

The layer tests (tests/test_flow.py, tests/test_iresnet.py) check each flow alone; these check that
the contract composes: the summed logdet of a mixed stack equals log|det| of its autograd Jacobian,
inverse(forward(x)) = x, and a RealNVP trained by maximum likelihood on two moons beats the best
Gaussian (the maximum-likelihood Gaussian of the training set, computed here, not a stored number).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from replearn.data.toy2d import load_toy2d
from replearn.nn.flows import ActNorm, AffineCoupling, FlowSequence, InvConv1x1, PlanarFlow
from replearn.ops import checkerboard_mask


def _conditioner(dim: int, hidden: int = 32, out: int | None = None) -> nn.Module:
    net = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                        nn.Linear(hidden, out or 2 * dim))  # fmt: skip
    nn.init.zeros_(net[-1].weight)  # start at the identity map (RealNVP's common initialization)
    nn.init.zeros_(net[-1].bias)
    return net


def _realnvp(dim: int, blocks: int, scale: str = "exp") -> FlowSequence:
    flows = []
    for k in range(blocks):
        mask = (torch.arange(dim) + k) % 2 == 0
        flows += [ActNorm(dim), AffineCoupling(_conditioner(dim), mask=mask, scale=scale), InvConv1x1(dim)]
    return FlowSequence(*flows)


def _perturb(flow: nn.Module, gen: torch.Generator) -> None:
    """Move every parameter off its identity initialization so the Jacobian test is not trivial."""
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def _jacobian_logdet(f, x: torch.Tensor) -> torch.Tensor:
    """log|det ∂f(x_b)/∂x_b| for each sample, by the autograd Jacobian."""
    out = []
    for b in range(x.shape[0]):
        jac = torch.autograd.functional.jacobian(lambda v: f(v.unsqueeze(0))[0].reshape(-1), x[b])
        out.append(torch.linalg.slogdet(jac.reshape(x[b].numel(), x[b].numel()))[1])
    return torch.stack(out)


@pytest.mark.parametrize("scale", ["exp", "tanh", "sigmoid"])
def test_mixed_vector_stack_logdet_and_round_trip(scale):
    gen = torch.Generator().manual_seed(0)
    dim = 5
    flow = FlowSequence(*_realnvp(dim, 2, scale).flows, PlanarFlow(dim)).double()
    x = torch.randn(4, dim, generator=gen, dtype=torch.float64)
    flow.train()
    flow(x)  # ActNorm's data-dependent initialization
    _perturb(flow, gen)
    flow.eval()
    z, logdet = flow(x)
    torch.testing.assert_close(logdet, _jacobian_logdet(flow, x), rtol=1e-9, atol=1e-9)
    back, inv_logdet = flow.inverse(z)
    torch.testing.assert_close(back, x, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(inv_logdet, -logdet, rtol=1e-9, atol=1e-9)


def test_glow_step_on_images_logdet_and_round_trip():
    """ActNorm → InvConv1x1 → checkerboard affine coupling on (B, C, H, W), Glow's step of flow."""
    gen = torch.Generator().manual_seed(1)
    c, h, w = 2, 3, 3

    class ConvConditioner(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Conv2d(c, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, 2 * c, 3, padding=1))

        def forward(self, v):
            return self.net(v)

    flow = FlowSequence(ActNorm(c), InvConv1x1(c), AffineCoupling(ConvConditioner(), mask=checkerboard_mask(h, w)),
                        ActNorm(c), AffineCoupling(ConvConditioner(), mask=checkerboard_mask(h, w, parity=1),
                                                   scale="sigmoid")).double()  # fmt: skip
    x = torch.randn(3, c, h, w, generator=gen, dtype=torch.float64)
    flow.train()
    flow(x)
    _perturb(flow, gen)
    flow.eval()
    z, logdet = flow(x)
    torch.testing.assert_close(logdet, _jacobian_logdet(flow, x), rtol=1e-9, atol=1e-9)
    back, _ = flow.inverse(z)
    torch.testing.assert_close(back, x, rtol=1e-9, atol=1e-9)


def _gaussian_nll(train: torch.Tensor, test: torch.Tensor) -> float:
    """Mean test NLL (nats) of the maximum-likelihood Gaussian of the training points."""
    mean = train.mean(0)
    cov = torch.cov(train.T, correction=0)
    dist = torch.distributions.MultivariateNormal(mean, covariance_matrix=cov)
    return float(-dist.log_prob(test).mean())


def test_realnvp_on_two_moons_beats_the_best_gaussian():
    torch.manual_seed(0)
    splits = load_toy2d("moons", num_train=2000, num_val=10, num_test=1000, seed=0)
    train, test = splits.x_train.float(), splits.x_test.float()
    flow = _realnvp(2, 6)
    flow.train()
    flow(train[:512])  # data-dependent ActNorm initialization
    opt = torch.optim.Adam(flow.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(600):
        batch = train[torch.randint(0, train.shape[0], (256,), generator=gen)]
        loss = -flow.log_prob(batch).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    flow.eval()
    with torch.no_grad():
        nll = float(-flow.log_prob(test).mean())
        samples = flow.sample(500, generator=torch.Generator().manual_seed(1))
    baseline = _gaussian_nll(train, test)
    # Two moons are far from Gaussian: a flow that only learned an affine map would sit at the
    # baseline; 0.3 nats below it is a clear margin (measured: see the commit that added this test).
    assert nll < baseline - 0.3, (nll, baseline)
    assert samples.shape == (500, 2) and torch.isfinite(samples).all()
    # The samples come from the learned density, not the base: closer to the data's moments.
    assert (samples.mean(0) - train.mean(0)).abs().max() < 0.25
