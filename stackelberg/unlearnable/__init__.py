"""The Game Unlearnable Example (GUE): a poison generator leads, a classifier follows.

Its names load on first use, so ``stackelberg.unlearnable.cli`` can parse a command line
without torch."""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stackelberg.unlearnable.game import (
        VARIANTS,
        PoisonedBatch,
        UnlearnableGame,
        apply_perturbation,
    )
    from stackelberg.unlearnable.losses import (
        ATTACKER_LOSSES,
        attacker_loss,
        clipped_cross_entropy,
        cw_margin,
        surrogate_loss,
    )

_LAZY = {
    **{
        name: "stackelberg.unlearnable.game"
        for name in ("VARIANTS", "PoisonedBatch", "UnlearnableGame", "apply_perturbation")
    },
    **{
        name: "stackelberg.unlearnable.losses"
        for name in (
            "ATTACKER_LOSSES",
            "attacker_loss",
            "clipped_cross_entropy",
            "cw_margin",
            "surrogate_loss",
        )
    },
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'stackelberg.unlearnable' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


__all__ = [
    "ATTACKER_LOSSES",
    "VARIANTS",
    "PoisonedBatch",
    "UnlearnableGame",
    "apply_perturbation",
    "attacker_loss",
    "clipped_cross_entropy",
    "cw_margin",
    "surrogate_loss",
]
