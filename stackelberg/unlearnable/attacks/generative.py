"""Poisons made by a trained generator: DeepConfuse, ShortcutGen, and any saved generator (GUE).

**DeepConfuse** (Feng, Cai & Zhou 2019, Eq. 3 and Algorithm 1): an encoder-decoder ``g_w`` and
a classifier ``f_θ`` alternate: the classifier descends the loss on the poisoned data, and the
generator ascends the *clean* loss of the classifier after its look-ahead step,
``max_w L(f_{θ'(w)}(x), y)`` with ``θ' = θ − α∇_θ L(f_θ(x + g_w(x)), y)``. This is the
unlearnable-example game with ``L_a`` = CE solved by back-gradient through one inner step.
The label-specific variant instead drives the look-ahead classifier toward ``η(y) = (y + 1)
mod K`` on clean data: ``min_w L(f_{θ'(w)}(x), η(y))``.

**ShortcutGen** (van Vlijmen et al. 2022, Section 3): the generator *minimizes* the loss of a
fixed, randomly initialized classifier ``f_0`` on its poisons, ``min_w L(f_0(x + g_w(x)), y)``:
an error-minimizing generator without any bilevel training.

Either way, poisoning new data is one forward pass of the generator.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from stackelberg.data.folders import ImageDataset
from stackelberg.unlearnable.apply import calibrate_batchnorm, poison_images
from stackelberg.unlearnable.attacks.base import AttackOutput, check_attack_inputs
from stackelberg.unlearnable.game import UnlearnableGame, apply_perturbation
from stackelberg.unlearnable.training import GeneratorTraining, TrainingConfig
from stackelberg.utils.rng import keeps_global_rng

__all__ = [
    "DeepConfuseGame",
    "deepconfuse_poison",
    "generator_poison",
    "shortcutgen_poison",
]

GeneratorFactory = Callable[[], nn.Module]


class DeepConfuseGame(UnlearnableGame):
    """The unlearnable game with ``L_a`` = CE; with ``target_shift`` set, the label-specific
    DeepConfuse: the leader's loss becomes ``E L(f_θ(x), (y + shift) mod K)`` on clean data."""

    def __init__(
        self,
        generator: nn.Module,
        classifier: nn.Module,
        epsilon: float,
        *,
        target_shift: int | None = None,
    ) -> None:
        super().__init__(generator, classifier, epsilon, "standard", attacker_loss="ce")
        self.target_shift = target_shift

    def attacker_payoff(self, logits: Tensor, y: Tensor) -> Tensor:
        if self.target_shift is None:
            return super().attacker_payoff(logits, y)
        return -F.cross_entropy(logits, (y + self.target_shift) % logits.shape[1])


def generator_poison(
    images: Tensor,
    labels: Tensor,
    epsilon: float,
    *,
    num_classes: int,
    generator: nn.Module,
    seed: int = 0,
    progress: bool = False,
) -> AttackOutput:
    """Poison with a trained generator (one forward pass per batch); ``info`` has the
    throughput of that pass in images per second."""
    check_attack_inputs(images, labels, epsilon, num_classes)
    bound = float(getattr(generator, "epsilon", epsilon))
    if bound > epsilon + 1e-9:
        raise ValueError(f"the generator's bound {bound:.6f} exceeds the budget ε = {epsilon:.6f}")
    start = time.perf_counter()
    poisoned = poison_images(generator, images, labels, progress=progress)
    seconds = time.perf_counter() - start
    delta = (poisoned.cpu() - images.float() / 255.0).clamp(-epsilon, epsilon)
    return AttackOutput(
        delta, {"apply_seconds": seconds, "apply_images_per_second": len(labels) / seconds}
    )


def _default_generator(images: Tensor, epsilon: float) -> nn.Module:
    from stackelberg.unlearnable.architectures import build_generator

    return build_generator("encoder-decoder", epsilon, images.shape[1])


def _default_classifier(images: Tensor, num_classes: int) -> nn.Module:
    from stackelberg.unlearnable.architectures import build_classifier

    return build_classifier("convnet-small", images.shape[1], num_classes)


@keeps_global_rng
def deepconfuse_poison(
    images: Tensor,
    labels: Tensor,
    epsilon: float,
    *,
    num_classes: int,
    seed: int = 0,
    label_specific: bool = False,
    generator: nn.Module | None = None,
    classifier: nn.Module | None = None,
    epochs: int = 5,
    batch_size: int = 128,
    generator_lr: float = 1e-3,
    classifier_lr: float = 0.05,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> AttackOutput:
    """Train a DeepConfuse generator for ``epochs`` (Adam on the generator, SGD on the
    classifier, back-gradient through one look-ahead step) and poison ``images`` with it.
    Defaults: an encoder-decoder generator and the ``convnet-small`` classifier."""
    check_attack_inputs(images, labels, epsilon, num_classes)
    torch.manual_seed(seed)
    game = DeepConfuseGame(
        generator or _default_generator(images, epsilon),
        classifier or _default_classifier(images, num_classes),
        epsilon,
        target_shift=1 if label_specific else None,
    ).to(torch.device(device))
    config = TrainingConfig(
        epochs=epochs,
        batch_size=min(batch_size, len(labels)),
        solver="backgradient",
        solver_options={"inner_steps": 1, "inner_lr": classifier_lr, "follower_steps": 1},
        generator_optimizer="adam",
        generator_lr=generator_lr,
        classifier_lr=classifier_lr,
        seed=seed,
    )
    classes = tuple(str(k) for k in range(num_classes))
    training = GeneratorTraining(game, config, ImageDataset(images, labels.long(), classes))
    start = time.perf_counter()
    training.run(progress=progress)
    fit_seconds = time.perf_counter() - start
    out = generator_poison(images, labels, epsilon, num_classes=num_classes, generator=game.leader)
    out.info.update(
        {"fit_seconds": fit_seconds, "epochs": epochs, "label_specific": label_specific}
    )
    return out


@keeps_global_rng
def shortcutgen_poison(
    images: Tensor,
    labels: Tensor,
    epsilon: float,
    *,
    num_classes: int,
    seed: int = 0,
    generator: nn.Module | None = None,
    classifier: nn.Module | None = None,
    epochs: int = 3,
    batch_size: int = 128,
    generator_lr: float = 1e-2,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> AttackOutput:
    """Train a ShortcutGen generator against a fixed random classifier (eval mode, never
    updated) for ``epochs`` with Adam, then poison ``images`` with it. ``info`` has the random
    classifier's accuracy on the final poisons (its training objective)."""
    check_attack_inputs(images, labels, epsilon, num_classes)
    device = torch.device(device)
    torch.manual_seed(seed)
    g = (generator or _default_generator(images, epsilon)).to(device)
    f0 = (classifier or _default_classifier(images, num_classes)).to(device).eval()
    for p in f0.parameters():
        p.requires_grad_(False)
    optimizer = torch.optim.Adam(g.parameters(), lr=generator_lr)
    order_rng = torch.Generator().manual_seed(seed)
    labels_cpu = labels.long().cpu()
    start = time.perf_counter()
    g.train()
    for epoch in range(epochs):
        order = torch.randperm(len(labels_cpu), generator=order_rng).split(batch_size)
        for index in tqdm(
            order, desc=f"ShortcutGen {epoch + 1}/{epochs}", disable=not progress, leave=False
        ):
            x = images[index].to(device).float() / 255.0
            loss = F.cross_entropy(f0(apply_perturbation(x, g(x))), labels_cpu[index].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    calibrate_batchnorm(g, images)  # eval-mode poisons from the trained weights' statistics
    fit_seconds = time.perf_counter() - start
    out = generator_poison(images, labels, epsilon, num_classes=num_classes, generator=g)
    with torch.no_grad():
        hits = 0
        for index in torch.arange(len(labels_cpu)).split(500):
            x = apply_perturbation(images[index].float() / 255.0, out.delta[index]).to(device)
            hits += int((f0(x).argmax(1) == labels_cpu[index].to(device)).sum())
    out.info.update(
        {
            "fit_seconds": fit_seconds,
            "epochs": epochs,
            "random_classifier_accuracy": hits / max(len(labels_cpu), 1),
        }
    )
    return out
