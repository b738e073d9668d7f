"""REM, robust error-minimizing noise (Fu, He, Liu, Shen & Tao, ICLR 2022): unlearnable examples
that survive adversarial training.

The min-min-max problem of the paper's Eq. (3), with ``ρ_u = ε`` the noise's budget and
``ρ_a`` the budget of the adversarial training it is meant to survive::

    min_θ (1/n) Σ_i  min_{‖δ_i^u‖∞ ≤ ρ_u}  E_{t∼T}  max_{‖δ_i^a‖∞ ≤ ρ_a}
        ℓ(f_θ(t(x_i + δ_i^u) + δ_i^a), y_i).

Solved as in the authors' code, one batch at a time for ``train_steps`` steps:

1. the batch's noise δ^u is found afresh (uniform random start in ``[−ε, ε]``) by
   ``pgd_steps`` signed *descent* steps of size ``ε/5``; each step's gradient sums, over
   ``eot_samples`` random transformations ``t`` (the CIFAR crop-and-flip), the gradient of the
   loss at the inner maximum: ``δ^a`` by ``attack_steps`` steps of PGD (step ``ρ_a/5``, random
   start), held fixed while differentiating (Danskin's theorem);
2. the surrogate takes one SGD step of adversarial training (PGD at ``ρ_a``) on
   ``t(clamp(x + δ^u))``.

The learning rate decays by 10 every ``lr_decay_every`` steps. After the last step every image's
noise is computed once more against the final surrogate.

The authors' settings for CIFAR-10 are ResNet-18, 5 000 steps of batch 128, lr 0.1 decayed at
2 000 and 4 000, 10 + 10 PGD steps and 5 transformation samples; those are the defaults here,
except the surrogate (``convnet-small`` unless ``model_factory`` says otherwise).
``eot_samples=0`` omits the expectation over transformations (no crop or flip anywhere), which
makes a step about ``eot_samples`` times cheaper.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from stackelberg.checks import check_epsilon
from stackelberg.games.adversarial import pgd_attack, signed_gradient_steps
from stackelberg.unlearnable.attacks.base import AttackOutput, check_attack_inputs
from stackelberg.unlearnable.attacks.optimized import (
    ModelFactory,
    _default_factory,
    _endless_batches,
    _float,
)
from stackelberg.unlearnable.game import apply_perturbation
from stackelberg.unlearnable.victim import augment
from stackelberg.utils.rng import keeps_global_rng

__all__ = ["robust_error_minimizing_noise", "robust_loss"]


def _transform(x: Tensor, eot_samples: int, generator: torch.Generator) -> Tensor:
    """One draw of ``t ∼ T``: the CIFAR crop-and-flip, or the identity without EOT."""
    return augment(x, generator) if eot_samples > 0 else x


def _robust_noise(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    epsilon: float,
    adversarial_epsilon: float,
    *,
    steps: int,
    step_size: float,
    attack_steps: int,
    attack_step_size: float,
    eot_samples: int,
    generator: torch.Generator,
) -> Tensor:
    """Step 1 of the module doc for one batch: ``argmin_δ E_t max_{δ^a} ℓ`` by signed descent
    on the sum of the ``eot_samples`` transformed losses (one backward pass through all of
    them, so memory grows with the samples)."""
    model.eval()
    start = ((torch.rand(x.shape, generator=generator) * 2 - 1) * epsilon).to(x.device)

    def expected_loss(delta: Tensor) -> Tensor:
        total = x.new_zeros(())
        for _ in range(max(eot_samples, 1)):
            defended = _transform(apply_perturbation(x, delta), eot_samples, generator)
            if adversarial_epsilon > 0 and attack_steps > 0:
                attacked = pgd_attack(
                    model,
                    defended.detach(),
                    y,
                    adversarial_epsilon,
                    attack_steps,
                    attack_step_size,
                    generator=generator,
                )
                # value of the inner maximum, gradient of the identity (Danskin)
                defended = defended + (attacked - defended).detach()
            total = total + F.cross_entropy(model(defended), y)
        return total

    return signed_gradient_steps(
        start,
        expected_loss,
        steps=steps,
        step_size=step_size,
        project=lambda d: d.clamp(-epsilon, epsilon),
        ascent=False,
    )


@keeps_global_rng
def robust_error_minimizing_noise(
    images: Tensor,
    labels: Tensor,
    epsilon: float,
    *,
    num_classes: int,
    seed: int = 0,
    adversarial_epsilon: float = 2 / 255,
    model_factory: ModelFactory | None = None,
    train_steps: int = 5000,
    batch_size: int = 128,
    lr: float = 0.1,
    lr_decay_every: int = 2000,
    pgd_steps: int = 10,
    step_size: float | None = None,
    attack_steps: int = 10,
    attack_step_size: float | None = None,
    eot_samples: int = 5,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> AttackOutput:
    """REM noise (see the module doc); ``adversarial_epsilon`` is ``ρ_a`` (0 gives EM noise
    found by the same schedule). Step sizes default to ``ε/5`` and ``ρ_a/5``.

    ``info`` reports the settings and the surrogate's adversarial-training accuracy and loss,
    averaged over the last 10 % of the steps."""
    check_attack_inputs(images, labels, epsilon, num_classes)
    if adversarial_epsilon != 0:
        adversarial_epsilon = check_epsilon(
            adversarial_epsilon, name="adversarial_epsilon", whole_level=True
        )
    for name, value in (
        ("train_steps", train_steps),
        ("batch_size", batch_size),
        ("pgd_steps", pgd_steps),
        ("lr_decay_every", lr_decay_every),
    ):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if attack_steps < 0 or eot_samples < 0:
        raise ValueError(
            f"attack_steps and eot_samples must be >= 0, got {attack_steps}, {eot_samples}"
        )
    device = torch.device(device)
    alpha = epsilon / 5 if step_size is None else step_size
    attack_alpha = adversarial_epsilon / 5 if attack_step_size is None else attack_step_size
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = (model_factory or _default_factory(images, num_classes))().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, lr_decay_every, gamma=0.1)
    labels_cpu = labels.long().cpu()
    settings: dict[str, Any] = {
        "steps": pgd_steps,
        "step_size": alpha,
        "attack_steps": attack_steps,
        "attack_step_size": attack_alpha,
        "eot_samples": eot_samples,
        "generator": generator,
    }
    batches = _endless_batches(len(labels), batch_size, generator)
    recent: deque[tuple[float, float]] = deque(maxlen=max(train_steps // 10, 1))
    for _ in tqdm(range(train_steps), desc="REM", disable=not progress, leave=False):
        index = next(batches)
        x, y = _float(images[index], device), labels_cpu[index].to(device)
        delta = _robust_noise(model, x, y, epsilon, adversarial_epsilon, **settings)
        defended = _transform(apply_perturbation(x, delta), eot_samples, generator)
        if adversarial_epsilon > 0 and attack_steps > 0:
            defended = pgd_attack(
                model, defended, y, adversarial_epsilon, attack_steps, attack_alpha,
                generator=generator,
            )  # fmt: skip
        model.train()
        logits = model(defended)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        correct = (logits.detach().argmax(1) == y).float().mean()
        recent.append((float(loss.detach()), float(correct)))
    noise = torch.empty(images.shape, dtype=torch.float32)
    for index in torch.arange(len(labels)).split(batch_size):
        x, y = _float(images[index], device), labels_cpu[index].to(device)
        noise[index] = _robust_noise(model, x, y, epsilon, adversarial_epsilon, **settings).cpu()
    return AttackOutput(
        noise,
        {
            "train_steps": train_steps,
            "adversarial_epsilon": adversarial_epsilon,
            "eot_samples": eot_samples,
            "pgd_steps": pgd_steps,
            "attack_steps": attack_steps,
            "surrogate_robust_loss": sum(r[0] for r in recent) / len(recent),
            "surrogate_robust_accuracy": sum(r[1] for r in recent) / len(recent),
        },
    )


def robust_loss(
    model: nn.Module,
    images: Tensor,
    delta: Tensor,
    labels: Tensor,
    adversarial_epsilon: float,
    *,
    steps: int = 10,
    batch_size: int = 256,
    seed: int = 0,
) -> float:
    """The model's mean adversarial-training loss on the poisons: cross-entropy at PGD
    (``steps`` steps of ``ρ_a/4``) around ``clamp(x + δ, 0, 1)``, in eval mode; the quantity
    REM's noise minimizes (without transformations)."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    model.eval()
    total = 0.0
    for index in torch.arange(len(labels)).split(batch_size):
        x = apply_perturbation(_float(images[index], device), delta[index].to(device))
        y = labels[index].long().to(device)
        if adversarial_epsilon > 0:
            x = pgd_attack(
                model, x, y, adversarial_epsilon, steps, adversarial_epsilon / 4,
                generator=generator,
            )  # fmt: skip
        with torch.no_grad():
            total += float(F.cross_entropy(model(x), y, reduction="sum"))
    return total / max(len(labels), 1)
