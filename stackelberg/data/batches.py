"""Minibatches of in-memory tensors, reshuffled at every pass, for ``sg.solve``'s streams."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

__all__ = ["TensorBatches"]


class TensorBatches:
    """An iterable of minibatches ``(t₁[idx], t₂[idx], …)`` over tensors of one length.

    Each pass (one epoch) draws a new permutation from its own generator, so two streams
    built with different seeds are independent and a run is reproducible. With
    ``with_index=True`` each batch also carries ``idx``, the positions of its samples, which is
    how a per-sample leader (one weight per training sample, as in hyper-cleaning) meets the
    minibatch. ``batch_size=None`` gives one full batch per pass, in order.

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

    def __len__(self) -> int:
        if self.batch_size is None:
            return 1
        full, rest = divmod(self.size, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        device = self.tensors[0].device
        if self.batch_size is None:
            index = torch.arange(self.size, device=device)
            yield (*self.tensors, index) if self.with_index else tuple(self.tensors)
            return
        order = torch.randperm(self.size, generator=self.generator).to(device)
        for k in range(len(self)):
            index = order[k * self.batch_size : (k + 1) * self.batch_size]
            part = tuple(t[index] for t in self.tensors)
            yield (*part, index) if self.with_index else part
