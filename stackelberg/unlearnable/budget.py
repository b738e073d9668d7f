"""The ε budget, the product's promise, checked in one place.

Every published image must satisfy ``‖x̃ − x‖∞ ≤ ⌊255·ε⌋`` intensity levels, measured on the
exact 8-bit source pixels. This module is what every writer (``poison``, ``protect``, the
exports and the API) calls at the last step before a byte is written:

- ε is validated once, by ``stackelberg.checks.check_epsilon(..., whole_level=True)``: a
  real number (not a bool, not a string) in ``(0, 1]`` and at least one intensity level
  (``ε ≥ 1/255``), since a smaller budget cannot change an 8-bit pixel and would silently
  publish the images unprotected (``budget.check_epsilon``, the 0.1 name, warns);
- ``enforce_budget`` turns a float poison into uint8 (rounded to the nearest level, the
  change clipped to the budget), refuses non-finite values (a broken generator would
  otherwise publish black images), measures ‖δ‖∞ against the source pixels and raises
  ``BudgetError`` if it exceeds the budget. A violation is an error, never a number in
  a report.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor

from stackelberg.checks import LEVELS, check_epsilon

__all__ = [
    "LEVELS",
    "BudgetError",
    "budget_levels",
    "enforce_budget",
    "measured_levels",
]


class BudgetError(ValueError):
    """A perturbation that is not finite or exceeds the ε budget; nothing was written."""


def budget_levels(epsilon: float) -> int:
    """``⌊255·ε⌋``: the largest change of an 8-bit pixel the budget allows."""
    return math.floor(LEVELS * check_epsilon(epsilon, whole_level=True) + 1e-6)


def measured_levels(poisoned: Tensor, clean: Tensor) -> int:
    """``max |x̃ − x|`` in intensity levels between two uint8 tensors of one shape."""
    if poisoned.dtype != torch.uint8 or clean.dtype != torch.uint8:
        raise TypeError(f"need uint8 images, got {poisoned.dtype} and {clean.dtype}")
    if poisoned.shape != clean.shape:
        raise ValueError(f"shapes differ: {tuple(poisoned.shape)} and {tuple(clean.shape)}")
    if poisoned.numel() == 0:
        return 0
    return int((poisoned.int() - clean.to(poisoned.device).int()).abs().amax())


def enforce_budget(
    clean: Tensor, poisoned: Tensor, epsilon: float, *, source: str | None = None
) -> Tensor:
    """The poisoned images as uint8, within the budget, or an error.

    ``clean`` is the exact uint8 source; ``poisoned`` is float in ``[0, 1]`` or uint8. A float
    poisoned pixel is rounded to the nearest level and its change from the source clipped to
    ``⌊255·ε⌋`` levels; a uint8 one is taken as it is. Then the change is measured against
    ``clean`` and compared with the budget.

    Raises:
        BudgetError: ``poisoned`` holds NaN or infinity (naming ``source``, the generator),
            or the measured change exceeds the budget.
    """
    levels = budget_levels(epsilon)
    if clean.dtype != torch.uint8:
        raise TypeError(f"clean images must be uint8, got {clean.dtype}")
    if clean.shape != poisoned.shape:
        raise ValueError(
            f"shapes differ: clean {tuple(clean.shape)}, poisoned {tuple(poisoned.shape)}"
        )
    origin = f" from {source}" if source else ""
    if poisoned.is_floating_point() and not bool(torch.isfinite(poisoned).all()):
        raise BudgetError(
            f"the perturbation{origin} is not finite (NaN or infinity): the generator is "
            "broken; nothing was written"
        )
    if poisoned.is_floating_point():
        base = clean.to(poisoned.device, torch.float32)
        rounded = torch.round(poisoned.float() * LEVELS).clamp(0, LEVELS)
        result = (base + (rounded - base).clamp(-levels, levels)).to(torch.uint8)
    elif poisoned.dtype == torch.uint8:
        result = poisoned  # already quantized: measured, never silently clipped
    else:
        raise TypeError(f"poisoned images must be float in [0, 1] or uint8, got {poisoned.dtype}")
    measured = measured_levels(result, clean)
    if measured > levels:
        raise BudgetError(
            f"the perturbation{origin} changes a pixel by {measured} levels, over the budget "
            f"of {levels} (ε = {epsilon:.6g}); nothing was written"
        )
    return result


def __getattr__(name: str) -> Any:
    if name == "check_epsilon":  # 0.1's name for the 8-bit check
        warnings.warn(
            "stackelberg.unlearnable.budget.check_epsilon is deprecated: use "
            "stackelberg.checks.check_epsilon(value, whole_level=True), the one validator",
            DeprecationWarning,
            stacklevel=2,
        )
        return _whole_level_epsilon
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _whole_level_epsilon(value: Any, *, name: str = "epsilon", source: str | None = None) -> float:
    return check_epsilon(value, name=name, source=source, whole_level=True)
