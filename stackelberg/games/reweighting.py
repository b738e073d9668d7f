"""Learning class weights for class-imbalanced training data: a network follower, minibatches.

A training set is long-tailed (class ``c`` keeps ``n_max · ρ^{−c/(K−1)}`` samples for an
imbalance ratio ``ρ``, the protocol of Cao et al., NeurIPS 2019); a small validation set is
balanced. The leader holds one log-weight per class, turned into weights of mean 1 by a
softmax, ``ω(w) = K·softmax(w)``; the follower is a network trained with the weighted loss:

    h(w, θ) = (1/B) Σᵢ ω_{yᵢ}(w) · CE(f_θ(xᵢ), yᵢ) + r‖θ‖²        (follower, imbalanced data)
    l(θ)    = (1/B') Σⱼ CE(f_θ(x'ⱼ), y'ⱼ)                           (leader, balanced data)

This is the class-level form of learning to reweight examples (Ren, Zeng, Yang & Urtasun,
ICML 2018; Shu et al.'s Meta-Weight-Net, NeurIPS 2019, learns the same weights through a
network). Unlike hyper-cleaning, whose follower is convex and whose leader has one weight per
sample, here the follower is a network (non-convex: implicit solvers need damping), the leader
is small, and both losses are estimated on minibatches drawn from two streams. A known
reference point: under pure label shift the weights that make the weighted training risk the
balanced one are inversely proportional to the class counts, ``ω_c ∝ 1/n_c``
(``inverse_frequency_weights``); a learned ω should rank the classes the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stackelberg.data.batches import TensorBatches
from stackelberg.game import Game

__all__ = [
    "ClassReweighting",
    "ClassWeights",
    "ImbalancedData",
    "inverse_frequency_weights",
    "long_tailed_counts",
    "split_imbalanced",
]


class ClassWeights(nn.Module):
    """The leader: one log-weight per class; ``module()`` returns ``K·softmax(w)`` (mean 1)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        self.logits = nn.Parameter(torch.zeros(num_classes))

    def forward(self) -> Tensor:
        return self.logits.numel() * torch.softmax(self.logits, dim=0)


class ClassReweighting(Game):
    """Class weights for imbalanced data (see the module doc).

    Args:
        classifier: the follower, a network mapping a batch of inputs to logits.
        num_classes: ``K``.
        l2: ``r``, the follower's ℓ2 penalty on all its parameters.

    Batches: ``(x, y)`` for both players; the follower's from the imbalanced training set,
    the leader's from the balanced validation set.
    """

    leader: ClassWeights

    def __init__(self, classifier: nn.Module, num_classes: int, l2: float = 5e-4) -> None:
        super().__init__(leader=ClassWeights(num_classes), follower=classifier)
        if not l2 >= 0.0:
            raise ValueError(f"l2 must be >= 0, got {l2}")
        self.l2 = float(l2)

    def follower_loss(self, leader: Any, follower: Any, batch: Any) -> Tensor:
        x, y = _pair(batch, "follower", "the imbalanced training set")
        per_sample = F.cross_entropy(follower(x), y, reduction="none")
        penalty = sum(torch.sum(p * p) for p in follower.parameters())
        return torch.mean(leader()[y] * per_sample) + self.l2 * penalty

    def leader_loss(self, leader: Any, follower: Any, batch: Any) -> Tensor:
        x, y = _pair(batch, "leader", "the balanced validation set")
        return F.cross_entropy(follower(x), y)


def _pair(batch: object, role: str, source: str) -> tuple[Tensor, Tensor]:
    if not (isinstance(batch, tuple | list) and len(batch) == 2):
        raise TypeError(
            f"ClassReweighting's {role} batch is (x, y) from {source}; got "
            f"{type(batch).__name__}. Pass the training data as follower_data= and the "
            "validation data as leader_data="
        )
    return batch[0], batch[1]


def long_tailed_counts(largest: int, num_classes: int, imbalance: float) -> list[int]:
    """``⌊largest · imbalance^{−c/(K−1)}⌋`` samples for class ``c`` (at least 1): class 0 keeps
    ``largest``, the last class ``largest / imbalance``."""
    if largest < 1 or num_classes < 2 or imbalance < 1:
        raise ValueError(
            f"need largest >= 1, num_classes >= 2, imbalance >= 1; got {largest}, "
            f"{num_classes}, {imbalance}"
        )
    return [
        max(1, int(largest * imbalance ** (-c / (num_classes - 1)))) for c in range(num_classes)
    ]


def inverse_frequency_weights(counts: Tensor) -> Tensor:
    """``ω_c ∝ 1/n_c`` with mean 1: the label-shift correction that turns the weighted
    training risk into the balanced one."""
    inverse = 1.0 / counts.to(torch.float64)
    return (inverse / inverse.mean()).to(torch.float32)


@dataclass(frozen=True)
class ImbalancedData:
    """Inputs in ``[0, 1]`` standardized, ``(N, C, H, W)``: a long-tailed training set, a
    balanced validation set and the test set; ``counts[c]`` is class ``c``'s training size."""

    train: tuple[Tensor, Tensor]
    val: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]
    counts: Tensor
    num_classes: int

    def to(self, device: torch.device | str) -> ImbalancedData:
        """The same data on ``device``."""

        def move(pair: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
            return pair[0].to(device), pair[1].to(device)

        return ImbalancedData(
            move(self.train), move(self.val), move(self.test), self.counts, self.num_classes
        )

    def follower_batches(
        self, batch_size: int = 128, seed: int = 0, *, fixed_blocks: bool = False
    ) -> TensorBatches:
        """The imbalanced training set as the follower's minibatch stream (``fixed_blocks``:
        indexed blocks of a fixed partition, for ``SABA``)."""
        return TensorBatches(
            *self.train, batch_size=batch_size, seed=seed, fixed_blocks=fixed_blocks
        )

    def leader_batches(
        self, batch_size: int = 128, seed: int = 1, *, fixed_blocks: bool = False
    ) -> TensorBatches:
        """The balanced validation set as the leader's minibatch stream."""
        return TensorBatches(*self.val, batch_size=batch_size, seed=seed, fixed_blocks=fixed_blocks)

    def metrics(self, game: ClassReweighting) -> dict[str, float]:
        """Test accuracy, its mean over classes and over the rarer half of the classes, the
        validation loss, and the Spearman correlation of the learned class weights with the
        inverse class frequencies (1: the same ranking)."""
        with torch.no_grad():
            predicted = _predict(game.follower, self.test[0])
            correct = (predicted == self.test[1]).float()
            per_class = torch.stack(
                [correct[self.test[1] == c].mean() for c in range(self.num_classes)]
            )
            val_loss = F.cross_entropy(_logits(game.follower, self.val[0]), self.val[1])
            rare = torch.argsort(self.counts)[: self.num_classes // 2]
            return {
                "test_accuracy": float(correct.mean()),
                "balanced_accuracy": float(per_class.mean()),
                "rare_class_accuracy": float(per_class[rare].mean()),
                "val_loss": float(val_loss),
                "weight_rank_correlation": _spearman(game.leader(), 1.0 / self.counts.float()),
            }


def _logits(model: nn.Module, x: Tensor, chunk: int = 2048) -> Tensor:
    return torch.cat([model(x[i : i + chunk]) for i in range(0, x.shape[0], chunk)])


def _predict(model: nn.Module, x: Tensor) -> Tensor:
    return _logits(model, x).argmax(1)


def _ranks(values: Tensor) -> Tensor:
    """Ranks from 0, ties given the mean of their positions."""
    values = values.detach().cpu().to(torch.float64)
    order = torch.argsort(values)
    ranks = torch.empty_like(values)
    ranks[order] = torch.arange(len(values), dtype=torch.float64)
    for value in torch.unique(values):
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def _spearman(a: Tensor, b: Tensor) -> float:
    """Spearman's rank correlation; 0 when either side is constant (no ranking)."""
    ranks_a, ranks_b = _ranks(a), _ranks(b)
    ranks_a, ranks_b = ranks_a - ranks_a.mean(), ranks_b - ranks_b.mean()
    scale = float(ranks_a.norm() * ranks_b.norm())
    return float(ranks_a @ ranks_b) / scale if scale > 0 else 0.0


def split_imbalanced(
    images: Tensor,
    labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    *,
    largest: int,
    imbalance: float,
    val_per_class: int,
    seed: int = 0,
) -> ImbalancedData:
    """A long-tailed training set (``long_tailed_counts(largest, K, imbalance)`` per class, the
    classes in label order) and a balanced validation set of ``val_per_class`` per class, both
    drawn without overlap from ``images``; standardized with the training set's mean and
    standard deviation.

    Raises:
        ValueError: a class has fewer images than its training and validation shares need.
    """
    num_classes = int(max(labels.max(), test_labels.max())) + 1
    counts = long_tailed_counts(largest, num_classes, imbalance)
    generator = torch.Generator().manual_seed(seed)
    train_parts, val_parts = [], []
    for c, count in enumerate(counts):
        members = torch.nonzero(labels == c).squeeze(1)
        if len(members) < count + val_per_class:
            raise ValueError(
                f"class {c} has {len(members)} images; its training share {count} and "
                f"validation share {val_per_class} need {count + val_per_class}"
            )
        members = members[torch.randperm(len(members), generator=generator)]
        val_parts.append(members[:val_per_class])
        train_parts.append(members[val_per_class : val_per_class + count])
    train_idx, val_idx = torch.cat(train_parts), torch.cat(val_parts)
    scale = 255.0 if images.dtype == torch.uint8 else 1.0
    train_x = images[train_idx].to(torch.float32) / scale
    mean, std = train_x.mean(), train_x.std()

    def standardized(x: Tensor) -> Tensor:
        return (x.to(torch.float32) / scale - mean) / (std + 1e-4)

    return ImbalancedData(
        train=(standardized(images[train_idx]), labels[train_idx].clone()),
        val=(standardized(images[val_idx]), labels[val_idx].clone()),
        test=(standardized(test_images), test_labels.clone()),
        counts=torch.tensor(counts),
        num_classes=num_classes,
    )
