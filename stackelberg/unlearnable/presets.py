"""Named model builders and the run presets of the GUE example and command line.

Each preset's name says which game it plays:

- ``paper``: the GUE paper's game with the official code's settings (GPU): U-Net generator,
  ResNet-18 follower and victim, 50 epochs of BOME, the 100-epoch victim protocol.
- ``cpu-paper-game``: the paper's game (κ = 0, x-only generator, BOME) with the official
  code's optimizer settings at a 2-core CPU budget: CPU-sized U-Net and CNNs, a class-balanced
  15 000-image subset, a short victim schedule. Whether it protects at this scale is what
  ``experiments/gue_paper_game_study.py`` measures (docs/results/gue-paper-game-study/).
- ``cpu-em``: a different game at the same budget, the one that protects on a CPU today: the
  leader's loss carries the error-minimizing term (κ = 1, ``error_minimizing_weight``), the
  generator is label-conditioned (one learned pattern per class, so ``protect`` needs the
  images' class) and back-gradient with a one-step look-ahead solves it
  (docs/results/gue-cpu/).
- ``cpu-em-at2``, ``cpu-em-at4``: ``cpu-em``'s game in the adversarial variant (GUE-AT): the
  follower trains at 10-step PGD points of radius ε_a = 2/255 or 4/255 (step ε_a/4, the
  paper's), so the generator anticipates a victim that trains adversarially. The paper trains
  GUE-AT for 150 epochs with λ = 1 (BOME on ResNet-18); these keep ``cpu-em``'s 20 epochs
  and solver. See ``adversarial_preset``.
- ``cpu-em-accuracy``: ``cpu-em``'s game in the accuracy variant (``L_a`` = the
  Carlini–Wagner margin). See ``accuracy_preset``.
- ``cpu-robust``: ``cpu-em``'s game played through the victim's pipeline (grayscale, JPEG at
  quality 10–90, or nothing, drawn per outer step). See ``defense_aware_preset``.
- ``demo``: protection you can see in minutes, on MNIST (``--dataset folder --data-dir
  ../shared/data/mnist-png.tar.gz``): ``cpu-em``'s game on 6 000 digits for 5 epochs at
  **ε = 32/255**, four times the photo budget, so that a victim trained briefly on the
  protected digits fails on clean ones (docs/results/demo/ gives the measured figures).
- ``smoke``: seconds; it checks the plumbing only (every stage runs end to end) and protects
  nothing: its victims sit at chance, clean or poisoned.

Each GUE hyperparameter as the paper's text gives it, as the official code runs it and as
each preset sets it, with the reason wherever they differ, is tabulated in
``docs/unlearnable.md`` (the presets section). The model builders are in ``architectures``,
the run driver (``train_preset_generator``) in ``driver``.
"""

from __future__ import annotations

import dataclasses
import importlib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from stackelberg.data.datasets import subset
from stackelberg.data.folders import ImageDataset
from stackelberg.unlearnable.architectures import (
    CLASSIFIERS,
    GENERATORS,
    build_classifier,
    build_generator,
)
from stackelberg.unlearnable.game import GameOptions, UnlearnableGame
from stackelberg.unlearnable.training import TrainingConfig
from stackelberg.unlearnable.transforms import FollowerTransforms
from stackelberg.unlearnable.victim import PAPER_SCHEDULE, VictimSchedule

# The model builders live in ``architectures``; they stay importable from here, where the
# presets use them.
__all__ = [
    "CLASSIFIERS",
    "GENERATORS",
    "PRESETS",
    "Preset",
    "accuracy_preset",
    "adversarial_preset",
    "build_classifier",
    "build_game",
    "build_generator",
    "split_preset_data",
]


@dataclass(frozen=True)
class Preset:
    """Everything a run needs besides the data location and the seed."""

    name: str
    train_size: int | None
    validation_size: int
    generator: str
    classifier: str
    victim: str
    training: TrainingConfig
    victim_schedule: VictimSchedule
    epsilon: float = 8 / 255
    variant: str = "standard"
    label_conditioned: bool = False
    #: The game's keyword options (``game.GameOptions``; a mapping is read into one).
    game_options: GameOptions | Mapping[str, Any] = field(default_factory=GameOptions)
    #: The victim's pipeline the generator trains against (``transforms.FollowerTransforms``
    #: names, one drawn per outer step); empty: the victim trains on the poisons as published.
    follower_transforms: tuple[str, ...] = ()
    #: One perturbation shared by the colour channels (a gray δ, which grayscale keeps whole
    #: and JPEG codes in luma only; ``UNetGenerator.bound``).
    achromatic: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "game_options", GameOptions.from_mapping(self.game_options))

    def with_changes(self, **changes: Any) -> Preset:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, the training config as its ``to_dict()``."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {
            **fields,
            "training": self.training.to_dict(),
            "victim_schedule": dataclasses.asdict(self.victim_schedule),
            "game_options": GameOptions.from_mapping(self.game_options).to_dict(),
            "follower_transforms": list(self.follower_transforms),
        }


#: The CPU budget shared by ``cpu`` and ``cpu-paper-game``: the paper's game, BOME.
_CPU_PAPER_GAME = Preset(
    name="cpu-paper-game",
    train_size=15_000,
    validation_size=1000,
    generator="unet-small",
    classifier="convnet-small",
    victim="convnet",
    training=TrainingConfig(
        epochs=20,
        batch_size=128,
        quick_test_every=4,
        quick_test=VictimSchedule.scaled(3, lr=0.05),
    ),
    victim_schedule=VictimSchedule.scaled(15, lr=0.05),
)

PRESETS: dict[str, Preset] = {
    "paper": Preset(
        name="paper",
        train_size=None,
        validation_size=1000,
        generator="unet",
        classifier="resnet18",
        victim="resnet18",
        training=TrainingConfig(
            epochs=50,
            batch_size=256,
            quick_test_every=5,
            quick_test=VictimSchedule.scaled(10, lr=0.01),
        ),
        victim_schedule=PAPER_SCHEDULE,
    ),
    "cpu-em": _CPU_PAPER_GAME.with_changes(
        name="cpu-em",
        label_conditioned=True,
        game_options={"error_minimizing_weight": 1.0},
        training=dataclasses.replace(
            _CPU_PAPER_GAME.training,
            solver="backgradient",
            solver_options={"inner_steps": 1, "inner_lr": 0.1},
            generator_optimizer="adam",
            generator_lr=1e-2,
            classifier_lr=0.05,
        ),
    ),
    "cpu-paper-game": _CPU_PAPER_GAME,
    "smoke": Preset(
        name="smoke",
        train_size=256,
        validation_size=64,
        generator="unet-small",
        classifier="convnet-small",
        victim="convnet-small",
        training=TrainingConfig(
            epochs=2,
            batch_size=64,
            solver_options={"inner_steps": 2},
            log_every=1,
            quick_test_every=1,
            quick_test=VictimSchedule.scaled(1, lr=0.05),
        ),
        victim_schedule=VictimSchedule.scaled(2, lr=0.05),
    ),
}


def adversarial_preset(
    base: Preset, adversarial_epsilon: float, *, steps: int = 10, name: str | None = None
) -> Preset:
    """``base`` in the adversarial variant (GUE-AT, the paper's Section 4.3): the follower's
    loss is the CE at a PGD point of radius ``ε_a`` (``steps`` steps of ``ε_a/4``; the
    paper's 10), so the generator plays against a victim that trains adversarially."""
    return base.with_changes(
        name=name or f"{base.name}-at{round(255 * adversarial_epsilon)}",
        variant="adversarial",
        game_options=GameOptions.from_mapping(base.game_options).replace(
            adversarial_epsilon=adversarial_epsilon, adversarial_steps=steps
        ),
    )


def accuracy_preset(base: Preset, *, name: str | None = None) -> Preset:
    """``base`` in the accuracy variant: the leader maximizes the Carlini–Wagner margin, a
    stand-in for the victim's 0-1 error, in place of ``L_sur``."""
    return base.with_changes(name=name or f"{base.name}-accuracy", variant="accuracy")


def defense_aware_preset(
    base: Preset,
    transforms: tuple[str, ...],
    *,
    achromatic: bool = False,
    name: str | None = None,
) -> Preset:
    """``base`` with the victim's pipeline in the game: the follower trains on
    ``T(x̃)`` for a transform ``T`` drawn per outer step from ``transforms`` (JPEG, grayscale),
    and the generator's gradient flows through it (``transforms.FollowerTransforms``).
    ``achromatic``: the generator's perturbation is one gray image shared by the channels."""
    default = f"{base.name}-robust" + ("-achromatic" if achromatic else "")
    return base.with_changes(
        name=name or default, follower_transforms=transforms, achromatic=achromatic
    )


#: JPEG at the qualities photo sites apply (75–90) down to image shortcut squeezing's 10,
#: grayscale, and the untouched images, drawn with equal probability.
ROBUST_TRANSFORMS = ("none", "grayscale", "jpeg-10:90")

#: ``cpu-em`` made to show its effect in minutes on MNIST (docs/results/demo/).
PRESETS["demo"] = PRESETS["cpu-em"].with_changes(
    name="demo",
    epsilon=32 / 255,
    train_size=6000,
    validation_size=500,
    victim="convnet-lite",
    training=dataclasses.replace(
        PRESETS["cpu-em"].training,
        epochs=5,
        quick_test_every=1,
        quick_test=VictimSchedule.scaled(2, lr=0.05),
    ),
    victim_schedule=VictimSchedule.scaled(5, lr=0.05),
)
PRESETS["cpu-em-at2"] = adversarial_preset(PRESETS["cpu-em"], 2 / 255)
PRESETS["cpu-em-at4"] = adversarial_preset(PRESETS["cpu-em"], 4 / 255)
PRESETS["cpu-em-accuracy"] = accuracy_preset(PRESETS["cpu-em"])
#: ``cpu-em``'s game through the victim's pipeline; what it survives is measured in
#: ``docs/results/defense-survival/``.
PRESETS["cpu-robust"] = defense_aware_preset(
    PRESETS["cpu-em"], ROBUST_TRANSFORMS, name="cpu-robust"
)


def build_game(preset: Preset, in_channels: int, num_classes: int) -> UnlearnableGame:
    """A fresh ``UnlearnableGame`` with the preset's generator, follower and options."""
    generator = build_generator(
        preset.generator,
        preset.epsilon,
        in_channels,
        num_classes=num_classes if preset.label_conditioned else None,
        achromatic=preset.achromatic,
    )
    classifier = build_classifier(preset.classifier, in_channels, num_classes)
    transforms = (
        FollowerTransforms(preset.follower_transforms, seed=preset.training.seed)
        if preset.follower_transforms
        else None
    )
    return UnlearnableGame(
        generator,
        classifier,
        preset.epsilon,
        preset.variant,
        follower_transforms=transforms,
        **preset.game_options,
    )


def split_preset_data(
    splits: dict[str, ImageDataset], preset: Preset, seed: int
) -> tuple[ImageDataset, torch.Tensor, ImageDataset, ImageDataset]:
    """The training subset (and its indices into the source split), a clean validation
    subset of the remaining training images for the quick tests, and the test split."""
    full = splits["train"]
    train, indices = subset(full, preset.train_size, seed)
    rest = torch.ones(len(full), dtype=torch.bool)
    rest[indices] = False
    remaining = torch.nonzero(rest).squeeze(1)
    if len(remaining) == 0:  # the whole split trains: hold out part of it instead
        holdout = min(preset.validation_size, len(full) // 5)
        train, indices = subset(full, len(full) - holdout, seed)
        rest = torch.ones(len(full), dtype=torch.bool)
        rest[indices] = False
        remaining = torch.nonzero(rest).squeeze(1)
    pool = ImageDataset(full.images[remaining], full.labels[remaining], full.classes)
    validation, _ = subset(pool, preset.validation_size, seed + 1)
    return train, indices, validation, splits["test"]


def __getattr__(name: str) -> Any:
    if name == "train_preset_generator":
        warnings.warn(
            "stackelberg.unlearnable.presets.train_preset_generator moved to "
            "stackelberg.unlearnable.driver; the old name works until the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module("stackelberg.unlearnable.driver").train_preset_generator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
