"""Data hyper-cleaning: learn which training labels to trust from a small clean set.

Franceschi, Donini, Frasconi & Pontil (ICML 2017, §5.1); the benchmark of the BOME paper (Liu
et al. 2022, §5.2) and of Shen & Chen's penalty method (ICML 2023, §6). A training set
``(xᵢ, ỹᵢ)``, i = 1…n, has a share of its labels replaced by random ones; a clean validation
set ``(x'ⱼ, y'ⱼ)`` is small. The leader holds one weight per training sample,
``w ∈ [0, 1]ⁿ``; the follower is a classifier ``f_θ`` trained on the weighted training set:

    h(w, θ) = (1/n) Σᵢ clip(wᵢ, 0, 1) · CE(f_θ(xᵢ), ỹᵢ) + r‖θ‖²        (follower)
    l(θ)    = (1/m) Σⱼ CE(f_θ(x'ⱼ), y'ⱼ)                                 (leader)

(BOME paper eq. 14, with the BOME code's ``r = 10⁻³``). ``l`` does not depend on ``w``
directly, only through the follower's response, so GDA cannot move ``w``: it is a genuinely
bilevel problem. A good leader drives the weights of the corrupted samples to 0; the cleaner
is scored by the precision, recall and F1 of ``w > 0.5`` against the samples whose label was
left intact (``cleaning_scores``), and the follower by its accuracy on clean test data.

The follower's batches are ``(x, y, index)``, ``index`` the positions of the samples in the
training set, so minibatches meet the per-sample weights (``TensorBatches(...,
with_index=True)``); the leader's batches are ``(x, y)`` from the validation set. Run it with
``sg.solve(game, solver, leader_data=..., follower_data=...)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stackelberg.data.batches import TensorBatches
from stackelberg.game import Game

__all__ = [
    "CleaningData",
    "HyperCleaning",
    "SampleWeights",
    "cleaning_scores",
    "corrupt_labels",
    "split_for_cleaning",
]


PARAMETRIZATIONS = ("clip", "sigmoid")


class SampleWeights(nn.Module):
    """The leader of hyper-cleaning: one weight per training sample in ``[0, 1]``.

    ``parametrization="clip"`` (the BOME code's): the parameter ``weights`` is the weights
    themselves, kept in ``[0, 1]`` by the game's projection. ``"sigmoid"`` (Shen & Chen's and
    BOAT's example's): the parameter ``logits`` is unconstrained and the weights are
    ``σ(logits)``; ``init`` is then the starting weight ``σ(logit)``, so 0.5 starts the logits
    at 0. ``module()`` returns all the weights, ``module(index)`` those of the samples at
    ``index``.
    """

    def __init__(self, num_samples: int, init: float = 0.5, parametrization: str = "clip") -> None:
        super().__init__()
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
        if parametrization not in PARAMETRIZATIONS:
            raise ValueError(
                f"parametrization must be one of {', '.join(PARAMETRIZATIONS)}; "
                f"got {parametrization!r}"
            )
        self.parametrization = parametrization
        if parametrization == "clip":
            if not 0.0 <= init <= 1.0:
                raise ValueError(f"init must be in [0, 1], got {init}")
            self.weights = nn.Parameter(torch.full((num_samples,), float(init)))
        else:
            if not 0.0 < init < 1.0:
                raise ValueError(f"init must be in (0, 1) for the sigmoid, got {init}")
            logit = math.log(init / (1.0 - init))
            self.logits = nn.Parameter(torch.full((num_samples,), logit))

    def forward(self, index: Tensor | None = None) -> Tensor:
        if self.parametrization == "clip":
            return self.weights if index is None else self.weights[index]
        logits = self.logits if index is None else self.logits[index]
        return torch.sigmoid(logits)


class HyperCleaning(Game):
    """Data hyper-cleaning (see the module doc): the leader weighs the training samples, the
    follower trains ``classifier`` on the weighted samples, the leader is judged on clean
    validation data.

    Args:
        classifier: the follower, a module mapping a batch of inputs to logits (for example
            ``LogisticRegression(784, 10)`` or ``MLP(784, 10, 300, "sigmoid")``).
        num_samples: ``n``, the size of the training set.
        l2: ``r``, the follower's ℓ2 penalty on all its parameters.
        init: every weight's starting value (the BOME code: 0.5).
        parametrization: ``"clip"`` (weights projected onto ``[0, 1]``, the BOME code) or
            ``"sigmoid"`` (weights ``σ(logits)``, unconstrained; BOAT's example, with
            ``l2=0``). See ``SampleWeights``.

    Batches: the follower's ``(x, y, index)``, the leader's ``(x, y)``.
    """

    leader: SampleWeights

    def __init__(
        self,
        classifier: nn.Module,
        num_samples: int,
        l2: float = 1e-3,
        init: float = 0.5,
        parametrization: str = "clip",
    ) -> None:
        leader = SampleWeights(num_samples, init, parametrization)
        super().__init__(leader=leader, follower=classifier)
        if not l2 >= 0.0:
            raise ValueError(f"l2 must be >= 0, got {l2}")
        self.l2 = float(l2)

    def follower_loss(self, leader: Any, follower: Any, batch: Any) -> Tensor:
        x, y, index = _follower_batch(batch)
        per_sample = F.cross_entropy(follower(x), y, reduction="none")
        weighted = torch.mean(torch.clamp(leader(index), 0.0, 1.0) * per_sample)
        penalty = sum(torch.sum(p * p) for p in follower.parameters())
        return weighted + self.l2 * penalty

    def leader_loss(self, leader: Any, follower: Any, batch: Any) -> Tensor:
        x, y = _leader_batch(batch)
        return F.cross_entropy(follower(x), y)

    def project(self) -> None:
        if self.leader.parametrization == "clip":
            self.leader.weights.clamp_(0.0, 1.0)


def _follower_batch(batch: object) -> tuple[Tensor, Tensor, Tensor]:
    if not (isinstance(batch, tuple | list) and len(batch) == 3):
        raise TypeError(
            "HyperCleaning's follower batch is (x, y, index), index the samples' positions in "
            f"the training set (TensorBatches(x, y, with_index=True)); got {_describe(batch)}. "
            "Pass the training data as follower_data= and the validation data as leader_data="
        )
    return batch[0], batch[1], batch[2]


def _leader_batch(batch: object) -> tuple[Tensor, Tensor]:
    if not (isinstance(batch, tuple | list) and len(batch) == 2):
        raise TypeError(
            "HyperCleaning's leader batch is (x, y) from the clean validation set; got "
            f"{_describe(batch)}. Pass it as leader_data= and the training data as follower_data="
        )
    return batch[0], batch[1]


def _describe(batch: object) -> str:
    if isinstance(batch, tuple | list):
        return f"a {type(batch).__name__} of {len(batch)}"
    return type(batch).__name__


def cleaning_scores(weights: Tensor, clean: Tensor, threshold: float = 0.5) -> dict[str, float]:
    """Precision, recall and F1 of the samples kept (``weights > threshold``) against the
    truly clean ones (``clean``, bool). A score whose denominator is empty is 0."""
    if weights.shape != clean.shape:
        raise ValueError(f"weights {tuple(weights.shape)} and clean {tuple(clean.shape)} differ")
    kept = weights.detach() > threshold
    clean = clean.to(torch.bool)
    true_positive = float((kept & clean).sum())
    precision = true_positive / max(float(kept.sum()), 1.0)
    recall = true_positive / max(float(clean.sum()), 1.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def corrupt_labels(
    labels: Tensor, noise_rate: float, num_classes: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """``(noisy labels, clean mask)``: ``⌊noise_rate·n⌋`` samples chosen at random get a label
    drawn uniformly from all ``num_classes`` (as in the BOME code, so about one in
    ``num_classes`` keeps its label by chance and counts as clean)."""
    if not 0.0 <= noise_rate <= 1.0:
        raise ValueError(f"noise_rate must be in [0, 1], got {noise_rate}")
    n = labels.shape[0]
    chosen = torch.randperm(n, generator=generator)[: int(n * noise_rate)]
    noisy = labels.clone()
    noisy[chosen] = torch.randint(num_classes, (len(chosen),), generator=generator)
    return noisy, noisy == labels


@dataclass(frozen=True)
class CleaningData:
    """A hyper-cleaning instance: flattened, standardized features and labels.

    ``train`` has the corrupted labels and ``clean`` marks the samples whose label is intact;
    ``val`` and ``test`` are clean.
    """

    train: tuple[Tensor, Tensor]
    val: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]
    clean: Tensor
    num_classes: int

    @property
    def num_features(self) -> int:
        return int(self.train[0].shape[1])

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> CleaningData:
        """The same data on ``device`` (features in ``dtype`` if given)."""

        def move(pair: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
            return pair[0].to(device, dtype), pair[1].to(device)

        return CleaningData(
            move(self.train),
            move(self.val),
            move(self.test),
            self.clean.to(device),
            self.num_classes,
        )

    def follower_batches(
        self, batch_size: int | None = None, seed: int = 0, *, fixed_blocks: bool = False
    ) -> TensorBatches:
        """The training set as the follower's stream ``(x, y, index)`` (full batch by
        default; ``fixed_blocks``: indexed blocks of a fixed partition, for ``SABA``)."""
        return TensorBatches(
            *self.train,
            batch_size=batch_size,
            with_index=True,
            seed=seed,
            fixed_blocks=fixed_blocks,
        )

    def leader_batches(
        self, batch_size: int | None = None, seed: int = 1, *, fixed_blocks: bool = False
    ) -> TensorBatches:
        """The validation set as the leader's stream ``(x, y)`` (full batch by default)."""
        return TensorBatches(*self.val, batch_size=batch_size, seed=seed, fixed_blocks=fixed_blocks)

    def metrics(self, game: HyperCleaning) -> dict[str, float]:
        """Test accuracy and loss of the follower, validation loss, and the cleaner's
        precision, recall and F1: ``sg.solve``'s ``evaluate=`` hook (use
        ``evaluate=data.metrics``)."""
        with torch.no_grad():
            logits = game.follower(self.test[0])
            val_loss = F.cross_entropy(game.follower(self.val[0]), self.val[1])
            scores = {
                "test_accuracy": float((logits.argmax(1) == self.test[1]).float().mean()),
                "test_loss": float(F.cross_entropy(logits, self.test[1])),
                "val_loss": float(val_loss),
            }
        return {**scores, **cleaning_scores(game.leader(), self.clean)}


def split_for_cleaning(
    images: Tensor,
    labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    *,
    train_size: int,
    val_size: int,
    noise_rate: float = 0.5,
    seed: int = 1,
) -> CleaningData:
    """The BOME code's protocol: a seeded permutation of ``images`` gives ``train_size``
    training samples then ``val_size`` validation samples; ``noise_rate`` of the training
    labels are corrupted (``corrupt_labels``); features are flattened and standardized with
    the training images' mean and standard deviation, ``(x − μ)/(σ + 10⁻⁴)``.

    With MNIST in its own order (``load_mnist``), ``train_size=50_000``, ``val_size=5_000`` and
    ``seed=1``, the split and the corrupted labels are the BOME script's, sample for sample
    (its ``get_data`` draws from the global generator seeded the same way). Shen & Chen's
    protocol is ``train_size=5_000, val_size=5_000``.
    """
    n = images.shape[0]
    if train_size < 1 or val_size < 1 or train_size + val_size > n:
        raise ValueError(
            f"train_size + val_size must be at most the {n} images, both >= 1; got "
            f"{train_size} + {val_size}"
        )
    if labels.shape != (n,) or test_labels.shape != (test_images.shape[0],):
        raise ValueError("labels must hold one class index per image")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator)
    train_idx, val_idx = order[:train_size], order[train_size : train_size + val_size]
    num_classes = int(max(labels.max(), test_labels.max())) + 1
    noisy, clean = corrupt_labels(labels[train_idx], noise_rate, num_classes, generator)
    scale = 255.0 if images.dtype == torch.uint8 else 1.0
    train_x = images[train_idx].to(torch.float32) / scale
    mean, std = train_x.mean(), train_x.std()

    def features(x: Tensor) -> Tensor:
        return torch.flatten((x.to(torch.float32) / scale - mean) / (std + 1e-4), start_dim=1)

    return CleaningData(
        train=(features(images[train_idx]), noisy),
        val=(features(images[val_idx]), labels[val_idx].clone()),
        test=(features(test_images), test_labels.clone()),
        clean=clean,
        num_classes=num_classes,
    )
