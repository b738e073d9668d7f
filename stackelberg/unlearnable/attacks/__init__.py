"""Baseline availability poisons to compare GUE with, all within the same ℓ∞ budget ε.

Every attack takes clean uint8 images ``(N, C, H, W)``, labels, ε and the number of classes
and returns an ``AttackOutput`` (perturbations and a report); ``craft_poison`` runs one
by name, times it and returns the uint8 poisoned images.

============== ============================================ ==================================
name           attack                                       reference
============== ============================================ ==================================
random         sample-wise uniform noise                    —
classwise      class-wise uniform noise                     Huang et al. 2021
em             error-minimizing noise, sample-wise          Huang et al. 2021
em-classwise   error-minimizing noise, class-wise           Huang et al. 2021
rem            robust error-minimizing noise (vs. adv. tr.) Fu et al. 2022
tap            targeted adversarial poisoning               Fowl et al. 2021
deepconfuse    DeepConfuse generator                        Feng, Cai & Zhou 2019
deepconfuse-ls DeepConfuse, label-specific (toward y + 1)   Feng, Cai & Zhou 2019
shortcutgen    generator against a fixed random classifier  van Vlijmen et al. 2022
lsp            linearly separable synthetic patches         Yu et al. 2022
ar             autoregressive perturbations                 Sandoval-Segura et al. 2022
gue            a trained GUE generator (``generator=``)     Liu et al. 2024
============== ============================================ ==================================
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from torch import Tensor

from stackelberg.unlearnable.attacks.base import (
    AttackOutput,
    check_attack_inputs,
    finish_poison,
)
from stackelberg.unlearnable.attacks.generative import (
    DeepConfuseGame,
    deepconfuse_poison,
    generator_poison,
    shortcutgen_poison,
)
from stackelberg.unlearnable.attacks.noise import (
    autoregressive_noise,
    classwise_noise,
    lsp_noise,
    random_noise,
)
from stackelberg.unlearnable.attacks.optimized import (
    error_minimizing_noise,
    targeted_adversarial_poison,
)
from stackelberg.unlearnable.attacks.robust import robust_error_minimizing_noise, robust_loss

__all__ = [
    "ATTACKS",
    "AttackOutput",
    "DeepConfuseGame",
    "Poison",
    "autoregressive_noise",
    "check_attack_inputs",
    "classwise_noise",
    "craft_poison",
    "deepconfuse_poison",
    "error_minimizing_noise",
    "finish_poison",
    "generator_poison",
    "lsp_noise",
    "random_noise",
    "robust_error_minimizing_noise",
    "robust_loss",
    "shortcutgen_poison",
    "targeted_adversarial_poison",
]

AttackFunction = Callable[..., AttackOutput]

#: Every attack by name; each is called as ``attack(images, labels, epsilon, num_classes=K,
#: seed=s, **options)``.
ATTACKS: dict[str, AttackFunction] = {
    "random": random_noise,
    "classwise": classwise_noise,
    "em": error_minimizing_noise,
    "em-classwise": partial(error_minimizing_noise, classwise=True),
    "rem": robust_error_minimizing_noise,
    "tap": targeted_adversarial_poison,
    "deepconfuse": deepconfuse_poison,
    "deepconfuse-ls": partial(deepconfuse_poison, label_specific=True),
    "shortcutgen": shortcutgen_poison,
    "lsp": lsp_noise,
    "ar": autoregressive_noise,
    "gue": generator_poison,
}

_MODEL_FREE = ("random", "classwise", "lsp", "ar")


@dataclass
class Poison:
    """An attack's result: the uint8 poisoned ``images``, the wall time it took (model
    training included), the throughput ``len(images) / seconds`` and the attack's report."""

    name: str
    images: Tensor
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return len(self.images) / max(self.seconds, 1e-9)


def craft_poison(
    name: str,
    images: Tensor,
    labels: Tensor,
    epsilon: float,
    *,
    num_classes: int,
    seed: int = 0,
    **options: Any,
) -> Poison:
    """Run the attack ``name`` (see ``ATTACKS``) and return the quantized poisons.

    ``options`` go to the attack (``device``, ``progress``, ``model_factory``, epochs, ...);
    model-free attacks take none of those, so ``device`` and ``progress`` are dropped for
    them. ``gue`` needs ``generator=`` (a trained generator module)."""
    if name not in ATTACKS:
        raise ValueError(f"attack must be one of {', '.join(ATTACKS)}; got {name!r}")
    if name in _MODEL_FREE:
        options = {k: v for k, v in options.items() if k not in ("device", "progress")}
    if name == "gue":
        if options.get("generator") is None:
            raise ValueError("the gue attack needs generator= (a trained generator module)")
        options.pop("device", None)
    start = time.perf_counter()
    out = ATTACKS[name](images, labels, epsilon, num_classes=num_classes, seed=seed, **options)
    poisoned = finish_poison(images, out.delta, epsilon)
    return Poison(name, poisoned, time.perf_counter() - start, out.info)
