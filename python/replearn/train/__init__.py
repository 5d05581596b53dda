"""Training pipelines. For now one small loop, `train_classifier`, which `replearn train` runs."""

from .bptt import detach_state, truncated_bptt
from .classifier import ClassifierConfig, TrainResult, accuracy, train_classifier

__all__ = ["ClassifierConfig", "TrainResult", "accuracy", "train_classifier", "truncated_bptt", "detach_state"]
