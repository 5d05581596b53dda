"""Normalizing flows (course notes §10): invertible layers with tractable log-determinants.

Every layer follows the `Flow` contract in `base.py`: ``forward(x) -> (y, logdet)`` and
``inverse(y) -> (x, logdet)``, logdet per sample with shape ``(batch,)``.
"""

from .base import Flow

__all__ = ["Flow"]
