"""Back-gradient data poisoning (Muñoz-González et al. 2017) against retrained victims.

For each dataset, victim and fraction of poisoning points, over several random splits
(100 training points, 400 validation points held by the attacker, the rest for testing):

1. random label flips: ``m`` validation points with flipped labels, injected as they are;
2. back-gradient poisoning: the same points' features optimized (Adam on the hypergradient of
   the validation loss, projected onto ``[0, 1]``) with ``BackGradient`` in ``reverse`` mode
   (the paper's method, O(P) memory) and in ``checkpoint`` mode (exact);

then a fresh victim (new initialization) is trained on ``D_tr ∪ D_c`` by the same procedure
(``T`` steps of full-batch gradient descent) and its test error is reported. Also measured:
the relative error of the reverse-mode hypergradient against the exact one, and peak memory of
both modes as ``T`` grows.

    python examples/poisoning_attack.py --data-dir ../shared/data/mnist-png.tar.gz \\
        --output-dir results/poisoning

Writes ``results.json``, ``results.md`` and ``test_error.png`` into ``--output-dir``.
Datasets: ``mnist17`` (digits 1 vs 7), ``mnist10`` (both need ``--data-dir``: the
``mnist-png`` folder or archive), ``breast_cancer`` (bundled with scikit-learn).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

import stackelberg as sg
from stackelberg.games.poisoning import (
    PoisoningGame,
    error_rate,
    fit_full_batch,
    label_flip_poisons,
)
from stackelberg.models import MLP, LogisticRegression
from stackelberg.utils.io import write_json, write_text

DATASETS = ("mnist17", "mnist10", "breast_cancer")
MODES = {
    "reverse": "back-gradient, reverse",
    "checkpoint": "back-gradient, exact",
    "store": "back-gradient, store",
    "total_gradient": "total gradient",
}
TOTAL_GRADIENT_FOLLOWER_STEPS = 20
VICTIMS = ("logreg", "mlp")


@dataclass
class Config:
    datasets: list[str] = field(default_factory=lambda: ["breast_cancer", "mnist17", "mnist10"])
    victims: list[str] = field(default_factory=lambda: list(VICTIMS))
    fractions: list[float] = field(default_factory=lambda: [0.0, 0.05, 0.1, 0.2])
    modes: list[str] = field(default_factory=lambda: ["reverse", "checkpoint"])
    splits: int = 3
    n_train: int = 100
    n_validation: int = 400
    train_steps: int = 200  # T: the victim's full-batch gradient steps (also unrolled)
    outer_steps: int = 50
    outer_lr: float = 0.01
    weight_decay: float = 1e-3
    memory_steps: list[int] = field(default_factory=lambda: [10, 100, 1000])
    seed: int = 0


# The victims' learning rates keep α·λ_max(∇²h) below 1, so that each gradient step can be
# undone by fixed-point iteration (reverse mode) at all.
LEARNING_RATE = {"logreg": 0.05, "mlp": 0.1}


def load_dataset(name: str, data_dir: Path | None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """All points of ``name`` as ``(x, y, K)``: features flattened, in ``[0, 1]``."""
    if name == "breast_cancer":
        from sklearn.datasets import load_breast_cancer

        bunch = load_breast_cancer()
        x = torch.tensor(bunch.data, dtype=torch.float32)
        x = (x - x.min(0).values) / (x.max(0).values - x.min(0).values)
        return x, torch.tensor(bunch.target, dtype=torch.int64), 2
    if data_dir is None:
        raise SystemExit(f"--data-dir is required for {name}: the mnist-png folder or archive")
    classes = ["1", "7"] if name == "mnist17" else None
    parts = list(sg.data.load_image_splits(data_dir, ("train", "test"), classes=classes).values())
    x = torch.cat([p.float_images().flatten(1) for p in parts])
    y = torch.cat([p.labels for p in parts])
    return x, y, len(parts[0].classes)


def make_victim(kind: str, features: int, classes: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return LogisticRegression(features, classes) if kind == "logreg" else MLP(features, classes)


def attack_solver(
    mode: str,
    victim: str,
    data: dict[str, tuple[torch.Tensor, torch.Tensor]],
    poisons: tuple[torch.Tensor, torch.Tensor],
    classes: int,
    config: Config,
    seed: int,
    inner_steps: int | None = None,
) -> tuple[PoisoningGame, sg.solvers.Solver]:
    """The poisoning game on one split and the solver that attacks it.

    ``mode`` is a :class:`~stackelberg.BackGradient` mode, or ``"total_gradient"``: the
    implicit-function hypergradient at a victim first trained on ``D_tr ∪ D_c``, which then
    keeps training (warm) for ``TOTAL_GRADIENT_FOLLOWER_STEPS`` steps after each leader step.
    """
    game = PoisoningGame(
        make_victim(victim, data["train"][0].shape[1], classes, seed),
        data["train"],
        data["validation"],
        poisons,
        classes,
        config.weight_decay,
    )
    leader_optimizer = torch.optim.Adam(game.leader.parameters(), lr=config.outer_lr)
    follower_optimizer = torch.optim.SGD(game.follower.parameters(), lr=LEARNING_RATE[victim])
    if mode == "total_gradient":
        fit_full_batch(
            game.follower,
            torch.cat([data["train"][0], poisons[0]]),
            torch.cat([data["train"][1], poisons[1]]),
            steps=config.train_steps,
            lr=LEARNING_RATE[victim],
            weight_decay=config.weight_decay,
        )
        return game, sg.TotalGradient(
            game,
            leader_optimizer,
            follower_optimizer,
            linear_solver=sg.solvers.CG(max_iterations=50),
            damping=1e-3,
            follower_steps=TOTAL_GRADIENT_FOLLOWER_STEPS,
        )
    solver = sg.BackGradient(
        game,
        leader_optimizer,
        follower_optimizer,
        inner_steps=inner_steps or config.train_steps,
        inner_lr=LEARNING_RATE[victim],
        mode=mode,
        warm_start=False,  # every outer step unrolls training from the same initialization
        follower_steps=0,
    )
    return game, solver


def poison(
    mode: str,
    victim: str,
    data: dict[str, tuple[torch.Tensor, torch.Tensor]],
    poisons: tuple[torch.Tensor, torch.Tensor],
    classes: int,
    config: Config,
    seed: int,
) -> tuple[torch.Tensor, list[float]]:
    """Optimize the poisons' features; return the ones with the highest validation loss."""
    game, solver = attack_solver(mode, victim, data, poisons, classes, config, seed)
    best, best_loss, history = poisons[0].clone(), -math.inf, []
    for _ in range(config.outer_steps):
        before = game.leader.features.detach().clone()
        validation_loss = -solver.step()["leader_loss"]  # at `before`
        history.append(validation_loss)
        if validation_loss > best_loss:
            best, best_loss = before, validation_loss
    return best, history


def hypergradient_agreement(
    victim: str, data: dict, poisons: tuple, classes: int, config: Config, seed: int
) -> float:
    """‖g_reverse − g_exact‖ / ‖g_exact‖ at the initial poisons."""
    grads = {}
    for mode in ("reverse", "checkpoint"):
        _, solver = attack_solver(mode, victim, data, poisons, classes, config, seed)
        (grads[mode],) = solver.hypergradient()
    exact = grads["checkpoint"]
    return float(torch.linalg.norm(grads["reverse"] - exact) / torch.linalg.norm(exact))


def split(x: torch.Tensor, y: torch.Tensor, config: Config, seed: int) -> dict[str, tuple]:
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_tr, n_val = config.n_train, config.n_validation
    parts = {
        "train": order[:n_tr],
        "validation": order[n_tr : n_tr + n_val],
        "test": order[n_tr + n_val :],
    }
    return {name: (x[index], y[index]) for name, index in parts.items()}


def retrained_error(
    victim: str, data: dict, extra: tuple, classes: int, config: Config, seed: int
) -> float:
    """Test error of a fresh victim trained on the training set plus ``extra`` points."""
    train_x, train_y = data["train"]
    model = make_victim(victim, train_x.shape[1], classes, seed + 1000)
    fit_full_batch(
        model,
        torch.cat([train_x, extra[0]]),
        torch.cat([train_y, extra[1]]),
        steps=config.train_steps,
        lr=LEARNING_RATE[victim],
        weight_decay=config.weight_decay,
    )
    return error_rate(model, *data["test"])


def run_cell(
    dataset: str, victim: str, x: torch.Tensor, y: torch.Tensor, classes: int, config: Config
) -> dict[str, Any]:
    """All fractions and splits for one dataset and victim."""
    results: dict[str, Any] = {"fractions": {}, "hypergradient_relative_error": []}
    for fraction in config.fractions:
        rows: dict[str, list[float]] = {"label_flip": [], **{m: [] for m in config.modes}}
        for s in range(config.splits):
            seed = config.seed + s
            data = split(x, y, config, seed)
            train_x, train_y = data["train"]
            count = round(fraction * config.n_train)

            if count == 0:
                clean = retrained_error(
                    victim, data, (train_x[:0], train_y[:0]), classes, config, seed
                )
                for key in rows:
                    rows[key].append(clean)
                continue
            generator = torch.Generator().manual_seed(seed)
            poisons = label_flip_poisons(*data["validation"], count, classes, generator)
            rows["label_flip"].append(retrained_error(victim, data, poisons, classes, config, seed))
            if fraction == max(config.fractions):
                results["hypergradient_relative_error"].append(
                    hypergradient_agreement(victim, data, poisons, classes, config, seed)
                )
            for mode in config.modes:
                features, _ = poison(mode, victim, data, poisons, classes, config, seed)
                rows[mode].append(
                    retrained_error(victim, data, (features, poisons[1]), classes, config, seed)
                )
        results["fractions"][str(fraction)] = {
            key: {
                "mean": sum(v) / len(v),
                "std": float(torch.tensor(v).std()) if len(v) > 1 else 0.0,
                "runs": v,
            }
            for key, v in rows.items()
        }
    return results


def measure_memory(x: torch.Tensor, y: torch.Tensor, classes: int, config: Config) -> dict:
    """Peak memory of one reverse/store hypergradient (MLP victim) against T."""
    data = split(x, y, config, config.seed)
    poisons = label_flip_poisons(*data["validation"], 10, classes, torch.Generator().manual_seed(0))
    sg.utils.return_freed_memory_to_os()  # freed activations leave the resident set
    out: dict[str, dict[str, float]] = {}
    for mode in ("store", "checkpoint", "reverse"):
        out[mode] = {}
        for steps in config.memory_steps:
            _, solver = attack_solver(mode, "mlp", data, poisons, classes, config, 0, steps)
            _, extra = sg.utils.peak_memory(solver.hypergradient)
            out[mode][str(steps)] = extra / 2**20
    return out


def markdown(results: dict[str, Any], config: Config) -> str:
    lines = [
        "Victim test error (%) after retraining, mean ± std over "
        f"{config.splits} splits ({config.n_train} train / {config.n_validation} validation).\n"
    ]
    header = (
        "| dataset | victim | poisons | label flip | "
        + " | ".join(MODES[m] for m in config.modes)
        + " | reverse vs exact hypergradient |"
    )
    lines += [header, "|" + "---|" * (4 + len(config.modes) + 1)]
    for key, cell in results["cells"].items():
        dataset, victim = key.split("/")
        agreement = cell["hypergradient_relative_error"]
        agreement_text = f"{sum(agreement) / len(agreement):.2f} (rel. error)" if agreement else "—"
        for fraction, row in cell["fractions"].items():
            cells = [
                f"{100 * row[k]['mean']:.1f} ± {100 * row[k]['std']:.1f}"
                for k in ("label_flip", *config.modes)
            ]
            lines.append(
                f"| {dataset} | {victim} | {100 * float(fraction):.0f} % | "
                + " | ".join(cells)
                + f" | {agreement_text if float(fraction) == max(config.fractions) else ''} |"
            )
    if "memory_mib" in results:
        steps = config.memory_steps
        lines += [
            "",
            "Peak extra memory of one hypergradient, MLP victim (MiB):",
            "",
            "| mode | " + " | ".join(f"T = {t}" for t in steps) + " |",
            "|---|" + "---:|" * len(steps),
        ]
        for mode, row in results["memory_mib"].items():
            lines.append(f"| {mode} | " + " | ".join(f"{row[str(t)]:.1f}" for t in steps) + " |")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], config: Config, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = results["cells"]
    columns = min(3, len(cells))
    rows = -(-len(cells) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(cells) :]:
        ax.set_visible(False)
    for ax, (key, cell) in zip(axes.flat[: len(cells)], cells.items(), strict=True):
        fractions = [float(f) for f in cell["fractions"]]
        for label in ("label_flip", *config.modes):
            means = [100 * cell["fractions"][f][label]["mean"] for f in cell["fractions"]]
            stds = [100 * cell["fractions"][f][label]["std"] for f in cell["fractions"]]
            ax.errorbar(
                [100 * f for f in fractions],
                means,
                yerr=stds,
                marker="o",
                capsize=3,
                label=MODES.get(label, "label flip"),
            )
        ax.set_title(key)
        ax.set_xlabel("poisoning points (% of training set)")
        ax.set_ylabel("test error (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    defaults = Config()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, help="the mnist-png folder or .tar.gz archive")
    parser.add_argument("--output-dir", type=Path, default=Path("results/poisoning"))
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=defaults.datasets)
    parser.add_argument("--victims", nargs="+", choices=VICTIMS, default=defaults.victims)
    parser.add_argument("--fractions", nargs="+", type=float, default=defaults.fractions)
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=defaults.modes)
    parser.add_argument("--splits", type=int, default=defaults.splits)
    parser.add_argument("--train-steps", type=int, default=defaults.train_steps)
    parser.add_argument("--outer-steps", type=int, default=defaults.outer_steps)
    parser.add_argument("--outer-lr", type=float, default=defaults.outer_lr)
    parser.add_argument(
        "--memory-steps",
        nargs="*",
        type=int,
        default=defaults.memory_steps,
        help="T values for the memory comparison (none to skip it)",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite results.md and test_error.png from OUTPUT_DIR/results.json, run nothing",
    )
    args = parser.parse_args()
    if args.report_only:
        results = json.loads((args.output_dir / "results.json").read_text())
        config = Config(**results["config"])
        write_text(args.output_dir / "results.md", markdown(results, config))
        plot(results, config, args.output_dir / "test_error.png")
        print(markdown(results, config))
        return
    for fraction in args.fractions:
        if not 0 <= fraction < 1:
            parser.error(f"fractions must lie in [0, 1), got {fraction}")
    if args.splits < 1 or args.outer_steps < 1 or args.train_steps < 1:
        parser.error("--splits, --outer-steps and --train-steps must be >= 1")
    config = Config(
        datasets=args.datasets,
        victims=args.victims,
        fractions=sorted(args.fractions),
        modes=args.modes,
        splits=args.splits,
        train_steps=args.train_steps,
        outer_steps=args.outer_steps,
        outer_lr=args.outer_lr,
        memory_steps=args.memory_steps,
        seed=args.seed,
    )
    torch.manual_seed(config.seed)
    print(f"seed={config.seed} config={json.dumps(asdict(config))}")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"config": asdict(config), "cells": {}}
    start = time.perf_counter()
    cells = [(d, v) for d in config.datasets for v in config.victims]
    loaded: dict[str, tuple] = {}
    for dataset, victim in tqdm(cells, desc="dataset × victim"):
        if dataset not in loaded:
            loaded[dataset] = load_dataset(dataset, args.data_dir)
        x, y, classes = loaded[dataset]
        results["cells"][f"{dataset}/{victim}"] = run_cell(dataset, victim, x, y, classes, config)
        write_json(args.output_dir / "results.json", results)
    if config.memory_steps:
        x, y, classes = loaded[config.datasets[-1]]
        results["memory_mib"] = measure_memory(x, y, classes, config)
    results["seconds"] = time.perf_counter() - start
    write_json(args.output_dir / "results.json", results)
    table = markdown(results, config)
    write_text(args.output_dir / "results.md", table)
    plot(results, config, args.output_dir / "test_error.png")
    print(table)
    print(
        f"wrote {args.output_dir}/results.json, results.md, test_error.png "
        f"in {results['seconds']:.0f} s"
    )


if __name__ == "__main__":
    main()
