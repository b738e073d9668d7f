"""Named model builders and the run presets of the GUE example and command line.

- ``paper``: the GUE paper's CIFAR setting (GPU): U-Net generator, ResNet-18 follower and victim,
  50 epochs of BOME, the 100-epoch victim protocol.
- ``cpu``: a 2-core CPU end to end in under an hour: CPU-sized U-Net and CNNs, a class-balanced
  subset of the training set, a short victim schedule. The game carries the error-minimizing
  term (κ = 1) and a label-conditioned generator and is solved by back-gradient with a one-step
  look-ahead: the paper's game did not move at this budget (docs/results/gue-cpu/).
- ``cpu-paper-game``: the same budget with the paper's game (κ = 0, x-only generator, BOME,
  generator SGD lr 1.0), for comparison.
- ``smoke``: seconds; for tests.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from stackelberg.games.unlearnable.training import TrainingConfig
from stackelberg.games.unlearnable.victim import PAPER_SCHEDULE, VictimSchedule
from stackelberg.models import (
    ConvNet,
    EncoderDecoderGenerator,
    LabelConditionedGenerator,
    ResNet18,
    UNetGenerator,
)

__all__ = ["CLASSIFIERS", "GENERATORS", "PRESETS", "Preset", "build_classifier", "build_generator"]

GENERATORS = ("unet", "unet-small", "encoder-decoder")
CLASSIFIERS = ("resnet18", "convnet", "convnet-small")


def build_generator(
    name: str, epsilon: float, in_channels: int, *, num_classes: int | None = None
) -> nn.Module:
    """``unet`` (widths 64–512, the paper's), ``unet-small`` (16–64) or ``encoder-decoder``;
    wrapped in a :class:`~stackelberg.models.LabelConditionedGenerator` when ``num_classes``
    is given."""
    base: UNetGenerator | EncoderDecoderGenerator
    if name == "unet":
        base = UNetGenerator(epsilon, in_channels)
    elif name == "unet-small":
        base = UNetGenerator(epsilon, in_channels, widths=(16, 32, 64))
    elif name == "encoder-decoder":
        base = EncoderDecoderGenerator(epsilon, in_channels)
    else:
        raise ValueError(f"generator must be one of {', '.join(GENERATORS)}; got {name!r}")
    return base if num_classes is None else LabelConditionedGenerator(base, num_classes)


def build_classifier(name: str, in_channels: int, num_classes: int) -> nn.Module:
    """``resnet18`` (CIFAR ResNet-18), ``convnet`` (widths 32/64/128, two convs per stage) or
    ``convnet-small`` (16/32/64, one conv per stage)."""
    if name == "resnet18":
        return ResNet18(num_classes, in_channels)
    if name == "convnet":
        return ConvNet(in_channels, num_classes, widths=(32, 64, 128), convs_per_stage=2)
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
        generator_lr=1.0,
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
    "cpu": _CPU_PAPER_GAME.with_changes(
        name="cpu",
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
