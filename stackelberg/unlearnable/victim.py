"""Victim evaluation: train a fresh classifier on (poisoned) data, report clean test accuracy.

The paper's protocol (GUE, Section 5; also EM, TAP, ...): SGD with momentum 0.9 and weight
decay 5e-4, learning rate 0.01 for 100 epochs, multiplied by 0.1 at epochs 75 and 90, random
32×32 crops of the 4-pixel zero-padded image and random horizontal flips. The schedule is a
``VictimSchedule``; shorter presets scale the milestones with the epochs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from stackelberg.unlearnable.architectures import build_classifier
from stackelberg.unlearnable.defenses import Defense
from stackelberg.utils import distributed

__all__ = [
    "PAPER_SCHEDULE",
    "VictimResult",
    "VictimSchedule",
    "accuracy",
    "augment",
    "train_fresh_victim",
    "train_victim",
]


@dataclass(frozen=True)
class VictimSchedule:
    """How a victim trains: SGD(lr, momentum, weight_decay), ``lr × gamma`` at each epoch in
    ``milestones``, mini-batches of ``batch_size``, crop-and-flip augmentation if ``augment``."""

    epochs: int = 100
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: tuple[int, ...] = (75, 90)
    gamma: float = 0.1
    batch_size: int = 128
    augment: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(
                f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}"
            )
        if self.lr <= 0 or self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ValueError("need lr > 0, weight_decay >= 0 and momentum in [0, 1)")

    @classmethod
    def scaled(cls, epochs: int, **changes: object) -> VictimSchedule:
        """The paper's schedule shortened to ``epochs`` (milestones at 75 % and 90 %)."""
        milestones = (round(0.75 * epochs), round(0.9 * epochs))
        return cls(epochs=epochs, milestones=milestones, **changes)  # type: ignore[arg-type]


PAPER_SCHEDULE = VictimSchedule()


@dataclass
class VictimResult:
    """Clean test accuracy after the epochs in ``tested_epochs`` (every epoch by default;
    ``test_accuracy[-1]`` is the final one) and the training accuracy on the (poisoned)
    training set per epoch."""

    test_accuracy: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    tested_epochs: list[int] = field(default_factory=list)
    #: Wall time of the training and its tests (``train_fresh_victim`` sets it).
    seconds: float = 0.0

    @property
    def final(self) -> float:
        return self.test_accuracy[-1]


def augment(x: Tensor, generator: torch.Generator, padding: int = 4) -> Tensor:
    """Random crops of the zero-padded images (one offset per image) and random horizontal
    flips, as in the standard CIFAR recipe."""
    n, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator).to(x.device)
    rows = offsets[0][:, None] + torch.arange(h, device=x.device)
    cols = offsets[1][:, None] + torch.arange(w, device=x.device)
    batch = torch.arange(n, device=x.device)[:, None, None]
    cropped = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    cropped = cropped.permute(0, 3, 1, 2)
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], cropped.flip(3), cropped)


def _as_float(images: Tensor) -> Tensor:
    return images.float() / 255.0 if images.dtype == torch.uint8 else images.float()


@torch.no_grad()
def accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 500) -> float:
    """The fraction of ``images`` (uint8 or float in [0, 1]) that ``model`` classifies right,
    in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(labels), batch_size):
        x = _as_float(images[i : i + batch_size]).to(device)
        correct += int((model(x).argmax(1) == labels[i : i + batch_size].to(device)).sum())
    model.train(was_training)
    return correct / max(len(labels), 1)


def train_victim(
    model: nn.Module,
    train_images: Tensor,
    train_labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    schedule: VictimSchedule = PAPER_SCHEDULE,
    *,
    seed: int = 0,
    defense: Defense | None = None,
    test_every_epoch: bool = True,
    progress: bool = True,
    description: str = "victim",
) -> VictimResult:
    """Train ``model`` from its current weights on ``(train_images, train_labels)`` with
    ``schedule`` and report the clean test accuracy after every epoch.

    Images are uint8 or float in ``[0, 1]``, ``(N, C, H, W)``, on any device (batches move to
    the model's device). A ``defense`` (``defenses``)
    first prepares the training and test sets (squeezing), then maps every augmented batch
    (Mixup, Cutout, CutMix, adversarial training; soft labels allowed). With
    ``test_every_epoch=False`` only the final model is tested (``result.tested_epochs``).

    Under ``torchrun`` the model is wrapped in ``DistributedDataParallel`` and every rank
    trains on its share of each global batch (see ``stackelberg.utils.distributed``).
    """
    if train_images.shape[0] != train_labels.shape[0] or train_images.dim() != 4:
        raise ValueError(
            f"train images {tuple(train_images.shape)} and labels {tuple(train_labels.shape)} "
            "do not match (need (N, C, H, W) and (N,))"
        )
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    if defense is not None:
        train_images = defense.prepare_train(train_images)
        test_images = defense.prepare_test(test_images)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=schedule.lr,
        momentum=schedule.momentum,
        weight_decay=schedule.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=list(schedule.milestones), gamma=schedule.gamma
    )
    result = VictimResult()
    n = train_labels.shape[0]
    parallel = distributed.world_size() > 1
    network: nn.Module = nn.parallel.DistributedDataParallel(model) if parallel else model
    epochs = tqdm(range(schedule.epochs), desc=description, disable=not progress, leave=False)
    for epoch in epochs:
        model.train()
        order = torch.randperm(n, generator=generator)
        correct = seen = 0
        for i in range(0, n, schedule.batch_size):
            index = distributed.shard(order[i : i + schedule.batch_size], drop_remainder=True)
            if len(index) == 0:
                continue
            x = _as_float(train_images[index]).to(device)
            y = train_labels[index].to(device)
            if schedule.augment:
                x = augment(x, generator)
            target: Tensor = y
            if defense is not None:
                x, target = defense.batch(model, x, y, generator)
            logits = network(x)
            loss = F.cross_entropy(logits, target)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"the victim's loss became {float(loss)}: lower its learning rate"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        scheduler.step()
        result.train_accuracy.append(correct / max(seen, 1))
        if test_every_epoch or epoch == schedule.epochs - 1:
            result.test_accuracy.append(accuracy(model, test_images, test_labels))
            result.tested_epochs.append(epoch + 1)
            epochs.set_postfix(test=f"{result.test_accuracy[-1]:.3f}")
    return result


def train_fresh_victim(
    architecture: str,
    num_classes: int,
    train_images: Tensor,
    train_labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    schedule: VictimSchedule = PAPER_SCHEDULE,
    *,
    init_seed: int,
    seed: int = 0,
    device: str | torch.device = "cpu",
    defense: Defense | None = None,
    test_every_epoch: bool = True,
    progress: bool = True,
    description: str = "victim",
) -> tuple[nn.Module, VictimResult]:
    """The one way the application trains a victim on a (poisoned) training set: a fresh
    ``architecture`` (``architectures.build_classifier``) whose weights are drawn after
    ``torch.manual_seed(init_seed)``, so victims with the same ``init_seed`` start alike, on
    ``device``, trained by ``train_victim`` (the other arguments are its). Used by
    ``stackelberg evaluate``, the example, the paper-game study and the comparison suite.

    Returns the trained model and its result, with ``result.seconds`` set.
    """
    torch.manual_seed(init_seed)
    model = build_classifier(architecture, int(train_images.shape[1]), num_classes).to(device)
    start = time.perf_counter()
    result = train_victim(
        model,
        train_images,
        train_labels,
        test_images,
        test_labels,
        schedule,
        seed=seed,
        defense=defense,
        test_every_epoch=test_every_epoch,
        progress=progress,
        description=description,
    )
    result.seconds = time.perf_counter() - start
    return model, result
