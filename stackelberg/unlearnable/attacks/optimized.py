"""Poisons optimized per image against a surrogate classifier: EM and TAP.

**EM**, error-minimizing noise (Huang et al. 2021, Eq. 2 and Algorithm 1): the min-min problem
``min_θ E min_{‖δ‖∞≤ε} L(f_θ(x + δ), y)``, solved by alternating ``train_steps`` SGD steps of
the surrogate on the poisoned data with a pass of PGD over the whole training set that
*minimizes* the loss in δ (``pgd_steps`` signed steps of ``ε/10``), until the surrogate's
accuracy on the poisoned training set exceeds ``stop_accuracy`` (99 %). Sample-wise noise has
one ``δ_i`` per image; class-wise noise one ``δ_k`` per class, set after each batch to the mean
of its images' PGD results started from ``δ_k``. δ is kept in ``[−ε, ε]`` and added *before*
clamping the image to ``[0, 1]``, so negative noise survives (the official code's issue #13
stores ``clamp(x + δ) − x`` instead and loses part of it).

**TAP**, targeted adversarial poisoning (Fowl et al. 2021, Section 3): train a crafting model on
clean data, then for each image PGD toward the wrong label ``(y + shift) mod K``:
``min_{‖δ‖∞≤ε} L(f(x + δ), (y + shift) mod K)``. The published attack runs 250 steps with
differentiable augmentation; the default here is 20 plain steps.

**Through the victim's pipeline** (``follower_transforms``, a
``transforms.FollowerTransforms``): both attacks can anticipate what the victim does to the
published images before training (JPEG, grayscale, its augmentation). EM's surrogate then
trains on ``T(x + δ)`` and the noise minimizes ``L(f(T(x + δ)), y)``; TAP's noise minimizes
``L(f(T(x + δ)), (y + shift) mod K)``. A new ``T`` is drawn for every surrogate step and every
PGD step (expectation over transformation, Athalye et al. 2018). The budget is on ``δ``, the
image as published, before any transform.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from stackelberg.games.adversarial import signed_gradient_steps
from stackelberg.unlearnable.attacks.base import AttackOutput, check_attack_inputs
from stackelberg.unlearnable.game import apply_perturbation
from stackelberg.unlearnable.transforms import (
    FollowerTransforms,
    check_follower_transforms,
)
from stackelberg.unlearnable.victim import VictimSchedule, accuracy, train_victim
from stackelberg.utils.rng import keeps_global_rng

__all__ = ["ModelFactory", "error_minimizing_noise", "targeted_adversarial_poison"]

ModelFactory = Callable[[], nn.Module]


def _default_factory(images: Tensor, num_classes: int) -> ModelFactory:
    from stackelberg.unlearnable.architectures import build_classifier

    return lambda: build_classifier("convnet-small", images.shape[1], num_classes)


def _endless_batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    while True:
        yield from torch.randperm(n, generator=generator).split(batch_size)


def _float(images: Tensor, device: torch.device) -> Tensor:
    return images.to(device).float() / 255.0


def _through(transforms: FollowerTransforms | None, x: Tensor) -> Tensor:
    """``T(x)`` for a newly drawn victim pipeline ``T`` (``x`` itself without one)."""
    if transforms is None:
        return x
    transforms.resample()
    return transforms(x)


def _poisoned_accuracy(
    model: nn.Module,
    images: Tensor,
    delta_of: Callable[[Tensor], Tensor],
    labels: Tensor,
    transforms: FollowerTransforms | None = None,
) -> float:
    """The model's accuracy on ``T(clamp(x + δ))`` over the whole set (eval mode; one draw
    of ``T`` per batch of 500)."""
    device = next(model.parameters()).device
    model.eval()
    correct = 0
    with torch.no_grad():
        for index in torch.arange(len(labels)).split(500):
            x = apply_perturbation(_float(images[index], device), delta_of(index).to(device))
            prediction = model(_through(transforms, x)).argmax(1)
            correct += int((prediction == labels[index].to(device)).sum())
    return correct / max(len(labels), 1)


@keeps_global_rng
def error_minimizing_noise(
    images: Tensor,
    labels: Tensor,
    epsilon: float,
    *,
    num_classes: int,
    seed: int = 0,
    classwise: bool = False,
    model_factory: ModelFactory | None = None,
    train_steps: int = 10,
    pgd_steps: int = 20,
    step_size: float | None = None,
    stop_accuracy: float = 0.99,
    max_rounds: int = 100,
    batch_size: int = 128,
    lr: float = 0.1,
    follower_transforms: FollowerTransforms | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> AttackOutput:
    """EM noise (sample-wise, or class-wise with ``classwise=True``), optionally through the
    victim's pipeline ``follower_transforms``; see the module doc.

    ``info`` reports the rounds run, the surrogate's final accuracy on the poisoned training
    set (through the pipeline, if any) and whether it passed ``stop_accuracy``
    (``converged``) before ``max_rounds``."""
    check_attack_inputs(images, labels, epsilon, num_classes)
    check_follower_transforms(follower_transforms)
    if train_steps < 1 or pgd_steps < 1 or max_rounds < 1 or batch_size < 1:
        raise ValueError("train_steps, pgd_steps, max_rounds and batch_size must be >= 1")
    if not 0 < stop_accuracy <= 1:
        raise ValueError(f"stop_accuracy must be in (0, 1], got {stop_accuracy}")
    device = torch.device(device)
    alpha = epsilon / 10 if step_size is None else step_size
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = (model_factory or _default_factory(images, num_classes))().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    shape = (num_classes if classwise else len(labels), *images.shape[1:])
    noise = ((torch.rand(shape, generator=generator) * 2 - 1) * epsilon).to(device)
    labels_cpu = labels.long().cpu()

    def delta_of(index: Tensor) -> Tensor:
        return noise[labels_cpu[index].to(device)] if classwise else noise[index.to(device)]

    batches = _endless_batches(len(labels), batch_size, generator)
    rounds = tqdm(range(1, max_rounds + 1), desc="EM", disable=not progress, leave=False)
    poisoned_accuracy, rounds_run = 0.0, 0
    for round_index in rounds:
        rounds_run = round_index
        model.train()
        for _ in range(train_steps):
            index = next(batches)
            x = apply_perturbation(_float(images[index], device), delta_of(index))
            loss = F.cross_entropy(
                model(_through(follower_transforms, x)), labels_cpu[index].to(device)
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        for index in torch.arange(len(labels)).split(batch_size):
            _minimize_noise(
                model,
                images,
                labels_cpu,
                index,
                noise,
                classwise,
                epsilon,
                alpha,
                pgd_steps,
                device,
                follower_transforms,
            )
        poisoned_accuracy = _poisoned_accuracy(
            model, images, delta_of, labels_cpu, follower_transforms
        )
        rounds.set_postfix(poisoned_acc=f"{poisoned_accuracy:.3f}")
        if poisoned_accuracy > stop_accuracy:
            break
    delta = delta_of(torch.arange(len(labels))).cpu()
    return AttackOutput(
        delta,
        {
            "rounds": rounds_run,
            "poisoned_train_accuracy": poisoned_accuracy,
            "converged": poisoned_accuracy > stop_accuracy,
            "classwise": classwise,
            "follower_transforms": []
            if follower_transforms is None
            else list(follower_transforms.names),
        },
    )


def _minimize_noise(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    index: Tensor,
    noise: Tensor,
    classwise: bool,
    epsilon: float,
    alpha: float,
    steps: int,
    device: torch.device,
    transforms: FollowerTransforms | None = None,
) -> None:
    """``steps`` signed descent steps of the loss in the batch's noise (through a newly
    drawn ``T`` at each step, if ``transforms``), written into ``noise``: rows ``index``, or,
    if ``classwise``, the rows of the batch's classes.

    Class-wise, every image starts from its class's noise and takes its own PGD steps; each
    class's noise then becomes the mean of its images' results (the update of Huang et al.'s
    class-wise min-min). Averaging whole PGD runs moves ``δ_k`` toward what all of the class's
    images agree on; stepping with the sign of the class-summed gradient instead saturates
    ``δ_k`` at ±ε after a few steps of each batch and converges far slower."""
    x = _float(images[index], device)
    y = labels[index].to(device)
    rows = y if classwise else index.to(device)
    delta = signed_gradient_steps(
        noise[rows],
        lambda d: F.cross_entropy(model(_through(transforms, apply_perturbation(x, d))), y),
        steps=steps,
        step_size=alpha,
        project=lambda d: d.clamp(-epsilon, epsilon),
        ascent=False,
    )
    if classwise:
        sums = torch.zeros_like(noise).index_add_(0, y, delta)
        counts = torch.bincount(y, minlength=noise.shape[0])
        present = counts > 0
        shape = (-1,) + (1,) * (noise.dim() - 1)
        noise[present] = sums[present] / counts[present].view(shape).to(noise.dtype)
    else:
        noise[rows] = delta


@keeps_global_rng
def targeted_adversarial_poison(
    images: Tensor,
    labels: Tensor,
    epsilon: float,
    *,
    num_classes: int,
    seed: int = 0,
    model_factory: ModelFactory | None = None,
    crafting_schedule: VictimSchedule | None = None,
    crafting_model: nn.Module | None = None,
    steps: int = 20,
    step_size: float | None = None,
    shift: int = 1,
    batch_size: int = 250,
    follower_transforms: FollowerTransforms | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> AttackOutput:
    """TAP: PGD toward ``(y + shift) mod K`` against a crafting model trained on the clean
    images (``crafting_schedule``, default 10 epochs at lr 0.05), or against
    ``crafting_model`` if given, optionally through the victim's pipeline
    ``follower_transforms`` (module doc). Step size ``2.5ε/steps`` by default.

    ``info`` reports the crafting model's accuracy on the clean training images and the
    fraction of poisons it classifies as their target (through a drawn pipeline, if any)."""
    check_attack_inputs(images, labels, epsilon, num_classes)
    check_follower_transforms(follower_transforms)
    if steps < 1 or shift % num_classes == 0:
        raise ValueError("need steps >= 1 and a shift that is not a multiple of num_classes")
    device = torch.device(device)
    alpha = 2.5 * epsilon / steps if step_size is None else step_size
    torch.manual_seed(seed)
    labels_cpu = labels.long().cpu()
    model = crafting_model
    if model is None:
        model = (model_factory or _default_factory(images, num_classes))().to(device)
        schedule = crafting_schedule or VictimSchedule.scaled(10, lr=0.05)
        held = torch.arange(min(len(labels), 500))
        train_victim(
            model,
            images,
            labels_cpu,
            images[held],
            labels_cpu[held],
            schedule,
            seed=seed,
            progress=progress,
            description="TAP crafting model",
        )
    model.eval()
    clean_accuracy = accuracy(model, images, labels_cpu)
    deltas, hits = [], 0
    chunks = torch.arange(len(labels)).split(batch_size)
    for index in tqdm(chunks, desc="TAP", disable=not progress, leave=False):
        x = _float(images[index], device)
        target = (labels_cpu[index].to(device) + shift) % num_classes
        delta = signed_gradient_steps(
            torch.zeros_like(x),
            lambda d: F.cross_entropy(
                model(_through(follower_transforms, apply_perturbation(x, d))),  # noqa: B023
                target,  # noqa: B023
            ),
            steps=steps,
            step_size=alpha,
            project=lambda d: d.clamp(-epsilon, epsilon),
            ascent=False,
        )
        with torch.no_grad():
            poisoned = _through(follower_transforms, apply_perturbation(x, delta))
            hits += int((model(poisoned).argmax(1) == target).sum())
        deltas.append(delta.cpu())
    return AttackOutput(
        torch.cat(deltas),
        {
            "crafting_clean_accuracy": clean_accuracy,
            "target_hit_rate": hits / max(len(labels), 1),
            "steps": steps,
            "follower_transforms": []
            if follower_transforms is None
            else list(follower_transforms.names),
        },
    )
