"""Truncated backpropagation through time (course notes §6.1.1).

A long sequence is cut into chunks of k steps; the recurrent state flows forward across chunks
(detached, so gradients stop at the chunk boundary) while each chunk is backpropagated on its own.
With whole-sequence native layers this is nothing but carrying states between calls.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import torch

__all__ = ["truncated_bptt", "detach_state"]


def detach_state(state: Any) -> Any:
    """The same (nested tuple/list of) tensors with the autograd history cut."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state.detach()
    return type(state)(detach_state(s) for s in state)


def truncated_bptt(
    model: Callable[..., tuple[torch.Tensor, Any]],
    inputs: torch.Tensor,
    k: int,
    state: Any = None,
    *,
    batch_first: bool = False,
) -> Iterator[tuple[slice, torch.Tensor, Any]]:
    """Runs `model` over `inputs` in chunks of `k` steps, carrying the detached state between chunks.

    The caller computes a loss on each chunk's output and steps its optimizer inside the loop:

        for steps, output, state in truncated_bptt(lstm, x, k=32):
            loss = criterion(head(output), targets[steps])
            optimizer.zero_grad(); loss.backward(); optimizer.step()

    Args:
        model: called as `model(chunk, state) -> (output, new_state)`: replearn.nn.RNN/LSTM/GRU (and
            their torch counterparts) or any sequence model with that convention.
        inputs: the whole sequence, (T, B, ...) or (B, T, ...) when batch_first.
        k: steps per chunk (the truncation length); the last chunk may be shorter.
        state: initial state (None: the model's default, zeros).
        batch_first: whether time is dimension 1 of `inputs`.

    Yields:
        (steps, output, state): the time slice the chunk covers, the model's output on it, and its
        final state (still attached to the chunk's graph; the next chunk starts from a detached copy).
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"truncated_bptt: argument 'k' expected a positive int but got {k!r}")
    time_dim = 1 if batch_first else 0
    total = inputs.shape[time_dim]
    for start in range(0, total, k):
        steps = slice(start, min(start + k, total))
        chunk = inputs.narrow(time_dim, start, steps.stop - start)
        output, state = model(chunk, detach_state(state))
        yield steps, output, state
