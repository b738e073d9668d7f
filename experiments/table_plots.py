"""The figures of ``unlearnable_tables.py`` drawn from the JSON each table writes, so a
figure can be redrawn without recomputing its table:

    python experiments/table_plots.py docs/results/tables-cpu/table5.json [...]

Each ``NAME.json`` (``table5``, ``survival``, ``accuracy``, ``diagnostics``) becomes
``NAME.png`` beside it. Every figure has a title; lines that would share a colour differ in
style; accuracies are in % everywhere.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["PLOTS", "main", "styles"]

_STYLES = ("-", "--", ":", "-.")
#: Where the survival figure puts the pipelines that are not a JPEG quality.
_NO_TRANSFORM_X, _GRAYSCALE_X = 110, 0


def styles(count: int) -> Iterator[dict[str, Any]]:
    """``count`` distinct (colour, line style) pairs: ten colours, then the next line style,
    so twelve curves never share a look."""
    import matplotlib

    colours = matplotlib.colormaps["tab10"].colors
    for i in range(count):
        yield {"color": colours[i % 10], "linestyle": _STYLES[(i // 10) % len(_STYLES)]}


def _percent(value: float) -> float:
    return 100.0 * value


def plot_table5(payload: dict[str, Any], ax: Any) -> None:
    curves = payload["curves"]
    looks = styles(len(curves))
    for attack, curve in curves.items():
        look = {"color": "k", "linestyle": "-"} if attack == "clean" else next(looks)
        ax.plot(range(1, len(curve) + 1), [_percent(v) for v in curve], label=attack, **look)
    ax.set_xlabel("victim epoch")
    ax.set_ylabel("clean test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Victim clean test accuracy per epoch, by attack")
    ax.legend(fontsize=7, ncol=2)


def plot_survival(payload: dict[str, Any], ax: Any) -> None:
    rows = payload["rows"]
    for (attack, made), look in zip(rows.items(), styles(len(rows)), strict=True):
        if attack == "clean":
            look = {"color": "k", "linestyle": "-"}
        points = [(_NO_TRANSFORM_X, made.get("none"))]
        points += [(int(t.split("-")[1]), v) for t, v in made.items() if t.startswith("jpeg-")]
        points.append((_GRAYSCALE_X, made.get("grayscale")))
        points = sorted((x, _percent(v)) for x, v in points if v is not None)
        ax.plot(*zip(*points, strict=True), marker="o", label=attack, **look)
    qualities = sorted({int(t.split("-")[1]) for m in rows.values() for t in m if "jpeg" in t})
    ticks = [_GRAYSCALE_X, *qualities, _NO_TRANSFORM_X]
    ax.set_xticks(ticks, ["gray", *(str(q) for q in qualities), "none"])
    ax.set_xlabel("the victim's pipeline: grayscale, JPEG at quality q, or none")
    ax.set_ylabel("victim clean test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Protection under the victim's pipeline")
    ax.legend(fontsize=7)


def plot_accuracy(payload: dict[str, Any], axes: Any) -> None:
    left, right = axes
    runs = {k: v for k, v in payload.items() if isinstance(v, dict) and "test_curve" in v}
    for (attack, info), look in zip(runs.items(), styles(len(runs)), strict=True):
        curve = info.get("training_curve") or []
        if curve:
            gap = [_percent(h["poisoned_accuracy"] - h["clean_accuracy"]) for h in curve]
            left.plot([h["step"] for h in curve], gap, label=attack, **look)
        epochs = range(1, len(info["test_curve"]) + 1)
        right.plot(epochs, [_percent(v) for v in info["test_curve"]], label=attack, **look)
    left.set_xlabel("outer step")
    left.set_ylabel("follower: poisoned − clean accuracy (points)")
    left.set_title("The attack's progress signal")
    right.axhline(_percent(payload["clean"]), color="gray", ls="--", label="clean victim")
    right.set_xlabel("victim epoch")
    right.set_ylabel("clean test accuracy (%)")
    right.set_ylim(0, 100)
    right.set_title("Victims trained on each generator's poisons")
    for ax in (left, right):
        ax.legend(fontsize=7)


def plot_diagnostics(payload: dict[str, Any], axes: Any, ce_clip: float) -> None:
    """Two panels (gradient norm, follower loss on poisoned batches), and a third (the
    follower's cross-entropy on clean batches) when the payload has it (tables written
    before it was recorded do not)."""
    curves = payload["attacker_loss_ablation"]
    for index, ((loss_name, curve), look) in enumerate(
        zip(curves.items(), styles(len(curves)), strict=True)
    ):
        # each loss in its own line style, thinner as they go, so that curves that coincide
        # (ce and ce_clip can) stay visible on top of each other
        look = {**look, "linestyle": _STYLES[index % len(_STYLES)], "linewidth": 2.5 - 0.6 * index}
        axes[0].plot(curve["attacker_grad_norm"], label=loss_name, **look)
        axes[1].plot(curve["poisoned_loss"], label=loss_name, **look)
        if len(axes) > 2 and "clean_loss" in curve:
            axes[2].plot(curve["clean_loss"], label=f"{loss_name}: mean", **look)
            dotted = {**look, "linestyle": (0, (1, 3))}
            axes[2].plot(curve["max_clean_loss"], label=f"{loss_name}: max", **dotted)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("generator gradient norm")
    axes[1].set_ylabel("follower loss on poisoned batch")
    titles = ["Generator gradient", "Follower on poisoned data"]
    if len(axes) > 2:
        axes[2].axhline(ce_clip, color="gray", ls="--", label="ce_clip level")
        axes[2].set_ylabel("follower cross-entropy on clean batch")
        titles.append("Follower on clean data")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xlabel("batch")
        ax.set_title(title)
        ax.legend(fontsize=7)


def draw(name: str, payload: dict[str, Any], path: Path) -> None:
    """Draw the figure of table ``name`` from its JSON ``payload`` into ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from stackelberg.unlearnable.losses import DEFAULT_CE_CLIP
    from stackelberg.utils.io import atomic_path

    if name == "diagnostics":
        curves = payload["attacker_loss_ablation"].values()
        panels = 3 if any("clean_loss" in curve for curve in curves) else 2
        fig, axes = plt.subplots(1, panels, figsize=(4.4 * panels, 3.8))
        plot_diagnostics(payload, axes, DEFAULT_CE_CLIP)
    elif name == "accuracy":
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        plot_accuracy(payload, axes)
    else:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        PLOTS[name](payload, ax)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


PLOTS = {"table5": plot_table5, "survival": plot_survival}
DRAWN = ("table5", "survival", "accuracy", "diagnostics")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tables", type=Path, nargs="+", help="NAME.json files a table wrote")
    parser.add_argument(
        "--table", choices=DRAWN, help="which table the files are (default: their name)"
    )
    parser.add_argument("--output", type=Path, help="the PNG (one file; default NAME.png)")
    args = parser.parse_args(argv)
    if args.output is not None and len(args.tables) != 1:
        parser.error("--output takes one table")
    for path in args.tables:
        name = args.table or path.stem
        if name not in DRAWN:
            parser.error(f"{path}: not one of {', '.join(f'{n}.json' for n in DRAWN)}")
        output = args.output or path.with_suffix(".png")
        draw(name, json.loads(path.read_text()), output)
        print(f"wrote {output}")


if __name__ == "__main__":
    main()
