"""The comparison suite behind ``experiments/unlearnable_tables.py``: every attack's poisons,
victims trained on them with or without a defense, and the paper's tables.

A ``Benchmark`` owns one results folder. Poisons are crafted once and cached
(``poisons/NAME.npz`` with the uint8 images, ``NAME.json`` with the wall time and the attack's
report); every victim result ("cell") is added to ``cells.json`` as soon as it is done, so an
interrupted table resumes where it stopped and tables share work (Table 3's undefended column is
Table 1, Table 5 plots Table 1's curves). All files are written atomically.

Scales (``SCALES``): ``cpu`` (a class-balanced 10 000-image subset of CIFAR-10, small CNNs,
one to a few hours per table on 2 cores), ``paper`` (GPU: full data, ResNet-18, the 100-epoch
victim protocol) and ``smoke`` (seconds, for tests).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from stackelberg.data.datasets import subset
from stackelberg.data.folders import ImageDataset
from stackelberg.unlearnable.architectures import build_classifier
from stackelberg.unlearnable.attacks import ATTACKS, Poison, craft_poison
from stackelberg.unlearnable.checkpoint import load_generator
from stackelberg.unlearnable.defenses import DEFENSES, JPEGCompression, make_defense
from stackelberg.unlearnable.driver import train_preset_generator
from stackelberg.unlearnable.presets import (
    PRESETS,
    ROBUST_TRANSFORMS,
    Preset,
    accuracy_preset,
    adversarial_preset,
    defense_aware_preset,
)
from stackelberg.unlearnable.transforms import FollowerTransforms
from stackelberg.unlearnable.victim import VictimResult, VictimSchedule, train_fresh_victim
from stackelberg.utils.io import atomic_path, write_json
from stackelberg.utils.rng import keeps_global_rng

__all__ = [
    "GENERATOR_VARIANTS",
    "SCALES",
    "TABLE_ATTACKS",
    "TABLE_DEFENSES",
    "VARIANT_POISONS",
    "Benchmark",
    "TableScale",
    "defense_spec",
]

#: The rows of Tables 1, 3 and 5: no poison, then every attack.
TABLE_ATTACKS = ("clean", *ATTACKS)
#: The columns of Table 3.
TABLE_DEFENSES = tuple(DEFENSES)
#: Poisons beyond ``ATTACKS``, by name: REM and GUE-AT against a victim that trains
#: adversarially at ``ε_a`` (the rows of the GUE paper's Table 4, "REM(8-2)" is ``rem-2``), and
#: the accuracy variant's GUE. Each is ``(how it is made, ε_a or None)``.
VARIANT_POISONS: dict[str, tuple[str, float | None]] = {
    "rem-2": ("rem", 2 / 255),
    "rem-4": ("rem", 4 / 255),
    "gue-at-2": ("gue-adversarial", 2 / 255),
    "gue-at-4": ("gue-adversarial", 4 / 255),
    "gue-accuracy": ("gue-accuracy", None),
    "gue-robust": ("gue-robust", None),  # the defense-aware game (ROBUST_TRANSFORMS)
    "gue-robust-achromatic": ("gue-robust-achromatic", None),  # same, with a gray δ
    "em-robust": ("em-robust", None),  # EM crafted through the victim's pipeline (same)
    "tap-robust": ("tap-robust", None),  # TAP crafted through it
}
#: The variant poisons made by a generator (a saved one can be given for each).
GENERATOR_VARIANTS = tuple(name for name, (how, _) in VARIANT_POISONS.items() if "gue" in how)

_JPEG_DEFENSE = re.compile(r"^jpeg-(\d+)$")


def defense_spec(defense: str) -> tuple[str, str, dict[str, Any]]:
    """``(cache key, defense name, options)`` for a column name: ``"jpeg-Q"`` is JPEG at
    quality ``Q`` (``"jpeg-10"`` is the ``"jpeg"`` defense itself, and shares its cells)."""
    match = _JPEG_DEFENSE.match(defense)
    if match is None:
        return defense, defense, {}
    quality = int(match.group(1))
    if quality == JPEGCompression().quality:
        return "jpeg", "jpeg", {}
    return defense, "jpeg", {"quality": quality}


@dataclass(frozen=True)
class TableScale:
    """Everything a table needs besides data and seed.

    ``surrogate`` is the classifier EM, TAP, DeepConfuse and ShortcutGen craft against;
    ``attack_options`` overrides attack defaults by attack name; ``gue_preset`` is the preset
    a GUE generator trains with when none is given (``gue_epochs`` overrides its epochs);
    ``adversarial_steps`` is the PGD step count of Table 3's adversarial-training defenses;
    ``robust_steps`` that of Table 4's adversarially trained victims and of the GUE-AT
    follower (the paper's 10, step ``ε_a/4``)."""

    name: str
    train_size: int | None
    test_size: int | None
    victim: str
    victim_schedule: VictimSchedule
    surrogate: str
    transfer_victims: tuple[str, ...]
    gue_preset: str
    gue_epochs: int | None = None
    adversarial_steps: int = 5
    robust_steps: int = 10
    generalization_fractions: tuple[float, ...] = (1.0, 0.8, 0.6, 0.4, 0.2)
    attack_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SCALES: dict[str, TableScale] = {
    "cpu": TableScale(
        name="cpu",
        train_size=10_000,
        test_size=None,
        victim="convnet-lite",
        victim_schedule=VictimSchedule.scaled(15, lr=0.02),
        surrogate="convnet-small",
        transfer_victims=("convnet-small", "convnet-lite", "convnet"),
        gue_preset="cpu-em",
        gue_epochs=8,
        adversarial_steps=2,
        attack_options={
            "em": {"max_rounds": 40},
            "em-classwise": {"max_rounds": 40},
            # REM cut to CPU size from the per-pass cost (≈ 36 surrogate passes a step): no
            # EOT, 5 + 5 PGD steps, 1 000 steps; REM(8-2) crafted in 21 min on 2 cores
            "rem": {
                "train_steps": 1000,
                "lr_decay_every": 400,
                "pgd_steps": 5,
                "attack_steps": 5,
                "eot_samples": 0,
            },
            "tap": {"crafting_schedule": VictimSchedule.scaled(10, lr=0.02)},
            "deepconfuse": {"epochs": 5},
            "deepconfuse-ls": {"epochs": 5},
            "shortcutgen": {"epochs": 3},
        },
    ),
    "paper": TableScale(
        name="paper",
        train_size=None,
        test_size=None,
        victim="resnet18",
        victim_schedule=VictimSchedule(),
        surrogate="resnet18",
        transfer_victims=("resnet18", "convnet", "convnet-lite"),
        gue_preset="paper",
        adversarial_steps=10,
        attack_options={
            "tap": {"crafting_schedule": VictimSchedule.scaled(40, lr=0.1), "steps": 250},
            "deepconfuse": {"epochs": 20},
            "deepconfuse-ls": {"epochs": 20},
            "shortcutgen": {"epochs": 10},
        },
    ),
    "smoke": TableScale(
        name="smoke",
        train_size=256,
        test_size=128,
        victim="convnet-small",
        victim_schedule=VictimSchedule.scaled(2, lr=0.05),
        surrogate="convnet-small",
        transfer_victims=("convnet-small", "convnet-lite"),
        gue_preset="smoke",
        adversarial_steps=1,
        robust_steps=1,
        generalization_fractions=(1.0, 0.5),
        attack_options={
            "em": {"max_rounds": 3},
            "em-classwise": {"max_rounds": 3},
            "rem": {"train_steps": 2, "pgd_steps": 1, "attack_steps": 1, "eot_samples": 0},
            "tap": {"crafting_schedule": VictimSchedule.scaled(1, lr=0.05), "steps": 2},
            "deepconfuse": {"epochs": 1},
            "deepconfuse-ls": {"epochs": 1},
            "shortcutgen": {"epochs": 1},
        },
    ),
}

#: Attacks that build surrogates from a factory, and those that take one classifier module.
_SURROGATE_ATTACKS = ("em", "em-classwise", "rem", "tap")
_GENERATOR_ATTACKS = ("deepconfuse", "deepconfuse-ls", "shortcutgen")


@torch.no_grad()
def predictions(model: nn.Module, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``model``'s predicted class for each uint8 image, in eval mode, on the CPU."""
    was_training = model.training
    model.eval()
    out = [model(chunk.to(device).float() / 255.0).argmax(1).cpu() for chunk in images.split(500)]
    model.train(was_training)
    return torch.cat(out)


class Benchmark:
    """One results folder of poisons and victim results at one scale.

    Args:
        scale: a ``TableScale`` (or the name of one in ``SCALES``).
        train, test: the full training and test splits (uint8); the scale's class-balanced
            subsets are taken with ``seed``.
        out_dir: the results folder (created).
        epsilon: the ℓ∞ budget of every attack.
        gue_generator: a saved GUE generator (``generator.pt`` with its ``.json``); without
            one, the scale's GUE preset trains one on the training subset into
            ``out_dir/gue``.
        variant_generators: saved generators for the variant poisons (``gue-at-2``,
            ``gue-at-4``, ``gue-accuracy``); the others train like the GUE one.
    """

    def __init__(
        self,
        scale: TableScale | str,
        train: ImageDataset,
        test: ImageDataset,
        out_dir: str | Path,
        *,
        epsilon: float = 8 / 255,
        seed: int = 0,
        device: str | torch.device = "cpu",
        gue_generator: str | Path | None = None,
        variant_generators: dict[str, str | Path] | None = None,
        progress: bool = True,
    ) -> None:
        if isinstance(scale, str):
            if scale not in SCALES:
                raise ValueError(f"scale must be one of {', '.join(SCALES)}; got {scale!r}")
            scale = SCALES[scale]
        self.scale, self.epsilon, self.seed = scale, epsilon, seed
        self.device, self.progress = torch.device(device), progress
        self.train, _ = subset(train, scale.train_size, seed)
        self.test, _ = subset(test, scale.test_size, seed)
        self.channels = int(self.train.images.shape[1])
        self.num_classes = len(self.train.classes)
        self.out = Path(out_dir)
        (self.out / "poisons").mkdir(parents=True, exist_ok=True)
        self.gue_generator_path = None if gue_generator is None else Path(gue_generator)
        self._gue: tuple[nn.Module, dict[str, Any]] | None = None
        self.variant_generator_paths = {
            name: Path(path) for name, path in (variant_generators or {}).items()
        }
        for name in self.variant_generator_paths:
            if not VARIANT_POISONS.get(name, ("",))[0].startswith("gue-"):
                generators = [k for k, (how, _) in VARIANT_POISONS.items() if how != "rem"]
                raise ValueError(
                    f"variant generators are for {', '.join(generators)}; got {name!r}"
                )
        self._cells_path = self.out / "cells.json"
        self.cells: dict[str, Any] = (
            json.loads(self._cells_path.read_text()) if self._cells_path.is_file() else {}
        )

    # -- poisons ----------------------------------------------------------------------------

    def _attack_options(self, attack: str) -> dict[str, Any]:
        """Device, progress, the scale's surrogate classifier and the scale's overrides."""
        options: dict[str, Any] = {"device": self.device, "progress": self.progress}
        if attack in _SURROGATE_ATTACKS:
            options["model_factory"] = lambda: build_classifier(
                self.scale.surrogate, self.channels, self.num_classes
            )
        elif attack in _GENERATOR_ATTACKS:
            options["classifier"] = build_classifier(
                self.scale.surrogate, self.channels, self.num_classes
            )
        options.update(self.scale.attack_options.get(attack, {}))
        return options

    def gue_generator(self) -> tuple[nn.Module, dict[str, Any]]:
        """The GUE generator: the given checkpoint, or one trained with the scale's preset on
        the training subset (resumed from ``out_dir/gue`` if interrupted); loaded once."""
        if self._gue is None:
            if self.gue_generator_path is not None:
                self._gue = load_generator(self.gue_generator_path, self.device)
            else:
                self._gue = self._train_generator(PRESETS[self.scale.gue_preset], "gue")
        return self._gue

    def variant_generator(self, name: str) -> tuple[nn.Module, dict[str, Any]]:
        """The generator of the variant poison ``name`` (``gue-at-2``, ``gue-at-4``,
        ``gue-accuracy``): the checkpoint given for it, or the scale's GUE preset in that
        variant (GUE-AT with ``TableScale.robust_steps`` PGD steps) trained like the
        standard one into ``out_dir/NAME``."""
        if name in self.variant_generator_paths:
            return load_generator(self.variant_generator_paths[name], self.device)
        how, adversarial_epsilon = VARIANT_POISONS[name]
        base = PRESETS[self.scale.gue_preset]
        if how == "gue-accuracy":
            preset = accuracy_preset(base)
        elif how in ("gue-robust", "gue-robust-achromatic"):
            achromatic = how == "gue-robust-achromatic"
            preset = defense_aware_preset(base, ROBUST_TRANSFORMS, achromatic=achromatic)
        elif adversarial_epsilon is not None:
            preset = adversarial_preset(base, adversarial_epsilon, steps=self.scale.robust_steps)
        else:
            raise ValueError(f"{name!r} is not a generator poison")
        return self._train_generator(preset, name)

    def _train_generator(self, preset: Preset, folder: str) -> tuple[nn.Module, dict[str, Any]]:
        return train_preset_generator(
            preset,
            self.train,
            self.out / folder,
            seed=self.seed,
            device=self.device,
            epochs=self.scale.gue_epochs,
            progress=self.progress,
        )

    def _craft(self, attack: str, **options: Any) -> Poison:
        return craft_poison(
            attack,
            self.train.images,
            self.train.labels,
            self.epsilon,
            num_classes=self.num_classes,
            seed=self.seed,
            **options,
        )

    def poison(self, attack: str) -> Poison:
        """The training subset poisoned by ``attack`` (``"clean"``: unchanged), crafted once
        and then read from ``poisons/``."""
        if attack == "clean":
            return Poison("clean", self.train.images, 0.0, {})
        if attack not in ATTACKS and attack not in VARIANT_POISONS:
            known = ", ".join((*TABLE_ATTACKS, *VARIANT_POISONS))
            raise ValueError(f"attack must be one of {known}; got {attack!r}")
        images_path = self.out / "poisons" / f"{attack}.npz"
        report_path = images_path.with_suffix(".json")
        if images_path.is_file() and report_path.is_file():
            report = json.loads(report_path.read_text())
            with np.load(images_path, allow_pickle=False) as stored:
                images = torch.from_numpy(stored["x"])
            if images.shape == self.train.images.shape:
                return Poison(attack, images, report["seconds"], report["info"])
        how, adversarial_epsilon = VARIANT_POISONS.get(attack, (attack, None))
        if how == "gue" or how.startswith("gue-"):
            generator, metadata = (
                self.gue_generator() if how == "gue" else self.variant_generator(attack)
            )
            poison = self._craft("gue", generator=generator, progress=self.progress)
            poison.info["generator"] = metadata
        elif how == "rem" and adversarial_epsilon is not None:
            options = {**self._attack_options("rem"), "adversarial_epsilon": adversarial_epsilon}
            poison = self._craft("rem", **options)
        elif how in ("em-robust", "tap-robust"):
            base = how.removesuffix("-robust")
            pipeline = FollowerTransforms(ROBUST_TRANSFORMS, seed=self.seed)
            poison = self._craft(base, **self._attack_options(base), follower_transforms=pipeline)
        else:
            poison = self._craft(attack, **self._attack_options(attack))
        with atomic_path(images_path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, x=poison.images.numpy(), y=self.train.labels.numpy())
        write_json(
            report_path,
            {
                "attack": attack,
                "seconds": poison.seconds,
                "images": len(poison.images),
                "images_per_second": poison.images_per_second,
                "measured_linf_levels": int(
                    (poison.images.int() - self.train.images.int()).abs().max()
                ),
                "info": poison.info,
            },
        )
        return poison

    # -- victims ----------------------------------------------------------------------------

    def _train_victim(
        self, victim: str, images: torch.Tensor, **options: Any
    ) -> tuple[nn.Module, VictimResult]:
        """A fresh ``victim`` trained on ``images`` (the subset's labels) with the scale's
        schedule and this benchmark's seed and device, scored on the clean test subset;
        ``options`` go to ``train_fresh_victim`` (``defense``, ``test_every_epoch``, ...)."""
        return train_fresh_victim(
            victim,
            self.num_classes,
            images,
            self.train.labels,
            self.test.images,
            self.test.labels,
            self.scale.victim_schedule,
            init_seed=self.seed,
            seed=self.seed,
            device=self.device,
            progress=self.progress,
            **options,
        )

    def _key(self, attack: str, defense: str, victim: str | None) -> str:
        return f"{attack}|{defense}|{victim or self.scale.victim}"

    def cached_result(
        self, attack: str, defense: str = "none", victim: str | None = None
    ) -> dict[str, Any] | None:
        """The cell if it has been trained, else ``None``."""
        return self.cells.get(self._key(attack, defense, victim))

    @keeps_global_rng
    def victim_result(
        self,
        attack: str,
        defense: str = "none",
        victim: str | None = None,
        *,
        train_images: torch.Tensor | None = None,
        key_suffix: str = "",
        adversarial_steps: int | None = None,
    ) -> dict[str, Any]:
        """Train the ``victim`` architecture (default: the scale's) on ``attack``'s poisons
        (or on ``train_images``) with ``defense``; returns (and caches) its final clean test
        accuracy, per-epoch curve and wall time. Only undefended victims are tested after every
        epoch (the curves of Table 5); the others only at the end. Adversarial training runs
        ``adversarial_steps`` PGD steps (default: the scale's ``adversarial_steps``); a
        different count is a different cell (``at-2/pgd-10``)."""
        victim = victim or self.scale.victim
        steps = adversarial_steps or self.scale.adversarial_steps
        defense, defense_name, options = defense_spec(defense)
        if defense.startswith("at-") and steps != self.scale.adversarial_steps:
            defense_key = f"{defense}/pgd-{steps}"
        else:
            defense_key = defense
        key = self._key(attack + key_suffix, defense_key, victim)
        if key in self.cells:
            return self.cells[key]
        images = self.poison(attack).images if train_images is None else train_images
        if defense.startswith("at-"):
            options = {"steps": steps}
        _, result = self._train_victim(
            victim,
            images,
            defense=make_defense(defense_name, self.num_classes, **options),
            test_every_epoch=defense == "none",
            description=f"{attack}/{defense}/{victim}",
        )
        cell = {
            "attack": attack + key_suffix,
            "defense": defense,
            **({"pgd_steps": steps} if defense.startswith("at-") else {}),
            "victim": victim,
            "accuracy": result.final,
            "test_curve": result.test_accuracy,
            "train_curve": result.train_accuracy,
            "seconds": result.seconds,
        }
        self.cells[key] = cell
        write_json(self._cells_path, self.cells)
        if self.progress:
            tqdm.write(f"{key}: clean test accuracy {result.final:.4f}")
        return cell

    def one_class_images(self, protected: int, label: int) -> tuple[torch.Tensor, dict[str, Any]]:
        """The training subset with the images of class ``protected`` (only those) through
        the GUE generator under ``label``, and the generator's metadata."""
        generator, metadata = self.gue_generator()
        chosen = self.train.labels == protected
        poison = craft_poison(
            "gue",
            self.train.images[chosen],
            torch.full_like(self.train.labels[chosen], label),
            self.epsilon,
            num_classes=self.num_classes,
            seed=self.seed,
            generator=generator,
        )
        images = self.train.images.clone()
        images[chosen] = poison.images
        return images, metadata

    @keeps_global_rng
    def one_class_result(self, protected: int, label: int | None) -> dict[str, Any]:
        """The scenario of a person who protects only their own photos: the training
        subset's images of class ``protected`` (and no others) go through the GUE generator,
        conditioned on ``label`` for all of them (a label-conditioned generator; ``None``:
        the clean victim, or an x-only generator's poisons if ``label`` is ignored), and the
        scale's victim trains on the result. Returns (and caches) its accuracy on each class
        of the clean test split and what it calls the protected class's test images."""
        name = "clean" if label is None else f"label-{label}"
        key = self._key(f"one-class/{protected}/{name}", "none", None)
        if key in self.cells:
            return self.cells[key]
        images, generator_info = self.train.images, {}
        if label is not None:
            images, generator_info = self.one_class_images(protected, label)
        model, result = self._train_victim(
            self.scale.victim,
            images,
            test_every_epoch=False,
            description=f"one-class {protected}/{name}",
        )
        predicted = predictions(model, self.test.images, self.device)
        truth = self.test.labels
        per_class = [
            float((predicted[truth == c] == c).float().mean()) for c in range(self.num_classes)
        ]
        called = torch.bincount(predicted[truth == protected], minlength=self.num_classes)
        cell = {
            "protected_class": protected,
            "label": label,
            "victim": self.scale.victim,
            "accuracy": result.final,
            "per_class_accuracy": per_class,
            "protected_called": called.tolist(),
            "protected_train_images": int((self.train.labels == protected).sum()),
            "seconds": result.seconds,
            "generator": generator_info,
        }
        self.cells[key] = cell
        write_json(self._cells_path, self.cells)
        return cell

    def generalization_result(self, fraction: float) -> dict[str, Any]:
        """Table 4's cell: a GUE generator trained on the first ``fraction`` of a fixed
        shuffle of the training subset poisons *all* of it; the victim's accuracy."""
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        percent = round(100 * fraction)
        key = f"gue@{percent}%|none|{self.scale.victim}"
        if key in self.cells:
            return self.cells[key]
        part, _ = subset(self.train, round(fraction * len(self.train)), self.seed + 1)
        generator, _ = train_preset_generator(
            PRESETS[self.scale.gue_preset],
            part,
            self.out / f"gue-{percent}",
            seed=self.seed,
            device=self.device,
            epochs=self.scale.gue_epochs,
            progress=self.progress,
        )
        poison = self._craft("gue", generator=generator)
        return self.victim_result("gue", train_images=poison.images, key_suffix=f"@{percent}%")

    def config(self) -> dict[str, Any]:
        return {
            "scale": self.scale.to_dict(),
            "epsilon": self.epsilon,
            "seed": self.seed,
            "train_images": len(self.train),
            "test_images": len(self.test),
            "device": str(self.device),
            "gue_generator": None
            if self.gue_generator_path is None
            else str(self.gue_generator_path),
            "variant_generators": {k: str(v) for k, v in self.variant_generator_paths.items()},
        }
