"""Vector algebra on parameter tuples.

Parameters, gradients and the vectors of a linear solve travel as tuples of tensors, one per
trainable parameter in ``module.parameters()`` order; these helpers treat such a tuple as one
flat vector without copying it into one. The linear solvers and the solvers both import this
module, and it imports nothing of the library.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["TensorTuple", "tree_add", "tree_dot", "tree_norm", "tree_scale"]

#: A point or a direction in parameter space: one tensor per parameter.
TensorTuple = tuple[Tensor, ...]


def tree_dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    """``Σᵢ ⟨aᵢ, bᵢ⟩``: the inner product of two parameter tuples, as a 0-d tensor."""
    if not a:
        raise ValueError("cannot take the inner product of empty parameter tuples")
    return sum((torch.sum(x * y) for x, y in zip(a, b, strict=True)), start=a[0].new_zeros(()))


def tree_norm(a: Sequence[Tensor]) -> Tensor:
    """The Euclidean norm of a parameter tuple seen as one flat vector."""
    return torch.sqrt(tree_dot(a, a))


def tree_add(a: Sequence[Tensor], b: Sequence[Tensor], alpha: float | Tensor = 1.0) -> TensorTuple:
    """``a + alpha·b``, elementwise over the tuple."""
    return tuple(x + alpha * y for x, y in zip(a, b, strict=True))


def tree_scale(a: Sequence[Tensor], alpha: float | Tensor) -> TensorTuple:
    """``alpha·a``, elementwise over the tuple."""
    return tuple(alpha * x for x in a)
