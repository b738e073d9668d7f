"""The ``stackelberg`` command: train a poison generator, poison a dataset, evaluate a victim,
protect a folder of images, inspect a checkpoint.

Exit codes: 0 success, 1 the command could not do its job (missing files, bad data, refusing
to overwrite; the message says what to do), 2 wrong usage (unknown option, bad value).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import signal
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stackelberg.unlearnable import choices as names

__all__ = ["main", "run"]

#: What a user's mistake raises (a missing or unreadable file, bad data or settings, a refused
#: overwrite): one line on stderr and exit status 1. Anything else (TypeError, RuntimeError,
#: ...) is a programming error and keeps its traceback.
_USER_ERRORS = (
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    ValueError,
    ImportError,
    OSError,
)


def _add_data_options(parser: argparse.ArgumentParser, dataset_default: str = "cifar10") -> None:
    parser.add_argument(
        "--dataset",
        choices=names.DATASETS,
        default=dataset_default,
        help="cifar10/cifar100 (official python archive), folder (split/class/image folder "
        "or .tar.gz) or digits (scikit-learn's, no download); default %(default)s",
    )
    parser.add_argument("--data-dir", type=Path, help="where the dataset is (or goes)")
    parser.add_argument(
        "--download", action="store_true", help="download CIFAR into --data-dir if missing"
    )


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--device",
        default="auto",
        help="torch device: cpu, cuda, cuda:1, ... (default auto: cuda if available, else cpu)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _epsilon(text: str) -> float:
    """ε as a fraction (0.0314) or as a ratio of two numbers (8/255)."""
    from stackelberg.checks import check_epsilon

    parts = text.split("/")
    try:
        if len(parts) > 2:
            raise ValueError("more than one '/'")
        value = float(parts[0]) / float(parts[1]) if len(parts) == 2 else float(text)
        return check_epsilon(value, name="ε", whole_level=True)
    except (ValueError, ZeroDivisionError, TypeError) as error:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a budget: {error} (write it like 8/255 or 0.0314)"
        ) from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _tile(text: str) -> int:
    value = _positive(text)
    if value < 64:
        raise argparse.ArgumentTypeError(
            f"must be at least 64 (smaller tiles are all overlap and never finish), got {text}"
        )
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stackelberg",
        description="Game Unlearnable Examples: train a poison generator, poison or protect "
        "images, and check what a victim learns from them.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser(
        "train",
        help="train a poison generator into a run folder",
        description="Train a poison generator with the GUE game. Writes checkpoint.pt (every "
        "epoch), training.json, generator.pt + generator.json and config.json into RUN_DIR.",
    )
    train.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run folder")
    train.add_argument(
        "--preset",
        choices=sorted(names.PRESETS),
        default="cpu-em",
        help="model sizes, schedule and data budget (default %(default)s); smoke runs in "
        "seconds and checks the plumbing only: it protects nothing",
    )
    train.add_argument(
        "--variant", choices=names.VARIANTS, help="game variant (default: the preset's)"
    )
    train.add_argument(
        "--solver",
        choices=sorted(names.SOLVERS),
        help="bilevel solver (default: the preset's); keeps the preset's solver options that "
        "this solver has, and says which it drops",
    )
    train.add_argument("--epsilon", type=_epsilon, help="ℓ∞ budget, e.g. 8/255 (default: preset)")
    train.add_argument("--epochs", type=_positive, help="generator epochs (default: preset)")
    train.add_argument(
        "--train-size",
        type=_positive,
        help="class-balanced training subset (default: the preset's)",
    )
    train.add_argument(
        "--resume", action="store_true", help="continue the interrupted run in RUN_DIR"
    )
    _add_data_options(train)
    _add_common(train)
    train.set_defaults(handler=_train)

    poison = commands.add_parser(
        "poison",
        help="poison a dataset split with a generator and export it",
        description="Apply a trained generator to a dataset split and export the poisoned "
        "images losslessly (.npz or a PNG folder) with a JSON manifest.",
    )
    poison.add_argument("--generator", type=Path, required=True, help="generator.pt")
    poison.add_argument(
        "--output", type=Path, required=True, help="FILE.npz, or a folder for --format png"
    )
    poison.add_argument("--format", choices=("npz", "png"), default="npz")
    poison.add_argument("--split", choices=("train", "test"), default="train")
    poison.add_argument(
        "--preset",
        choices=sorted(names.PRESETS),
        help="poison only this preset's training subset (the images `train --preset` trained "
        "on, for the same --seed), as the results of the docs do; default: the whole split",
    )
    poison.add_argument("--overwrite", action="store_true", help="replace an existing output")
    _add_data_options(poison)
    _add_common(poison)
    poison.set_defaults(handler=_poison)

    evaluate = commands.add_parser(
        "evaluate",
        help="train a victim and report its clean test accuracy",
        description="Train a fresh victim on a poisoned .npz (or on the clean training split) "
        "with an optional defense and report its accuracy on the clean test split.",
    )
    evaluate.add_argument(
        "--poisoned",
        type=Path,
        help="a .npz written by `poison` (default: the clean training split)",
    )
    evaluate.add_argument(
        "--preset",
        choices=sorted(names.PRESETS),
        help="the preset's victim protocol: its victim and schedule, and without --poisoned "
        "its clean training subset (default: convnet-lite, 15 epochs at lr 0.02, the whole "
        "training split)",
    )
    evaluate.add_argument(
        "--victim", choices=names.CLASSIFIERS, help="victim architecture (overrides the preset's)"
    )
    evaluate.add_argument("--defense", choices=sorted(names.DEFENSES), default="none")
    evaluate.add_argument("--epochs", type=_positive, help="victim epochs (overrides the preset's)")
    evaluate.add_argument("--lr", type=float, help="SGD learning rate (overrides the preset's)")
    evaluate.add_argument("--output", type=Path, help="write the result as JSON here")
    evaluate.add_argument(
        "--overwrite", action="store_true", help="replace an earlier report at --output"
    )
    _add_data_options(evaluate)
    _add_common(evaluate)
    evaluate.set_defaults(handler=_evaluate)

    protect = commands.add_parser(
        "protect",
        help="protect a folder of your own images",
        description="Perturb every image under IN_DIR (any size, PNG/JPEG/...) with a trained "
        "generator and write lossless PNGs with the same relative names under OUT_DIR, plus "
        "protect_manifest.json with each file's measured ‖δ‖∞. Unreadable files are reported "
        "and skipped; nothing is overwritten without --overwrite.",
    )
    protect.add_argument("in_dir", type=Path, metavar="IN_DIR")
    protect.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    protect.add_argument("--generator", type=Path, required=True, help="generator.pt")
    protect.add_argument(
        "--label",
        type=int,
        help="a class index of the generator's training data (0 to K-1; `stackelberg "
        "inspect` lists the classes), needed by a label-conditioned generator (the cpu-em "
        "preset's), which adds one learned pattern per class. For photos of your own that "
        "belong to no such class, pass any one index and keep it for the whole folder: that "
        "is what was measured to protect (docs/cli.md); x-only generators (cpu-paper-game, "
        "paper) were measured to protect nothing at CPU scale",
    )
    protect.add_argument(
        "--tile",
        type=_tile,
        default=1024,
        help="images larger than TILE×TILE are streamed tile by tile; the generator's memory is "
        "one tile's (about 1 GB for unet-small at 1024; at least 64; default %(default)s)",
    )
    protect.add_argument(
        "--max-pixels",
        type=_positive,
        default=names.DEFAULT_MAX_PIXELS,
        help="skip (and list) images with more pixels than this (default %(default)s; besides "
        "one tile's work, protecting takes about 8 bytes per pixel)",
    )
    written = protect.add_mutually_exclusive_group()
    written.add_argument(
        "--overwrite",
        action="store_true",
        help="redo outputs an earlier protect run wrote (never other files)",
    )
    written.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run: skip images whose output an earlier run wrote",
    )
    _add_common(protect)
    protect.set_defaults(handler=_protect)

    inspect = commands.add_parser(
        "inspect",
        help="describe a checkpoint",
        description="Print what a generator checkpoint (generator.pt + .json) or a training "
        "checkpoint (checkpoint.pt) is: architecture, ε, data, solver, date, metrics.",
    )
    inspect.add_argument("checkpoint", type=Path, metavar="CKPT")
    inspect.set_defaults(handler=_inspect)
    return parser


# -- commands -----------------------------------------------------------------------------------


def _load(args: argparse.Namespace) -> dict[str, Any]:
    from stackelberg.data import load_dataset

    return load_dataset(args.dataset, args.data_dir, download=args.download)


def _solver_change(preset: str, solver: str, kept: dict[str, Any], dropped: list[str]) -> str:
    """What ``--solver`` did to the preset's solver options, in one line."""
    kept_text = ", ".join(f"{k}={v!r}" for k, v in kept.items()) or "none"
    dropped_text = ", ".join(dropped) or "none"
    return (
        f"--solver {solver}: kept the preset {preset}'s options that {solver} has "
        f"({kept_text}); dropped the ones it has not ({dropped_text}); the rest are "
        f"{solver}'s GUE defaults"
    )


def _train(args: argparse.Namespace) -> int:
    from stackelberg.unlearnable.driver import train_preset_generator
    from stackelberg.unlearnable.presets import PRESETS, split_preset_data
    from stackelberg.utils import distributed
    from stackelberg.utils.io import write_json

    parallel = distributed.setup()
    preset = PRESETS[args.preset]
    if args.variant:
        preset = preset.with_changes(variant=args.variant)
    if args.epsilon:
        preset = preset.with_changes(epsilon=args.epsilon)
    if args.train_size:
        preset = preset.with_changes(train_size=args.train_size)
    if args.solver and args.solver != preset.training.solver:
        training, kept, dropped = preset.training.with_solver(args.solver)
        preset = preset.with_changes(training=training)
        print(_solver_change(args.preset, args.solver, kept, dropped), file=sys.stderr)
    run_dir: Path = args.run_dir
    started = (run_dir / "checkpoint.pt").exists() or (run_dir / "generator.pt").exists()
    if args.resume:
        _check_resumable(run_dir)
    elif started:
        raise FileExistsError(
            f"{run_dir} already holds a run: pass --resume to continue it, or choose another "
            "RUN_DIR"
        )
    if run_dir.exists() and not run_dir.is_dir():
        raise NotADirectoryError(f"RUN_DIR {run_dir} exists and is not a folder")
    if not started and run_dir.is_dir() and not _failed_start(run_dir) and any(run_dir.iterdir()):
        raise FileExistsError(
            f"{run_dir} already holds files that are not a training run (first: "
            f"{next(iter(sorted(run_dir.iterdir()))).name}): train writes only into a new or "
            "empty RUN_DIR"
        )
    if args.data_dir is not None:
        from stackelberg.utils.ownership import check_disjoint

        check_disjoint({"--data-dir": args.data_dir}, {"RUN_DIR": run_dir})
    config = {
        "command": "train",
        "preset": preset.to_dict(),
        "dataset": args.dataset,
        "data_dir": None if args.data_dir is None else str(args.data_dir),
        "seed": args.seed,
        "epochs": args.epochs,
        "device": args.device,
        "processes": distributed.world_size(),
        # where the quick tests' clean images come from (earlier runs held them out of the
        # training subset; this key makes their resume refuse, naming it; CHANGELOG 0.2)
        "quick_test_images": "outside the training subset",
    }
    if distributed.is_main_process():
        print(f"seed {args.seed}; config:\n{json.dumps(config, indent=2)}", flush=True)
    if args.resume:
        _check_same_run(run_dir / "config.json", config)
    splits = _load(args)
    # the preset's training subset, and clean images outside it for the quick tests
    train, _, validation, _ = split_preset_data(splits, preset, args.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    if distributed.is_main_process() and not args.resume:
        write_json(run_dir / "config.json", config)
    _, metadata = train_preset_generator(
        preset,
        train,
        run_dir,
        seed=args.seed,
        epochs=args.epochs,
        progress=not args.no_progress,
        metadata={"dataset": args.dataset, "classes": list(train.classes)},
        device=_rank_device(args.device) if parallel else args.device,
        validation=validation,
    )
    if distributed.is_main_process():
        if args.resume:  # the settings it may change (epochs, device, data_dir), once it ran
            write_json(run_dir / "config.json", config)
        print(f"generator: {run_dir / 'generator.pt'} (epoch {metadata['epoch']})")
    return 0


_CONFIG = "a training run's config.json (written by `stackelberg train`)"


def _failed_start(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds only the ``config.json`` of a ``train`` that stopped before
    its first checkpoint (bad data, say): such a folder may be started again."""
    from stackelberg.utils.files import read_json_object

    if [p.name for p in run_dir.iterdir()] != ["config.json"]:
        return False
    try:
        return read_json_object(run_dir / "config.json", _CONFIG).get("command") == "train"
    except ValueError:
        return False


def _check_resumable(run_dir: Path) -> None:
    """``train --resume`` continues only a run ``train`` started and did not finish: a folder
    with its ``config.json`` and ``checkpoint.pt``; anything else is refused before a byte is
    written."""
    checkpoint, config = run_dir / "checkpoint.pt", run_dir / "config.json"
    if not run_dir.is_dir() or not (checkpoint.exists() or (run_dir / "generator.pt").exists()):
        raise FileNotFoundError(
            f"nothing to resume: {run_dir} holds no training run (no checkpoint.pt); start it "
            "without --resume"
        )
    if not config.exists():
        raise FileNotFoundError(
            f"{run_dir} is not a training run: it has no config.json (a generator copied or "
            "downloaded there?); --resume continues only runs that `stackelberg train` began"
        )
    if not checkpoint.exists():
        raise FileNotFoundError(
            f"nothing to resume: {run_dir} holds a finished run's generator.pt but no "
            "checkpoint.pt to continue from; train further in a new RUN_DIR"
        )


#: What may change when a run is resumed: how long, where and how it runs, not what it trains.
_RESUMABLE_CHANGES = ("epochs", "device", "processes", "data_dir")


def _check_same_run(path: Path, config: dict[str, Any]) -> None:
    """Refuse to resume a run whose defining settings (preset, ε, variant, solver, data set
    and its size, seed) differ from the saved ones, naming each key that differs."""
    from stackelberg.unlearnable.game import GameOptions
    from stackelberg.unlearnable.training import differing_keys, with_resolved_options
    from stackelberg.utils.files import read_json_object

    saved = read_json_object(
        path,
        _CONFIG,
        is_valid=lambda r: None if r.get("command") == "train" else "its 'command' is not train",
    )

    if isinstance(saved.get("preset"), dict):
        saved["preset"].setdefault("achromatic", False)  # runs begun before the field
        if isinstance(saved["preset"].get("training"), dict):  # 0.1 saved changed options only
            saved["preset"]["training"] = with_resolved_options(saved["preset"]["training"])
        if isinstance(saved["preset"].get("game_options"), dict):  # likewise
            with contextlib.suppress(TypeError, ValueError):  # else compared as written
                game_options = GameOptions.from_mapping(saved["preset"]["game_options"])
                saved["preset"]["game_options"] = game_options.to_dict()

    def defining(c: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in c.items() if k not in _RESUMABLE_CHANGES}

    differing = differing_keys(defining(saved), defining(config))
    if differing:
        raise ValueError(
            f"--resume: the run in {path.parent} was started with other settings: "
            f"{'; '.join(differing)}. Resume with the same settings, or start a new RUN_DIR"
        )


def _rank_device(device: str) -> str:
    """Under torchrun on GPUs each rank uses its own (``LOCAL_RANK``) device."""
    import torch

    if device == "cuda":
        return f"cuda:{torch.cuda.current_device()}"
    return device


def _poison(args: argparse.Namespace) -> int:
    from stackelberg.unlearnable.apply import poison_images
    from stackelberg.unlearnable.checkpoint import load_generator
    from stackelberg.unlearnable.export import (
        check_png_folder_replaceable,
        export_npz,
        export_png_folder,
        quantize_poison,
    )
    from stackelberg.utils.ownership import check_disjoint

    outputs = {"--output": args.output}
    if args.format == "npz":
        if args.output.suffix != ".npz":
            raise ValueError(f"--output must name a .npz file for --format npz, got {args.output}")
        outputs["the manifest"] = args.output.with_suffix(".json")
        if args.output.exists() and not args.overwrite:
            raise FileExistsError(f"{args.output} exists: pass --overwrite to replace it")
    check_disjoint(
        {
            "--data-dir": args.data_dir,
            "--generator": args.generator,
            "the generator's metadata": args.generator.with_suffix(".json"),
        },
        outputs,
    )
    if args.format == "png":
        check_png_folder_replaceable(args.output.resolve(), args.overwrite)
    generator, metadata = load_generator(args.generator, args.device)
    splits = _load(args)
    split, indices = splits[args.split], None
    if args.preset is not None:
        from stackelberg.unlearnable.presets import PRESETS, split_preset_data

        if args.split != "train":
            raise ValueError("--preset selects a training subset: use it with --split train")
        split, indices, _, _ = split_preset_data(splits, PRESETS[args.preset], args.seed)
    _check_compatible(metadata, split.images.shape[1], len(split.classes))
    epsilon = float(metadata["epsilon"])
    poisoned = quantize_poison(
        split.images,
        poison_images(generator, split.images, split.labels, progress=not args.no_progress),
        epsilon,
        source=str(args.generator),
    )
    source = {"dataset": args.dataset, "data_dir": str(args.data_dir), "split": args.split}
    if args.preset is not None:
        source.update(preset=args.preset, seed=args.seed)
    if args.format == "npz":
        manifest = export_npz(
            args.output,
            poisoned,
            split.images,
            split.labels,
            epsilon,
            indices=indices,
            source=source,
            generator_checkpoint=args.generator,
            overwrite=args.overwrite,
        )
    else:
        manifest = export_png_folder(
            args.output,
            poisoned,
            split.images,
            split.labels,
            split.classes,
            epsilon,
            source=source,
            generator_checkpoint=args.generator,
            overwrite=args.overwrite,
        )
    print(
        f"wrote {manifest['images']} poisoned images to {args.output}; measured ‖δ‖∞ = "
        f"{manifest['measured_linf_levels']}/255 (ε = {manifest['epsilon_levels']}/255)"
    )
    return 0


def _check_compatible(metadata: dict[str, Any], channels: int, num_classes: int) -> None:
    if int(metadata["in_channels"]) != channels:
        raise ValueError(
            f"the generator takes {metadata['in_channels']}-channel images; the dataset has "
            f"{channels}"
        )
    if metadata["label_conditioned"] and int(metadata["num_classes"]) != num_classes:
        raise ValueError(
            f"the generator was trained for {metadata['num_classes']} classes; the dataset "
            f"has {num_classes}"
        )


def _evaluate(args: argparse.Namespace) -> int:
    from stackelberg.unlearnable.defenses import make_defense
    from stackelberg.unlearnable.export import read_npz
    from stackelberg.unlearnable.presets import PRESETS, split_preset_data
    from stackelberg.unlearnable.victim import VictimSchedule, train_fresh_victim
    from stackelberg.utils import distributed
    from stackelberg.utils.io import write_json
    from stackelberg.utils.ownership import check_disjoint, owned_json

    if args.output is not None:
        check_disjoint(
            {"--poisoned": args.poisoned, "--data-dir": args.data_dir}, {"--output": args.output}
        )
        earlier = owned_json(
            args.output,
            lambda r: r.get("command") == "evaluate",
            "a report written by `stackelberg evaluate`",
        )
        if earlier is not None and not args.overwrite:
            raise FileExistsError(f"{args.output} exists: pass --overwrite to replace it")
    parallel = distributed.setup()
    device = _rank_device(args.device) if parallel else args.device
    splits = _load(args)
    train, test = splits["train"], splits["test"]
    preset = None if args.preset is None else PRESETS[args.preset]
    if preset is not None and args.poisoned is None:
        train = split_preset_data(splits, preset, args.seed)[0]  # the preset's clean subset
    victim = args.victim or (preset.victim if preset else "convnet-lite")
    schedule = preset.victim_schedule if preset else VictimSchedule.scaled(15, lr=0.02)
    if args.epochs is not None:  # the same schedule shortened or stretched
        schedule = VictimSchedule.scaled(
            args.epochs, lr=schedule.lr, batch_size=schedule.batch_size, augment=schedule.augment
        )
    if args.lr is not None:
        schedule = dataclasses.replace(schedule, lr=args.lr)
    images, labels = train.images, train.labels
    if args.poisoned is not None:
        images, labels = read_npz(args.poisoned)
        if images.shape[1:] != test.images.shape[1:]:
            raise ValueError(
                f"{args.poisoned} holds images of shape {tuple(images.shape[1:])}; the test "
                f"split's are {tuple(test.images.shape[1:])}"
            )
    num_classes = len(train.classes)
    if len(labels) == 0:
        raise ValueError("the training set is empty: there is nothing to train a victim on")
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ValueError(
            f"labels must lie in [0, {num_classes}) for this dataset's {num_classes} classes, "
            f"got [{int(labels.min())}, {int(labels.max())}]"
        )
    _, result = train_fresh_victim(
        victim,
        num_classes,
        images,
        labels,
        test.images,
        test.labels,
        schedule,
        init_seed=args.seed,
        seed=args.seed,
        device=device,
        defense=make_defense(args.defense, num_classes),
        progress=not args.no_progress,
    )
    report = {
        "command": "evaluate",
        "poisoned": None if args.poisoned is None else str(args.poisoned),
        "preset": args.preset,
        "victim": victim,
        "defense": args.defense,
        "schedule": dataclasses.asdict(schedule),
        "epochs": schedule.epochs,
        "lr": schedule.lr,
        "seed": args.seed,
        "training_images": len(labels),
        "test_accuracy": result.final,
        "test_curve": result.test_accuracy,
        "seconds": result.seconds,
        "processes": distributed.world_size(),
    }
    if not distributed.is_main_process():
        return 0
    if args.output:
        write_json(args.output, report)
    print(
        f"clean test accuracy: {100 * result.final:.2f} % ({victim}, defense "
        f"{args.defense}, {len(labels)} training images)"
    )
    return 0


def _protect(args: argparse.Namespace) -> int:
    from stackelberg.unlearnable.checkpoint import load_generator
    from stackelberg.unlearnable.protect import protect_folder
    from stackelberg.utils.files import file_sha256

    generator, metadata = load_generator(args.generator, args.device)
    conditional = bool(metadata["label_conditioned"])
    if conditional and args.label is not None and not 0 <= args.label < metadata["num_classes"]:
        raise ValueError(f"--label must be in [0, {metadata['num_classes']}), got {args.label}")
    report = protect_folder(
        generator,
        args.in_dir,
        args.out_dir,
        epsilon=float(metadata["epsilon"]),
        label=args.label if metadata["label_conditioned"] else None,
        overwrite=args.overwrite,
        resume=args.resume,
        tile=args.tile,
        max_pixels=args.max_pixels,
        generator_info={
            **metadata,
            "path": str(args.generator),
            "sha256": file_sha256(args.generator),
        },
        progress=not args.no_progress,
    )
    for skipped in report.skipped:
        print(f"skipped {skipped['input']}: {skipped['reason']}", file=sys.stderr)
    if report.resumed:
        print(f"{len(report.resumed)} image(s) already protected by the interrupted run")
    worst = max((p["linf_levels"] for p in report.protected), default=0)
    print(
        f"protected {len(report.protected)} image(s) into {args.out_dir} "
        f"({report.images_per_second:.1f} images/s, largest ‖δ‖∞ {worst}/255); "
        f"skipped {len(report.skipped)}; manifest: {args.out_dir / 'protect_manifest.json'}"
    )
    if report.skipped and not report.protected:
        print("error: no image could be read", file=sys.stderr)
        return 1
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from stackelberg.utils.files import FileFormatError, file_sha256, load_tensors

    path: Path = args.checkpoint
    if path.is_dir():
        raise IsADirectoryError(
            f"{path} is a folder: pass a file in it (generator.pt, or checkpoint.pt of a run)"
        )
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.with_suffix(".json").is_file() and path.name != "checkpoint.pt":
        from stackelberg.unlearnable.checkpoint import load_generator

        generator, metadata = load_generator(path)
        parameters = sum(p.numel() for p in generator.parameters())
        description = {
            "kind": "generator",
            **metadata,
            "parameters": parameters,
            "sha256": file_sha256(path),
        }
    else:
        state = load_tensors(path, "a generator or training checkpoint")
        if not isinstance(state, dict) or "epoch" not in state:
            raise FileFormatError(
                f"{path} is neither a generator (no {path.with_suffix('.json').name} beside "
                "it) nor a training checkpoint (no epoch in it)"
            )
        description = {
            "kind": "training checkpoint",
            "epoch": state["epoch"],
            "config": state.get("config"),
            "quick_tests": state.get("quick_tests"),
            "best_epoch": state.get("best_epoch"),
        }
    description["file_modified"] = datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat(
        timespec="seconds"
    )
    print(json.dumps(description, indent=2, default=str))
    return 0


def _interrupted(command: str) -> str:
    """What an interrupted command left, and how to continue it."""
    if command == "train":
        return "interrupted: the last finished epoch is saved; rerun with --resume to continue"
    if command == "protect":
        return (
            "interrupted: every image written so far is recorded in protect_manifest.json; "
            "rerun with --resume to continue"
        )
    return f"interrupted: {command} wrote nothing (its outputs appear only when complete)"


def _raise_interrupt(signum: int, frame: object) -> None:
    """SIGTERM ends a command as Ctrl-C does, so it closes its records the same way."""
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (argparse exits with 2 on bad usage)."""
    args = build_parser().parse_args(argv)  # --help and usage errors end here, before torch
    handler: Callable[[argparse.Namespace], int] = args.handler
    import torch

    if getattr(args, "device", None) == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = getattr(args, "device", "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        print(
            f"error: --device {device}, but PyTorch sees no CUDA device here (its build: "
            f"{torch.__version__}); use --device cpu",
            file=sys.stderr,
        )
        return 1
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return handler(args)
    except _USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(_interrupted(args.command), file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)


def run() -> None:
    """Console entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
