"""Normalizing flows (course notes §10): invertible layers with tractable log-determinants.

Every layer follows the `Flow` contract in `base.py`: ``forward(x) -> (y, logdet)`` and
``inverse(y) -> (x, logdet)``, logdet per sample with shape ``(batch,)``.
"""

from .actnorm import ActNorm
from .base import Flow
from .coupling import AdditiveCoupling, AffineCoupling
from .invconv import InvConv1x1
from .iresnet import InvertibleResBlock, LipSwish, lipschitz_conv_net, lipschitz_mlp
from .planar import PlanarFlow
from .sequence import FlowSequence

__all__ = [
    "Flow",
    "FlowSequence",
    "AffineCoupling",
    "AdditiveCoupling",
    "ActNorm",
    "InvConv1x1",
    "PlanarFlow",
    "InvertibleResBlock",
    "LipSwish",
    "lipschitz_conv_net",
    "lipschitz_mlp",
]
