"""BETA-AT against PGD-AT (Robey et al. 2024) on MNIST, at CPU scale.

Trains two copies of one small CNN (same initialization, same data order): one by PGD
adversarial training (the zero-sum game on the cross-entropy), one by BETA adversarial training
(the non-zero-sum game on the margin). After every epoch both are evaluated on a fixed subset
of the test set: clean accuracy, and robust accuracy under PGD and under BETA with the same
number of steps. At the end, the full evaluation subset is attacked once more and the two
attacks' misclassification counts are compared.

    python examples/adversarial_training.py --data-dir ../shared/data/mnist-png.tar.gz \\
        --output-dir results/adversarial

Writes ``metrics.json``, ``results.md``, ``robust_accuracy.png`` and a checkpoint after every
epoch (``checkpoint.pt``, tensors only, loaded with ``weights_only=True``); ``--resume``
continues an interrupted run.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

import stackelberg as sg
from stackelberg.games.adversarial import (
    adversarial_training,
    beta_attack,
    pgd_attack,
    robust_accuracy,
)
from stackelberg.models import SmallCNN
from stackelberg.utils.io import write_json, write_text, write_torch


@dataclass
class Config:
    epsilon: float = 0.3
    steps: int = 10
    epochs: int = 10
    warmup_epochs: int = 3  # epoch e < warmup trains at ε·e/warmup (epoch 0: clean)
    train_size: int = 3000
    eval_size: int = 300
    final_eval_size: int = 1000
    batch_size: int = 100
    lr: float = 0.05
    width: int = 8
    seed: int = 0


def batches(x: torch.Tensor, y: torch.Tensor, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(y), size)]


def clean_training(model: torch.nn.Module, data: list, optimizer: torch.optim.Optimizer) -> dict:
    """One epoch of ordinary training (the first warm-up epoch, where ε is 0)."""
    model.train()
    total = 0.0
    for x, y in data:
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(y)
    return {"loss": total / sum(len(y) for _, y in data)}


def evaluate(model: torch.nn.Module, data: list, config: Config) -> dict[str, float]:
    def pgd(m, x, y):
        return pgd_attack(m, x, y, config.epsilon, config.steps)

    def beta(m, x, y):
        return beta_attack(m, x, y, config.epsilon, config.steps, num_classes=10)

    return {
        "clean": robust_accuracy(model, data, None),
        "pgd": robust_accuracy(model, data, pgd),
        "beta": robust_accuracy(model, data, beta),
    }


def main() -> None:
    defaults = Config()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="mnist-png folder or archive")
    parser.add_argument("--output-dir", type=Path, default=Path("results/adversarial"))
    parser.add_argument("--resume", action="store_true", help="continue from checkpoint.pt")
    for name, value in asdict(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args()
    config = Config(**{k: getattr(args, k) for k in asdict(defaults)})
    if not 0 < config.epsilon <= 1:
        parser.error(f"--epsilon must lie in (0, 1], got {config.epsilon}")
    if min(config.steps, config.epochs, config.train_size, config.eval_size, config.batch_size) < 1:
        parser.error("--steps, --epochs, sizes and --batch-size must be >= 1")
    print(f"seed={config.seed} config={json.dumps(asdict(config))}")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path = args.output_dir / "checkpoint.pt"

    torch.manual_seed(config.seed)
    splits = sg.data.load_image_splits(args.data_dir, ("train", "test"))
    train, test = splits["train"], splits["test"]
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(config.seed))
    train_x = train.float_images()[order[: config.train_size]]
    train_y = train.labels[order[: config.train_size]]
    test_order = torch.randperm(len(test), generator=torch.Generator().manual_seed(config.seed + 1))
    final_index = test_order[: config.final_eval_size]
    test_x, test_y = test.float_images()[final_index], test.labels[final_index]
    epoch_eval = batches(test_x[: config.eval_size], test_y[: config.eval_size], config.batch_size)

    initial = SmallCNN(width=config.width).state_dict()
    models, optimizers = {}, {}
    for attack in ("pgd", "beta"):
        models[attack] = SmallCNN(width=config.width)
        models[attack].load_state_dict(initial)
        optimizers[attack] = torch.optim.SGD(
            models[attack].parameters(), lr=config.lr, momentum=0.9, weight_decay=5e-4
        )
    history: dict[str, list[dict[str, float]]] = {"pgd": [], "beta": []}
    start_epoch = 0
    if args.resume and checkpoint_path.exists():
        state = torch.load(checkpoint_path, weights_only=True)
        for attack in models:
            models[attack].load_state_dict(state[f"{attack}_model"])
            optimizers[attack].load_state_dict(state[f"{attack}_optimizer"])
        history = json.loads((args.output_dir / "metrics.json").read_text())["history"]
        start_epoch = int(state["epoch"]) + 1
        print(f"resumed after epoch {start_epoch - 1}")

    start = time.perf_counter()
    for epoch in range(start_epoch, config.epochs):
        ramp = min(1.0, epoch / config.warmup_epochs) if config.warmup_epochs else 1.0
        generator = torch.Generator().manual_seed(config.seed * 1000 + epoch)
        shuffle = torch.randperm(config.train_size, generator=generator)
        epoch_batches = batches(train_x[shuffle], train_y[shuffle], config.batch_size)
        for attack in ("pgd", "beta"):
            t = time.perf_counter()
            if ramp == 0:
                info = clean_training(models[attack], epoch_batches, optimizers[attack])
            else:
                info = adversarial_training(
                    models[attack],
                    tqdm(epoch_batches, desc=f"epoch {epoch} {attack}-AT", leave=False),
                    attack=attack,
                    epsilon=config.epsilon * ramp,
                    num_classes=10,
                    optimizer=optimizers[attack],
                    steps=config.steps,
                    generator=generator,
                )
            seconds = time.perf_counter() - t
            metrics = evaluate(models[attack], epoch_eval, config)
            history[attack].append(
                {"epoch": epoch, "train_loss": info["loss"], "seconds": seconds, **metrics}
            )
            print(f"epoch {epoch} {attack.upper()}-AT: {json.dumps(history[attack][-1])}")
        state = {"epoch": torch.tensor(epoch)}
        for attack in models:
            state[f"{attack}_model"] = models[attack].state_dict()
            state[f"{attack}_optimizer"] = optimizers[attack].state_dict()
        payload = {"config": asdict(config), "history": history}
        write_json(args.output_dir / "metrics.json", payload)
        write_torch(checkpoint_path, state)

    final_batches = batches(test_x, test_y, config.batch_size)
    final = {attack: evaluate(models[attack], final_batches, config) for attack in models}
    for row in final.values():
        row["pgd_misclassified"] = round((1 - row["pgd"]) * len(test_y))
        row["beta_misclassified"] = round((1 - row["beta"]) * len(test_y))
    payload = {
        "config": asdict(config),
        "history": history,
        "final": final,
        "seconds": time.perf_counter() - start,
    }
    write_json(args.output_dir / "metrics.json", payload)

    lines = [
        f"MNIST, {config.train_size} training images, small CNN (width {config.width}), "
        f"ε = {config.epsilon}, {config.steps}-step attacks, {config.epochs} epochs; accuracy "
        f"on {len(test_y)} test images (%).",
        "",
        "| training | clean | PGD | BETA | misclassified by PGD | by BETA |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for attack, row in final.items():
        lines.append(
            f"| {attack.upper()}-AT | {100 * row['clean']:.1f} | {100 * row['pgd']:.1f} | "
            f"{100 * row['beta']:.1f} | {row['pgd_misclassified']} | {row['beta_misclassified']} |"
        )
    table = "\n".join(lines) + "\n"
    write_text(args.output_dir / "results.md", table)
    plot(history, config, args.output_dir / "robust_accuracy.png")
    print(table)


def plot(history: dict[str, list[dict[str, float]]], config: Config, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for attack, style in (("pgd", "--"), ("beta", "-")):
        epochs = [row["epoch"] + 1 for row in history[attack]]
        for metric, marker in (("clean", "o"), ("pgd", "s"), ("beta", "^")):
            ax.plot(
                epochs,
                [100 * row[metric] for row in history[attack]],
                style,
                marker=marker,
                label=f"{attack.upper()}-AT, {metric}",
            )
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"test accuracy (%), ε = {config.epsilon}")
    ax.set_title("BETA- against PGD-adversarial training: clean and robust accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
