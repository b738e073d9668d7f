"""The unlearnable-example game: a perturbation generator leads, a classifier follows.

Data ``(x, y)`` with ``x ∈ [0, 1]^n`` and ``K`` classes. The leader is a generator ``g_w`` whose
output is bounded by construction (``ε·tanh``); the poisoned image is
``x̃ = clamp(x + g_w(x), 0, 1)``. The follower is a classifier ``f_θ``. (GUE, Liu et al. 2024,
Section 3; the site's "Unlearnable examples" page.)

- Follower: ``h(w, θ) = E L_c(f_θ(x̃), y)``, training on the poisoned data.
- Leader: ``l(w, θ) = −E L_a(f_θ(x), y)`` on *clean* data: the generator wants the classifier
  that trains on its poisons to fail on clean inputs.

Variants: ``"standard"`` (``L_c`` = CE, ``L_a`` = ``L_sur`` by default), ``"adversarial"``
(``L_c`` = CE at a PGD adversarial example of radius ``ε_a`` around ``x̃`` (Madry et al. 2018),
or TRADES (Zhang et al. 2019); the attacker anticipates a victim that trains adversarially),
``"accuracy"`` (``L_a`` = the Carlini–Wagner margin, a stand-in for the 0-1 error).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from stackelberg.checks import check_epsilon, check_known, check_unit_interval
from stackelberg.game import Game
from stackelberg.games.adversarial import pgd_attack, project_linf, signed_gradient_steps
from stackelberg.models.generators import generate, is_conditional
from stackelberg.unlearnable.losses import (
    ATTACKER_LOSSES,
    DEFAULT_CE_CLIP,
    attacker_loss,
    cw_margin,
)
from stackelberg.unlearnable.transforms import FollowerTransforms, check_follower_transforms

__all__ = ["VARIANTS", "GameOptions", "PoisonedBatch", "UnlearnableGame", "apply_perturbation"]

VARIANTS = ("standard", "adversarial", "accuracy")
_ADVERSARIAL_LOSSES = ("pgd", "trades")


def apply_perturbation(x: Tensor, delta: Tensor) -> Tensor:
    """``clamp(x + δ, 0, 1)``: the poisoned image; ``|x̃ − x| ≤ |δ|`` entrywise."""
    return (x + delta).clamp(0.0, 1.0)


@dataclass(frozen=True)
class GameOptions(Mapping[str, Any]):
    """The unlearnable game's options beyond its players, ε and variant: the keyword
    arguments of ``UnlearnableGame``, as a frozen record checked when built (a preset holds
    one). It reads like a mapping, so ``UnlearnableGame(..., **options)`` works.

    Args:
        attacker_loss: ``L_a``: ``"sur"``, ``"ce"``, ``"ce_clip"`` or ``"cw"`` (``None``: the
            variant's, ``"cw"`` for ``accuracy``, ``"sur"`` otherwise).
        ce_clip: the clip of ``"ce_clip"`` (``> 0``).
        cw_confidence: the Carlini–Wagner margin's confidence ``κ``.
        adversarial_epsilon: ``ε_a`` of the adversarial variant's follower, in ``[0, 1]``.
        adversarial_steps: its PGD steps (``>= 1``).
        adversarial_loss: ``"pgd"`` or ``"trades"``.
        trades_beta: TRADES' ``β``.
        error_minimizing_weight: ``κ`` of the error-minimizing term in the leader's loss
            (``>= 0``).
    """

    attacker_loss: str | None = None
    ce_clip: float = DEFAULT_CE_CLIP
    cw_confidence: float = 0.0
    adversarial_epsilon: float = 2 / 255
    adversarial_steps: int = 10
    adversarial_loss: str = "pgd"
    trades_beta: float = 6.0
    error_minimizing_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.attacker_loss is not None and self.attacker_loss not in ATTACKER_LOSSES:
            raise ValueError(
                f"attacker_loss must be one of {', '.join(ATTACKER_LOSSES)}; got "
                f"{self.attacker_loss!r}"
            )
        if self.adversarial_loss not in _ADVERSARIAL_LOSSES:
            raise ValueError(
                f"adversarial_loss must be 'pgd' or 'trades'; got {self.adversarial_loss!r}"
            )
        if not 0.0 <= self.adversarial_epsilon <= 1.0:
            raise ValueError(
                f"adversarial_epsilon must be in [0, 1], got {self.adversarial_epsilon}"
            )
        if self.adversarial_steps < 1:
            raise ValueError(f"adversarial_steps must be >= 1, got {self.adversarial_steps}")
        if self.ce_clip <= 0:
            raise ValueError(f"ce_clip must be > 0, got {self.ce_clip}")
        if not self.error_minimizing_weight >= 0:
            raise ValueError(
                f"error_minimizing_weight must be >= 0, got {self.error_minimizing_weight}"
            )

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> GameOptions:
        """The record of ``options`` (a record is returned as is); an unknown name is refused
        with the accepted ones."""
        if isinstance(options, GameOptions):
            return options
        check_known("UnlearnableGame", options, [f.name for f in dataclasses.fields(cls)])
        return cls(**options)

    def replace(self, **changes: Any) -> GameOptions:
        """A copy with ``changes``, checked like a new record."""
        return GameOptions.from_mapping({**self, **changes})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __getitem__(self, key: str) -> Any:
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.__dataclass_fields__)

    def __len__(self) -> int:
        return len(self.__dataclass_fields__)


@dataclass(frozen=True)
class PoisonedBatch:
    """A batch whose poisoned images are already computed: ``poisoned`` =
    ``clamp(x + g_w(x), 0, 1)`` (differentiable in ``w`` when computed with grad),
    ``labels`` = ``y``."""

    poisoned: Tensor
    labels: Tensor

    def detach(self) -> PoisonedBatch:
        """The same batch as a constant (no graph back to the generator)."""
        return PoisonedBatch(self.poisoned.detach(), self.labels)


class UnlearnableGame(Game):
    """The GUE game on batches ``(x, y)``.

    Args:
        generator: the leader; maps images ``(N, C, H, W)`` in ``[0, 1]`` to perturbations of
            the same shape with ``‖δ‖∞ ≤ ε`` (checked on every call).
        classifier: the follower; maps images to ``K`` logits.
        epsilon: the ℓ∞ budget ε (the generator's own bound must not exceed it).
        variant: ``"standard"``, ``"adversarial"`` or ``"accuracy"``.
        attacker_loss: ``L_a``: ``"sur"`` (default for standard/adversarial), ``"ce"``,
            ``"ce_clip"`` or ``"cw"`` (default and required for ``"accuracy"``).
        ce_clip: the clip level of ``"ce_clip"``.
        cw_confidence: ``κ`` of ``"cw"``: ``L_a = min(m, κ)``.
        adversarial_epsilon: ``ε_a`` of the adversarial variant's PGD.
        adversarial_steps: PGD steps (step size ``ε_a / 4``, the paper's 10 steps).
        adversarial_loss: ``"pgd"`` (Madry) or ``"trades"``.
        trades_beta: TRADES' weight ``β`` of the KL term.
        error_minimizing_weight: ``κ ≥ 0``; the leader's loss becomes
            ``l = −E L_a(f_θ(x), y) + κ·h(w, θ)``: the generator also wants its poisons to be
            easy for the follower to fit, the error-minimizing objective of Huang et al.
            (2021). The paper's game is ``κ = 0``. Because ``l`` on clean data does not depend
            on ``w``, a value-function solver moves the generator only through ``∇_w q̂``, a
            difference of two nearly equal gradients; ``κ > 0`` gives it a first-order signal
            (docs/results/gue-cpu/exploration.md).
        follower_transforms: the victim's pipeline (``transforms.FollowerTransforms``: JPEG,
            grayscale), applied to the poisoned images before the follower sees them and
            differentiated through, so the leader plays against the victim as it trains:
            ``h(w, θ) = E_T L_c(f_θ(T(x̃)), y)``. ``None`` (default): the victim trains on
            ``x̃`` itself.
    """

    def __init__(
        self,
        generator: nn.Module,
        classifier: nn.Module,
        epsilon: float,
        variant: str = "standard",
        *,
        attacker_loss: str | None = None,
        ce_clip: float = DEFAULT_CE_CLIP,
        cw_confidence: float = 0.0,
        adversarial_epsilon: float = 2 / 255,
        adversarial_steps: int = 10,
        adversarial_loss: str = "pgd",
        trades_beta: float = 6.0,
        error_minimizing_weight: float = 0.0,
        follower_transforms: FollowerTransforms | None = None,
    ) -> None:
        super().__init__(leader=generator, follower=classifier)
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}; got {variant!r}")
        #: The keyword options as their checked record (``GameOptions``).
        self.options = GameOptions(
            attacker_loss=attacker_loss,
            ce_clip=ce_clip,
            cw_confidence=cw_confidence,
            adversarial_epsilon=adversarial_epsilon,
            adversarial_steps=adversarial_steps,
            adversarial_loss=adversarial_loss,
            trades_beta=trades_beta,
            error_minimizing_weight=error_minimizing_weight,
        )
        default = "cw" if variant == "accuracy" else "sur"
        attacker_loss = default if attacker_loss is None else attacker_loss
        if variant == "accuracy" and attacker_loss != "cw":
            raise ValueError("the accuracy variant uses the Carlini-Wagner margin ('cw')")
        self.epsilon = check_epsilon(epsilon, whole_level=True)
        self.variant = variant
        self.attacker_loss = attacker_loss
        self.ce_clip = float(ce_clip)
        self.cw_confidence = float(cw_confidence)
        self.adversarial_epsilon = float(adversarial_epsilon)
        self.adversarial_steps = int(adversarial_steps)
        self.adversarial_loss = adversarial_loss
        self.trades_beta = float(trades_beta)
        self.error_minimizing_weight = float(error_minimizing_weight)
        self.follower_transforms = check_follower_transforms(follower_transforms)

    # -- the poison --------------------------------------------------------------------------

    @property
    def conditional(self) -> bool:
        """Whether the generator also takes the labels (``g_w(x, y)``)."""
        return is_conditional(self.leader)

    def perturbation(self, generator: Any, x: Tensor, y: Tensor | None = None) -> Tensor:
        """``g_w(x)`` (or ``g_w(x, y)`` for a label-conditioned generator), checked against
        the budget ε."""
        delta = generate(generator, x, y, conditional=self.conditional)
        if not isinstance(delta, Tensor) or delta.shape != x.shape:
            shape = tuple(delta.shape) if isinstance(delta, Tensor) else type(delta).__name__
            raise ValueError(
                f"the generator must return a perturbation shaped like its input "
                f"{tuple(x.shape)}, got {shape}"
            )
        bound = float(delta.detach().abs().amax()) if delta.numel() else 0.0
        if not bound <= self.epsilon * (1 + 1e-6):
            raise ValueError(
                f"the generator's output exceeds the budget: ‖δ‖∞ = {bound:.6g} > ε = "
                f"{self.epsilon:.6g} (end it with ε·tanh, and give it the game's ε)"
            )
        return delta

    def poison(self, generator: Any, x: Tensor, y: Tensor | None = None) -> Tensor:
        """``x̃ = clamp(x + g_w(x), 0, 1)``."""
        return apply_perturbation(x, self.perturbation(generator, x, y))

    def _checked(self, batch: Any) -> tuple[Tensor, Tensor]:
        if not (isinstance(batch, tuple | list) and len(batch) == 2):
            raise TypeError(f"a batch is a pair (images, labels), got {type(batch).__name__}")
        x, y = batch
        if not isinstance(x, Tensor) or x.dim() != 4:
            raise ValueError(f"images must be a (N, C, H, W) tensor, got {getattr(x, 'shape', x)}")
        check_unit_interval(x, "images")
        if not isinstance(y, Tensor) or y.dtype != torch.int64 or y.shape != x.shape[:1]:
            got = f"{y.dtype} {tuple(y.shape)}" if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(f"labels must be an int64 tensor of shape ({x.shape[0]},), got {got}")
        return x, y

    def follower_batch(self, leader: Any, batch: Any) -> PoisonedBatch:
        """The poisoned batch: the generator runs once, and every follower loss on the result
        shares that forward pass (and, under grad, its backward pass)."""
        if isinstance(batch, PoisonedBatch):
            return batch
        x, y = self._checked(batch)
        poisoned = self.poison(leader, x, y)
        if self.follower_transforms is not None:  # the victim's pipeline, differentiated through
            poisoned = self.follower_transforms(poisoned)
        return PoisonedBatch(poisoned, y)

    # -- payoffs -----------------------------------------------------------------------------

    def classifier_loss(self, classifier: Any, x: Tensor, y: Tensor) -> Tensor:
        """``L_c``: CE on ``x`` (standard, accuracy) or the adversarial training loss."""
        if self.variant != "adversarial" or self.adversarial_epsilon == 0:
            return F.cross_entropy(classifier(x), y)
        steps, eps = self.adversarial_steps, self.adversarial_epsilon
        x_const = x.detach()
        if self.adversarial_loss == "pgd":
            x_adv = pgd_attack(classifier, x_const, y, eps, steps, eps / 4)
            # Danskin: the attack point is a constant; the gradient reaches w through x.
            return F.cross_entropy(classifier(x + (x_adv - x_const)), y)
        logits = classifier(x)
        target = F.softmax(logits.detach(), dim=1)
        x_adv = _trades_attack(classifier, x_const, target, eps, steps, eps / 4)
        adv_log_probs = F.log_softmax(classifier(x + (x_adv - x_const)), dim=1)
        kl = F.kl_div(adv_log_probs, F.softmax(logits, dim=1), reduction="batchmean")
        return F.cross_entropy(logits, y) + self.trades_beta * kl

    def follower_loss(self, leader: Any, follower: Any, batch: Any) -> Tensor:
        """``h(w, θ) = E L_c(f_θ(clamp(x + g_w(x), 0, 1)), y)``."""
        if isinstance(batch, PoisonedBatch):
            return self.classifier_loss(follower, batch.poisoned, batch.labels)
        x, y = self._checked(batch)
        return self.classifier_loss(follower, self.poison(leader, x, y), y)

    def attacker_payoff(self, logits: Tensor, y: Tensor) -> Tensor:
        """``E L_a(f, y)``, the quantity the generator maximizes."""
        return attacker_loss(
            self.attacker_loss,
            logits,
            y,
            ce_clip=self.ce_clip,
            cw_confidence=self.cw_confidence,
        ).mean()

    def leader_loss(self, leader: Any, follower: Any, batch: Any) -> Tensor:
        """``l(w, θ) = −E L_a(f_θ(x), y)`` on the clean batch (``+ κ·h(w, θ)`` if
        ``error_minimizing_weight`` is positive)."""
        x, y = self._checked(batch)
        loss = -self.attacker_payoff(follower(x), y)
        if self.error_minimizing_weight:
            loss = loss + self.error_minimizing_weight * self.follower_loss(leader, follower, batch)
        return loss

    @torch.no_grad()
    def diagnostics(self, batch: tuple[Tensor, Tensor]) -> dict[str, float]:
        """The classifier's accuracy on the clean and on the poisoned batch (their gap is the
        attack's progress signal), the mean CW margin on clean data, and ‖x̃ − x‖∞."""
        x, y = self._checked(batch)
        poisoned = self.poison(self.leader, x, y)
        clean_logits, poisoned_logits = self.follower(x), self.follower(poisoned)
        return {
            "clean_accuracy": float((clean_logits.argmax(1) == y).float().mean()),
            "poisoned_accuracy": float((poisoned_logits.argmax(1) == y).float().mean()),
            "clean_cw_margin": float(cw_margin(clean_logits, y).mean()),
            "perturbation_linf": float((poisoned - x).abs().amax()),
        }


def _trades_attack(
    classifier: Any, x: Tensor, target: Tensor, epsilon: float, steps: int, step_size: float
) -> Tensor:
    """TRADES' inner maximization: signed ascent on ``KL(target ‖ softmax f(x'))`` over the
    ℓ∞ ball ∩ box, from a small random start (Zhang et al. 2019, Algorithm 1), with its own
    gradients whatever the caller's grad mode."""
    start = (x + 0.001 * torch.randn_like(x)).clamp(0, 1) - x
    delta = signed_gradient_steps(
        start,
        lambda d: F.kl_div(F.log_softmax(classifier(x + d), dim=1), target, reduction="sum"),
        steps=steps,
        step_size=step_size,
        project=lambda d: project_linf(d, x, epsilon),
    )
    return (x + delta).detach()
