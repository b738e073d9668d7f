"""Small unlearnable-example games and batches shared by the ``test_unlearnable_*`` files."""

from __future__ import annotations

import torch

from stackelberg.models import ConvNet, UNetGenerator
from stackelberg.unlearnable import UnlearnableGame

EPS = 8 / 255


def small_game(variant: str = "standard", seed: int = 0, **options) -> UnlearnableGame:
    torch.manual_seed(seed)
    generator = UNetGenerator(EPS, in_channels=3, widths=(4, 8))
    classifier = ConvNet(3, 4, widths=(4, 8))
    return UnlearnableGame(generator, classifier, EPS, variant, **options)


def batch(n: int = 8, seed: int = 1, classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 8, 8, generator=g), torch.randint(0, classes, (n,), generator=g)
