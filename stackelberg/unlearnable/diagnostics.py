"""Diagnostics of a poison: how learnable the perturbations are on their own, and how the
attacker's loss shapes the generator's training signal.

- ``noise_only_accuracy``: train a classifier on the perturbations alone (``δ`` mapped to
  ``[0, 1]`` by ``(δ/ε + 1)/2``) and test it on held-out perturbations. A poison that acts as a
  shortcut is easy to learn from its noise alone (Yu et al. 2022, Section 4).
- ``linear_separability``: the train and held-out accuracy of multinomial logistic
  regression on the flattened ``δ/ε`` (Yu et al. 2022, Table 1: effective poisons are almost
  linearly separable).
- ``attacker_loss_ablation``: the GUE paper's Figure 5: for the attacker losses ``L_sur``,
  CE and clipped CE, the norm of the generator's (back-)gradient and the follower's loss on the
  poisoned batch, per batch, from the same start.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from stackelberg.checks import check_epsilon
from stackelberg.data.folders import ImageDataset
from stackelberg.solvers import BackGradient
from stackelberg.unlearnable.game import UnlearnableGame
from stackelberg.unlearnable.victim import VictimSchedule, train_victim
from stackelberg.utils.rng import keeps_global_rng

__all__ = ["attacker_loss_ablation", "linear_separability", "noise_only_accuracy"]


def _split(n: int, test_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = max(1, round(test_fraction * n))
    return order[n_test:], order[:n_test]


def _check(delta: Tensor, labels: Tensor, epsilon: float) -> None:
    if delta.dim() != 4 or labels.shape != (delta.shape[0],):
        raise ValueError(
            f"need perturbations (N, C, H, W) and labels (N,); got {tuple(delta.shape)}, "
            f"{tuple(labels.shape)}"
        )
    check_epsilon(epsilon)


@keeps_global_rng
def noise_only_accuracy(
    delta: Tensor,
    labels: Tensor,
    epsilon: float,
    model_factory: Callable[[], nn.Module],
    *,
    schedule: VictimSchedule | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> float:
    """Held-out accuracy of a classifier trained on the perturbations alone (no
    augmentation: cropping would move the noise off its pixels)."""
    _check(delta, labels, epsilon)
    train, test = _split(len(labels), test_fraction, seed)
    noise = ((delta.float() / epsilon + 1) / 2).clamp(0, 1)
    torch.manual_seed(seed)
    schedule = schedule or VictimSchedule.scaled(5, lr=0.05, augment=False)
    result = train_victim(
        model_factory(),
        noise[train],
        labels[train],
        noise[test],
        labels[test],
        schedule,
        seed=seed,
        test_every_epoch=False,
        progress=False,
    )
    return result.final


@keeps_global_rng
def linear_separability(
    delta: Tensor,
    labels: Tensor,
    epsilon: float,
    num_classes: int,
    *,
    steps: int = 300,
    lr: float = 0.01,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> dict[str, float]:
    """Fit ``softmax(W·vec(δ/ε) + b)`` by full-batch Adam for ``steps`` steps; returns its
    ``train_accuracy`` and ``test_accuracy`` (held-out perturbations)."""
    _check(delta, labels, epsilon)
    train, test = _split(len(labels), test_fraction, seed)
    features = delta.float().flatten(1) / epsilon
    torch.manual_seed(seed)
    model = nn.Linear(features.shape[1], num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = F.cross_entropy(model(features[train]), labels[train])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        predictions = model(features).argmax(1)
    return {
        "train_accuracy": float((predictions[train] == labels[train]).float().mean()),
        "test_accuracy": float((predictions[test] == labels[test]).float().mean()),
    }


@keeps_global_rng
def attacker_loss_ablation(
    train: ImageDataset,
    generator_factory: Callable[[], nn.Module],
    classifier_factory: Callable[[], nn.Module],
    epsilon: float,
    *,
    losses: Sequence[str] = ("sur", "ce", "ce_clip"),
    steps: int = 100,
    batch_size: int = 128,
    generator_lr: float = 1e-3,
    classifier_lr: float = 0.05,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> dict[str, dict[str, list[float]]]:
    """For each attacker loss, ``steps`` back-gradient steps (one look-ahead step) of the
    standard GUE game from the same initial generator, classifier and batches; per step the
    generator's gradient norm (``attacker_grad_norm``), the follower's loss on the poisoned
    batch before its update (``poisoned_loss``) and its cross-entropy on the clean batch, mean
    and largest per example (``clean_loss``, ``max_clean_loss``: ``"ce_clip"`` differs from
    ``"ce"`` only once the largest reaches the clip level). ``progress`` shows a bar per
    loss."""
    if steps < 1 or batch_size < 1 or batch_size > len(train):
        raise ValueError(
            f"need steps >= 1 and 1 <= batch_size <= {len(train)}, got {steps}, {batch_size}"
        )
    device = torch.device(device)
    curves: dict[str, dict[str, list[float]]] = {}
    for loss_name in losses:
        torch.manual_seed(seed)
        game = UnlearnableGame(
            generator_factory(), classifier_factory(), epsilon, attacker_loss=loss_name
        ).to(device)
        solver = BackGradient(
            game,
            torch.optim.Adam(game.leader.parameters(), lr=generator_lr),
            torch.optim.SGD(game.follower.parameters(), lr=classifier_lr),
            inner_steps=1,
            inner_lr=classifier_lr,
            mode="store",
            follower_steps=1,
        )
        order = torch.Generator().manual_seed(seed)
        curve: dict[str, list[float]] = {
            "attacker_grad_norm": [],
            "poisoned_loss": [],
            "clean_loss": [],
            "max_clean_loss": [],
        }
        bar = tqdm(total=steps, desc=f"ablation {loss_name}", disable=not progress, leave=False)
        while len(curve["attacker_grad_norm"]) < steps:
            for index in torch.randperm(len(train), generator=order).split(batch_size):
                if len(curve["attacker_grad_norm"]) == steps or len(index) < batch_size:
                    break
                x = train.images[index].to(device).float() / 255.0
                y = train.labels[index].to(device)
                with torch.no_grad():
                    poisoned = game.follower_loss(game.leader, game.follower, (x, y))
                    clean = F.cross_entropy(game.follower(x), y, reduction="none")
                curve["poisoned_loss"].append(float(poisoned))
                curve["clean_loss"].append(float(clean.mean()))
                curve["max_clean_loss"].append(float(clean.max()))
                info = solver.step((x, y))
                curve["attacker_grad_norm"].append(float(info["hypergrad_norm"]))
                bar.update()
        bar.close()
        curves[loss_name] = curve
    return curves
