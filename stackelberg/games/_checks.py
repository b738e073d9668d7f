"""Input checks shared by the games on labelled data in ``[0, 1]``."""

from __future__ import annotations

import torch
from torch import Tensor


def check_unit_interval(x: Tensor, name: str) -> None:
    """``x`` must be a floating-point tensor with every entry in ``[0, 1]``."""
    if not x.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {x.dtype}")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError(f"{name} must lie in [0, 1]")


def check_labels(labels: Tensor, num_classes: int, name: str) -> None:
    """``labels`` must be a 1-d int64 tensor with values in ``[0, num_classes − 1]``."""
    if labels.dtype != torch.int64 or labels.ndim != 1:
        raise TypeError(
            f"{name} must be a 1-d int64 tensor, got {labels.dtype} {tuple(labels.shape)}"
        )
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{name} must lie in [0, {num_classes - 1}], got values in "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )
