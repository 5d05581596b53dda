"""The `replearn` command (also `python -m replearn`).

    replearn train                                   # the default recipe: a CNN on the MNIST subset
    replearn train digits-mlp --set norm=layer epochs=5 --output runs/ln
    replearn train mnist-cnn --resume runs/ln        # continue a run from its checkpoint
    replearn train mnist-cnn --nproc 2               # data-parallel under torchrun (gloo on the CPU)
    replearn eval runs/ln                            # test metrics of a run folder
    replearn list [recipes|models|ops|datasets]
    replearn bench [family ...] [--quick]            # bench/run.py of a source checkout

`train` sets glibc's malloc to keep freed memory (replearn/malloc.py) unless `--malloc default`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from . import __version__

__all__ = ["build_parser", "main"]

LIST_KINDS = ("recipes", "models", "ops", "datasets")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the line breaks of descriptions and epilogs (the key tables)."""


def _recipe_keys_text(recipe: str) -> str:
    from .train.config import field_help
    from .train.recipes import get_recipe

    cls = get_recipe(recipe)
    lines = [f"keys of recipe {recipe} (--set KEY=VALUE; 'none' for optional values):"]
    for name, default, text in field_help(cls):
        lines.append(f"  {name:<18} {default:<10} {text}")
    return "\n".join(lines)


def _recipe_in(argv: Sequence[str]) -> str:
    """The recipe named on a `train` command line (for its --help), else the default one."""
    from .train.recipes import DEFAULT_RECIPE, list_recipes

    args = list(argv)
    if "train" in args:
        for token in args[args.index("train") + 1 :]:
            if token in list_recipes():
                return token
    return DEFAULT_RECIPE


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The parser of the `replearn` command; `argv` only picks which recipe's keys `train --help` lists."""
    from .malloc import MODES
    from .train.recipes import DEFAULT_RECIPE, list_recipes

    parser = argparse.ArgumentParser(prog="replearn", description="replearn: representation learning on a native core.")
    parser.add_argument("--version", action="version", version=f"replearn {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    recipes = list_recipes()
    train = commands.add_parser(
        "train",
        help="train a recipe (default: a CNN on the MNIST subset)",
        formatter_class=_Formatter,
        description="Train a registered recipe and print its test accuracy. Recipes:\n"
        + "\n".join(f"  {name:<12} {summary}" for name, summary in recipes.items()),
        epilog=_recipe_keys_text(_recipe_in(argv)),
    )
    train.add_argument("recipe", nargs="?", default=DEFAULT_RECIPE, metavar="RECIPE", help=f"one of {', '.join(recipes)} (default {DEFAULT_RECIPE})")
    train.add_argument("--set", dest="assignments", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help="override config keys (listed below)")
    train.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its checkpoint, with its config (--set applies on top)")
    train.add_argument("--output", metavar="DIR", help="run folder (default runs/<recipe>-<time>; the --resume folder when resuming)")
    train.add_argument("--nproc", type=int, default=1, metavar="N", help="processes for data-parallel training under torchrun (default 1)")
    train.add_argument("--malloc", choices=MODES, default=os.environ.get("REPLEARN_MALLOC", "reuse"),
                       help="reuse: keep freed memory in the process (faster large tensors); default: glibc's defaults "
                            "(default: reuse, or $REPLEARN_MALLOC)")  # fmt: skip
    train.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    train.set_defaults(run=_run_train)

    evaluate = commands.add_parser("eval", help="evaluate a run folder's checkpoint", description="Rebuild a run's model from its folder (config.json, checkpoint.safetensors) and print its metrics on a split.")
    evaluate.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by `replearn train`")
    evaluate.add_argument("--split", choices=("test", "val", "train"), default="test", help="split to evaluate (default test)")
    evaluate.set_defaults(run=_run_eval)

    listing = commands.add_parser("list", help="list recipes, models, ops and datasets", description="List what replearn has: recipes, models, ops, datasets.")
    listing.add_argument("kind", nargs="?", choices=LIST_KINDS + ("all",), default="all", help="what to list (default all)")
    listing.set_defaults(run=_run_list)

    bench = commands.add_parser(
        "bench", add_help=False, help="run the benchmarks against PyTorch (source checkout)",
        description="Run bench/run.py of a source checkout with ARGS (families, --quick, --malloc, --json, --filter, "
                    "--repeat); `replearn bench --help` shows its options.",
    )  # fmt: skip
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, metavar="ARGS")
    bench.set_defaults(run=_run_bench)
    return parser


# -------------------------------------------------------------------------------------------- train


def _launch_distributed(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Re-runs this `train` command under torchrun with `--nproc` processes and a fixed run folder."""
    rest, skip = [], False
    for token in argv:
        if skip:
            skip = False
            continue
        if token == "--nproc":
            skip = True
            continue
        if token.startswith("--nproc=") or token == "--output" or token.startswith("--output="):
            skip = token == "--output"
            continue
        rest.append(token)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
               "-m", "replearn", *rest, "--output", args.output]  # fmt: skip
    print(f"replearn train: {args.nproc} processes under torchrun, run folder {args.output}", flush=True)
    return subprocess.run(command).returncode


def _run_train(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .malloc import REUSE_TUNABLES, configure
    from .train import distributed
    from .train.config import with_overrides
    from .train.recipes import get_recipe, load_run_config, run_recipe

    if args.nproc < 1:
        raise ValueError(f"--nproc expected a positive integer but got {args.nproc}")
    malloc_text, in_force = configure(args.malloc)
    if not in_force and args.malloc == "reuse" and args.process_entry and "REPLEARN_MALLOC_REEXEC" not in os.environ:
        # mallopt refused: set the tunables the only other way, before a fresh interpreter starts.
        tunables = ":".join(t for t in (os.environ.get("GLIBC_TUNABLES"), REUSE_TUNABLES) if t)
        environment = {**os.environ, "GLIBC_TUNABLES": tunables, "REPLEARN_MALLOC_REEXEC": "1"}
        os.execve(sys.executable, [sys.executable, "-m", "replearn", *argv], environment)
    if args.resume:
        config = load_run_config(args.resume)
        if args.recipe != config.name and "train" in argv and args.recipe in argv:
            raise ValueError(f"--resume {args.resume} is a run of recipe {config.name!r}, not {args.recipe!r}")
    else:
        config = get_recipe(args.recipe)()
    config = with_overrides(config, args.assignments)
    output = args.output or args.resume or os.path.join("runs", f"{config.name}-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    config = dataclasses.replace(config, output_dir=output, progress=args.progress and config.progress)
    args.output = output
    if args.nproc > 1:
        return _launch_distributed(args, argv)

    main_process = int(os.environ.get("RANK", "0")) == 0
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if main_process:
        dataset = getattr(config, "resolved_dataset", lambda: None)()
        length = f"{config.max_steps} steps" if config.max_steps else f"{config.epochs} epochs"
        print(f"replearn train {config.name}: {length}, batch {config.batch_size}, seed {config.seed}"
              + (f", dataset {dataset}" if dataset else "") + (f", {world} processes" if world > 1 else "")
              + f", run folder {output}" + (" (resuming)" if args.resume else ""), flush=True)  # fmt: skip
    try:
        run = run_recipe(config, resume=args.resume, extra_summary={"malloc": malloc_text})
    finally:
        distributed.shutdown()
    if main_process:
        accuracy = run.test_metrics.get("accuracy")
        if accuracy is not None:
            correct = round(accuracy * run.test_size)
            print(f"test accuracy: {accuracy:.4f} ({correct}/{run.test_size})  test loss {run.test_metrics['loss']:.4f}")
        else:
            print("test: " + ", ".join(f"{k} {v:.4f}" for k, v in run.test_metrics.items()))
        print(f"summary: {run.trainer.summary()}; malloc {malloc_text}; run folder {output}")
    return 0


# ------------------------------------------------------------------------------------- eval, list, bench


def _run_eval(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .train.recipes import evaluate_run

    config, metrics, count = evaluate_run(args.run_dir, args.split)
    text = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
    print(f"replearn eval {args.run_dir} ({config.name}), {args.split} split of {count}: {text}")
    if "accuracy" in metrics:
        print(f"{args.split} accuracy: {metrics['accuracy']:.4f} ({round(metrics['accuracy'] * count)}/{count})")
    return 0


def _list(kind: str) -> list[tuple[str, str]]:
    if kind == "recipes":
        from .train.recipes import list_recipes

        return list(list_recipes().items())
    if kind == "ops":
        from . import ops

        return [(name, "") for name in ops.list_ops()]
    if kind == "datasets":
        from .data import list_datasets

        return list(list_datasets().items())
    try:  # the model zoo (replearn.models) is another issue; until it lands, the recipes' models
        from . import models  # type: ignore[attr-defined]

        return [(name, "") for name in models.list()]
    except ImportError:
        return [("small_cnn", "replearn.train.recipes.small_cnn: conv-BN-ReLU x3, the mnist-cnn recipe's model"),
                ("MLP", "replearn.nn.MLP: Linear-Norm-ReLU blocks, the digits-mlp recipe's model")]  # fmt: skip


def _run_list(args: argparse.Namespace, argv: Sequence[str]) -> int:
    kinds = LIST_KINDS if args.kind == "all" else (args.kind,)
    for kind in kinds:
        print(f"{kind}:")
        for name, text in _list(kind):
            print(f"  {name:<16} {text}".rstrip())
    return 0


def find_bench_script() -> Path | None:
    """bench/run.py of the source checkout replearn runs from (or of the current folder), if any.

    The benchmarks are not part of the installed package: they compare against torch on the
    machine at hand and live with the sources.
    """
    here = Path(__file__).resolve().parent  # python/replearn in a checkout, site-packages/replearn when installed
    for root in (here.parent.parent, Path.cwd()):
        candidate = root / "bench" / "run.py"
        if candidate.is_file():
            return candidate
    return None


def _run_bench(args: argparse.Namespace, argv: Sequence[str]) -> int:
    bench_args = args.bench_args[1:] if args.bench_args[:1] == ["--"] else args.bench_args
    script = find_bench_script()
    if script is None:
        raise ValueError("the benchmarks live in the source checkout's bench/ folder, which an installed replearn does not "
                         "carry; run `replearn bench` from the repository root (or python bench/run.py there)")  # fmt: skip
    if any(a in ("-h", "--help") for a in bench_args):
        print("usage: replearn bench [ARGS ...]  (runs bench/run.py; its options follow)\n", flush=True)
    return subprocess.run([sys.executable, str(script), *bench_args]).returncode


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the `replearn` command with `argv` (default: the process's arguments).

    Returns:
        The exit status: 0 on success, 2 on bad arguments or values (argparse exits with 2 itself).
    """
    process_entry = argv is None  # the process's own command line: re-executing it is allowed
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # everything after `bench` is bench/run.py's, --help included
        argv = ["bench", "--", *argv[1:]]
    args = build_parser(argv).parse_args(argv)
    args.process_entry = process_entry
    try:
        return args.run(args, argv)
    except (ValueError, ImportError, FileNotFoundError) as error:  # a bad key, value, folder or missing extra
        print(f"replearn {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
