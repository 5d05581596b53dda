"""Small synthetic sequence tasks, generated in code (nothing to download): a periodic waveform for
autoregressive audio models and string pairs for character-level sequence-to-sequence models."""

from __future__ import annotations

import math
import random

import torch

__all__ = ["PAD_ID", "BOS_ID", "EOS_ID", "decode_bytes", "encode_bytes", "periodic_signal", "reversal_pairs"]

# Token ids of byte-level sequence models: three special tokens, then the 256 byte values.
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
BYTE_OFFSET = 3


def periodic_signal(length: int, period: int = 32, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A waveform in [−1, 1] of `period` samples: a fundamental and two harmonics,

        x(t) = 0.6·sin(2πt/P) + 0.25·sin(4πt/P + 1) + 0.1·sin(6πt/P + 2),

    a stand-in for one sustained note. Deterministic: every call with the same arguments returns the
    same samples, so a model that sees a full period can predict it exactly.
    """
    t = torch.arange(length, dtype=torch.float64)
    phase = 2 * math.pi * t / period
    x = 0.6 * torch.sin(phase) + 0.25 * torch.sin(2 * phase + 1.0) + 0.1 * torch.sin(3 * phase + 2.0)
    return x.to(dtype)


def reversal_pairs(count: int, min_length: int, max_length: int, alphabet: str = "abcdefghij", seed: int = 0) -> list[tuple[str, str]]:
    """`count` random strings over `alphabet` with lengths in [min_length, max_length], each paired
    with its reverse."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(min_length, max_length)))
        pairs.append((text, text[::-1]))
    return pairs


def encode_bytes(texts: list[str], append_eos: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """UTF-8 bytes of each text as token ids (byte + 3), PAD-padded to the longest.

    Returns:
        ids (B, L) int64 and lengths (B,) int64 (EOS counted when appended).
    """
    rows = [[b + BYTE_OFFSET for b in text.encode()] + ([EOS_ID] if append_eos else []) for text in texts]
    lengths = torch.tensor([len(row) for row in rows], dtype=torch.long)
    ids = torch.full((len(rows), int(lengths.max())), PAD_ID, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return ids, lengths


def decode_bytes(ids: torch.Tensor) -> list[str]:
    """Inverse of `encode_bytes`: each row up to its first EOS or PAD, special tokens dropped."""
    texts = []
    for row in ids.tolist():
        data = bytearray()
        for token in row:
            if token in (EOS_ID, PAD_ID):
                break
            if token >= BYTE_OFFSET:
                data.append(token - BYTE_OFFSET)
        texts.append(data.decode(errors="replace"))
    return texts
