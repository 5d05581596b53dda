"""scikit-learn's handwritten digits: 1,797 grey-scale 8×8 images of the digits 0–9.

The data ships inside scikit-learn (`sklearn.datasets.load_digits`, the test set of the UCI
"Optical Recognition of Handwritten Digits" data), so loading it never touches the network. Each
image is 64 pixel intensities in 0..16; the classes are nearly balanced (174–183 images each).
"""

from __future__ import annotations

import dataclasses

import torch

__all__ = ["Digits", "load_digits"]

NUM_FEATURES = 64  # 8×8 pixels
NUM_CLASSES = 10


@dataclasses.dataclass(frozen=True)
class Digits:
    """A train/test split of the digits, as flat standardized feature vectors.

    Attributes:
        x_train: (N_train, 64) features.
        y_train: (N_train,) int64 labels in 0..9.
        x_test: (N_test, 64) features, standardized with the training statistics.
        y_test: (N_test,) int64 labels.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_features: int = NUM_FEATURES
    num_classes: int = NUM_CLASSES


def load_digits(test_fraction: float = 0.2, seed: int = 0, dtype: torch.dtype = torch.float32) -> Digits:
    """Loads the digits, splits them at random and standardizes every pixel.

    The split is stratified (each class keeps its share in both parts) and depends only on `seed`.
    Each pixel is standardized to zero mean and unit variance with the mean and standard deviation
    of the training part alone, so nothing of the test part leaks into training; pixels that are
    constant over the training part (the image corners are always 0) are only centered.

    Args:
        test_fraction: the share of the images held out for testing, in (0, 1).
        seed: the seed of the split.
        dtype: the floating dtype of the features.

    Returns:
        A `Digits` split.

    Raises:
        ValueError: test_fraction is not in (0, 1).
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"load_digits: argument 'test_fraction' expected a value in (0, 1) but got {test_fraction}")
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    images, labels = sklearn_digits(return_X_y=True)  # (1797, 64) float64 in 0..16, (1797,) int
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )
    x_train, x_test = torch.from_numpy(x_train), torch.from_numpy(x_test)
    mean = x_train.mean(0)
    std = x_train.std(0)
    std[std == 0] = 1.0
    return Digits(
        x_train=((x_train - mean) / std).to(dtype),
        y_train=torch.from_numpy(y_train).long(),
        x_test=((x_test - mean) / std).to(dtype),
        y_test=torch.from_numpy(y_test).long(),
    )
