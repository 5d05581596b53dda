"""The model zoo's recipes (issue 10's learning checks), each run through `run_recipe` and the Trainer
with fixed seeds and held to a stated bound, plus a smoke test of checkpoints and resume for each.

Bounds and what they mean:
- wavenet-signal: the test loss (nats per sample) below 3% of the entropy of the signal's marginal
  μ-law distribution, computed here from the codes: a model that ignored the past could do no
  better than that entropy; one that learned the waveform approaches 0. Then greedy cached
  generation, primed with one receptive field of the true signal, continues it for two periods
  within one μ-law level of the true codes.
- bytenet-reverse: ≥ 95% of 100 held-out strings (none seen in training, mostly of 4–5 letters)
  reversed exactly by greedy dynamic unfolding with the cached decoder (seeds 0, 1: 100%, 99%),
  and the recipe's exact_match metric equal to it.
- zoo-image with the ConvNeXt-style and EfficientNet-style small variants on scikit-learn's digits,
  6 epochs: ≥ 95% test accuracy (seed 0: 97.8%, 98.3%; a linear model reaches about 95%).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from pathlib import Path

import pytest
import torch

from replearn.data import decode_bytes, encode_bytes
from replearn.train import get_recipe, load_checkpoint, run_recipe
from replearn.train.zoo_recipes import sequence_accuracy, sequence_exact_match

QUIET = {"progress": False, "plots": False}


def _marginal_entropy(codes: list[int]) -> float:
    """H = −Σ p·ln p (nats) of the codes' empirical distribution."""
    counts = Counter(codes)
    return -sum(n / len(codes) * math.log(n / len(codes)) for n in counts.values())


def test_wavenet_signal_recipe_learns_and_continues_the_signal():
    config = get_recipe("wavenet-signal")(**QUIET)
    run = run_recipe(config)
    period_codes = config.signal_codes(config.period).tolist()
    entropy = _marginal_entropy(period_codes)
    assert entropy > 2.5, entropy  # 3.06 nats: the 32 samples of a period take 24 distinct codes
    assert run.trainer.history[0]["loss"] > 4.0  # started near uniform guessing, ln 256 = 5.55
    assert run.test_metrics["loss"] < 0.03 * entropy, (run.test_metrics, entropy)
    assert run.test_metrics["code_accuracy"] > 0.99, run.test_metrics
    # Generation: prime with one receptive field of the signal at two phases, continue two periods.
    model = run.trainer.model.eval()
    field, horizon = model.receptive_field, 2 * config.period
    signal = config.signal_codes(field + horizon + config.period)
    primers = torch.stack([signal[:field], signal[7 : 7 + field]])  # (2, field)
    truth = torch.stack([signal[field : field + horizon], signal[7 + field : 7 + field + horizon]])
    codes, logits = model.generate(horizon, primers, temperature=0.0)
    assert codes.shape == (2, field + horizon) and logits.shape == (2, 256, horizon)
    generated = codes[:, field:]
    assert (generated - truth).abs().max() <= 1, (generated - truth)
    assert (generated == truth).float().mean() >= 0.95


@pytest.mark.slow
def test_bytenet_reverse_recipe_reverses_held_out_strings():
    config = get_recipe("bytenet-reverse")(**QUIET)
    run = run_recipe(config)
    train, val, test = config.pairs()
    sources = {s for s, _ in test}
    assert len(sources) == len(test) == 100 and not sources & ({s for s, _ in train} | {s for s, _ in val})  # held out
    model = run.trainer.model.eval()
    source, lengths = encode_bytes([s for s, _ in test])
    outputs = decode_bytes(model.generate(source, lengths))  # cached greedy dynamic unfolding
    exact = sum(out == target for out, (_, target) in zip(outputs, test)) / len(test)
    assert exact >= 0.95, exact
    assert run.test_metrics["exact_match"] == pytest.approx(exact, abs=1e-6)  # teacher-forced metric = greedy decoding


@pytest.mark.slow
@pytest.mark.parametrize("name", ["convnext_tiny", "efficientnet_b0"])
def test_small_convnext_and_efficientnet_learn_digits(name):
    """The families' small variants (zoo_recipes.DIGITS_VARIANTS) through the zoo-image recipe."""
    config = get_recipe("zoo-image")(model=name, dataset="digits", epochs=6, warmup_steps=10, num_threads=1, **QUIET)
    run = run_recipe(config)
    assert run.test_metrics["accuracy"] >= 0.95, run.test_metrics
    losses = [r["loss"] for r in run.trainer.history if r["split"] == "train"]
    assert losses[-1] < 0.2 * losses[0]


@pytest.mark.parametrize(
    "recipe, overrides",
    [
        ("wavenet-signal", {"residual_channels": 4, "gate_channels": 4, "skip_channels": 8, "window": 40}),
        ("bytenet-reverse", {"hidden_size": 4, "train_pairs": 100, "task": "copy"}),
    ],
)
def test_sequence_recipes_checkpoint_and_resume(tmp_path: Path, recipe: str, overrides: dict):
    """Tiny runs: a run stopped at 4 steps and resumed to 6 ends with the weights of one run of 6."""
    base = get_recipe(recipe)(**QUIET, **overrides, lr_schedule="constant", log_every=2, eval_every=2, batch_size=4)
    straight = run_recipe(dataclasses.replace(base, max_steps=6, output_dir=str(tmp_path / "straight")))
    run_recipe(dataclasses.replace(base, max_steps=4, output_dir=str(tmp_path / "resumed")))
    resumed = run_recipe(dataclasses.replace(base, max_steps=6, output_dir=str(tmp_path / "resumed")), resume=tmp_path / "resumed")
    names = {p.name for p in (tmp_path / "resumed").iterdir()}
    assert {"config.json", "metrics.jsonl", "checkpoint.safetensors", "summary.json"} <= names
    assert load_checkpoint(tmp_path / "resumed" / "checkpoint.safetensors")["step"] == 6
    for key, weight in straight.trainer.model.state_dict().items():
        torch.testing.assert_close(resumed.trainer.model.state_dict()[key], weight, rtol=0, atol=0, msg=key)
    assert resumed.test_metrics == pytest.approx(straight.test_metrics)


def test_sequence_metrics_against_hand_counts():
    logits = torch.zeros(2, 4, 3)
    logits[0, [1, 2, 3], [0, 1, 2]] = 1.0  # row 0 predicts 1, 2, 3
    logits[1, [1, 0, 0], [0, 1, 2]] = 1.0  # row 1 predicts 1, 0, 0
    targets = torch.tensor([[1, 2, 3], [1, 2, 0]])
    assert float(sequence_accuracy(logits, targets)) == pytest.approx(5 / 6)
    # With 0 ignored: row 1's last position does not count, 4 of 5 right; row 1 is wrong at position 1.
    assert float(sequence_accuracy(logits, targets, ignore_index=0)) == pytest.approx(4 / 5)
    assert float(sequence_exact_match(logits, targets, ignore_index=0)) == pytest.approx(1 / 2)
    targets[1, 1] = 0  # now row 1's only mistake is ignored
    assert float(sequence_exact_match(logits, targets, ignore_index=0)) == pytest.approx(1.0)
