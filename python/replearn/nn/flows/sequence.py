"""A composition of flows with a base density: a normalizing-flow density model.

    flow = FlowSequence(InvertibleResBlock(dim=2), InvertibleResBlock(dim=2))   # base: N(0, I)
    nll = -flow.log_prob(x).mean()
    samples = flow.sample(1000)

x = f_K ∘ … ∘ f_1 maps data to z = f(x); by the change of variables (course notes §10; Rezende &
Mohamed 2015) log p(x) = log p_Z(f(x)) + Σ_k log|det ∂f_k/∂h_{k−1}|, and samples are f⁻¹(z) for
z ~ p_Z. The base defaults to a standard normal over the event shape (the dims after the batch),
given at construction or taken from the first input.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from .base import Flow

__all__ = ["FlowSequence"]

_LOG_2PI = math.log(2 * math.pi)


class FlowSequence(Flow):
    """Flows applied in order, with summed per-sample logdets and a base density; itself a `Flow`.

    Args:
        *flows: the `Flow`s, applied first to last in `forward` (data → base space).
        base: the base density: any object with `log_prob(z) -> (batch,)` and `sample((n,))`, such as
            a `torch.distributions.Independent(Normal(...), k)`; an nn.Module base is registered as a
            submodule (trainable). None: a standard normal over the event shape.
        event_shape: the shape of one sample; None takes it from the first input (sample() needs it).

    Raises:
        TypeError: an element of flows is not a `Flow`.
    """

    def __init__(self, *flows: Flow, base: Any = None, event_shape: Sequence[int] | None = None) -> None:
        super().__init__()
        for i, f in enumerate(flows):
            if not isinstance(f, Flow):
                raise TypeError(
                    f"FlowSequence: argument {i} expected a replearn.nn.flows.Flow (forward -> (y, logdet), inverse) "
                    f"but got {type(f).__name__}"
                )
        self.flows = torch.nn.ModuleList(flows)
        self.base = base
        self.event_shape = None if event_shape is None else tuple(int(s) for s in event_shape)

    def _note_event_shape(self, x: torch.Tensor) -> None:
        shape = tuple(x.shape[1:])
        if self.event_shape is None:
            self.event_shape = shape
        elif self.event_shape != shape:
            raise ValueError(f"FlowSequence: expected samples of shape {self.event_shape} but got {shape}")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z = f(x) and Σ log|det ∂f_k| per sample, shape (batch,)."""
        self._note_event_shape(x)
        logdet = x.new_zeros(x.shape[0])
        for f in self.flows:
            x, step = f(x)
            logdet = logdet + step
        return x, logdet

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x = f⁻¹(z) (the flows inverted last to first) and log|det ∂f⁻¹/∂z| per sample."""
        self._note_event_shape(z)
        logdet = z.new_zeros(z.shape[0])
        for f in reversed(self.flows):
            z, step = f.inverse(z)
            logdet = logdet + step
        return z, logdet

    def base_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p_Z(z) per sample."""
        if self.base is not None:
            return self.base.log_prob(z)
        return -0.5 * (z * z + _LOG_2PI).reshape(z.shape[0], -1).sum(1)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) = log p_Z(f(x)) + log|det ∂f/∂x| per sample, shape (batch,)."""
        z, logdet = self.forward(x)
        return self.base_log_prob(z) + logdet

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n samples f⁻¹(z), z from the base (drawn with `generator` for the default base).

        Raises:
            ValueError: the event shape is unknown (no event_shape and no input seen yet), or a
                generator was given with a custom base (torch distributions draw from the global RNG).
        """
        with torch.no_grad():
            if self.base is None:
                if self.event_shape is None:
                    raise ValueError(
                        "FlowSequence.sample: the event shape is unknown; pass event_shape= at construction "
                        "or call forward/log_prob once"
                    )
                param = next(self.parameters(), None)
                kwargs = {} if param is None else {"device": param.device, "dtype": param.dtype}
                draw_on = generator.device if generator is not None else kwargs.get("device")
                z = torch.randn((n, *self.event_shape), generator=generator, device=draw_on, dtype=kwargs.get("dtype"))
                z = z.to(**kwargs)
            else:
                if generator is not None:
                    raise ValueError("FlowSequence.sample: 'generator' is only used with the default base")
                z = self.base.sample((n,))
            x, _ = self.inverse(z)
        return x
