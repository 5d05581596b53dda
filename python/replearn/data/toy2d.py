"""Two-dimensional toy densities for flows, diffusion and small classifiers, generated on the fly.

    x, labels = sample_toy2d("checkerboard", 1000, seed=0)       # (1000, 2) float32, (1000,) int64
    splits = load_toy2d("moons", num_train=2000, seed=0)

Source: generated from their definitions (nothing is stored); any size. Labels name the component
a point came from (moon, circle, mixture component, board square colour is always 0 for the
checkerboard's single density), so moons and circles double as classification sets.

- moons: two interleaving half circles (scikit-learn's make_moons), Gaussian noise `noise`.
- circles: two concentric circles, radii 1 and 0.5 (make_circles), Gaussian noise `noise`.
- gaussians: 8 Gaussians of std 0.02·4 evenly spaced on a circle of radius 2 — the mixture used
  to test flows (Grathwohl et al. 2019, FFJORD), here with std scaled by `noise` / 0.05.
- checkerboard: uniform on the dark squares of a 4×4 board over [−2, 2]² (FFJORD's density).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .splits import Splits

__all__ = ["TOY2D", "load_toy2d", "sample_toy2d"]

TOY2D = ("moons", "circles", "gaussians", "checkerboard")


def sample_toy2d(name: str, num_samples: int, seed: int = 0, noise: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """`num_samples` points of density `name` and their component labels.

    Raises:
        ValueError: an unknown name (the message lists them) or num_samples < 1.
    """
    if name not in TOY2D:
        raise ValueError(f"sample_toy2d: unknown density {name!r}; choose one of {', '.join(TOY2D)}")
    if num_samples < 1:
        raise ValueError(f"sample_toy2d: 'num_samples' expected a positive integer but got {num_samples}")
    rng = np.random.default_rng(seed)
    if name in ("moons", "circles"):
        from sklearn import datasets

        make = datasets.make_moons if name == "moons" else datasets.make_circles
        kwargs = {} if name == "moons" else {"factor": 0.5}
        points, labels = make(num_samples, noise=noise, random_state=int(rng.integers(2**31)), **kwargs)
    elif name == "gaussians":
        labels = rng.integers(0, 8, num_samples)
        angle = 2 * math.pi * labels / 8
        centres = 2.0 * np.stack([np.cos(angle), np.sin(angle)], 1)
        points = centres + rng.normal(size=(num_samples, 2)) * 0.08 * (noise / 0.05)
    else:  # checkerboard: a column uniformly, then a row of the right parity within it
        column = rng.integers(0, 4, num_samples)
        row = 2 * rng.integers(0, 2, num_samples) + (column % 2)
        points = np.stack([column, row], 1) + rng.uniform(size=(num_samples, 2)) - 2.0
        labels = np.zeros(num_samples, dtype=np.int64)
    return torch.from_numpy(points).float(), torch.from_numpy(np.asarray(labels)).long()


def load_toy2d(name: str, num_train: int = 2000, num_val: int = 500, num_test: int = 500, seed: int = 0, noise: float = 0.05) -> Splits:
    """Independent samples for the three parts, as Splits (labels as in `sample_toy2d`)."""
    x, y = sample_toy2d(name, num_train + num_val + num_test, seed, noise)
    a, b = num_train, num_train + num_val
    num_classes = int(y.max()) + 1
    return Splits(x[:a], y[:a], x[a:b], y[a:b], x[b:], y[b:], num_classes, f"toy 2-D density {name!r}, generated")
