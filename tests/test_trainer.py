"""The Trainer: config parsing, the loop's arithmetic, callbacks, checkpoints, resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import replearn
from replearn.data import load_digits
from replearn.train import (
    Callback,
    EarlyStopping,
    LRScheduler,
    StopBelow,
    SurrogateLossStopping,
    TrainConfig,
    Trainer,
    load_checkpoint,
    retrain_on_train_and_val,
    save_checkpoint,
    with_overrides,
)
from replearn.train import checkpoint as checkpoint_module
from replearn.train.trainer import lr_multiplier

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def digits():
    return load_digits(seed=0, val_fraction=0.1)


def _mlp(seed: int = 0, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(dropout), nn.Linear(32, 10))


def _config(**changes) -> TrainConfig:
    base = dict(epochs=2, batch_size=32, progress=False, plots=False, num_threads=1)
    return TrainConfig(**{**base, **changes})


def _trainer(config: TrainConfig, model: nn.Module | None = None, **kwargs) -> Trainer:
    model = model or _mlp()
    return Trainer(model, torch.optim.AdamW(model.parameters(), lr=3e-3), config, **kwargs)


# ------------------------------------------------------------------------------------------- config


def test_overrides_parse_by_field_type() -> None:
    config = with_overrides(TrainConfig(), ["epochs=3", "grad_clip=0.5", "max_steps=none", "drop_last=yes", "lr_schedule=linear", "device=cpu"])
    assert (config.epochs, config.grad_clip, config.max_steps, config.drop_last, config.lr_schedule) == (3, 0.5, None, True, "linear")


@pytest.mark.parametrize(
    "assignment, message",
    [
        ("epoch=3", "unknown key 'epoch'; valid keys: batch_size, checkpoint_every"),
        ("epochs=three", "'epochs' expected a value of type int but got 'three'"),
        ("epochs=0", "'epochs' expected a positive integer but got 0"),
        ("lr_schedule=step", "'lr_schedule' expected one of constant, cosine, linear but got 'step'"),
        ("drop_last=maybe", "'drop_last' expected true or false but got 'maybe'"),
        ("epochs", "--set expects key=value but got 'epochs'"),
        ("grad_clip=-1", "'grad_clip' expected a positive number or none"),
    ],
)
def test_bad_overrides_are_clear_errors(assignment: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        with_overrides(TrainConfig(), [assignment])


def test_lr_multiplier_shapes() -> None:
    assert [lr_multiplier(s, 10, "constant", warmup_steps=2) for s in (0, 1, 2, 9)] == [0.5, 1.0, 1.0, 1.0]
    assert lr_multiplier(0, 10, "cosine") == 1.0 and lr_multiplier(10, 10, "cosine") == pytest.approx(0.0)
    assert lr_multiplier(5, 10, "cosine") == pytest.approx(0.5)
    assert lr_multiplier(5, 10, "linear", min_ratio=0.2) == pytest.approx(0.6)


# ------------------------------------------------------------------------------------------ the loop


def test_fit_learns_and_is_deterministic(digits) -> None:
    first = _trainer(_config(epochs=3), _mlp(dropout=0.1))
    result = first.fit(digits.train, digits.val)
    second = _trainer(_config(epochs=3), _mlp(dropout=0.1))
    again = second.fit(digits.train, digits.val)
    losses = [r["loss"] for r in result.history if r["split"] == "train"]
    assert losses == [r["loss"] for r in again.history if r["split"] == "train"]
    for a, b in zip(first.model.parameters(), second.model.parameters()):
        assert torch.equal(a, b)
    assert result.val_metrics["val_accuracy"] > 0.85 and losses[-1] < losses[0]
    assert result.steps == 3 * ((len(digits.y_train) + 31) // 32)
    assert first.evaluate(digits.val)["accuracy"] == pytest.approx(result.val_metrics["val_accuracy"])
    assert first.predict(digits.val).shape == (len(digits.y_val), 10)
    assert "steps (3.0 epochs)" in first.summary() and "val_accuracy" in first.summary()


def test_gradient_accumulation_matches_one_big_batch(digits) -> None:
    """4 micro-batches of 16 give the gradient of the mean over 64 (no batch-dependent layers)."""
    whole = _trainer(_config(max_steps=5, batch_size=64))
    whole.fit(digits.train)
    accumulated = _trainer(_config(max_steps=5, batch_size=64, grad_accumulation=4))
    accumulated.fit(digits.train)
    for a, b in zip(whole.model.parameters(), accumulated.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_gradient_clipping_bounds_the_step(digits) -> None:
    """With SGD (no momentum) at lr 1, one clipped step moves the weights by exactly the clipped gradient."""
    model = _mlp()
    before = [p.detach().clone() for p in model.parameters()]
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=1.0), _config(max_steps=1, grad_clip=0.01, lr_schedule="constant"))
    trainer.fit(digits.train)
    moved = float(torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(model.parameters(), before))))
    assert moved == pytest.approx(0.01, rel=1e-4)


def test_penalty_and_custom_loss_are_used(digits) -> None:
    calls = {"penalty": 0, "loss": 0}

    def penalty(model: nn.Module) -> torch.Tensor:
        calls["penalty"] += 1
        return sum(p.abs().sum() for p in model.parameters()) * 0.0

    def loss_fn(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        calls["loss"] += 1
        return nn.functional.cross_entropy(outputs, targets)

    _trainer(_config(max_steps=3, grad_accumulation=2), penalty=penalty, loss_fn=loss_fn).fit(digits.train)
    assert calls == {"penalty": 3, "loss": 6}  # the penalty once per step, the loss per micro-batch


def test_bad_data_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match="expected a torch Dataset, a tensor or a tuple of tensors but got str"):
        _trainer(_config()).fit("digits")


# ------------------------------------------------------------------------------------------ callbacks


class Recorder(Callback):
    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []

    def on_fit_start(self, trainer): self.events.append(("start", trainer.step))  # noqa: E704
    def on_epoch_end(self, trainer): self.events.append(("epoch", trainer.step))  # noqa: E704
    def on_evaluate(self, trainer, metrics): self.events.append(("eval", trainer.step))  # noqa: E704
    def on_fit_end(self, trainer): self.events.append(("end", trainer.step))  # noqa: E704


def test_custom_callback_sees_every_hook(digits) -> None:
    recorder = Recorder()
    trainer = _trainer(_config(epochs=2, batch_size=512), callbacks=[recorder])
    trainer.fit(digits.train, digits.val)
    per_epoch = trainer.steps_per_epoch
    assert recorder.events == [("start", 0), ("epoch", per_epoch), ("eval", per_epoch), ("epoch", 2 * per_epoch), ("eval", 2 * per_epoch), ("end", 2 * per_epoch)]


class ScriptedMetric(Callback):
    """Replaces val_loss by a scripted sequence, so early stopping's decisions are known in advance."""

    def __init__(self, values: list[float]) -> None:
        self.values = values

    def on_evaluate(self, trainer, metrics):
        metrics["val_loss"] = self.values.pop(0)


def test_early_stopping_stops_after_patience_and_restores_best(digits) -> None:
    snapshots = {}

    class Snapshot(Callback):
        def on_evaluate(self, trainer, metrics):
            snapshots[trainer.step] = [p.detach().clone() for p in trainer.model.parameters()]

    stopper = EarlyStopping("val_loss", patience=2)
    trainer = _trainer(_config(epochs=10, eval_every=2), callbacks=[ScriptedMetric([3.0, 2.0, 2.5, 1.9999999, 2.2, 2.1, 0.1]), Snapshot(), stopper])
    stopper.min_delta = 1e-3  # 1.9999999 is no real improvement on 2.0
    result = trainer.fit(digits.train, digits.val)
    assert result.stopped_early and result.steps == 8  # evals at 2, 4 (best), 6, 8 → 2 without improvement
    assert stopper.best == 2.0 and stopper.best_step == 4
    for restored, best in zip(trainer.model.parameters(), snapshots[4]):
        assert torch.equal(restored, best)


def test_early_stopping_names_missing_metric(digits) -> None:
    with pytest.raises(ValueError, match="metric 'val_f1' not among the validation metrics: val_accuracy, val_loss"):
        _trainer(_config(max_steps=2, eval_every=1), callbacks=[EarlyStopping("val_f1")]).fit(digits.train, digits.val)


def test_surrogate_loss_stopping_monitors_its_own_loss(digits) -> None:
    seen = []

    def error(outputs, targets):
        seen.append(len(targets))
        return (outputs.argmax(1) != targets).float().mean()

    stopper = SurrogateLossStopping(error, patience=1)
    trainer = _trainer(_config(epochs=30, batch_size=512, lr_schedule="constant"), callbacks=[stopper])
    result = trainer.fit(digits.train, digits.val)
    history = [r["val_surrogate"] for r in result.history if r["split"] == "val"]
    assert sum(seen) == len(history) * len(digits.y_val)  # computed on the whole validation set each time
    assert history == pytest.approx([1 - r["val_accuracy"] for r in result.history if r["split"] == "val"], abs=1e-6)
    if result.stopped_early:  # stops at the first validation without a strictly better error
        assert history[-1] >= min(history[:-1])
    assert stopper.best == min(history)


def test_stop_below_and_plateau_scheduler(digits) -> None:
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=0)
    config = _config(epochs=10, eval_every=2, lr_schedule="constant")
    scripted = ScriptedMetric([1.0, 1.0, 1.0, 0.5, 0.01, 0.01])
    trainer = Trainer(model, optimizer, config, callbacks=[scripted, LRScheduler(plateau, "eval", monitor="val_loss"), StopBelow("val_loss", 0.1)])
    result = trainer.fit(digits.train, digits.val)
    assert result.steps == 10 and result.stopped_early
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.25)  # two evaluations without improvement


@pytest.mark.parametrize("strategy", ["steps", "loss"])
def test_retrain_on_train_and_val(strategy: str, digits) -> None:
    def build():
        model = _mlp()
        return model, torch.optim.AdamW(model.parameters(), lr=1e-2)

    result = retrain_on_train_and_val(build, _config(epochs=6, batch_size=128), digits.train, digits.val, strategy=strategy, patience=2)
    assert 0 < result.best_step <= result.first.steps
    if strategy == "steps":
        assert result.second.steps == result.best_step  # i* steps on train + val
    else:
        assert result.threshold is not None and result.second.steps <= result.first.steps
        if result.second.stopped_early:
            assert result.second.val_metrics["val_loss"] < result.threshold
    x_test, y_test = digits.test
    assert (result.model(x_test).argmax(1) == y_test).float().mean() > 0.85


# ---------------------------------------------------------------------------------------- checkpoints


def test_checkpoint_roundtrip_of_nested_state(tmp_path: Path) -> None:
    state = {"model": {"w": torch.randn(3, 4), "tied": None}, "opt": {"state": {0: {"step": torch.tensor(3.0)}}, "groups": [{"betas": (0.9, 0.99), "lr": 1e-3}]},
             "step": 7, "name": "x", "flag": True, "rng": [1, 2.5, None]}  # fmt: skip
    view = torch.arange(10.0)
    state["model"]["tied"] = view[2:5]  # a view into a larger storage
    save_checkpoint(tmp_path / "c.safetensors", state)
    back = load_checkpoint(tmp_path / "c.safetensors")
    assert torch.equal(back["model"]["w"], state["model"]["w"]) and torch.equal(back["model"]["tied"], view[2:5])
    assert back["opt"]["state"][0]["step"].item() == 3.0 and back["opt"]["groups"][0]["betas"] == (0.9, 0.99)
    assert back["step"] == 7 and back["name"] == "x" and back["flag"] is True and back["rng"] == [1, 2.5, None]


def test_crash_while_saving_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "checkpoint.safetensors"
    save_checkpoint(path, {"step": 1, "w": torch.ones(4)})

    original_open = open

    class HalfWrite:
        def __init__(self, *args, **kwargs):
            self.file = original_open(*args, **kwargs)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def write(self, data):
            self.file.write(data[: len(data) // 2])
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module, "open", HalfWrite, raising=False)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"step": 2, "w": torch.zeros(4)})
    monkeypatch.undo()
    state = load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(4))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.safetensors"]  # no temporary left behind


def test_not_a_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"w": torch.ones(2)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="is not a replearn checkpoint"):
        load_checkpoint(tmp_path / "other.safetensors")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_run_folder_has_metrics_checkpoint_and_curves(tmp_path: Path, digits) -> None:
    pytest.importorskip("matplotlib")
    trainer = _trainer(_config(epochs=2, output_dir=str(tmp_path / "run"), plots=True, log_every=5))
    trainer.fit(digits.train, digits.val)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {r["split"] for r in records} == {"train", "val"}
    assert all({"step", "epoch", "loss", "lr", "samples_per_s"} <= set(r) for r in records if r["split"] == "train")
    assert (tmp_path / "run" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    state = load_checkpoint(tmp_path / "run" / "checkpoint.safetensors")
    assert state["step"] == trainer.step and state["finished"] and json.loads(state["config"])["epochs"] == 2


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    package_root = str(Path(replearn.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, str(HERE), env.get("PYTHONPATH")) if p)
    return env


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(tmp_path: Path) -> None:
    sys.path.insert(0, str(HERE))
    try:
        import resume_worker
    finally:
        sys.path.remove(str(HERE))
    # The uninterrupted run.
    full, train, val = resume_worker.make_trainer(tmp_path / "full")
    full.fit(train, val)
    # A run killed (SIGKILL, no chance to clean up) after step 17: its last checkpoint is step 14.
    killed_dir = tmp_path / "killed"
    killed_dir.mkdir()
    worker = subprocess.Popen([sys.executable, str(HERE / "resume_worker.py"), str(killed_dir), "--stall-at", "17"], env=_subprocess_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 240
    while not (killed_dir / "stalled").exists():
        assert worker.poll() is None, worker.communicate()[1].decode()[-3000:]
        assert time.monotonic() < deadline, "the worker did not reach step 17 in time"
        time.sleep(0.2)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    assert load_checkpoint(killed_dir / "checkpoint.safetensors")["step"] == 14
    # Resume in a fresh trainer and finish.
    resumed, train, val = resume_worker.make_trainer(killed_dir)
    resumed.fit(train, val, resume=killed_dir)
    assert resumed.step == full.step == resume_worker.MAX_STEPS
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(full.optimizer.state.values(), resumed.optimizer.state.values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
    # The resumed metrics file drops what the killed run logged after step 14 and ends like the full one.
    read = lambda d: [(r["step"], r["split"], r.get("loss", r.get("val_loss"))) for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())]  # noqa: E731
    assert read(killed_dir) == read(tmp_path / "full")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_trains_and_resumes_on_cuda(tmp_path: Path, digits) -> None:
    # 40 steps reach ~71% on the CPU (10 steps only 26%); the CUDA run must learn as well.
    cpu = _trainer(_config(max_steps=40, device="cpu", output_dir=str(tmp_path / "cpu")))
    cpu_accuracy = cpu.fit(digits.train, digits.val).val_metrics["val_accuracy"]
    trainer = _trainer(_config(max_steps=40, device="cuda", output_dir=str(tmp_path / "run"), checkpoint_every=5))
    result = trainer.fit(digits.train, digits.val)
    assert next(trainer.model.parameters()).is_cuda
    assert result.val_metrics["val_accuracy"] > 0.6 and abs(result.val_metrics["val_accuracy"] - cpu_accuracy) < 0.05
    resumed = _trainer(_config(max_steps=42, device="cuda", output_dir=str(tmp_path / "run"), checkpoint_every=5))
    assert resumed.fit(digits.train, digits.val, resume=tmp_path / "run").steps == 42
