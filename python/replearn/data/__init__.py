"""Datasets that ship with replearn or its dependencies: nothing downloads at run time."""

from .digits import Digits, load_digits
from .sequences import decode_bytes, encode_bytes, periodic_signal, reversal_pairs

__all__ = ["Digits", "decode_bytes", "encode_bytes", "load_digits", "periodic_signal", "reversal_pairs"]
