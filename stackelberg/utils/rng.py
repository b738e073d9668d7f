"""Seeded library functions without side effects on the caller's random state."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import torch

__all__ = ["keeps_global_rng"]

P = ParamSpec("P")
R = TypeVar("R")


def keeps_global_rng(function: Callable[P, R]) -> Callable[P, R]:
    """Decorate a function that seeds torch's global generator for its own reproducibility
    (model initialization, data order, augmentations): the caller's random state, on the CPU
    and on every CUDA device, is restored when it returns or raises, so calling it changes
    nothing the caller draws afterwards (``torch.random.fork_rng``)."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            return function(*args, **kwargs)

    return wrapper
