"""The figures of ``unlearnable_tables.py`` drawn from the JSON each table writes, so a
figure can be redrawn without recomputing its table:

    python experiments/table_plots.py docs/results/tables-cpu/table5.json [...]

Each table's ``NAME.json`` (every table of the suite) becomes ``NAME.png`` beside it. Every
figure has a title; lines that would share a colour differ in style; accuracies are in %
everywhere.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["DRAWN", "PLOTS", "ROBUST_LABELS", "draw", "epsilon_a", "main", "styles"]

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


def _scale(payload: dict[str, Any]) -> str:
    scale = payload.get("config", {}).get("scale", {}).get("name")
    return f" ({scale} scale)" if scale else ""


def plot_table1(payload: dict[str, Any], ax: Any) -> None:
    rows = payload["rows"]
    names = list(rows)
    colours = ["tab:gray" if name == "clean" else "tab:red" for name in names]
    ax.bar(names, [_percent(rows[name]["accuracy"]) for name in names], color=colours)
    ax.set_ylabel("victim clean test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.tick_params(axis="x", rotation=45)
    ax.set_title(f"Table 1{_scale(payload)}: victim accuracy after training on each attack")


def plot_table2(payload: dict[str, Any], ax: Any) -> None:
    rows = payload["rows"]
    positions = range(len(rows))
    ax.bar([p - 0.2 for p in positions], [_percent(r["clean"]) for r in rows.values()], 0.4,
           label="clean", color="tab:gray")  # fmt: skip
    ax.bar([p + 0.2 for p in positions], [_percent(r["gue"]) for r in rows.values()], 0.4,
           label="GUE", color="tab:red")  # fmt: skip
    ax.set_xticks(list(positions), list(rows))
    ax.set_xlabel("victim architecture")
    ax.set_ylabel("victim clean test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Table 2{_scale(payload)}: GUE's poisons against each victim")
    ax.legend()


def plot_table3(payload: dict[str, Any], ax: Any) -> None:
    attacks, defenses, grid = payload["attacks"], payload["defenses"], payload["accuracy"]
    values = [[float("nan") if v is None else _percent(v) for v in row] for row in grid]
    image = ax.imshow(values, vmin=0, vmax=100, cmap="RdYlGn")
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            text = "—" if value != value else f"{value:.0f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(defenses)), defenses, rotation=45)
    ax.set_yticks(range(len(attacks)), attacks)
    ax.set_xlabel("the victim's defense")
    ax.set_title(f"Table 3{_scale(payload)}: victim accuracy (%), attack × defense")
    ax.figure.colorbar(image, ax=ax, label="victim clean test accuracy (%)")


def plot_table4(payload: dict[str, Any], ax: Any) -> None:
    fractions = [100 * f for f in payload["fractions"]]
    ax.plot(fractions, [_percent(v) for v in payload["accuracy"]], "o-", color="tab:red",
            label="GUE")  # fmt: skip
    ax.axhline(_percent(payload["clean"]), color="gray", ls="--", label="clean victim")
    ax.set_xlabel("share of the training set the generator saw (%)")
    ax.set_ylabel("victim clean test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Table 4{_scale(payload)}: a generator trained on part of the data")
    ax.legend()


def plot_one_class(payload: dict[str, Any], ax: Any) -> None:
    classes, protected = payload["classes"], payload["protected_class"]
    rows = payload["rows"]
    width = 0.8 / len(rows)
    looks = styles(len(rows))
    for i, row in enumerate(rows):
        label = row["label"]
        positions = [c + (i - len(rows) / 2 + 0.5) * width for c in range(len(classes))]
        name = (
            "clean victim"
            if label is None
            else f"{classes[protected]} protected, --label {classes[label]}"
        )
        colour = "tab:gray" if label is None else next(looks)["color"]
        ax.bar(positions, [_percent(a) for a in row["per_class_accuracy"]], width, label=name,
               color=colour)  # fmt: skip
    ax.set_xticks(range(len(classes)), classes, rotation=45)
    ax.get_xticklabels()[protected].set_fontweight("bold")
    ax.set_xlabel("test class")
    ax.set_ylabel("victim clean test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Protecting only the {classes[protected]} images{_scale(payload)}")
    ax.legend(fontsize=7)


#: How the adversarial-training table names its rows.
ROBUST_LABELS = {
    "rem-2": "REM(8-2)",
    "rem-4": "REM(8-4)",
    "gue-at-2": "GUE-AT(8-2)",
    "gue-at-4": "GUE-AT(8-4)",
    "gue": "GUE (standard)",
}


def epsilon_a(defense: str) -> str:
    """``at-2`` → ``ε_a = 2/255``; ``none`` → ``ε_a = 0``."""
    return "ε_a = 0" if defense == "none" else f"ε_a = {defense[3:]}/255"


def plot_table4_at(payload: dict[str, Any], ax: Any) -> None:
    rows, defenses, grid = payload["rows"], payload["defenses"], payload["accuracy"]
    width = 0.8 / len(rows)
    looks = styles(len(rows))
    for i, (attack, row) in enumerate(zip(rows, grid, strict=True)):
        positions = [j + (i - len(rows) / 2 + 0.5) * width for j in range(len(row))]
        values = [float("nan") if v is None else _percent(v) for v in row]
        colour = "tab:gray" if attack == "clean" else next(looks)["color"]
        ax.bar(positions, values, width, label=ROBUST_LABELS.get(attack, attack), color=colour)
    ax.set_xticks(range(len(defenses)), [epsilon_a(d) for d in defenses])
    ax.set_xlabel("the victim's adversarial-training radius")
    ax.set_ylabel("victim clean test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Table 4 of the paper{_scale(payload)}: under adversarial training")
    ax.legend(fontsize=7, ncol=3)


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
    elif name == "table3":
        shape = (len(payload["attacks"]), len(payload["defenses"]))
        fig, ax = plt.subplots(figsize=(2.6 + 0.55 * shape[1], 1.4 + 0.45 * shape[0]))
        plot_table3(payload, ax)
    else:
        fig, ax = plt.subplots(figsize=(8, 4.2) if name == "table1" else (7, 4.2))
        PLOTS[name](payload, ax)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


PLOTS = {
    "table1": plot_table1,
    "table2": plot_table2,
    "table4": plot_table4,
    "table4-at": plot_table4_at,
    "table5": plot_table5,
    "survival": plot_survival,
    "one-class": plot_one_class,
}
DRAWN = (*PLOTS, "table3", "accuracy", "diagnostics")


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
