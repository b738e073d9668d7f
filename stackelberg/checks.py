"""Input checks shared by every layer of the library: one of each.

Each returns the checked value (normalized: a budget as a float) or raises an error that names
the input and says what was expected, so that bad input never surfaces as a traceback from
deep inside torch. This module imports nothing of the library: solvers, models, games and the
unlearnable-example application all import it downward.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "LEVELS",
    "check_bool",
    "check_choice",
    "check_epsilon",
    "check_int",
    "check_known",
    "check_labels",
    "check_positive",
    "check_unit_interval",
]

#: Intensity levels of an 8-bit image: a budget below ``1/LEVELS`` changes no pixel.
LEVELS = 255


def check_int(name: str, value: Any, minimum: int) -> int:
    """``value`` if it is an integer ``>= minimum``; otherwise a clear error naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return value


def check_positive(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """``value`` as a float if it is positive (or zero where allowed) and finite."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} ({value!r})")
    value = float(value)
    ok = value >= 0 if allow_zero else value > 0
    if not ok or not math.isfinite(value):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is ``True`` or ``False`` (not ``1``, not ``"yes"``)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``; otherwise an error that lists them."""
    if value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {listed}; got {value!r}")
    return value


def check_epsilon(
    value: Any, *, name: str = "epsilon", source: str | None = None, whole_level: bool = False
) -> float:
    """``value`` as a float if it is a valid ℓ∞ budget for inputs in ``[0, 1]``, else an error
    that says why.

    Args:
        value: the budget as a fraction of the intensity range (8/255 ≈ 0.0314).
        name: how the error names it (``"epsilon"``, ``"--epsilon"``, ...).
        source: where it came from (a file), named in the error.
        whole_level: also require at least one 8-bit intensity level (``1/255``): a budget
            for images published as 8-bit pixels, where a smaller one changes nothing.

    Raises:
        TypeError: a bool, a string or anything but a real number.
        ValueError: not finite, outside ``(0, 1]``, or (``whole_level``) below one level.
    """
    where = f" (in {source})" if source else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} must be a real number in (0, 1], got {type(value).__name__} {value!r}{where}"
        )
    number = float(value)
    if not math.isfinite(number) or not 0.0 < number <= 1.0:
        raise ValueError(f"{name} must be in (0, 1] (images live in [0, 1]), got {value}{where}")
    if whole_level and number * LEVELS < 1 - 1e-6:
        raise ValueError(
            f"{name} = {number:.6g} is below one intensity level (1/255 ≈ 0.00392): no 8-bit "
            f"pixel could change, so nothing would be protected{where}"
        )
    return number


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


def check_known(
    owner: str,
    names: Iterable[str],
    accepted: Sequence[str],
    *,
    kind: str = "option",
    hints: Mapping[str, str] | None = None,
) -> None:
    """Refuse names that ``owner`` does not accept, in one line that lists what it does:
    ``"BOME got unknown option 'u1'; it accepts inner_steps, ... (u1: use eta ...)"``.
    ``hints`` points a name from other code to ours."""
    unknown = [name for name in names if name not in accepted]
    if not unknown:
        return
    hints = hints or {}
    pointers = "".join(f" ({name}: use {hints[name]})" for name in unknown if name in hints)
    raise TypeError(
        f"{owner} got unknown {kind}{'s' if len(unknown) > 1 else ''} "
        f"{', '.join(map(repr, unknown))}; it accepts {', '.join(accepted)}{pointers}"
    )
