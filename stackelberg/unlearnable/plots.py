"""Figures of a GUE run, written as PNG files (matplotlib, the ``[plot]`` extra; imported only
when a figure is drawn).

- ``plot_victim_curves``: a victim's clean test accuracy per epoch, trained on clean data and
  on the poisons;
- ``plot_generator_training``: the follower's accuracy on poisoned and on clean batches during
  generator training (their gap is the attack's progress signal) and the quick tests;
- ``plot_poison_examples``: one row per class: clean image, perturbation, poison.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

__all__ = ["plot_generator_training", "plot_poison_examples", "plot_victim_curves"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_victim_curves(path: Path, clean: list[float], poisoned: list[float], title: str) -> None:
    """Clean test accuracy per victim epoch, for the victim trained on clean data and the one
    trained on the poisons."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(5, 3.5))
    epochs = range(1, len(clean) + 1)
    ax.plot(epochs, [100 * a for a in clean], marker="o", label="trained on clean data")
    ax.plot(epochs, [100 * a for a in poisoned], marker="s", label="trained on GUE poisons")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("victim epoch")
    ax.set_ylabel("clean test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_generator_training(
    path: Path,
    history: list[dict[str, float]],
    quick_tests: list[dict[str, float]],
    steps_per_epoch: int,
) -> None:
    """The follower's accuracy on poisoned and on clean batches during generator training (their
    gap is the attack's progress signal), and the quick tests' validation accuracy."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [h["step"] for h in history]
    ax.plot(
        steps,
        [100 * h["poisoned_accuracy"] for h in history],
        lw=1,
        label="follower on poisoned batch",
    )
    ax.plot(
        steps, [100 * h["clean_accuracy"] for h in history], lw=1, label="follower on clean batch"
    )
    if quick_tests:
        ax.plot(
            [t["epoch"] * steps_per_epoch for t in quick_tests],
            [100 * t["validation_accuracy"] for t in quick_tests],
            "ks-",
            label="quick-test victim, clean validation",
        )
    ax.set_xlabel("generator training step")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Generator training: the follower, and the quick-test victims")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_poison_examples(
    path: Path,
    clean: torch.Tensor,
    poisoned: torch.Tensor,
    labels: torch.Tensor,
    classes: tuple[str, ...],
    epsilon: float,
) -> None:
    """One row per class (the first ten): clean image, perturbation (scaled from [−ε, ε] to
    [0, 1]), poison."""
    plt = _pyplot()
    shown = [c for c in range(len(classes)) if (labels == c).any()][:10]  # at most 10 rows
    rows = [int(torch.nonzero(labels == c)[0]) for c in shown]
    fig, axes = plt.subplots(len(rows), 3, figsize=(4.2, 1.4 * len(rows)), squeeze=False)
    for r, i in enumerate(rows):
        x = clean[i].float() / 255
        p = poisoned[i].float() / 255
        delta = ((p - x) / (2 * epsilon) + 0.5).clamp(0, 1)
        for c, image in enumerate((x, delta, p)):
            ax = axes[r][c]
            array = image.permute(1, 2, 0).numpy()
            ax.imshow(
                array[..., 0] if array.shape[-1] == 1 else array,
                cmap="gray" if array.shape[-1] == 1 else None,
                vmin=0,
                vmax=1,
            )
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(classes[labels[i]], fontsize=7)
    for c, name in enumerate(("clean", "perturbation (scaled)", "poisoned")):
        axes[0][c].set_title(name, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
