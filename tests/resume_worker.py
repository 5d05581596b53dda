"""A training run for the resume test (tests/test_trainer.py), killable as a subprocess.

    python tests/resume_worker.py RUN_DIR [--stall-at STEP]

The run exercises every kind of state a checkpoint must carry: AdamW moments, the cosine schedule,
dropout (torch's global generator), a random augmentation (the trainer's generator) and early
stopping's best weights. With --stall-at the run blocks forever after that step, once it has
written RUN_DIR/stalled, so the test can kill it at a known point.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from torch import nn

from replearn.data import load_digits
from replearn.train import Callback, EarlyStopping, TrainConfig, Trainer

MAX_STEPS = 30
CHECKPOINT_EVERY = 7


class StallAt(Callback):
    """Blocks after step `step` (never when None): present in every run so the callback lists match."""

    def __init__(self, step: int | None, marker: Path) -> None:
        self.step, self.marker = step, marker

    def on_step_end(self, trainer: Trainer, loss: float | None) -> None:
        if trainer.step == self.step:
            self.marker.write_text(str(trainer.step))
            while True:
                time.sleep(1)


def noise_augment(inputs: torch.Tensor, targets: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return inputs + 0.1 * torch.randn(inputs.shape, generator=generator), targets


def make_trainer(run_dir: Path, stall_at: int | None = None) -> tuple[Trainer, tuple, tuple]:
    data = load_digits(seed=0, val_fraction=0.1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 10))
    config = TrainConfig(max_steps=MAX_STEPS, batch_size=32, checkpoint_every=CHECKPOINT_EVERY, eval_every=10, log_every=5,
                         output_dir=str(run_dir), progress=False, plots=False, num_threads=1)  # fmt: skip
    callbacks = [EarlyStopping("val_loss", patience=100), StallAt(stall_at, run_dir / "stalled")]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    trainer = Trainer(model, optimizer, config, callbacks=callbacks, augment=noise_augment)
    return trainer, data.train, data.val


if __name__ == "__main__":
    run_dir = Path(sys.argv[1])
    stall = int(sys.argv[sys.argv.index("--stall-at") + 1]) if "--stall-at" in sys.argv else None
    trainer, train, val = make_trainer(run_dir, stall)
    trainer.fit(train, val)
