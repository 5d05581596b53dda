"""Checkpoints as safetensors files: any nested state (model, optimizer, scheduler, RNGs, step, config).

    save_checkpoint("run/checkpoint.safetensors", {"model": model.state_dict(), "step": 120, ...})
    state = load_checkpoint("run/checkpoint.safetensors")

safetensors stores a flat map of named tensors plus string metadata, and nothing executable (unlike
pickle, loading a checkpoint cannot run code). A training state is a tree — an optimizer's
state_dict nests dicts keyed by integers, lists of parameter groups, tuples of betas — so the tree
is split in two: every tensor (and numpy array) is stored under its path ("optimizer/state/0/exp_avg")
and the rest of the tree is JSON in the metadata, with each tensor replaced by a reference to its
name. Integer-keyed dicts and tuples are tagged so they come back as they went in.

Writes are atomic: the file is written beside its destination under a temporary name, flushed to
disk, and renamed over the destination (`os.replace` is atomic on POSIX), so a crash while saving
leaves the previous checkpoint intact, never a truncated one.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["atomic_write_bytes", "capture_rng_state", "load_checkpoint", "restore_rng_state", "save_checkpoint"]

FORMAT = "replearn-checkpoint-1"


def _missing_safetensors() -> ImportError:
    return ImportError("checkpoints need the 'safetensors' package: pip install safetensors (or 'replearn[train]')")


def _flatten(node: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(node, torch.Tensor):
        tensors[path] = node
        return {"__tensor__": path}
    if isinstance(node, np.ndarray):
        tensors[path] = torch.from_numpy(np.ascontiguousarray(node))
        return {"__ndarray__": path}
    if isinstance(node, dict):
        if all(isinstance(k, str) for k in node):
            return {"__dict__": {k: _flatten(v, f"{path}/{k}", tensors) for k, v in node.items()}}
        return {"__items__": [[k, _flatten(v, f"{path}/{k}", tensors)] for k, v in node.items()]}
    if isinstance(node, tuple):
        return {"__tuple__": [_flatten(v, f"{path}/{i}", tensors) for i, v in enumerate(node)]}
    if isinstance(node, list):
        return [_flatten(v, f"{path}/{i}", tensors) for i, v in enumerate(node)]
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    if isinstance(node, (np.integer, np.floating)):
        return node.item()
    raise TypeError(f"save_checkpoint: cannot store a value of type {type(node).__name__} at {path!r}")


def _unflatten(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(node, list):
        return [_unflatten(v, tensors) for v in node]
    if not isinstance(node, dict):
        return node
    if "__tensor__" in node:
        return tensors[node["__tensor__"]]
    if "__ndarray__" in node:
        return tensors[node["__ndarray__"]].numpy()
    if "__dict__" in node:
        return {k: _unflatten(v, tensors) for k, v in node["__dict__"].items()}
    if "__items__" in node:
        return {k: _unflatten(v, tensors) for k, v in node["__items__"]}
    if "__tuple__" in node:
        return tuple(_unflatten(v, tensors) for v in node["__tuple__"])
    raise ValueError(f"load_checkpoint: unknown node {sorted(node)}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to `path` so that a reader sees either the old file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Saves a nested state (dicts, lists, tuples, tensors, numpy arrays, JSON scalars) atomically.

    Tensors are copied to the CPU; tensors sharing memory (tied weights) are stored once each.
    """
    try:
        from safetensors.torch import save
    except ImportError:
        raise _missing_safetensors() from None
    tensors: dict[str, torch.Tensor] = {}
    tree = _flatten(state, "", tensors)
    stored: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for name, tensor in tensors.items():
        tensor = tensor.detach().to("cpu").contiguous()
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if key in seen or tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
            tensor = tensor.clone()  # safetensors refuses tensors that share or view a larger storage
        seen.add(key)
        stored[name] = tensor
    metadata = {"format": FORMAT, "tree": json.dumps(tree)}
    atomic_write_bytes(path, save(stored, metadata=metadata))


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Loads what `save_checkpoint` saved, with tensors on `device`.

    Raises:
        FileNotFoundError: no file at `path`.
        ValueError: the file is not a replearn checkpoint.
    """
    try:
        from safetensors import safe_open
    except ImportError:
        raise _missing_safetensors() from None
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_checkpoint: no checkpoint at {path}")
    with safe_open(str(path), framework="pt", device=str(device)) as file:
        metadata = file.metadata() or {}
        if metadata.get("format") != FORMAT:
            raise ValueError(f"load_checkpoint: {path} is not a replearn checkpoint (format {metadata.get('format')!r})")
        tensors = {name: file.get_tensor(name) for name in file.keys()}
    return _unflatten(json.loads(metadata["tree"]), tensors)


def capture_rng_state() -> dict[str, Any]:
    """The state of every random generator a training step may draw from: Python, numpy, torch (CPU, CUDA)."""
    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), position, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restores what `capture_rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
