"""The attacker's payoffs of the unlearnable-example game (GUE, Liu et al. 2024).

For logits ``f = f_θ(x)`` over ``K`` classes and label ``y``:

- surrogate loss ``L_sur(x, y) = −max_{k≠y} CE(f, k) = min_{k≠y} f_k − logsumexp(f)``. It is
  bounded above by ``−log(K − 1)`` (reached when ``p_y = 0`` and the other classes are
  uniform), and ``CE(f, y) ≥ −log(1 − (K − 1)·exp(L_sur))``: raising ``L_sur`` forces the
  cross-entropy up while the attacker's gradient stays bounded.
- Carlini–Wagner margin ``m(x, y) = max_{j≠y} f_j − f_y``: ``x`` is misclassified exactly when
  ``m > 0`` (ties aside), so ``min(m, κ)`` is a smooth-almost-everywhere stand-in for the 0-1
  error.
- cross-entropy, and cross-entropy clipped at ``c`` (``min(CE, c)``): the paper's ablation, where
  maximizing the unbounded CE makes the attacker's gradient explode.

Every function returns one value per example; the game averages.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = [
    "ATTACKER_LOSSES",
    "attacker_loss",
    "clipped_cross_entropy",
    "cw_margin",
    "surrogate_loss",
]


def _others(logits: Tensor, y: Tensor, fill: float) -> Tensor:
    """``logits`` with the true class replaced by ``fill``."""
    return logits.scatter(1, y[:, None], fill)


def surrogate_loss(logits: Tensor, y: Tensor) -> Tensor:
    """``L_sur = −max_{k≠y} CE(f, k) = min_{k≠y} f_k − logsumexp(f)``, per example."""
    lowest_other = _others(logits, y, math.inf).amin(dim=1)
    return lowest_other - torch.logsumexp(logits, dim=1)


def cw_margin(logits: Tensor, y: Tensor) -> Tensor:
    """``m = max_{j≠y} f_j − f_y``, per example: positive exactly when misclassified."""
    highest_other = _others(logits, y, -math.inf).amax(dim=1)
    return highest_other - logits.gather(1, y[:, None]).squeeze(1)


def clipped_cross_entropy(logits: Tensor, y: Tensor, clip: float) -> Tensor:
    """``min(CE(f, y), clip)``, per example."""
    return F.cross_entropy(logits, y, reduction="none").clamp(max=clip)


ATTACKER_LOSSES = ("sur", "ce", "ce_clip", "cw")
#: The per-example cross-entropy level at which ``"ce_clip"`` clips by default.
DEFAULT_CE_CLIP = 10.0


def attacker_loss(
    name: str,
    logits: Tensor,
    y: Tensor,
    *,
    ce_clip: float = DEFAULT_CE_CLIP,
    cw_confidence: float = 0.0,
) -> Tensor:
    """``L_a`` per example, which the attacker (leader) maximizes on clean data.

    ``"sur"``: ``surrogate_loss``; ``"ce"``: cross-entropy; ``"ce_clip"``: cross-entropy
    clipped at ``ce_clip``; ``"cw"``: ``min(m, κ)`` with the margin ``cw_margin`` and
    ``κ = cw_confidence``.
    """
    if name == "sur":
        return surrogate_loss(logits, y)
    if name == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    if name == "ce_clip":
        return clipped_cross_entropy(logits, y, ce_clip)
    if name == "cw":
        return cw_margin(logits, y).clamp(max=cw_confidence)
    raise ValueError(f"attacker loss must be one of {', '.join(ATTACKER_LOSSES)}; got {name!r}")
