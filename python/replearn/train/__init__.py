"""Training pipelines. For now one small loop, `train_classifier`, which `replearn train` runs."""

from .classifier import ClassifierConfig, TrainResult, accuracy, train_classifier

__all__ = ["ClassifierConfig", "TrainResult", "accuracy", "train_classifier"]
