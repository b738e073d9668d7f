"""What every poisoning attack returns, and the checks and bookkeeping they share.

An attack maps clean uint8 images ``(N, C, H, W)`` and labels to perturbations ``δ`` with
``‖δ‖∞ ≤ ε``; ``finish_poison`` turns them into the uint8 images a victim trains on,
``round(255·clamp(x + δ, 0, 1))`` with the change clipped to ``⌊255ε⌋`` levels
(``quantize_poison``), and checks the budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from stackelberg.checks import check_epsilon
from stackelberg.unlearnable.export import quantize_poison
from stackelberg.unlearnable.game import apply_perturbation

__all__ = ["AttackOutput", "check_attack_inputs", "finish_poison"]


@dataclass
class AttackOutput:
    """``delta``: float32 perturbations on the CPU, the images' shape; ``info``: what the
    attack wants to report (rounds run, surrogate accuracies, ...)."""

    delta: Tensor
    info: dict[str, Any] = field(default_factory=dict)


def check_attack_inputs(images: Tensor, labels: Tensor, epsilon: float, num_classes: int) -> None:
    """Raise ``ValueError``/``TypeError`` naming the problem with an attack's inputs."""
    if images.dtype != torch.uint8:
        raise TypeError(f"attacks take uint8 images (the published pixels), got {images.dtype}")
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if labels.shape != (images.shape[0],):
        raise ValueError(
            f"labels must be ({images.shape[0]},) to match the images, got {tuple(labels.shape)}"
        )
    check_epsilon(epsilon, whole_level=True)
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got [{int(labels.min())}, {int(labels.max())}]"
        )


def finish_poison(images: Tensor, delta: Tensor, epsilon: float) -> Tensor:
    """The uint8 poisoned images for clean uint8 ``images`` and perturbations ``delta``.

    Raises ``ValueError`` if ``delta`` has the wrong shape, is not finite, or leaves the
    budget by more than rounding (``|δ| ≤ ε + 1e-6``)."""
    if delta.shape != images.shape:
        raise ValueError(
            f"perturbations {tuple(delta.shape)} do not match images {tuple(images.shape)}"
        )
    if not bool(torch.isfinite(delta).all()):
        raise ValueError("the attack produced non-finite perturbations")
    largest = float(delta.abs().max()) if delta.numel() else 0.0
    if largest > epsilon + 1e-6:
        raise ValueError(f"the attack left the budget: ‖δ‖∞ = {largest:.6f} > ε = {epsilon:.6f}")
    clean = images.float() / 255.0
    return quantize_poison(images, apply_perturbation(clean, delta.float().cpu()), epsilon)
