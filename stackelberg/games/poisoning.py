"""Data poisoning by injected points (Muñoz-González et al., AISec 2017).

The attacker adds ``m`` points ``D_c = {(x_c, y_c)}`` to the victim's training set ``D_tr``:
features free in ``[0, 1]``, labels fixed (flipped). It wants the trained victim to do badly on
its own validation data ``D_val``:

    max_{x_c ∈ [0,1]}  L(D_val, θ*)    s.t.   θ* ∈ argmin_θ L(D_tr ∪ D_c, θ) + (λ/2)‖θ‖²,   (1)

with ``L`` the mean cross-entropy (paper, eq. 1–2). As a ``Game`` the leader
holds the poisons (``PoisonPoints``) and minimizes ``−L(D_val, θ)``; the follower is the
victim. The paper solves (1) by back-gradient descent, i.e. this library's
``BackGradient`` with ``mode="reverse"`` and ``warm_start=False`` (each
outer step differentiates ``T`` training steps from one fixed initialization).

A random label-flip attack is the natural baseline: the same points before any optimization
(``label_flip_poisons``).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stackelberg.checks import check_labels, check_unit_interval
from stackelberg.game import Game

__all__ = [
    "PoisonPoints",
    "PoisoningGame",
    "error_rate",
    "fit_full_batch",
    "flip_labels",
    "label_flip_poisons",
]


def __getattr__(name: str) -> Any:
    """``train_victim``, this module's old name for ``fit_full_batch`` (it clashed with
    ``unlearnable.victim.train_victim``), still works and warns."""
    if name == "train_victim":
        warnings.warn(
            "stackelberg.games.poisoning.train_victim is deprecated; use fit_full_batch",
            DeprecationWarning,
            stacklevel=2,
        )
        return fit_full_batch
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class PoisonPoints(nn.Module):
    """The attacker's points: features (a parameter, kept in ``[0, 1]``) and fixed labels."""

    labels: Tensor

    def __init__(self, features: Tensor, labels: Tensor, num_classes: int) -> None:
        super().__init__()
        if features.shape[0] == 0:
            raise ValueError("the poison set is empty: give at least one poisoning point")
        if features.shape[0] != labels.shape[0]:
            raise ValueError(f"{features.shape[0]} poison features but {labels.shape[0]} labels")
        check_unit_interval(features, "poison features")
        check_labels(labels, num_classes, "poison labels")
        self.features = nn.Parameter(features.detach().clone())
        self.register_buffer("labels", labels.clone())

    def forward(self) -> Tensor:
        return self.features


class PoisoningGame(Game):
    """Problem (1): the leader's poisons against the follower ``victim``.

    Args:
        victim: the classifier (logits for ``num_classes`` classes).
        train: ``(x, y)``, the victim's clean training set.
        validation: ``(x, y)``, the attacker's validation set.
        poisons: ``(x, y)``, the initial poisoning points (features in ``[0, 1]``).
        num_classes: ``K``.
        weight_decay: ``λ``, the victim's ℓ2 penalty (makes the lower level well posed).
    """

    leader: PoisonPoints
    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor

    def __init__(
        self,
        victim: nn.Module,
        train: tuple[Tensor, Tensor],
        validation: tuple[Tensor, Tensor],
        poisons: tuple[Tensor, Tensor],
        num_classes: int,
        weight_decay: float = 1e-3,
    ) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        for name, (x, y) in (("train", train), ("validation", validation)):
            if x.shape[0] == 0 or x.shape[0] != y.shape[0]:
                raise ValueError(f"{name} needs as many labels as points, and at least one point")
            check_unit_interval(x, f"{name} features")
            check_labels(y, num_classes, f"{name} labels")
            if x.shape[1:] != poisons[0].shape[1:]:
                raise ValueError(
                    f"{name} points have shape {tuple(x.shape[1:])}, poisons "
                    f"{tuple(poisons[0].shape[1:])}"
                )
        super().__init__(PoisonPoints(*poisons, num_classes=num_classes), victim)
        self.register_buffer("train_x", train[0].clone())
        self.register_buffer("train_y", train[1].clone())
        self.register_buffer("val_x", validation[0].clone())
        self.register_buffer("val_y", validation[1].clone())
        self.num_classes = num_classes
        self.weight_decay = float(weight_decay)

    def follower_loss(self, leader: Any, follower: Any, batch: Any = None) -> Tensor:
        """``L(D_tr ∪ D_c, θ) + (λ/2)‖θ‖²``."""
        x = torch.cat([self.train_x, leader()])
        y = torch.cat([self.train_y, leader.labels])
        penalty = sum(torch.sum(p**2) for p in follower.parameters())
        return F.cross_entropy(follower(x), y) + 0.5 * self.weight_decay * penalty

    def leader_loss(self, leader: Any, follower: Any, batch: Any = None) -> Tensor:
        """``−L(D_val, θ)``: the attacker maximizes the validation loss."""
        return -F.cross_entropy(follower(self.val_x), self.val_y)

    def project(self) -> None:
        self.leader.features.clamp_(0.0, 1.0)


def flip_labels(
    labels: Tensor, num_classes: int, generator: torch.Generator | None = None
) -> Tensor:
    """``1 − y`` for two classes; otherwise a uniformly random other class."""
    if num_classes == 2:
        return 1 - labels
    shift = torch.randint(1, num_classes, labels.shape, generator=generator)
    return (labels + shift) % num_classes


def label_flip_poisons(
    x: Tensor, y: Tensor, count: int, num_classes: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """``count`` points drawn from ``(x, y)`` without replacement, with flipped labels."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if count > x.shape[0]:
        raise ValueError(f"cannot draw {count} poisons from {x.shape[0]} points")
    index = torch.randperm(x.shape[0], generator=generator)[:count]
    return x[index].clone(), flip_labels(y[index], num_classes, generator)


def fit_full_batch(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    steps: int = 500,
    lr: float = 0.5,
    weight_decay: float = 1e-3,
) -> nn.Module:
    """Full-batch gradient descent on ``CE + (λ/2)‖θ‖²`` from the model's current weights."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        penalty = sum(torch.sum(p**2) for p in model.parameters())
        loss = F.cross_entropy(model(x), y) + 0.5 * weight_decay * penalty
        loss.backward()
        optimizer.step()
    return model


@torch.no_grad()
def error_rate(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """The fraction of ``x`` that ``model`` misclassifies."""
    return float((model(x).argmax(dim=1) != y).float().mean())
