"""Normalizing flows (course notes §10): invertible layers with tractable log-determinants.

Every layer follows the `Flow` contract in `base.py`: ``forward(x) -> (y, logdet)`` and
``inverse(y) -> (x, logdet)``, logdet per sample with shape ``(batch,)``.
"""

from .actnorm import ActNorm
from .base import Flow
from .coupling import AdditiveCoupling, AffineCoupling
from .invconv import InvConv1x1
from .planar import PlanarFlow

__all__ = ["Flow", "AffineCoupling", "AdditiveCoupling", "ActNorm", "InvConv1x1", "PlanarFlow"]
