"""The Trainer's configuration, and the `key=value` parsing that every recipe's config shares.

    config = TrainConfig(epochs=10, batch_size=64, lr_schedule="cosine", grad_clip=1.0, seed=0)
    config = with_overrides(config, ["epochs=3", "grad_clip=none"])   # what `--set` does

Every field carries its help text and, where the values are a closed set, its choices in the field's
metadata, so `replearn train <recipe> --help` lists them and a bad value is an error that names the
key, what it expected and what came. Recipes subclass TrainConfig and add their own fields (model
width, dataset, optimizer), so one flat namespace of keys serves `--set`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Sequence

__all__ = ["TrainConfig", "config_field", "field_help", "parse_value", "with_overrides", "config_from_dict"]

LR_SCHEDULES = ("constant", "cosine", "linear")


def config_field(default: Any, help: str, choices: Sequence[Any] | None = None) -> Any:  # noqa: A002
    """A dataclass field with its help text (and closed set of values) in the metadata.

    Mutable defaults (lists, tuples of lists) are not needed here: tuples are immutable.
    """
    metadata = {"help": help}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass
class TrainConfig:
    """What the Trainer's loop depends on; equal configs and data give equal runs on the CPU."""

    epochs: int = config_field(10, "passes over the training data (ignored when max_steps is set)")
    max_steps: int | None = config_field(None, "optimizer steps in all; overrides epochs when set")
    batch_size: int = config_field(64, "samples per optimizer step, summed over processes and accumulation")
    grad_accumulation: int = config_field(1, "micro-batches per optimizer step (each batch_size/grad_accumulation)")
    drop_last: bool = config_field(False, "drop each epoch's final partial batch")
    lr_schedule: str = config_field("cosine", "learning-rate multiplier over the run", LR_SCHEDULES)
    warmup_steps: int = config_field(0, "steps of linear warm-up from 0 before the schedule")
    min_lr_ratio: float = config_field(0.0, "final learning rate as a share of the peak (cosine, linear)")
    grad_clip: float | None = config_field(None, "clip the global gradient norm to this (none: no clipping)")
    device: str = config_field("cpu", "cpu, cuda, cuda:N, or auto (cuda when available)")
    seed: int = config_field(0, "seeds the weights, shuffling, dropout and augmentation")
    num_threads: int | None = config_field(None, "CPU threads for torch (none: torch's default)")
    output_dir: str | None = config_field(None, "run folder: metrics.jsonl, checkpoint, curves (none: nothing written)")
    log_every: int = config_field(10, "steps between train-loss records in metrics.jsonl")
    eval_every: int | None = config_field(None, "steps between validations (none: once per epoch)")
    checkpoint_every: int | None = config_field(None, "steps between checkpoints (none: at every validation)")
    progress: bool = config_field(True, "show a progress bar on stderr")
    plots: bool = config_field(True, "save loss and metric curves as curves.png at the end (needs matplotlib)")

    def __post_init__(self) -> None:
        validate(self)


def _fail(config: Any, name: str, expected: str, got: Any) -> None:
    raise ValueError(f"{type(config).__name__}: '{name}' expected {expected} but got {got!r}")


def validate(config: Any) -> None:
    """Checks every field against its type and choices; raises ValueError naming the first bad one."""
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        kind, optional = _base_type(hints[field.name])
        if value is None:
            if not optional:
                _fail(config, field.name, f"a value of type {kind.__name__}", value)
            continue
        if kind is tuple:
            if not isinstance(value, (tuple, list)):
                _fail(config, field.name, "a sequence", value)
            setattr(config, field.name, tuple(value))
            continue
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
            setattr(config, field.name, value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            _fail(config, field.name, f"a value of type {kind.__name__}", value)
        choices = field.metadata.get("choices")
        if choices is not None and value not in choices:
            _fail(config, field.name, f"one of {', '.join(map(str, choices))}", value)
    positive = ("epochs", "batch_size", "grad_accumulation", "log_every")
    for name in positive + ("max_steps", "eval_every", "checkpoint_every", "num_threads"):
        value = getattr(config, name, None)
        if value is not None and value < 1:
            _fail(config, name, "a positive integer", value)
    if getattr(config, "warmup_steps", 0) < 0:
        _fail(config, "warmup_steps", "a non-negative integer", config.warmup_steps)
    if getattr(config, "grad_clip", None) is not None and config.grad_clip <= 0:
        _fail(config, "grad_clip", "a positive number or none", config.grad_clip)
    if not 0.0 <= getattr(config, "min_lr_ratio", 0.0) <= 1.0:
        _fail(config, "min_lr_ratio", "a value in [0, 1]", config.min_lr_ratio)


def _base_type(hint: Any) -> tuple[type, bool]:
    """(the concrete type, whether None is allowed) of a field's annotation: int | None -> (int, True)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        concrete = [a for a in args if a is not type(None)]
        return _base_type(concrete[0])[0], len(concrete) < len(args)
    if typing.get_origin(hint) is tuple or hint is tuple:
        return tuple, False
    return hint, False


def _element_type(hint: Any) -> type:
    """The element type of a tuple[X, ...] annotation (possibly optional)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    args = typing.get_args(hint)
    return args[0] if args else str


_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def parse_value(config_type: type, name: str, text: str) -> Any:
    """The value of field `name` of `config_type` written as `text`, as `--set name=text` gives it.

    `none` means None for optional fields; booleans read true/false/yes/no/on/off/1/0; tuples read
    comma-separated values ("128,64").

    Raises:
        ValueError: an unknown field (the message lists the known ones) or a value of the wrong type.
    """
    fields = {f.name: f for f in dataclasses.fields(config_type)}
    if name not in fields:
        raise ValueError(f"{config_type.__name__}: unknown key {name!r}; valid keys: {', '.join(sorted(fields))}")
    hint = typing.get_type_hints(config_type)[name]
    kind, optional = _base_type(hint)
    if optional and text.strip().lower() == "none":
        return None
    try:
        if kind is bool:
            lowered = text.strip().lower()
            if lowered not in _TRUE + _FALSE:
                raise ValueError
            return lowered in _TRUE
        if kind is tuple:
            element = _element_type(hint)
            return tuple(element(part) for part in text.split(",") if part.strip())
        return kind(text)
    except ValueError:
        expected = "true or false" if kind is bool else f"a value of type {kind.__name__}"
        if optional:
            expected += " or none"
        raise ValueError(f"{config_type.__name__}: '{name}' expected {expected} but got {text!r}") from None


def with_overrides(config: Any, assignments: Sequence[str]) -> Any:
    """A copy of `config` with each `key=value` of `assignments` applied (then validated).

    Raises:
        ValueError: an assignment without '=', an unknown key or a bad value; the message names it.
    """
    changes: dict[str, Any] = {}
    for assignment in assignments:
        name, sep, text = assignment.partition("=")
        if not sep:
            raise ValueError(f"--set expects key=value but got {assignment!r}")
        changes[name.strip()] = parse_value(type(config), name.strip(), text.strip())
    return dataclasses.replace(config, **changes)


def config_from_dict(config_type: type, values: dict[str, Any]) -> Any:
    """A config of `config_type` from `dataclasses.asdict` output (as stored in checkpoints and run folders).

    Keys the type does not know are ignored, so a run folder written by an older version still loads.
    """
    known = {f.name for f in dataclasses.fields(config_type)}
    return config_type(**{k: v for k, v in values.items() if k in known})


def field_help(config_type: type) -> list[tuple[str, str, str]]:
    """(key, default, help) for each field, for `--help` listings."""
    rows = []
    instance_defaults = {f.name: f.default for f in dataclasses.fields(config_type)}
    for field in dataclasses.fields(config_type):
        default = instance_defaults[field.name]
        default_text = ",".join(map(str, default)) if isinstance(default, tuple) else str(default).lower() if default is None or isinstance(default, bool) else str(default)
        text = field.metadata.get("help", "")
        if "choices" in field.metadata:
            text += f" [{'|'.join(map(str, field.metadata['choices']))}]"
        rows.append((field.name, default_text, text))
    return rows
