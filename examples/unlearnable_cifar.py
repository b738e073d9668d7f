"""Game Unlearnable Examples end to end: train a poison generator, poison the training set,
and train victims on clean and on poisoned data.

    python examples/unlearnable_cifar.py --preset cpu-em --dataset folder \\
        --data-dir ../shared/data/cifar10-jpeg.tar.gz --output-dir results/gue-cpu

Steps: (1) the GUE game (generator leads, classifier follows) is solved by the preset's
solver (``train_preset_generator``, the function behind ``stackelberg train``), with a
checkpoint every epoch and a quick victim test on clean images outside the training subset;
(2) the best generator poisons the training subset, exported losslessly as
``poisoned_train.npz`` (uint8 NHWC ``x``, ``y``, ``indices`` into the source training split)
with a JSON manifest; (3) one victim trains on the clean and one on the poisoned images with
the preset's schedule, and both are scored on the clean test split every epoch.

Writes into ``--output-dir``: ``config.json``, ``checkpoint.pt`` (resume with ``--resume``),
``training.json``, ``generator.pt`` (+ ``generator.json``), ``poisoned_train.npz`` (+ ``.json``),
``metrics.json`` (``clean_victim_accuracy``, ``poisoned_victim_accuracy``, ``epsilon``, ``seed``,
``config``, per-epoch curves, timings), ``victim_accuracy.png``, ``training.png`` and
``examples.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from stackelberg.data import DATASETS, ImageDataset, load_dataset
from stackelberg.solvers import SOLVERS
from stackelberg.unlearnable.apply import poison_images
from stackelberg.unlearnable.driver import train_preset_generator
from stackelberg.unlearnable.export import export_npz, quantize_poison
from stackelberg.unlearnable.plots import (
    plot_generator_training,
    plot_poison_examples,
    plot_victim_curves,
)
from stackelberg.unlearnable.presets import PRESETS, Preset, split_preset_data
from stackelberg.unlearnable.victim import VictimSchedule, train_fresh_victim
from stackelberg.utils.io import write_json


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-em")
    parser.add_argument("--dataset", choices=DATASETS, default="cifar10")
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="an official CIFAR archive or extracted copy (cifar10/cifar100), or an image "
        "folder / .tar.gz laid out split/class/image (folder)",
    )
    parser.add_argument("--download", action="store_true", help="download CIFAR if missing")
    parser.add_argument("--output-dir", type=Path, default=Path("results/gue"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--solver", choices=sorted(SOLVERS), default=None)
    parser.add_argument("--epsilon", type=float, default=None, help="ℓ∞ budget (default 8/255)")
    parser.add_argument("--epochs", type=int, default=None, help="generator training epochs")
    parser.add_argument("--victim-epochs", type=int, default=None)
    parser.add_argument("--train-size", type=int, default=None, help="training subset size")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--resume", action="store_true", help="continue from checkpoint.pt")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def resolve_preset(args: argparse.Namespace) -> Preset:
    """The preset with the command line's changes."""
    preset = PRESETS[args.preset]
    training = dataclasses.replace(preset.training, seed=args.seed)
    if args.solver is not None and args.solver != preset.training.solver:
        training, kept, dropped = training.with_solver(args.solver)
        print(f"--solver {args.solver}: kept {kept or 'no option'}, dropped {dropped or 'none'}")
    if args.epochs is not None:
        training = dataclasses.replace(training, epochs=args.epochs)
    changes: dict[str, Any] = {"training": training}
    if args.epsilon is not None:
        changes["epsilon"] = args.epsilon
    if args.train_size is not None:
        changes["train_size"] = args.train_size
    if args.victim_epochs is not None:
        schedule = preset.victim_schedule
        changes["victim_schedule"] = VictimSchedule.scaled(
            args.victim_epochs, lr=schedule.lr, batch_size=schedule.batch_size
        )
    return preset.with_changes(**changes)


def train_victims(
    poisoned: torch.Tensor,
    train: ImageDataset,
    test: ImageDataset,
    preset: Preset,
    args: argparse.Namespace,
    done_path: Path,
    generator_sha256: str,
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """One victim on the clean and one on the poisoned training images, from the same initial
    weights, scored on the clean test split every epoch. Each finished victim is saved to
    ``done_path``, so a resumed run only trains those still missing for this generator."""
    victims: dict[str, list[float]] = {}
    timings: dict[str, float] = {}
    if args.resume and done_path.is_file():
        saved = json.loads(done_path.read_text())
        if saved.get("generator_sha256") == generator_sha256:
            victims, timings = saved["curves"], saved["timings"]
    num_classes = len(train.classes)
    for name, images in (("clean", train.images), ("poisoned", poisoned)):
        if name in victims:
            print(f"victim trained on {name} data: reused from {done_path}", flush=True)
            continue
        _, result = train_fresh_victim(
            preset.victim,
            num_classes,
            images,
            train.labels,
            test.images,
            test.labels,
            preset.victim_schedule,
            init_seed=args.seed + 1,  # both victims start from the same weights
            seed=args.seed,
            device=args.device,
            progress=not args.no_progress,
            description=f"{name} victim",
        )
        victims[name] = result.test_accuracy
        timings[f"{name}_victim_s"] = result.seconds
        saved = {"generator_sha256": generator_sha256, "curves": victims, "timings": timings}
        write_json(done_path, saved)
        print(f"victim trained on {name} data: clean test accuracy {result.final:.4f}", flush=True)
    return victims, timings


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    preset = resolve_preset(args)
    out: Path = args.output_dir
    if (out / "checkpoint.pt").exists() and not args.resume:
        sys.exit(
            f"{out / 'checkpoint.pt'} exists: pass --resume to continue it, or choose "
            "another --output-dir"
        )
    config = {
        "preset": preset.to_dict(),
        "dataset": args.dataset,
        "data_dir": None if args.data_dir is None else str(args.data_dir),
        "seed": args.seed,
        "device": args.device,
        "torch": torch.__version__,
    }
    print(f"seed {args.seed}; config:\n{json.dumps(config, indent=2)}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", config)
    progress = not args.no_progress

    start = time.perf_counter()
    try:
        splits = load_dataset(args.dataset, args.data_dir, download=args.download)
    except (FileNotFoundError, ValueError, RuntimeError, ImportError) as error:
        sys.exit(f"error: {error}")
    train, train_indices, validation, test = split_preset_data(splits, preset, args.seed)
    timings = {"load_data_s": time.perf_counter() - start}
    print(
        f"data: {len(train)} training, {len(validation)} validation, {len(test)} test images, "
        f"{len(train.classes)} classes, {tuple(train.images.shape[1:])}",
        flush=True,
    )

    # (1) The game, checkpointed every epoch; the best generator by quick test is kept.
    if args.resume and (out / "checkpoint.pt").is_file():
        print(f"resumed from {out / 'checkpoint.pt'}", flush=True)
    start = time.perf_counter()
    generator, metadata = train_preset_generator(
        preset,
        train,
        out,
        seed=args.seed,
        device=args.device,
        progress=progress,
        metadata={"dataset": args.dataset},
        validation=validation,
    )
    timings["train_generator_s"] = time.perf_counter() - start

    # (2) The training subset, poisoned and exported losslessly.
    start = time.perf_counter()
    poisoned = quantize_poison(
        train.images,
        poison_images(generator, train.images, train.labels, progress=progress),
        preset.epsilon,
    )
    timings["poison_s"] = time.perf_counter() - start
    manifest = export_npz(
        out / "poisoned_train.npz",
        poisoned,
        train.images,
        train.labels,
        preset.epsilon,
        indices=train_indices,
        generator_checkpoint=out / "generator.pt",
        source={"dataset": args.dataset, "data_dir": config["data_dir"], "split": "train"},
        overwrite=True,  # only reached on --resume; an export not written by us is refused
    )
    print(
        f"exported {manifest['images']} poisoned images, ‖δ‖∞ = "
        f"{manifest['measured_linf_levels']}/255",
        flush=True,
    )

    # (3) Victims on clean and on poisoned images, scored on the clean test split.
    victims, victim_timings = train_victims(
        poisoned, train, test, preset, args, out / "victims.json", manifest["generator_sha256"]
    )
    timings.update(victim_timings)
    history = json.loads((out / "training.json").read_text())
    metrics = {
        "clean_victim_accuracy": victims["clean"][-1],
        "poisoned_victim_accuracy": victims["poisoned"][-1],
        "epsilon": preset.epsilon,
        "seed": args.seed,
        "config": config,
        "generator_epoch": metadata["epoch"],
        "quick_tests": history["quick_tests"],
        "clean_victim_curve": victims["clean"],
        "poisoned_victim_curve": victims["poisoned"],
        "measured_linf_levels": manifest["measured_linf_levels"],
        "timings_s": timings,
    }
    write_json(out / "metrics.json", metrics)
    title = f"{preset.name} preset, ε = {round(255 * preset.epsilon)}/255"
    plot_victim_curves(out / "victim_accuracy.png", victims["clean"], victims["poisoned"], title)
    plot_generator_training(
        out / "training.png",
        history["history"],
        history["quick_tests"],
        len(train) // preset.training.batch_size,
    )
    plot_poison_examples(
        out / "examples.png", train.images, poisoned, train.labels, train.classes, preset.epsilon
    )
    print(
        f"clean victim {metrics['clean_victim_accuracy']:.4f}, poisoned victim "
        f"{metrics['poisoned_victim_accuracy']:.4f}; wrote {out}/metrics.json",
        flush=True,
    )
    return metrics


if __name__ == "__main__":
    main()
