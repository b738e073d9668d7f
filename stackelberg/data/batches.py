"""Minibatches of in-memory tensors, reshuffled at every pass, for ``sg.solve``'s streams."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from stackelberg.game import Indexed

__all__ = ["TensorBatches"]


class TensorBatches:
    """An iterable of minibatches ``(t₁[idx], t₂[idx], …)`` over tensors of one length.

    Each pass (one epoch) draws a new permutation from its own generator, so two streams
    built with different seeds are independent and a run is reproducible. With
    ``with_index=True`` each batch also carries ``idx``, the positions of its samples, which is
    how a per-sample leader (one weight per training sample, as in hyper-cleaning) meets the
    minibatch. ``batch_size=None`` gives one full batch per pass, in order.

    With ``fixed_blocks=True`` the samples are partitioned into blocks once (a permutation
    drawn from ``seed``), every pass visits all blocks in a new random order, and each batch
    comes as ``Indexed(k, batch)``: the finite set of indexed minibatches that a
    variance-reduced solver (``SABA``) keeps one memory entry per.

    Raises:
        ValueError: no tensor, tensors of different lengths, or a batch size below 1.
    """

    def __init__(
        self,
        *tensors: Tensor,
        batch_size: int | None = None,
        with_index: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        fixed_blocks: bool = False,
    ) -> None:
        if not tensors:
            raise ValueError("TensorBatches needs at least one tensor")
        lengths = {int(t.shape[0]) for t in tensors}
        if len(lengths) != 1:
            raise ValueError(f"the tensors must have one length, got lengths {sorted(lengths)}")
        (self.size,) = lengths
        if batch_size is not None and (isinstance(batch_size, bool) or batch_size < 1):
            raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
        self.tensors = tensors
        self.batch_size = batch_size
        self.with_index = with_index
        self.drop_last = drop_last
        self.generator = torch.Generator().manual_seed(seed)
        self.fixed_blocks = fixed_blocks
        #: The partition, when the blocks are fixed: drawn once, before any pass (and only
        #: then, so that a stream without fixed blocks draws what it always drew).
        self._partition = (
            torch.randperm(self.size, generator=self.generator) if fixed_blocks else None
        )

    def __len__(self) -> int:
        if self.batch_size is None:
            return 1
        full, rest = divmod(self.size, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __iter__(self) -> Iterator[Any]:
        device = self.tensors[0].device
        if self.batch_size is None:
            index = torch.arange(self.size, device=device)
            whole = (*self.tensors, index) if self.with_index else tuple(self.tensors)
            yield Indexed(0, whole) if self.fixed_blocks else whole
            return
        if self._partition is not None:
            order, blocks = (
                self._partition.to(device),
                torch.randperm(len(self), generator=self.generator),
            )
        else:
            order = torch.randperm(self.size, generator=self.generator).to(device)
            blocks = torch.arange(len(self))
        for k in blocks.tolist():
            index = order[k * self.batch_size : (k + 1) * self.batch_size]
            part = tuple(t[index] for t in self.tensors)
            batch = (*part, index) if self.with_index else part
            yield Indexed(k, batch) if self.fixed_blocks else batch
