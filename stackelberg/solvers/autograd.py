"""Autograd and device guards the solvers share.

``gradients`` is ``torch.autograd.grad`` that returns zeros for inputs a loss does not depend
on; ``detached`` cuts a batch from the graph; ``preserved_buffers`` restores a game's buffers
(BatchNorm statistics) after an evaluation; ``host_read`` marks the one deliberate read of
device values per solver step, which the GPU check enforces.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from stackelberg.game import BilevelBatch, Game
from stackelberg.solvers.tree import TensorTuple

__all__ = ["detached", "gradients", "host_read", "preserved_buffers"]


def gradients(
    output: Tensor | Sequence[Tensor],
    inputs: Sequence[Tensor],
    grad_outputs: Sequence[Tensor] | None = None,
    *,
    create_graph: bool = False,
    retain_graph: bool | None = None,
) -> TensorTuple:
    """``torch.autograd.grad`` where an input the output does not depend on gets zeros.

    Also accepts outputs that do not require grad at all (for example a gradient that is
    constant in the inputs, whose own derivative is then zero).
    """
    outputs = [output] if isinstance(output, Tensor) else list(output)
    if grad_outputs is not None:
        pairs = [(o, g) for o, g in zip(outputs, grad_outputs, strict=True) if o.requires_grad]
        outputs = [o for o, _ in pairs]
        grad_outputs = [g for _, g in pairs]
    else:
        outputs = [o for o in outputs if o.requires_grad]
    if not outputs:
        return tuple(torch.zeros_like(x) for x in inputs)
    grads = torch.autograd.grad(
        outputs,
        list(inputs),
        grad_outputs=grad_outputs,
        create_graph=create_graph,
        retain_graph=retain_graph,
        allow_unused=True,
    )
    return tuple(
        torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs, strict=True)
    )


def detached(batch: Any) -> Any:
    """``batch`` with every tensor detached from the graph: tensors, tuples, lists, dicts and
    objects with a ``detach()`` method (such as a game's cached batch) are handled; anything
    else is returned as is."""
    if isinstance(batch, BilevelBatch):
        return BilevelBatch(detached(batch.leader), detached(batch.follower))
    if isinstance(batch, Tensor) or callable(getattr(batch, "detach", None)):
        return batch.detach()
    if isinstance(batch, tuple | list):
        return type(batch)(detached(b) for b in batch)
    if isinstance(batch, dict):
        return {k: detached(v) for k, v in batch.items()}
    return batch


@contextlib.contextmanager
def preserved_buffers(game: Game) -> Iterator[None]:
    """Restore every buffer of ``game`` (e.g. BatchNorm statistics) on exit."""
    saved = [(b, b.detach().clone()) for b in game.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, copy in saved:
                buffer.copy_(copy)


@contextlib.contextmanager
def host_read() -> Iterator[None]:
    """Mark a deliberate read of device values by the host (a synchronization on a GPU).

    A solver step reads the device only inside this context: once to check every loss and
    update direction of the step before applying it, once for its diagnostics. Under
    ``torch.cuda.set_sync_debug_mode("error")`` any other synchronization raises, which is how
    the GPU check proves that no inner loop waits on the device."""
    if not torch.cuda.is_available():
        yield
        return
    mode = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(0)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(mode)
