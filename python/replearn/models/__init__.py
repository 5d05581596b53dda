"""The model zoo: models registered by name, each family in one file that reads like its paper.

    import replearn
    model = replearn.models.create("resnet18", num_classes=10, small_input=True)
    replearn.models.list()      # every registered name

Families: resnet.py (ResNet-18…152), senet.py (SE-ResNet), efficientnet.py (B0…B7), convnext.py
(T/S/B), wavenet.py, bytenet.py. Image models share forward_features / forward_head /
reset_classifier (_common.ImageClassifier). Every layer comes from _layers.py, which re-exports
replearn.nn's. receptive_field.py computes receptive fields of conv stacks; causal_cache.py holds
the Fast WaveNet activation caches with which WaveNet and ByteNet decode in O(layers) per symbol.
"""

from . import bytenet, convnext, efficientnet, resnet, senet, wavenet  # noqa: F401  (registers the models)
from ._registry import create, list_models, register_model
from .bytenet import ByteNet, ByteNetConfig
from .convnext import ConvNeXt, ConvNeXtConfig
from .efficientnet import EfficientNet, EfficientNetConfig, compound_coefficients
from .receptive_field import ConvSpec, receptive_field
from .resnet import ResNet, ResNetConfig
from .wavenet import WaveNet, WaveNetConfig, mu_law_decode, mu_law_encode

list = list_models  # noqa: A001  (replearn.models.list(), as the issue names it)

__all__ = [
    "ByteNet",
    "ByteNetConfig",
    "ConvNeXt",
    "ConvNeXtConfig",
    "ConvSpec",
    "EfficientNet",
    "EfficientNetConfig",
    "ResNet",
    "ResNetConfig",
    "WaveNet",
    "WaveNetConfig",
    "compound_coefficients",
    "create",
    "list",
    "list_models",
    "mu_law_decode",
    "mu_law_encode",
    "receptive_field",
    "register_model",
]
