"""The names the command line offers, importable without torch, so ``stackelberg --help``
and usage errors answer at once. Each tuple equals the registry it names (the solvers,
variants, defenses, presets, classifiers, datasets); ``tests/test_cli_speed.py`` checks that
they stay equal."""

from __future__ import annotations

__all__ = [
    "CLASSIFIERS",
    "DATASETS",
    "DEFAULT_MAX_PIXELS",
    "DEFENSES",
    "PRESETS",
    "SOLVERS",
    "VARIANTS",
]

#: ``stackelberg.solvers.SOLVERS``
SOLVERS = ("backgradient", "bome", "f2sa", "gda", "saba", "soba", "total_gradient")
#: ``stackelberg.unlearnable.game.VARIANTS``
VARIANTS = ("standard", "adversarial", "accuracy")
#: ``stackelberg.unlearnable.defenses.DEFENSES``
DEFENSES = ("at-2", "at-4", "at-8", "cutmix", "cutout", "grayscale", "jpeg", "mixup", "none")
#: ``stackelberg.unlearnable.presets.PRESETS``
PRESETS = (
    "cpu-em",
    "cpu-em-accuracy",
    "cpu-em-at2",
    "cpu-em-at4",
    "cpu-paper-game",
    "cpu-robust",
    "demo",
    "paper",
    "smoke",
)
#: ``stackelberg.unlearnable.architectures.CLASSIFIERS``
CLASSIFIERS = ("resnet18", "convnet-wide", "convnet", "convnet-lite", "convnet-small")
#: ``stackelberg.data.DATASETS``
DATASETS = ("cifar10", "cifar100", "folder", "digits")
#: Images with more pixels than this are skipped (and listed) by ``protect`` unless
#: ``max_pixels`` is raised; besides one tile's work, protecting takes about 8 bytes per pixel
#: (``SECURITY.md`` gives the measured figure).
DEFAULT_MAX_PIXELS = 40_000_000
