"""Normalizing flows (course notes §10): invertible layers with tractable log-determinants.

Every layer follows the `Flow` contract in `base.py`: ``forward(x) -> (y, logdet)`` and
``inverse(y) -> (x, logdet)``, logdet per sample with shape ``(batch,)``.
"""

from .base import Flow
from .iresnet import InvertibleResBlock, LipSwish, lipschitz_conv_net, lipschitz_mlp
from .sequence import FlowSequence

__all__ = ["Flow", "FlowSequence", "InvertibleResBlock", "LipSwish", "lipschitz_conv_net", "lipschitz_mlp"]
