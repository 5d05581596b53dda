"""Text that ships with Python itself, and two tokenizers: characters and byte-level BPE.

    corpus = load_pydoc_text()                          # 465k characters of Python's help topics
    chars = CharTokenizer.fit(corpus.train)             # ~100 symbols
    bpe = BPETokenizer.train(corpus.train, vocab_size=512)
    x, y = token_windows(bpe.encode(corpus.train), context=64)    # next-token pairs for a language model

Source: `pydoc_data.topics.topics`, the text of `help("topic")` for Python's 79 language topics
("if", "for", "class", ...), part of every CPython installation (about 465,000 characters for
Python 3.11, mostly English prose with code). Topics are joined in sorted order, so the corpus is
the same for a given Python version; the validation part is the last `val_fraction` of it.

Byte-level BPE (Sennrich et al. 2016; on bytes as in GPT-2, Radford et al. 2019): the vocabulary
starts as the 256 byte values, so any string encodes without an unknown token, and training
repeatedly merges the most frequent adjacent pair into a new token. Pairs are counted within
pre-tokenized chunks (a run of letters, digits, other symbols or white space, with one leading
space attached) so merges never cross word boundaries; ties go to the pair first seen.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from typing import Sequence

import torch

__all__ = ["BPETokenizer", "CharTokenizer", "TextCorpus", "load_pydoc_text", "token_windows"]


@dataclasses.dataclass(frozen=True)
class TextCorpus:
    """A text and its train/validation parts (`train + val == text`)."""

    text: str
    train: str
    val: str
    source: str


def load_pydoc_text(val_fraction: float = 0.1) -> TextCorpus:
    """Python's help topics as one text, the last `val_fraction` held out for validation."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"load_pydoc_text: 'val_fraction' expected a value in [0, 1) but got {val_fraction}")
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[name] for name in sorted(topics))
    cut = len(text) - int(len(text) * val_fraction)
    return TextCorpus(text, text[:cut], text[cut:], f"pydoc_data help topics of Python, {len(topics)} topics, {len(text):,} characters")


class CharTokenizer:
    """One token per character of a fixed alphabet (sorted)."""

    def __init__(self, alphabet: Sequence[str]) -> None:
        self.alphabet = list(alphabet)
        self.index = {c: i for i, c in enumerate(self.alphabet)}

    @classmethod
    def fit(cls, text: str) -> "CharTokenizer":
        """The tokenizer of the characters that occur in `text`."""
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.alphabet)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`.

        Raises:
            ValueError: a character outside the alphabet (the message shows it).
        """
        try:
            return [self.index[c] for c in text]
        except KeyError as error:
            raise ValueError(f"CharTokenizer: character {error.args[0]!r} is not in the alphabet of {self.vocab_size}") from None

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.alphabet[int(i)] for i in ids)


_CHUNK = re.compile(rb" ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+")


def _merge(word: tuple[int, ...], pair: tuple[int, int], new: int) -> tuple[int, ...]:
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(new)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


class BPETokenizer:
    """Byte-level byte-pair encoding: 256 byte tokens plus learned merges, applied in learned order."""

    def __init__(self, merges: Sequence[tuple[int, int]]) -> None:
        self.merges = [tuple(m) for m in merges]
        self.ranks = {pair: 256 + i for i, pair in enumerate(self.merges)}
        self.pieces: list[bytes] = [bytes([b]) for b in range(256)]
        for a, b in self.merges:
            self.pieces.append(self.pieces[a] + self.pieces[b])

    @property
    def vocab_size(self) -> int:
        return 256 + len(self.merges)

    @classmethod
    def train(cls, text: str, vocab_size: int = 512) -> "BPETokenizer":
        """Learns `vocab_size − 256` merges from `text` (fewer if no pair occurs twice)."""
        if vocab_size < 256:
            raise ValueError(f"BPETokenizer.train: 'vocab_size' expected at least 256 (the bytes) but got {vocab_size}")
        counts = Counter(tuple(chunk) for chunk in _CHUNK.findall(text.encode("utf-8")))
        words = [list(item) for item in counts.items()]  # [symbols, count] per distinct chunk
        pairs: Counter[tuple[int, int]] = Counter()
        where: dict[tuple[int, int], set[int]] = {}  # pair -> the chunks it occurs in
        for index, (word, count) in enumerate(words):
            for pair in zip(word, word[1:]):
                pairs[pair] += count
                where.setdefault(pair, set()).add(index)
        merges: list[tuple[int, int]] = []
        while 256 + len(merges) < vocab_size and pairs:
            pair, count = max(pairs.items(), key=lambda item: item[1])  # first counted wins a tie
            if count < 2:
                break
            new = 256 + len(merges)
            merges.append(pair)
            # Recount only the chunks that contain the pair.
            for index in where.pop(pair):
                word, count = words[index]
                for old in zip(word, word[1:]):
                    pairs[old] -= count
                    if pairs[old] <= 0:
                        del pairs[old]
                word = _merge(word, pair, new)
                words[index][0] = word
                for fresh in zip(word, word[1:]):
                    pairs[fresh] += count
                    where.setdefault(fresh, set()).add(index)
        return cls(merges)

    def _encode_chunk(self, chunk: bytes) -> list[int]:
        word = tuple(chunk)
        while len(word) > 1:
            # The earliest-learned merge present, as training applied them.
            pair = min(zip(word, word[1:]), key=lambda p: self.ranks.get(p, 1 << 30))
            if pair not in self.ranks:
                break
            word = _merge(word, pair, self.ranks[pair])
        return list(word)

    def encode(self, text: str) -> list[int]:
        return [token for chunk in _CHUNK.findall(text.encode("utf-8")) for token in self._encode_chunk(chunk)]

    def decode(self, ids: Sequence[int]) -> str:
        return b"".join(self.pieces[int(i)] for i in ids).decode("utf-8", errors="replace")


def token_windows(ids: Sequence[int], context: int, stride: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of shape (M, context): windows of the token stream and the same shifted by one.

    Args:
        ids: the token ids.
        context: window length.
        stride: step between window starts (default `context`: non-overlapping).
    """
    data = torch.as_tensor(list(ids), dtype=torch.long)
    if len(data) < context + 1:
        raise ValueError(f"token_windows: need more than {context} tokens but got {len(data)}")
    starts = torch.arange(0, len(data) - context, stride or context)
    offsets = torch.arange(context)
    return data[starts[:, None] + offsets], data[starts[:, None] + offsets + 1]
