"""The run driver: train a preset's generator into a run folder, resuming what was
interrupted (the function behind ``stackelberg train``, the example and the experiments)."""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stackelberg.data.folders import ImageDataset
from stackelberg.unlearnable.architectures import build_classifier
from stackelberg.unlearnable.checkpoint import load_generator, save_generator
from stackelberg.unlearnable.presets import Preset, build_game
from stackelberg.unlearnable.training import GeneratorTraining
from stackelberg.utils import distributed
from stackelberg.utils.rng import keeps_global_rng

__all__ = ["train_preset_generator"]


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
