"""scikit-learn's handwritten digits: 1,797 grey-scale 8×8 images of the digits 0–9.

Source: the data ship inside scikit-learn (`sklearn.datasets.load_digits`: the test set of the UCI
"Optical Recognition of Handwritten Digits" data, 1,797 images, about 400 kB with the package), so
loading them never touches the network. Each image is 64 pixel intensities in 0..16; the classes
are nearly balanced (174–183 images each).
"""

from __future__ import annotations

import torch

from .splits import Splits, stratified_split

__all__ = ["Digits", "load_digits"]

NUM_FEATURES = 64  # 8×8 pixels
NUM_CLASSES = 10
Digits = Splits  # the name this loader's result had before every loader shared one container


def load_digits(
    test_fraction: float = 0.2,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    *,
    val_fraction: float = 0.0,
    images: bool = False,
) -> Splits:
    """Loads the digits and splits them at random, stratified by class.

    Two forms. Feature vectors (default): (N, 64), each pixel standardized to zero mean and unit
    variance with the statistics of the training part alone (nothing of the other parts leaks in);
    pixels constant over the training part (the image corners) are only centered. Images
    (`images=True`): (N, 1, 8, 8) intensities scaled to [0, 1], as augmentations expect them.

    Args:
        test_fraction: share held out for testing, in (0, 1).
        seed: seed of the split.
        dtype: floating dtype of the inputs.
        val_fraction: share held out for validation, in [0, 1).
        images: return images in [0, 1] instead of standardized feature vectors.

    Returns:
        Splits with 10 classes.

    Raises:
        ValueError: a fraction out of range.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"load_digits: argument 'test_fraction' expected a value in (0, 1) but got {test_fraction}")
    from sklearn.datasets import load_digits as sklearn_digits

    pixels, labels = sklearn_digits(return_X_y=True)  # (1797, 64) float64 in 0..16, (1797,) int
    x, y = torch.from_numpy(pixels), torch.from_numpy(labels).long()
    train, val, test = stratified_split(y, val_fraction, test_fraction, seed)
    if images:
        x = (x / 16.0).reshape(-1, 1, 8, 8)
    else:
        mean, std = x[train].mean(0), x[train].std(0)
        std[std == 0] = 1.0
        x = (x - mean) / std
    x = x.to(dtype)
    return Splits(x[train], y[train], x[val], y[val], x[test], y[test], NUM_CLASSES, "scikit-learn digits (UCI), 1,797 8×8 images")
