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
- ``smoke``: seconds; for tests.

The GUE hyperparameters, as the paper's text gives them, as the official code runs them, and
as the presets set them (η, T, φ and the payoffs are the same everywhere: η = 1.5,
φ = η‖∇q̂‖², T = 10 inner steps, L_sur on clean data, CE on poisons, ε = 8/255):

| hyperparameter      | paper (text) | official code | ``paper``    | ``cpu-paper-game`` |
|---------------------|--------------|---------------|--------------|--------------------|
| inner optimizer     | Adam 1e-3    | Adam 1e-4     | Adam 1e-4    | Adam 1e-4 [1]      |
| generator optimizer | SGD 0.1      | SGD 0.1       | SGD 0.1      | SGD 0.1            |
| follower optimizer  | SGD 0.01     | SGD 0.01      | SGD 0.01     | SGD 0.01           |
| batch size          | 256          | 256           | 256          | 128 (CPU time)     |
| outer steps         | 50 epochs    | ≈ 9 800       | ≈ 9 600      | 2 340 [2]          |
| generator           | U-Net        | U-Net 64–512  | U-Net 64–512 | U-Net 16–64 [3]    |
| follower            | ResNet-18    | ResNet-18     | ResNet-18    | convnet-small [4]  |
| training images     | 50 000       | 50 000        | 49 000       | 15 000 [5]         |
| generator kept      | quick test   | best on test  | quick test   | quick test [6]     |
| poisons to uint8    | —            | truncated     | rounded      | rounded            |

[1] The official code's value. The study measured the text's 1e-3: no better at CPU scale
(victim 75.8 % after 2 574 steps, against 75.1 % with 1e-4).
[2] 20 epochs of 117 steps (CPU time); the study ran it to 10 062 steps (victim 74.8 %).
[3] CPU time. Ours has no conv biases and upsamples with ``align_corners=False``; BatchNorm
running statistics are updated once per outer step for the generator (the code: 12 times) and
at every inner iterate for the follower (the code: twice). The eval-mode generator that
poisons reads them in both; ours recomputes the generator's on the training images at the end
of every epoch (``calibrate_batchnorm``), so its poisons are the perturbations the game
optimized.
[4] 24 k parameters (CPU time); the study also runs ``convnet`` and ``convnet-wide``.
[5] CPU time; ``paper`` holds 1 000 training images out for its quick tests.
[6] On clean held-out training images, never on the test split (the official code selects on
the test split).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stackelberg.data.datasets import subset
from stackelberg.data.folders import ImageDataset
from stackelberg.games.unlearnable.checkpoint import load_generator, save_generator
from stackelberg.games.unlearnable.game import UnlearnableGame
from stackelberg.games.unlearnable.training import GeneratorTraining, TrainingConfig
from stackelberg.games.unlearnable.transforms import FollowerTransforms
from stackelberg.games.unlearnable.victim import PAPER_SCHEDULE, VictimSchedule
from stackelberg.models import (
    ConvNet,
    EncoderDecoderGenerator,
    LabelConditionedGenerator,
    ResNet18,
    UNetGenerator,
)
from stackelberg.utils import distributed
from stackelberg.utils.rng import keeps_global_rng

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
    "train_preset_generator",
]

GENERATORS = ("unet", "unet-small", "encoder-decoder")
CLASSIFIERS = ("resnet18", "convnet-wide", "convnet", "convnet-lite", "convnet-small")


def build_generator(
    name: str,
    epsilon: float,
    in_channels: int,
    *,
    num_classes: int | None = None,
    achromatic: bool = False,
) -> nn.Module:
    """``unet`` (widths 64–512, the paper's), ``unet-small`` (16–64) or ``encoder-decoder``;
    wrapped in a ``LabelConditionedGenerator`` when ``num_classes`` is given; ``achromatic``:
    one perturbation shared by the channels (``UNetGenerator.bound``)."""
    base: UNetGenerator | EncoderDecoderGenerator
    if name == "unet":
        base = UNetGenerator(epsilon, in_channels, achromatic=achromatic)
    elif name == "unet-small":
        base = UNetGenerator(epsilon, in_channels, widths=(16, 32, 64), achromatic=achromatic)
    elif name == "encoder-decoder":
        base = EncoderDecoderGenerator(epsilon, in_channels, achromatic=achromatic)
    else:
        raise ValueError(f"generator must be one of {', '.join(GENERATORS)}; got {name!r}")
    return base if num_classes is None else LabelConditionedGenerator(base, num_classes)


def build_classifier(name: str, in_channels: int, num_classes: int) -> nn.Module:
    """``resnet18`` (CIFAR ResNet-18), ``convnet-wide`` (widths 64/128/256, two convs per
    stage), ``convnet`` (32/64/128, two convs per stage), ``convnet-lite`` (32/64/128, one
    conv per stage) or ``convnet-small`` (16/32/64, one conv per stage)."""
    if name == "resnet18":
        return ResNet18(num_classes, in_channels)
    if name == "convnet-wide":
        return ConvNet(in_channels, num_classes, widths=(64, 128, 256), convs_per_stage=2)
    if name == "convnet":
        return ConvNet(in_channels, num_classes, widths=(32, 64, 128), convs_per_stage=2)
    if name == "convnet-lite":
        return ConvNet(in_channels, num_classes, widths=(32, 64, 128), convs_per_stage=1)
    if name == "convnet-small":
        return ConvNet(in_channels, num_classes, widths=(16, 32, 64), convs_per_stage=1)
    raise ValueError(f"classifier must be one of {', '.join(CLASSIFIERS)}; got {name!r}")


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
    game_options: dict[str, Any] = field(default_factory=dict)
    #: The victim's pipeline the generator trains against (``transforms.FollowerTransforms``
    #: names, one drawn per outer step); empty: the victim trains on the poisons as published.
    follower_transforms: tuple[str, ...] = ()
    #: One perturbation shared by the colour channels (a gray δ, which grayscale keeps whole
    #: and JPEG codes in luma only; ``UNetGenerator.bound``).
    achromatic: bool = False

    def with_changes(self, **changes: Any) -> Preset:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
        game_options={
            **base.game_options,
            "adversarial_epsilon": adversarial_epsilon,
            "adversarial_steps": steps,
        },
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

PRESETS["cpu-em-at2"] = adversarial_preset(PRESETS["cpu-em"], 2 / 255)
PRESETS["cpu-em-at4"] = adversarial_preset(PRESETS["cpu-em"], 4 / 255)
PRESETS["cpu-em-accuracy"] = accuracy_preset(PRESETS["cpu-em"])
#: Measured in the defense-survival study (docs/results/defense-survival/): at CPU scale its
#: protection survives JPEG at quality 30-90 but not grayscale or JPEG-10.
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


@keeps_global_rng
def train_preset_generator(
    preset: Preset,
    train: ImageDataset,
    run_dir: str | Path,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    epochs: int | None = None,
    progress: bool = True,
    metadata: dict[str, Any] | None = None,
    validation: ImageDataset | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train ``preset``'s generator on ``train`` into ``run_dir``, resuming from
    ``run_dir/checkpoint.pt`` if it exists (an interrupted run, or a finished one asked for more
    epochs); a finished run's ``generator.pt`` is returned as is. The quick tests score victims
    on ``validation`` (clean images outside ``train``, e.g. from ``split_preset_data``); without
    it, the last ``validation_size`` images of a seeded shuffle of ``train`` are held out for
    them and the generator trains on the rest. ``epochs`` overrides the preset's;
    ``metadata`` is added to the checkpoint's. Returns the generator and its checkpoint
    metadata (architecture, ε, solver, data size, seed, date, quick tests)."""
    run_dir = Path(run_dir)
    path = run_dir / "generator.pt"
    finished = path.is_file() and path.with_suffix(".json").is_file()
    if finished and not (run_dir / "checkpoint.pt").is_file():
        return load_generator(path, device)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = preset.training
    if epochs is not None:
        config = dataclasses.replace(config, epochs=epochs)
    config = dataclasses.replace(config, seed=seed)
    fit = train
    if validation is None:
        validation_size = min(preset.validation_size, len(train) // 5)
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
        held, kept = order[:validation_size], order[validation_size:]
        fit = ImageDataset(train.images[kept], train.labels[kept], train.classes)
        validation = ImageDataset(train.images[held], train.labels[held], train.classes)
    channels, num_classes = int(train.images.shape[1]), len(train.classes)
    torch.manual_seed(seed)
    game = build_game(preset, channels, num_classes).to(torch.device(device))
    training = GeneratorTraining(
        game,
        config,
        fit,
        validation=validation if config.quick_test_every else None,
        victim_factory=lambda: build_classifier(preset.victim, channels, num_classes),
        run_dir=run_dir,
    )
    training.resume()
    if finished and training.epoch >= config.epochs:
        return load_generator(path, device)
    start = time.perf_counter()
    training.run(progress=progress)
    saved = {
        **(metadata or {}),
        "architecture": preset.generator,
        "label_conditioned": preset.label_conditioned,
        "achromatic": preset.achromatic,
        "num_classes": num_classes,
        "classes": list(train.classes),
        "epsilon": preset.epsilon,
        "in_channels": channels,
        "epoch": training.use_best_generator(),
        "preset": preset.name,
        "solver": config.solver,
        "training_images": len(fit),
        "seed": seed,
        "variant": preset.variant,
        "trained_against": list(preset.follower_transforms),  # the victim pipelines it saw
        "fit_seconds": time.perf_counter() - start,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick_tests": training.quick_tests,
    }
    if distributed.is_main_process():
        save_generator(path, game.leader, saved)
    return game.leader.eval(), saved
