"""Hyperparameter selection: the ℓ2 regularization of multinomial logistic regression.

Pedregosa (ICML 2016, §4: HOAG on ℓ2-regularized logistic regression); the benchmark of SOBA
and SABA (Dagréou, Ablin, Vaiter & Moreau, NeurIPS 2022, §4.2) and of benchopt's bilevel
benchmark. The follower fits multinomial logistic regression ``logits = Wx + b`` on training
data with one ℓ2 strength per input feature, parametrized by its logarithm so that the leader
is unconstrained; the leader chooses the strengths that minimize the validation loss:

    h(w, θ) = (1/n) Σᵢ CE(Wxᵢ + b, yᵢ) + ½ Σⱼ e^{wⱼ} ‖W_{:,j}‖²          (follower)
    l(θ)    = (1/m) Σₖ CE(Wx'ₖ + b, y'ₖ)                                  (leader)

``w ∈ ℝᵈ`` (one strength per feature, ``per_feature=True``) or ``w ∈ ℝ`` (one for all); the
bias is not penalized. ``h`` is strictly convex in ``W`` for any ``w``, so ``θ*(w)`` is unique
and the implicit-function hypergradient is exact at the optimum: the tests check it against
finite differences of ``l(θ*(w))``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from stackelberg.game import Game, Variable
from stackelberg.models.small import LogisticRegression

__all__ = ["L2Regularization", "RegressionData", "split_for_hyperparameters"]


class L2Regularization(Game):
    """ℓ2 strength selection for multinomial logistic regression (see the module doc).

    Args:
        num_features: ``d``, the input dimension.
        num_classes: ``K``.
        per_feature: one log-strength per feature (default) or a single scalar.
        init: the starting log-strength of every feature (``e^{init}`` is the strength).

    Batches: ``(x, y)``, ``x`` of shape ``(N, d)``; the follower's from the training set,
    the leader's from the validation set (``sg.solve(..., leader_data=, follower_data=)``).
    """

    leader: Variable
    follower: LogisticRegression

    def __init__(
        self, num_features: int, num_classes: int, per_feature: bool = True, init: float = 0.0
    ) -> None:
        strengths = torch.full((num_features if per_feature else 1,), float(init))
        super().__init__(
            leader=Variable(strengths), follower=LogisticRegression(num_features, num_classes)
        )
        self.per_feature = per_feature

    def follower_loss(self, leader: Any, follower: Any, batch: Any) -> Tensor:
        x, y = _pair(batch, "follower")
        weight = follower.linear.weight  # (K, d)
        strength = torch.exp(leader())
        if self.per_feature:
            penalty = 0.5 * torch.sum(strength * weight.pow(2).sum(0))
        else:
            penalty = 0.5 * strength[0] * weight.pow(2).sum()
        return F.cross_entropy(follower(x), y) + penalty

    def leader_loss(self, leader: Any, follower: Any, batch: Any) -> Tensor:
        x, y = _pair(batch, "leader")
        return F.cross_entropy(follower(x), y)


def _pair(batch: object, role: str) -> tuple[Tensor, Tensor]:
    if not (isinstance(batch, tuple | list) and len(batch) == 2):
        kind = type(batch).__name__
        raise TypeError(
            f"L2Regularization's {role} batch is (x, y); got {kind}. Pass the training data as "
            "follower_data= and the validation data as leader_data="
        )
    return batch[0], batch[1]


@dataclass(frozen=True)
class RegressionData:
    """Standardized features and labels in three splits."""

    train: tuple[Tensor, Tensor]
    val: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]
    num_classes: int

    @property
    def num_features(self) -> int:
        return int(self.train[0].shape[1])

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> RegressionData:
        """The same data on ``device`` (features in ``dtype`` if given)."""

        def move(pair: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
            return pair[0].to(device, dtype), pair[1].to(device)

        return RegressionData(move(self.train), move(self.val), move(self.test), self.num_classes)

    def metrics(self, game: L2Regularization) -> dict[str, float]:
        """Validation and test loss and accuracy: ``sg.solve``'s ``evaluate=`` hook."""
        scores = {}
        with torch.no_grad():
            for name, (x, y) in (("val", self.val), ("test", self.test)):
                logits = game.follower(x)
                scores[f"{name}_loss"] = float(F.cross_entropy(logits, y))
                scores[f"{name}_accuracy"] = float((logits.argmax(1) == y).float().mean())
        return scores


def split_for_hyperparameters(
    features: Tensor,
    labels: Tensor,
    *,
    train_size: int,
    val_size: int,
    test: tuple[Tensor, Tensor] | None = None,
    seed: int = 0,
) -> RegressionData:
    """A seeded random split of ``features`` (``(N, …)``, flattened) into train and
    validation, and as test either ``test`` (a separate ``(features, labels)`` set, such as the
    dataset's own test split) or the rest of ``features``. Every split is standardized per
    feature with the training split's mean and standard deviation (a constant feature is only
    centred)."""
    n = features.shape[0]
    if min(train_size, val_size) < 1 or train_size + val_size > n - (test is None):
        raise ValueError(
            f"need train_size, val_size >= 1 summing to at most {n} (less one for a test "
            f"split from the rest); got {train_size}, {val_size}"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    x = features.flatten(1).to(torch.float32)
    train_idx, val_idx = order[:train_size], order[train_size : train_size + val_size]
    mean = x[train_idx].mean(0)
    std = x[train_idx].std(0)
    std = torch.where(std > 0, std, torch.ones_like(std))

    def standardized(values: Tensor) -> Tensor:
        return (values.flatten(1).to(torch.float32) - mean) / std

    rest = order[train_size + val_size :]
    test_x, test_y = (x[rest], labels[rest]) if test is None else test
    num_classes = int(max(labels.max(), test_y.max())) + 1
    return RegressionData(
        (standardized(x[train_idx]), labels[train_idx].clone()),
        (standardized(x[val_idx]), labels[val_idx].clone()),
        (standardized(test_x), test_y.clone()),
        num_classes,
    )
