"""Model zoo family: one training step of ResNet-18 on replearn's layers against the same network on
torch.nn's, in the same run.

Row: `resnet18 train step` — forward, cross-entropy, backward and an SGD-with-momentum step of
ResNet-18 with the small-image stem (3×3/1, no max-pool) on a batch of 32 images of 3×32×32, 10
classes (`--quick`: batch 4). Both sides are built by the same zoo code (replearn/models/resnet.py):
the torch side with every layer of `replearn.models._layers` bound to its torch.nn counterpart while
it is constructed, then loaded with the replearn side's weights, so the two differ only in the
layers. The harness compares the first step's losses before timing.

Byte model (the harness's GB/s column): the parameter traffic of a step, which no implementation
can avoid — the forward and the backward read the weights, the backward writes their gradients,
and SGD reads weight, gradient and momentum and writes weight and momentum: 7·P·itemsize. The step
is compute-bound (about 1.7 GFLOP per image forward at this size), so that column is far below the
copy limit by nature; the ratio to torch is the number to read.

Goal (issue 10, with memory reuse): ≥ 0.9× torch. The replearn side runs replearn.nn's layers
(convolution, normalization, pooling) and replearn.optim's SGD; the torch side the same zoo code
with torch.nn's layers and torch.optim's SGD.

`python bench/models.py [--batch N] [--steps N]` prints where the time of a step goes, per layer
type (convolution, normalization, activation, pooling, linear, loss, optimizer, other), from
torch.profiler's self CPU time of each op, for both sides.

`python bench/models.py --bytenet-decode [--symbols N]` times ByteNet's greedy dynamic unfolding of
an N-symbol output (default 256) with the decoder's activation caches (Fast WaveNet's queues,
O(blocks) per symbol) against a full recompute of the decoder over the prefix per symbol (O(t·blocks)
per symbol), on the same model and source, and checks that both emit the same tokens. A timing
note, not a row against torch: both sides are replearn's.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F

import replearn.models as models
import replearn.optim
from replearn.models import _layers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Case  # noqa: E402

NUM_CLASSES = 10
LR, MOMENTUM = 0.05, 0.9

# torch.nn counterparts of the zoo's layers (same constructor arguments and state_dict keys).
TORCH_LAYERS = {
    "BatchNorm1d": torch.nn.BatchNorm1d,
    "BatchNorm2d": torch.nn.BatchNorm2d,
    "LayerNorm": torch.nn.LayerNorm,
    "GroupNorm": torch.nn.GroupNorm,
    "Conv1d": torch.nn.Conv1d,
    "Conv2d": torch.nn.Conv2d,
    "MaxPool2d": torch.nn.MaxPool2d,
    "AdaptiveAvgPool2d": torch.nn.AdaptiveAvgPool2d,
}


@contextlib.contextmanager
def torch_layers() -> Iterator[None]:
    """Binds the zoo's layer names to torch.nn's in every zoo module while a model is built."""
    import replearn.models._common as common
    import replearn.models.resnet as resnet
    import replearn.models.squeeze_excitation as se

    saved = []
    for module in (_layers, common, resnet, se):
        for name, layer in TORCH_LAYERS.items():
            if hasattr(module, name):
                saved.append((module, name, getattr(module, name)))
                setattr(module, name, layer)
    try:
        yield
    finally:
        for module, name, layer in saved:
            setattr(module, name, layer)


def build_pair(batch: int) -> dict[str, tuple[torch.nn.Module, torch.optim.Optimizer]]:
    torch.manual_seed(0)
    ours = models.create("resnet18", num_classes=NUM_CLASSES, small_input=True)
    with torch_layers():
        theirs = models.create("resnet18", num_classes=NUM_CLASSES, small_input=True)
    theirs.load_state_dict(ours.state_dict())
    # Each side with its own library's optimizer: torch's SGD (its default foreach path) and replearn's.
    return {
        "torch": (theirs, torch.optim.SGD(theirs.parameters(), lr=LR, momentum=MOMENTUM)),
        "replearn": (ours, replearn.optim.SGD(ours.parameters(), lr=LR, momentum=MOMENTUM)),
    }


def _step_runner(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor):
    def step() -> torch.Tensor:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def train_step(shape, dtype, device):
    batch = shape[0]
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=generator).to(device=device, dtype=dtype)
    y = torch.randint(0, NUM_CLASSES, (batch,), generator=generator).to(device)
    pair = build_pair(batch)
    runners = {}
    for side, (model, optimizer) in pair.items():
        model.to(device=device, dtype=dtype).train()
        runners[side] = _step_runner(model, optimizer, x, y)
    return runners["torch"], runners["replearn"]


def _parameter_traffic(shape, itemsize: int) -> int:
    parameters = 11_173_962  # ResNet-18 with 10 classes (the 1000-class count less 513·990)
    return 7 * parameters * itemsize


CASES = [
    Case(
        op="resnet18 train step",
        shape=(32, 3, 32, 32),
        quick_shape=(4, 3, 32, 32),
        build=train_step,
        bytes_moved=_parameter_traffic,
        min_speedup=0.9,
    )
]

# ------------------------------------------------------------------------------ breakdown

CATEGORIES = (  # first match wins; op names are aten::*, replearn::* and autograd nodes
    ("convolution", ("conv",)),
    ("normalization", ("norm",)),
    ("pooling", ("pool",)),
    ("activation", ("relu", "threshold")),
    ("linear", ("addmm", "linear", "::mm", "::t")),
    ("loss", ("cross_entropy", "nll", "log_softmax")),
    ("optimizer", ("sgd", "_foreach", "optimizer")),
)


def category(op_name: str) -> str:
    lowered = op_name.lower()
    for name, keys in CATEGORIES:
        if any(key in lowered for key in keys):
            return name
    return "other"


def breakdown(batch: int, steps: int) -> dict[str, dict[str, float]]:
    """Milliseconds of self CPU time per layer type and side, averaged over `steps` steps."""
    torch_step, replearn_step = train_step((batch, 3, 32, 32), torch.float32, "cpu")
    result = {}
    for side, step in (("torch", torch_step), ("replearn", replearn_step)):
        step()  # warm-up
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
            for _ in range(steps):
                step()
        totals: dict[str, float] = {}
        for event in profiler.key_averages():
            totals[category(event.key)] = totals.get(category(event.key), 0.0) + event.self_cpu_time_total / 1e3 / steps
        result[side] = totals
    return result


# ------------------------------------------------------------------------------ ByteNet decoding


def bytenet_decoding(symbols: int, batch: int = 1, repeat: int = 1) -> dict[str, float]:
    """Median seconds of `generate` emitting `symbols` tokens per row, cached and recomputed.

    A ByteNet of d = 64 with two cycles of dilations 1 … 16 in each stack (10 + 10 blocks, the
    paper's pattern at a twelfth of its width and a third of its depth, so that the recompute side
    ends in seconds) and random weights; EOS is given an id no token has, so every run emits
    exactly `symbols` tokens whatever the weights say.
    """
    torch.manual_seed(0)
    dilations = (1, 2, 4, 8, 16) * 2
    model = models.create("bytenet", hidden_size=64, encoder_dilations=dilations, decoder_dilations=dilations, eos_id=-1).eval()
    source = torch.randint(3, 259, (batch, max(1, round(symbols / model.config.unfold_a))))  # |t̂| ≈ symbols
    seconds: dict[str, list[float]] = {"cached": [], "recompute": []}
    tokens = {}
    for _ in range(repeat):
        for name in seconds:
            start = time.perf_counter()
            tokens[name] = model.generate(source, max_length=symbols, cached=name == "cached")
            seconds[name].append(time.perf_counter() - start)
    if not torch.equal(tokens["cached"], tokens["recompute"]) or tokens["cached"].shape[1] != symbols:
        raise RuntimeError("bytenet_decoding: the cached and recomputed decodings differ")
    return {name: statistics.median(values) for name, values in seconds.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Per-layer-type time of a ResNet-18 training step, torch vs replearn; "
                                                 "or (--bytenet-decode) ByteNet's cached against recomputed decoding.")  # fmt: skip
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--bytenet-decode", action="store_true", help="time ByteNet decoding instead (batch 1)")
    parser.add_argument("--symbols", type=int, default=256, help="symbols per decoded row (--bytenet-decode)")
    args = parser.parse_args(argv)
    if args.bytenet_decode:
        times = bytenet_decoding(args.symbols)
        print(f"ByteNet greedy decoding of {args.symbols} symbols, batch 1, d=64, 10+10 blocks, {torch.get_num_threads()} threads")
        print(f"recompute {times['recompute']:.3f} s, cached {times['cached']:.3f} s: "
              f"{times['recompute'] / times['cached']:.1f}x faster with the caches (same tokens)")  # fmt: skip
        return
    times = breakdown(args.batch, args.steps)
    names = [name for name, _ in CATEGORIES] + ["other"]
    print(f"ResNet-18 train step, batch {args.batch}, 3×32×32, {torch.get_num_threads()} threads (self CPU ms per step)\n")
    print("| layer type | torch ms | replearn ms | torch / replearn |")
    print("|---|---|---|---|")
    for name in names + ["total"]:
        t = sum(times["torch"].values()) if name == "total" else times["torch"].get(name, 0.0)
        r = sum(times["replearn"].values()) if name == "total" else times["replearn"].get(name, 0.0)
        ratio = f"{t / r:.2f}" if r > 0 else "—"
        print(f"| {name} | {t:.2f} | {r:.2f} | {ratio} |")


if __name__ == "__main__":
    main()
