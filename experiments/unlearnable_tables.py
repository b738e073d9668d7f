"""The comparison suite's tables: one command per table, Markdown + JSON + PNG per table.

    python experiments/unlearnable_tables.py table1 --scale cpu --dataset folder \\
        --data-dir ../shared/data/cifar10-jpeg.tar.gz --output-dir results/tables-cpu \\
        --gue-generator results/gue-cpu/generator.pt

Commands (each writes ``NAME.md``, ``NAME.json`` and ``NAME.png`` into ``--output-dir``):

- ``table1``: victim clean test accuracy after training on each attack's poisons, with each
  attack's generation cost (wall time, images per second) (GUE paper, Table 1);
- ``table2``: transfer: GUE's poisons against several victim architectures (Table 2);
- ``table3``: defenses × attacks (Table 3 and beyond);
- ``table4``: generalization: a GUE generator trained on part of the training set poisons all
  of it (Figure 3);
- ``table5``: test accuracy per epoch of victims trained on each attack (Figure 2);
- ``table4-at``: the paper's Table 4: victims trained adversarially at ε_a ∈ {0, 2, 4}/255
  (``robust_steps`` PGD steps of ε_a/4) on clean data, REM(8-2), GUE-AT(8-2), REM(8-4),
  GUE-AT(8-4) and the standard GUE, with the paper's numbers beside; ``--rows`` makes only
  some rows (one command per row), the table shows every row made so far;
- ``survival``: each protection (clean, EM, TAP, GUE, and the defense-aware game's GUE,
  ``gue-robust``) under the victim's pipeline: none, grayscale, JPEG at qualities 10–90;
  ``--rows`` as for ``table4-at``; JSON ``rows``: ``{ATTACK: {TRANSFORM: accuracy}}``;
- ``accuracy``: the accuracy variant's GUE (the leader maximizes the CW margin) against the
  standard one, trained on the same budget: victim accuracy and both generators' curves;
- ``one-class``: a person who protects only their own photos: the images of one class
  (``--protected-class``, default ``cat``) go through the GUE generator under one label for
  all of them (``--labels``: their own class, and the first other one, by default), the rest
  stay clean; the victim's accuracy on that class and on the others, against the clean
  victim's, and what it calls the protected class;
- ``diagnostics``: noise-only accuracy and linear separability of each attack's
  perturbations, and the attacker-loss ablation (Figure 5).

Poisons and finished victims are cached in the output folder, so tables share work and an
interrupted command picks up where it stopped. Scales: ``cpu`` (this machine: hours for the
full Table 3), ``paper`` (GPU), ``smoke`` (seconds).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from comparison_suite import (
    GENERATOR_VARIANTS,
    SCALES,
    TABLE_ATTACKS,
    TABLE_DEFENSES,
    Benchmark,
    defense_spec,
)
from table_plots import ROBUST_LABELS, draw, epsilon_a

from stackelberg.data import DATASETS, load_dataset
from stackelberg.models.generators import is_conditional
from stackelberg.unlearnable.diagnostics import (
    attacker_loss_ablation,
    linear_separability,
    noise_only_accuracy,
)
from stackelberg.unlearnable.presets import PRESETS, build_classifier, build_generator
from stackelberg.utils.io import write_json, write_text

TABLES = (
    "table1",
    "table2",
    "table3",
    "table4",
    "table5",
    "table4-at",
    "accuracy",
    "survival",
    "one-class",
    "diagnostics",
)
#: The rows and columns of the paper's Table 4 (robustness to adversarial training).
ROBUST_ROWS = ("clean", "rem-2", "gue-at-2", "rem-4", "gue-at-4", "gue")
ROBUST_DEFENSES = ("none", "at-2", "at-4")
#: The GUE paper's cells (CIFAR-10, ResNet-18) for these rows and columns, where it reports
#: them: its Table 4 for clean, REM and GUE-AT, its Table 1 and defense table for the clean
#: and standard GUE victims (the references in DESIGN.md).
PAPER_ROBUST = {
    ("clean", "none"): 92.36,
    ("clean", "at-2"): 92.41,
    ("rem-2", "none"): 21.14,
    ("rem-2", "at-2"): 29.75,
    ("rem-2", "at-4"): 74.20,
    ("gue-at-2", "none"): 16.11,
    ("gue-at-2", "at-2"): 22.27,
    ("gue-at-2", "at-4"): 60.11,
    ("rem-4", "at-4"): 44.91,
    ("gue-at-4", "at-4"): 52.79,
    ("gue", "none"): 13.25,
    ("gue", "at-2"): 22.55,
    ("gue", "at-4"): 76.96,
}


#: The defense-survival table: each protection, then the defense-aware game's, against the
#: victim's pipeline (none, grayscale, JPEG from image shortcut squeezing's 10 to the 75–90
#: photo sites apply).
SURVIVAL_ROWS = (
    "clean",
    "em",
    "tap",
    "gue",
    "gue-robust",
    "gue-robust-achromatic",
    "em-robust",
    "tap-robust",
)
SURVIVAL_QUALITIES = (10, 30, 50, 75, 90)
SURVIVAL_TRANSFORMS = ("none", "grayscale", *(f"jpeg-{q}" for q in SURVIVAL_QUALITIES))
#: The goal: at most half of the clean victim's accuracy under each of these.
SURVIVAL_GOAL = ("none", "grayscale", "jpeg-10", "jpeg-75")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("table", choices=TABLES, help="which table to make")
    parser.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    parser.add_argument("--dataset", choices=DATASETS, default="folder")
    parser.add_argument("--data-dir", type=Path, help="dataset location (see load_dataset)")
    parser.add_argument("--download", action="store_true", help="download CIFAR if missing")
    parser.add_argument("--output-dir", type=Path, help="default: results/tables-SCALE")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epsilon", type=float, default=8 / 255, help="ℓ∞ budget (default 8/255)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--gue-generator",
        type=Path,
        help="a trained GUE generator.pt (with its .json); default: train the scale's preset",
    )
    parser.add_argument(
        "--attacks", help=f"comma-separated subset of {','.join(TABLE_ATTACKS)} (default: all)"
    )
    parser.add_argument(
        "--defenses", help=f"table3 only: comma-separated subset of {','.join(TABLE_DEFENSES)}"
    )
    parser.add_argument(
        "--rows",
        help=f"table4-at and survival only: the rows to make, a subset of "
        f"{','.join(ROBUST_ROWS)} (table4-at) or {','.join(SURVIVAL_ROWS)} (survival) "
        "(default: all); the table shows every row made so far",
    )
    parser.add_argument(
        "--generator",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a saved generator for a variant poison (gue-at-2, gue-at-4, gue-accuracy, "
        "gue-robust); default: train the scale's GUE preset in that variant",
    )
    parser.add_argument(
        "--cached-only",
        action="store_true",
        help="table3 only: write the table from the victims already trained, train none",
    )
    parser.add_argument(
        "--protected-class",
        default="cat",
        help="one-class only: the class whose training images are protected (name or index; "
        "default: cat)",
    )
    parser.add_argument(
        "--labels",
        help="one-class only: comma-separated labels (names or indices) the protected images "
        "are generated under, one row each (default: their own class and the first other one)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    args.attacks = _choices(args.attacks, TABLE_ATTACKS, "attack", parser)
    args.defenses = _choices(args.defenses, TABLE_DEFENSES, "defense", parser)
    rows = SURVIVAL_ROWS if args.table == "survival" else ROBUST_ROWS
    args.rows = _choices(args.rows, rows, "row", parser)
    args.generators = {}
    for item in args.generator:
        name, _, path = item.partition("=")
        if not path or name not in GENERATOR_VARIANTS:
            parser.error(
                f"--generator takes NAME=PATH with NAME one of {', '.join(GENERATOR_VARIANTS)}; "
                f"got {item!r}"
            )
        args.generators[name] = Path(path)
    args.output_dir = args.output_dir or Path("results") / f"tables-{args.scale}"
    return args


def _choices(
    value: str | None, allowed: tuple[str, ...], what: str, parser: argparse.ArgumentParser
) -> tuple[str, ...]:
    if value is None:
        return allowed
    chosen = tuple(v.strip() for v in value.split(",") if v.strip())
    unknown = [v for v in chosen if v not in allowed]
    if unknown or not chosen:
        parser.error(f"unknown {what}(s) {', '.join(unknown) or '(none)'}; choose from {allowed}")
    return chosen


# -- output ---------------------------------------------------------------------------------


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        return f"{value:.1f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_outputs(
    bench: Benchmark, name: str, title: str, markdown: str, payload: dict[str, Any]
) -> dict[str, Any]:
    """Write ``NAME.md`` and ``NAME.json``; returns the JSON record (what ``draw`` reads)."""
    config = bench.config()
    note = (
        f"\n{config['train_images']} training images, {config['test_images']} test images, "
        f"victim `{bench.scale.victim}` ({bench.scale.victim_schedule.epochs} epochs), "
        f"ε = {round(255 * bench.epsilon)}/255, seed {bench.seed}, scale `{bench.scale.name}`.\n"
    )
    write_text(bench.out / f"{name}.md", f"# {title}\n\n{markdown}{note}")
    record = {"title": title, "config": config, **payload}
    write_json(bench.out / f"{name}.json", record)
    print(f"wrote {bench.out / name}.md, .json, .png", flush=True)
    return record


def _partial(grid: list[list[float | None]], hint: str) -> str:
    """A line saying how many cells of ``grid`` are done, or nothing if all are."""
    done = sum(v is not None for row in grid for v in row)
    total = sum(len(row) for row in grid)
    if done == total:
        return ""
    return f"\nPartial: {done} of {total} cells done (— = not run yet); {hint}.\n"


def _percent(x: float) -> float:
    return 100.0 * x


# -- tables -----------------------------------------------------------------------------------


def table1(bench: Benchmark, attacks: tuple[str, ...]) -> None:
    rows, payload = [], {}
    clean = bench.victim_result("clean")["accuracy"]
    for attack in attacks:
        cell = bench.victim_result(attack)
        poison = bench.poison(attack)
        report = _report(bench, attack)
        rows.append(
            [
                attack,
                _percent(cell["accuracy"]),
                _percent(cell["accuracy"] - clean),
                f"{poison.seconds:.1f}",
                "—" if attack == "clean" else f"{poison.images_per_second:.0f}",
                _notes(attack, poison.info),
            ]
        )
        payload[attack] = {**cell, "craft_seconds": poison.seconds, "report": report}
    header = ["attack", "victim test acc. (%)", "Δ vs clean", "craft time (s)", "images/s", "notes"]
    record = write_outputs(
        bench,
        "table1",
        "Table 1: victim clean test accuracy per attack",
        markdown_table(header, rows),
        {"rows": payload},
    )
    draw("table1", record, bench.out / "table1.png")


def _report(bench: Benchmark, attack: str) -> dict[str, Any]:
    path = bench.out / "poisons" / f"{attack}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _notes(attack: str, info: dict[str, Any]) -> str:
    if attack.startswith("em"):
        state = "converged" if info.get("converged") else "NOT converged"
        return (
            f"{info.get('rounds')} rounds, surrogate poisoned-train acc "
            f"{_percent(info.get('poisoned_train_accuracy', 0)):.1f} % ({state})"
        )
    if attack == "tap":
        return (
            f"crafting model clean-train acc {_percent(info['crafting_clean_accuracy']):.1f} %, "
            f"target hit {_percent(info['target_hit_rate']):.1f} %"
        )
    if "apply_images_per_second" in info:
        fit = info.get("fit_seconds", info.get("generator", {}).get("fit_seconds"))
        fit_text = "" if fit is None else f"generator training {fit:.0f} s; "
        return f"{fit_text}forward pass {info['apply_images_per_second']:.0f} images/s"
    return ""


def table2(bench: Benchmark) -> None:
    rows, payload = [], {}
    for victim in bench.scale.transfer_victims:
        clean = bench.victim_result("clean", victim=victim)["accuracy"]
        poisoned = bench.victim_result("gue", victim=victim)["accuracy"]
        rows.append([victim, _percent(clean), _percent(poisoned), _percent(poisoned - clean)])
        payload[victim] = {"clean": clean, "gue": poisoned}
    header = ["victim", "clean (%)", "GUE (%)", "Δ"]
    record = write_outputs(
        bench,
        "table2",
        "Table 2: transfer of GUE poisons across victim architectures",
        markdown_table(header, rows)
        + "\nEach row trains that architecture as the victim, on clean data and on one and the "
        "same set of GUE poisons.\n",
        {"rows": payload},
    )
    draw("table2", record, bench.out / "table2.png")


def table3(
    bench: Benchmark, attacks: tuple[str, ...], defenses: tuple[str, ...], cached_only: bool
) -> None:
    # Column by column, so that an interrupted run leaves whole defenses done.
    cells: dict[tuple[str, str], float | None] = {}
    for defense in defenses:
        for attack in attacks:
            cell = bench.cached_result(attack, defense) if cached_only else None
            if not cached_only:
                cell = bench.victim_result(attack, defense)
            cells[attack, defense] = None if cell is None else cell["accuracy"]
    grid = [[cells[a, d] for d in defenses] for a in attacks]
    rows = [
        [a, *("—" if v is None else _percent(v) for v in row)]
        for a, row in zip(attacks, grid, strict=True)
    ]
    status = _partial(grid, "rerun the command to continue")
    record = write_outputs(
        bench,
        "table3",
        "Table 3: victim clean test accuracy (%) under each defense",
        markdown_table(["attack \\ defense", *defenses], rows) + status,
        {"attacks": list(attacks), "defenses": list(defenses), "accuracy": grid},
    )
    draw("table3", record, bench.out / "table3.png")


def table4(bench: Benchmark) -> None:
    fractions = bench.scale.generalization_fractions
    clean = bench.victim_result("clean")["accuracy"]
    cells = [bench.generalization_result(f) for f in fractions]
    rows = [
        [f"{round(100 * f)} %", _percent(c["accuracy"])]
        for f, c in zip(fractions, cells, strict=True)
    ]
    record = write_outputs(
        bench,
        "table4",
        "Table 4: a GUE generator trained on part of the training set poisons all of it",
        markdown_table(["generator's share of the training set", "victim test acc. (%)"], rows)
        + f"\nClean victim: {_percent(clean):.1f} %.\n",
        {"fractions": list(fractions), "accuracy": [c["accuracy"] for c in cells], "clean": clean},
    )
    draw("table4", record, bench.out / "table4.png")


def table5(bench: Benchmark, attacks: tuple[str, ...]) -> None:
    curves = {a: bench.victim_result(a)["test_curve"] for a in attacks}
    epochs = len(next(iter(curves.values())))
    marks = sorted({1, max(1, epochs // 4), max(1, epochs // 2), epochs})
    rows = [[a, *(_percent(c[e - 1]) for e in marks)] for a, c in curves.items()]
    write_outputs(
        bench,
        "table5",
        "Table 5: victim clean test accuracy (%) per epoch",
        markdown_table(["attack", *(f"epoch {e}" for e in marks)], rows),
        {"curves": curves},
    )
    draw("table5", {"curves": curves}, bench.out / "table5.png")


def table4_adversarial(bench: Benchmark, rows: tuple[str, ...]) -> None:
    """The paper's Table 4: make ``rows`` (poisons and victims at ε_a = 0, 2/255, 4/255), then
    write the table of every row made so far, the paper's cells beside ours."""
    steps = bench.scale.robust_steps
    for attack in rows:
        for defense in ROBUST_DEFENSES:
            bench.victim_result(attack, defense, adversarial_steps=steps)
    grid: list[list[float | None]] = []
    for attack in ROBUST_ROWS:
        row = []
        for defense in ROBUST_DEFENSES:
            key = (
                defense
                if defense == "none" or steps == bench.scale.adversarial_steps
                else (f"{defense}/pgd-{steps}")
            )
            cell = bench.cached_result(attack, key)
            row.append(None if cell is None else cell["accuracy"])
        grid.append(row)
    header = ["poison \\ victim's ε_a", *(f"{epsilon_a(d)} (ours)" for d in ROBUST_DEFENSES)]
    header += [f"{epsilon_a(d)} (paper)" for d in ROBUST_DEFENSES]
    table_rows = [
        [
            ROBUST_LABELS.get(attack, attack),
            *("—" if v is None else _percent(v) for v in row),
            *(_paper_cell(attack, d) for d in ROBUST_DEFENSES),
        ]
        for attack, row in zip(ROBUST_ROWS, grid, strict=True)
    ]
    status = _partial(grid, "`--rows NAME` makes a row")
    poisons = {
        attack: _report(bench, attack)
        for attack in ROBUST_ROWS
        if attack != "clean" and (bench.out / "poisons" / f"{attack}.json").is_file()
    }
    record = write_outputs(
        bench,
        "table4-at",
        "Table 4 (GUE paper): victim clean test accuracy (%) under adversarial training",
        markdown_table(header, table_rows)
        + f"\nAdversarial training: PGD-{steps} (step ε_a/4). The paper's cells are CIFAR-10 / "
        "ResNet-18 (— where it reports none; the standard GUE row's are from its defense "
        "table).\n" + status,
        {
            "rows": list(ROBUST_ROWS),
            "defenses": list(ROBUST_DEFENSES),
            "pgd_steps": steps,
            "accuracy": grid,
            "paper": {f"{a}|{d}": v for (a, d), v in PAPER_ROBUST.items()},
            "poisons": poisons,
        },
    )
    draw("table4-at", record, bench.out / "table4-at.png")


def _paper_cell(attack: str, defense: str) -> str:
    value = PAPER_ROBUST.get((attack, defense))
    return "—" if value is None else f"{value:.2f}"


def survival(bench: Benchmark, rows: tuple[str, ...]) -> None:
    """Make ``rows`` (victims trained on each protection's poisons after the victim's own
    pipeline: none, grayscale, JPEG at several qualities), then write the table of every row
    made so far, the clean victim under the same pipeline as the reference, and the goal
    (at most half of the clean victim's accuracy) checked per cell."""
    goal_first = (*SURVIVAL_GOAL, *(t for t in SURVIVAL_TRANSFORMS if t not in SURVIVAL_GOAL))
    for attack in rows:
        for transform in goal_first:  # an interrupted row has the goal's cells first
            bench.victim_result(attack, transform)
    table: dict[str, dict[str, float]] = {}
    grid: list[list[float | None]] = []
    for attack in SURVIVAL_ROWS:
        cells = [bench.cached_result(attack, defense_spec(t)[0]) for t in SURVIVAL_TRANSFORMS]
        grid.append([None if c is None else c["accuracy"] for c in cells])
        made = {t: c["accuracy"] for t, c in zip(SURVIVAL_TRANSFORMS, cells, strict=True) if c}
        if made:
            table[attack] = made
    clean = table.get("clean", {})

    def shown(attack: str, transform: str) -> str:
        value = table.get(attack, {}).get(transform)
        if value is None:
            return "—"
        reference = clean.get(transform)
        halved = attack != "clean" and reference is not None and value <= reference / 2
        return f"**{_percent(value):.1f}**" if halved else f"{_percent(value):.1f}"

    header = ["protection \\ victim's pipeline", *SURVIVAL_TRANSFORMS]
    table_rows = [
        [attack, *(shown(attack, t) for t in SURVIVAL_TRANSFORMS)] for attack in SURVIVAL_ROWS
    ]
    goal = {
        attack: all(t in made and t in clean and made[t] <= clean[t] / 2 for t in SURVIVAL_GOAL)
        for attack, made in table.items()
        if attack != "clean"
    }
    write_outputs(
        bench,
        "survival",
        "Protection under the victim's pipeline: victim clean test accuracy (%)",
        markdown_table(header, table_rows)
        + "\n**Bold**: at most half of the clean victim's accuracy under the same pipeline. "
        f"Goal: that under each of {', '.join(SURVIVAL_GOAL)}; met by: "
        + (", ".join(a for a, ok in goal.items() if ok) or "none")
        + ".\n"
        + _partial(grid, "`--rows NAME` makes a row"),
        {"rows": table, "transforms": list(SURVIVAL_TRANSFORMS), "goal_met": goal},
    )
    draw("survival", {"rows": table}, bench.out / "survival.png")


def accuracy_variant(bench: Benchmark) -> None:
    """The accuracy variant's GUE against the standard one: both generators trained with the
    scale's GUE preset (or the saved ones given), their victims, and their training curves
    (the follower's poisoned − clean accuracy gap and the clean CW margin)."""
    rows, payload = [], {}
    clean = bench.victim_result("clean")["accuracy"]
    for attack in ("gue", "gue-accuracy"):
        cell = bench.victim_result(attack)
        generator = _report(bench, attack).get("info", {}).get("generator", {})
        folder = bench.out / attack
        history = _training_history(folder / "training.json")
        payload[attack] = {
            "accuracy": cell["accuracy"],
            "test_curve": cell["test_curve"],
            "generator": generator,
            "training_curve": history,
        }
        rows.append(
            [
                attack,
                _percent(cell["accuracy"]),
                generator.get("epoch", "—"),
                f"{generator['fit_seconds'] / 60:.0f}" if "fit_seconds" in generator else "—",
            ]
        )
    write_outputs(
        bench,
        "accuracy",
        "The accuracy variant (CW margin) against the standard GUE game, same budget",
        markdown_table(
            ["generator", "victim test acc. (%)", "generator epoch kept", "training (min)"],
            rows,
        )
        + f"\nClean victim: {_percent(clean):.1f} %.\n",
        {"clean": clean, **payload},
    )
    draw("accuracy", {"clean": clean, **payload}, bench.out / "accuracy.png")


def class_index(value: str, classes: list[str], option: str) -> int:
    """The index of the class named ``value`` (or numbered ``value``) among ``classes``."""
    if value in classes:
        return classes.index(value)
    if value.isdigit() and int(value) < len(classes):
        return int(value)
    raise ValueError(f"{option}: no class {value!r}; the classes are {', '.join(classes)}")


def one_class(bench: Benchmark, protected: int, labels: tuple[int, ...]) -> None:
    """The one-class scenario: only class ``protected`` is protected, under each of
    ``labels``; the clean victim beside. An x-only generator ignores the label: one row."""
    classes = list(bench.train.classes)
    generator, _ = bench.gue_generator()
    rows_labels: tuple[int | None, ...] = (
        None,
        *(labels if is_conditional(generator) else labels[:1]),
    )
    cells = [bench.one_class_result(protected, label) for label in rows_labels]
    name = classes[protected]
    rows = []
    for label, cell in zip(rows_labels, cells, strict=True):
        others = [a for c, a in enumerate(cell["per_class_accuracy"]) if c != protected]
        called = cell["protected_called"]
        top = max((c for c in range(len(classes)) if c != protected), key=called.__getitem__)
        rows.append(
            [
                "clean (nothing protected)" if label is None else f"`--label {classes[label]}`",
                _percent(cell["per_class_accuracy"][protected]),
                _percent(sum(others) / len(others)),
                _percent(cell["accuracy"]),
                f"{classes[top]} ({called[top]} of {sum(called)})",
            ]
        )
    header = [
        f"{name} images protected under",
        f"victim on clean {name} (%)",
        "on the other classes (%)",
        "on all (%)",
        f"{name} most often called",
    ]
    count = cells[0]["protected_train_images"]
    record = write_outputs(
        bench,
        "one-class",
        f"Protecting only the {name} images: one label for all of them",
        markdown_table(header, rows)
        + f"\nOnly the {count} training images of class {name} are protected; the other "
        "classes stay clean. Each row trains the victim afresh.\n",
        {
            "classes": classes,
            "protected_class": protected,
            "rows": [
                {"label": label, **cell} for label, cell in zip(rows_labels, cells, strict=True)
            ],
        },
    )
    draw("one-class", record, bench.out / "one-class.png")


def _training_history(path: Path) -> list[dict[str, Any]]:
    """A generator run's logged steps (``training.json``), or none if it was loaded."""
    if not path.is_file():
        return []
    return [
        {k: h[k] for k in ("step", "clean_accuracy", "poisoned_accuracy", "clean_cw_margin")}
        for h in json.loads(path.read_text())["history"]
    ]


def diagnostics(bench: Benchmark, attacks: tuple[str, ...]) -> None:
    rows, payload = [], {}
    clean = bench.train.images.float() / 255.0
    for attack in (a for a in attacks if a != "clean"):
        delta = bench.poison(attack).images.float() / 255.0 - clean
        noise_only = noise_only_accuracy(
            delta,
            bench.train.labels,
            bench.epsilon,
            lambda: build_classifier("convnet-small", bench.channels, bench.num_classes),
            seed=bench.seed,
        )
        linear = linear_separability(
            delta, bench.train.labels, bench.epsilon, bench.num_classes, seed=bench.seed
        )
        rows.append(
            [
                attack,
                _percent(noise_only),
                _percent(linear["train_accuracy"]),
                _percent(linear["test_accuracy"]),
            ]
        )
        payload[attack] = {"noise_only_accuracy": noise_only, **linear}
        print(
            f"{attack}: noise-only accuracy {noise_only:.3f}, linear separability "
            f"{linear['train_accuracy']:.3f} (held out {linear['test_accuracy']:.3f})",
            flush=True,
        )
    preset = PRESETS[bench.scale.gue_preset]
    steps = 20 if bench.scale.name == "smoke" else 200
    print(f"attacker-loss ablation: {steps} back-gradient steps per loss", flush=True)
    curves = attacker_loss_ablation(
        bench.train,
        lambda: build_generator(preset.generator, bench.epsilon, bench.channels),
        lambda: build_classifier(preset.classifier, bench.channels, bench.num_classes),
        bench.epsilon,
        steps=steps,
        batch_size=min(128, len(bench.train)),
        seed=bench.seed,
        device=bench.device,
        progress=bench.progress,
    )
    header = ["attack", "noise-only acc. (%)", "linear train acc. (%)", "linear held-out acc. (%)"]
    write_outputs(
        bench,
        "diagnostics",
        "Diagnostics: how learnable the perturbations are on their own",
        markdown_table(header, rows)
        + "\nThe attacker-loss ablation (GUE paper, Figure 5) is in diagnostics.png.\n",
        {"rows": payload, "attacker_loss_ablation": curves},
    )
    draw("diagnostics", {"attacker_loss_ablation": curves}, bench.out / "diagnostics.png")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    try:
        splits = load_dataset(args.dataset, args.data_dir, download=args.download)
        bench = Benchmark(
            args.scale,
            splits["train"],
            splits["test"],
            args.output_dir,
            epsilon=args.epsilon,
            seed=args.seed,
            device=args.device,
            gue_generator=args.gue_generator,
            variant_generators=args.generators,
            progress=not args.no_progress,
        )
    except (FileNotFoundError, ValueError, RuntimeError, ImportError) as error:
        sys.exit(f"error: {error}")
    print(
        f"{args.table}: seed {args.seed}; config:\n"
        f"{json.dumps({**bench.config(), 'dataset': args.dataset}, indent=2, default=str)}",
        flush=True,
    )
    if args.table == "table1":
        table1(bench, args.attacks)
    elif args.table == "table2":
        table2(bench)
    elif args.table == "table3":
        table3(bench, args.attacks, args.defenses, args.cached_only)
    elif args.table == "table4":
        table4(bench)
    elif args.table == "table5":
        table5(bench, args.attacks)
    elif args.table == "table4-at":
        table4_adversarial(bench, args.rows)
    elif args.table == "accuracy":
        accuracy_variant(bench)
    elif args.table == "survival":
        survival(bench, args.rows)
    elif args.table == "one-class":
        classes = list(bench.train.classes)
        try:
            protected = class_index(args.protected_class, classes, "--protected-class")
            labels = (
                tuple(class_index(v.strip(), classes, "--labels") for v in args.labels.split(","))
                if args.labels
                else (protected, 1 if protected == 0 else 0)
            )
        except ValueError as error:
            sys.exit(f"error: {error}")
        one_class(bench, protected, labels)
    else:
        diagnostics(bench, args.attacks)


if __name__ == "__main__":
    main()
