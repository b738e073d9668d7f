"""The Game Unlearnable Example (GUE): a poison generator leads, a classifier follows."""

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
