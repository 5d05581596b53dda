"""The `replearn` command: `replearn train` learns the digits, options parse into the config."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import replearn
from replearn.cli import build_parser, main, parse_train_config
from replearn.data import load_digits
from replearn.train import ClassifierConfig, train_classifier

ACCURACY = re.compile(r"test accuracy: ([0-9.]+) \((\d+)/(\d+)\)")


def _env_importing_this_replearn() -> dict[str, str]:
    """The test environment, with the replearn under test first on the subprocess's path.

    Works whether replearn was pip-installed or is imported from the source tree (PYTHONPATH=python).
    """
    env = dict(os.environ)
    package_root = str(Path(replearn.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([package_root] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def test_python_m_replearn_train_beats_95_percent() -> None:
    """The main job: `python -m replearn train` with no arguments, as a user runs it."""
    done = subprocess.run(
        [sys.executable, "-m", "replearn", "train"],
        env=_env_importing_this_replearn(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    match = ACCURACY.search(done.stdout)
    assert match, f"no accuracy line in:\n{done.stdout}"
    accuracy, correct, total = float(match[1]), int(match[2]), int(match[3])
    assert total == 360 and correct / total == pytest.approx(accuracy, abs=1e-4)
    assert accuracy > 0.95, done.stdout
    assert "train batch norm" in done.stderr  # the progress bar, with its loss
    assert "loss=" in done.stderr


def _train_args(*argv: str):
    return build_parser().parse_args(["train", *argv])


def test_defaults_are_the_config_defaults() -> None:
    assert parse_train_config(_train_args()) == ClassifierConfig()


def test_options_parse_into_config() -> None:
    args = _train_args(
        "--epochs", "3", "--lr", "0.01", "--seed", "7", "--norm", "rms", "--batch-size", "32",
        "--hidden-sizes", "64", "32", "--threads", "2", "--no-progress",
    )  # fmt: skip
    expected = ClassifierConfig(
        epochs=3, lr=0.01, seed=7, norm="rms", batch_size=32, hidden_sizes=(64, 32), num_threads=2, progress=False
    )
    assert parse_train_config(args) == expected


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--norm", "instance"], "invalid choice: 'instance'"),
        (["--epochs", "0"], "--epochs: expected a positive int, got '0'"),
        (["--lr", "fast"], "--lr: expected a positive float, got 'fast'"),
        (["--batch-size", "-4"], "--batch-size: expected a positive int"),
        (["--momentum", "0.9"], "unrecognized arguments: --momentum"),
    ],
)
def test_bad_options_are_clear_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_no_command_is_an_error(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


def test_invalid_width_for_group_norm_is_reported(capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--norm", "group", "--hidden-sizes", "12", "--epochs", "1", "--no-progress"]) == 2
    assert "num_channels (12) must be divisible by num_groups (8)" in capsys.readouterr().err


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="'norm' expected one of batch, layer, rms, group"):
        ClassifierConfig(norm="instance")
    with pytest.raises(ValueError, match="'epochs'"):
        ClassifierConfig(epochs=0)


@pytest.fixture(scope="module")
def digits():
    return load_digits(seed=0)


@pytest.mark.parametrize("norm", ["batch", "layer", "rms", "group"])
def test_each_norm_learns_the_digits(norm: str, digits) -> None:
    result = train_classifier(ClassifierConfig(norm=norm, epochs=5, progress=False), digits)
    assert result.test_accuracy > 0.9
    assert result.epoch_losses[-1] < result.epoch_losses[0]


def test_training_is_deterministic(digits) -> None:
    config = ClassifierConfig(norm="batch", epochs=2, progress=False)
    first, second = train_classifier(config, digits), train_classifier(config, digits)
    assert first.epoch_losses == second.epoch_losses
    assert first.test_correct == second.test_correct


def test_digits_split_is_standardized_and_seeded() -> None:
    first, again, other = load_digits(seed=0), load_digits(seed=0), load_digits(seed=1)
    assert first.x_train.shape == (1437, 64) and first.x_test.shape == (360, 64)
    assert first.x_train.equal(again.x_train) and first.y_test.equal(again.y_test)
    assert not first.y_test.equal(other.y_test)
    assert first.x_train.mean(0).abs().max() < 1e-5
    assert set(first.y_test.bincount().tolist()) <= {35, 36, 37}  # stratified: every class ≈ 10%
    with pytest.raises(ValueError, match="'test_fraction'"):
        load_digits(test_fraction=1.0)
