"""Datasets that ship with replearn or its dependencies: nothing downloads at run time."""

from .digits import Digits, load_digits

__all__ = ["Digits", "load_digits"]
