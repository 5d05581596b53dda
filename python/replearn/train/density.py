"""Density-model recipes: normalizing flows trained by maximum likelihood on bundled data.

    run = run_recipe(get_recipe("flow-moons")(max_steps=600))
    print(run.test_metrics["loss"])           # test negative log-likelihood, nats per sample

`flow-moons` fits a `FlowSequence` of i-ResNet blocks (Behrmann et al. 2019) to the 2-D moons
density of `replearn.data.toy2d` by minimizing the NLL −log p(x) = −log N(f(x); 0, I) −
log|det ∂f/∂x|. The data are standardized by a fixed affine flow (its log-determinant counted),
so the blocks, each a near-identity map with Lip(g) < 1, only have to bend the density. At D = 2
the exact log-determinant costs two vector–Jacobian products, so it is the default; set
`exact_logdet=false` to train with the Hutchinson power-series estimator instead.
"""

from __future__ import annotations

import dataclasses

import torch

from ..data.toy2d import TOY2D, load_toy2d
from ..nn.flows import Flow, FlowSequence, InvertibleResBlock
from .config import config_field
from .optimizers import OPTIMIZERS, make_optimizer
from .recipes import RecipeConfig, Setup, register_recipe

__all__ = ["DensityModel", "FlowMoonsRecipe", "Standardize", "negative_log_likelihood"]


class Standardize(Flow):
    """y = (x − mean)/std elementwise with fixed statistics; logdet = −Σ log std per sample."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clone())

    def _logdet(self, x: torch.Tensor) -> torch.Tensor:
        return (-torch.log(self.std).sum()).expand(x.shape[0])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (x - self.mean) / self.std, self._logdet(x)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return y * self.std + self.mean, -self._logdet(y)


class DensityModel(torch.nn.Module):
    """Wraps a FlowSequence so that the Trainer's `model(x)` is the per-sample log-likelihood."""

    def __init__(self, flow: FlowSequence) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.flow.log_prob(x)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.flow.sample(n, generator)


def negative_log_likelihood(log_prob: torch.Tensor, _targets: torch.Tensor) -> torch.Tensor:
    """The Trainer's loss: mean −log p(x) over the batch (the labels are not used)."""
    return -log_prob.mean()


@register_recipe("flow-moons", "FlowSequence of i-ResNet blocks fit to the 2-D moons density by NLL (about a minute)")
@dataclasses.dataclass
class FlowMoonsRecipe(RecipeConfig):
    max_steps: int | None = config_field(1500, "optimizer steps in all; overrides epochs when set")
    batch_size: int = config_field(256, "samples per optimizer step")
    num_threads: int | None = config_field(1, "CPU threads (1: 2-D batches are too small for more)")
    eval_every: int | None = config_field(500, "steps between validations")
    density: str = config_field("moons", "toy 2-D density (replearn.data.toy2d)", TOY2D)
    noise: float = config_field(0.05, "noise of the toy density")
    num_train: int = config_field(4000, "training points")
    blocks: int = config_field(6, "i-ResNet blocks")
    hidden: int = config_field(64, "width of each block's residual MLP (two hidden layers)")
    coeff: float = config_field(0.97, "bound on each layer's spectral norm (Lip(g) <= coeff^3 < 1)")
    n_power_iterations: int = config_field(1, "power-iteration steps per training forward (u persists across steps)")
    activation: str = config_field("elu", "1-Lipschitz activation", ("elu", "lipswish"))
    exact_logdet: bool = config_field(True, "exact log-determinant (2 products at D=2) instead of the estimator")
    n_series: int = config_field(10, "power-series terms of the estimator")
    optimizer: str = config_field("adam", "optimizer", OPTIMIZERS)
    lr: float = config_field(3e-3, "peak learning rate")
    weight_decay: float = config_field(0.0, "weight decay")

    def build(self) -> Setup:
        data = load_toy2d(self.density, num_train=self.num_train, seed=self.seed, noise=self.noise)
        torch.manual_seed(self.seed)
        x = data.x_train
        blocks = [
            InvertibleResBlock(dim=2, hidden=self.hidden, coeff=self.coeff, n_power_iterations=self.n_power_iterations,
                               n_series=self.n_series, exact_logdet=self.exact_logdet, activation=self.activation)
            for _ in range(self.blocks)
        ]  # fmt: skip
        flow = FlowSequence(Standardize(x.mean(0), x.std(0)), *blocks, event_shape=(2,))
        model = DensityModel(flow)
        optimizer = make_optimizer(self.optimizer, model.parameters(), self.lr, self.weight_decay)
        kwargs = {"loss_fn": negative_log_likelihood, "metrics": {}}
        logdet = "exact logdet" if self.exact_logdet else f"{self.n_series}-term Hutchinson estimator"
        return Setup(data, model, optimizer, kwargs,
                     f"{data.source}; {self.blocks} i-ResNet blocks (hidden {self.hidden}, coeff {self.coeff}, {logdet})")  # fmt: skip
