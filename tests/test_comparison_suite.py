"""Diagnostics, the generator checkpoint format, the benchmark's caching, and every table
command end to end at the smoke scale."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import comparison_suite as benchmark_module
import pytest
import torch
from comparison_suite import Benchmark
from conftest import assert_png_figure

from stackelberg.data import load_digits
from stackelberg.unlearnable.attacks import classwise_noise, random_noise
from stackelberg.unlearnable.checkpoint import load_generator, save_generator
from stackelberg.unlearnable.diagnostics import (
    attacker_loss_ablation,
    linear_separability,
    noise_only_accuracy,
)
from stackelberg.unlearnable.presets import build_classifier, build_generator
from tests.conftest import HANG_TIMEOUT

EPS = 8 / 255
ROOT = Path(__file__).resolve().parents[1]


def images_and_labels(n: int = 200, k: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8), torch.arange(n) % k


def test_linear_separability_separates_classwise_noise_but_not_random_noise() -> None:
    images, labels = images_and_labels()
    classwise = classwise_noise(images, labels, EPS, num_classes=4).delta
    random = random_noise(images, labels, EPS, num_classes=4).delta
    separable = linear_separability(classwise, labels, EPS, 4)
    assert separable == {"train_accuracy": 1.0, "test_accuracy": 1.0}
    noise = linear_separability(random, labels, EPS, 4)
    assert noise["train_accuracy"] == 1.0  # 192 features, 160 points: it can memorize ...
    assert noise["test_accuracy"] < 0.5  # ... but nothing generalizes (chance is 25 %)
    with pytest.raises(ValueError, match="need perturbations"):
        linear_separability(random[:, 0], labels, EPS, 4)


def test_noise_only_accuracy_is_high_for_a_shortcut_and_chance_for_noise() -> None:
    images, labels = images_and_labels(400)
    factory = lambda: build_classifier("convnet-small", 3, 4)  # noqa: E731
    classwise = classwise_noise(images, labels, EPS, num_classes=4).delta
    assert noise_only_accuracy(classwise, labels, EPS, factory) == 1.0
    random = random_noise(images, labels, EPS, num_classes=4).delta
    assert noise_only_accuracy(random, labels, EPS, factory) < 0.45


@pytest.mark.slow
def test_attacker_loss_ablation_records_every_step_from_one_start() -> None:
    digits = load_digits()["train"]
    curves = attacker_loss_ablation(
        digits,
        lambda: build_generator("unet-small", EPS, 1),
        lambda: build_classifier("convnet-small", 1, 10),
        EPS,
        steps=5,
        batch_size=32,
    )
    assert set(curves) == {"sur", "ce", "ce_clip"}
    for curve in curves.values():
        assert all(len(values) == 5 for values in curve.values())
        assert all(v >= 0 for v in curve["attacker_grad_norm"])
        assert all(
            m >= a for m, a in zip(curve["max_clean_loss"], curve["clean_loss"], strict=True)
        )
    # Same initial networks and batch: the first poisoned loss does not depend on L_a.
    first = {name: curve["poisoned_loss"][0] for name, curve in curves.items()}
    assert first["sur"] == pytest.approx(first["ce"]) == pytest.approx(first["ce_clip"])
    # ... and the first clean loss is the fresh classifier's cross-entropy on that batch.
    torch.manual_seed(0)
    build_generator("unet-small", EPS, 1)
    classifier = build_classifier("convnet-small", 1, 10)
    index = torch.randperm(len(digits), generator=torch.Generator().manual_seed(0))[:32]
    with torch.no_grad():
        logits = classifier(digits.images[index].float() / 255.0)
    expected = torch.nn.functional.cross_entropy(logits, digits.labels[index]).item()
    assert all(c["clean_loss"][0] == pytest.approx(expected, rel=1e-5) for c in curves.values())


def test_generator_checkpoints_round_trip_and_fail_clearly(tmp_path: Path) -> None:
    generator = build_generator("unet-small", EPS, 3, num_classes=4)
    metadata = {
        "architecture": "unet-small",
        "epsilon": EPS,
        "in_channels": 3,
        "label_conditioned": True,
        "num_classes": 4,
        "solver": "bome",
    }
    save_generator(tmp_path / "g.pt", generator, metadata)
    loaded, meta = load_generator(tmp_path / "g.pt")
    assert meta == metadata
    for (name, a), (_, b) in zip(
        generator.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="lacks"):
        save_generator(tmp_path / "h.pt", generator, {"architecture": "unet-small"})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_generator(tmp_path / "missing.pt")
    (tmp_path / "g.json").write_text(json.dumps({**metadata, "architecture": "unet"}))
    with pytest.raises(ValueError, match=r"g\.pt does not fit g\.json: 24 tensor\(s\) missing"):
        load_generator(tmp_path / "g.pt")


def test_benchmark_caches_poisons_and_victims(tmp_path: Path, monkeypatch) -> None:
    splits = load_digits()
    bench = Benchmark("smoke", splits["train"], splits["test"], tmp_path, progress=False)
    first = bench.victim_result("random")
    assert (tmp_path / "poisons" / "random.npz").is_file()
    calls = []
    monkeypatch.setattr(benchmark_module, "train_fresh_victim", lambda *a, **k: calls.append(1))
    monkeypatch.setattr(benchmark_module, "craft_poison", lambda *a, **k: calls.append(1))
    reopened = Benchmark("smoke", splits["train"], splits["test"], tmp_path, progress=False)
    assert reopened.victim_result("random") == first
    assert torch.equal(reopened.poison("random").images, bench.poison("random").images)
    assert calls == []
    with pytest.raises(ValueError, match="scale must be one of"):
        Benchmark("huge", splits["train"], splits["test"], tmp_path)


def test_every_scale_sizes_the_costly_attacks(tmp_path: Path) -> None:
    """REM at the authors' settings would take days on a CPU: every CPU-sized scale overrides
    it, and the smoke scale crafts it in seconds against the scale's surrogate."""
    for scale in ("cpu", "smoke"):
        assert benchmark_module.SCALES[scale].attack_options["rem"]["eot_samples"] == 0
    splits = load_digits()
    bench = Benchmark("smoke", splits["train"], splits["test"], tmp_path, progress=False)
    poison = bench.poison("rem")
    assert poison.info["train_steps"] == 2 and poison.images.shape == bench.train.images.shape
    assert (poison.images.int() - bench.train.images.int()).abs().max() <= 8


def run_table(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "experiments" / "unlearnable_tables.py"), *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=HANG_TIMEOUT)


@pytest.mark.slow
def test_every_table_command_writes_markdown_json_and_png(tmp_path: Path) -> None:
    common = [
        "--scale",
        "smoke",
        "--dataset",
        "digits",
        "--output-dir",
        str(tmp_path),
        "--no-progress",
    ]
    attacks = ["--attacks", "clean,random,classwise,lsp,gue"]
    for table, extra in [
        ("table1", attacks),
        ("table2", []),
        ("table3", [*attacks, "--defenses", "none,grayscale,jpeg,at-2"]),
        ("table4", []),
        ("table5", attacks),
        ("diagnostics", attacks),
        ("one-class", ["--protected-class", "3"]),
    ]:
        result = run_table(table, *common, *extra)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "seed 0" in result.stdout
        assert "\n|---|" in (tmp_path / f"{table}.md").read_text()  # a Markdown table
        assert json.loads((tmp_path / f"{table}.json").read_text())  # valid, not empty
        assert_png_figure(tmp_path / f"{table}.png")
    table3 = json.loads((tmp_path / "table3.json").read_text())
    table1 = json.loads((tmp_path / "table1.json").read_text())
    # Table 3's undefended column is Table 1's result, not a second run.
    column = table3["defenses"].index("none")
    for attack, row in zip(table3["attacks"], table3["accuracy"], strict=True):
        assert row[column] == table1["rows"][attack]["accuracy"]
    table4 = json.loads((tmp_path / "table4.json").read_text())
    assert table4["fractions"] == [1.0, 0.5] and len(table4["accuracy"]) == 2
    assert (tmp_path / "gue-50" / "generator.pt").is_file()


def test_one_class_protects_only_that_class_under_the_label_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one-class scenario changes the images of the protected class and no others,
    within the budget, and a label-conditioned generator's label changes the poison."""
    from stackelberg.models import LabelConditionedGenerator, UNetGenerator

    splits = load_digits()
    bench = Benchmark("smoke", splits["train"], splits["test"], tmp_path, progress=False)
    torch.manual_seed(0)
    generator = LabelConditionedGenerator(
        UNetGenerator(8 / 255, in_channels=1, widths=(8, 16)), num_classes=10
    )
    with torch.no_grad():  # a generator that perturbs (its patterns start at zero)
        for parameter in generator.parameters():
            parameter.normal_()
    monkeypatch.setattr(bench, "gue_generator", lambda: (generator, {"name": "random"}))
    chosen = bench.train.labels == 3
    as_itself, info = bench.one_class_images(3, 3)
    as_zero, _ = bench.one_class_images(3, 0)
    change = (as_itself.int() - bench.train.images.int()).abs()
    assert info == {"name": "random"}
    assert int(change[~chosen].max()) == 0
    assert 0 < int(change[chosen].max()) <= 8  # ⌊255 · ε⌋ levels at most
    assert not torch.equal(as_itself[chosen], as_zero[chosen])


def test_one_class_names_the_classes_when_the_class_is_unknown(tmp_path: Path) -> None:
    result = run_table(
        "one-class", "--scale", "smoke", "--dataset", "digits", "--output-dir", str(tmp_path)
    )
    assert result.returncode == 1
    assert "--protected-class: no class 'cat'; the classes are 0, 1, 2" in result.stderr


@pytest.mark.slow
def test_variant_poisons_keep_the_budget_and_say_how_they_were_made(tmp_path: Path) -> None:
    splits = load_digits()
    bench = Benchmark("smoke", splits["train"], splits["test"], tmp_path, progress=False)
    rem = bench.poison("rem-4")
    assert rem.info["adversarial_epsilon"] == pytest.approx(4 / 255)
    gue_at = bench.poison("gue-at-2")
    generator = gue_at.info["generator"]
    assert generator["variant"] == "adversarial" and generator["preset"] == "smoke-at2"
    assert bench.poison("gue-accuracy").info["generator"]["variant"] == "accuracy"
    for poison in (rem, gue_at):
        assert (poison.images.int() - bench.train.images.int()).abs().max() <= 8
    # A PGD step count other than the scale's Table 3 count is its own cell.
    cell = bench.victim_result("clean", "at-2", adversarial_steps=2)
    assert cell["pgd_steps"] == 2 and bench.cached_result("clean", "at-2/pgd-2") == cell
    assert bench.cached_result("clean", "at-2") is None
    with pytest.raises(ValueError, match="rem-2"):
        bench.poison("rem-3")
    with pytest.raises(ValueError, match="variant generators are for"):
        Benchmark(
            "smoke", splits["train"], splits["test"], tmp_path, variant_generators={"rem-2": "x"}
        )


@pytest.mark.slow
def test_table4_at_makes_the_rows_asked_for_and_shows_the_rest_as_missing(
    tmp_path: Path,
) -> None:
    common = ["--scale", "smoke", "--dataset", "digits", "--output-dir", str(tmp_path)]
    result = run_table("table4-at", *common, "--no-progress", "--rows", "clean,gue-at-2")
    assert result.returncode == 0, result.stderr[-2000:]
    table = json.loads((tmp_path / "table4-at.json").read_text())
    done = {
        row: [v is not None for v in values]
        for row, values in zip(table["rows"], table["accuracy"], strict=True)
    }
    assert done["clean"] == done["gue-at-2"] == [True, True, True]
    assert done["rem-2"] == done["gue"] == [False, False, False]
    assert table["paper"]["gue-at-2|at-2"] == 22.27
    assert table["paper"]["rem-2|none"] == 21.14
    markdown = (tmp_path / "table4-at.md").read_text()
    assert "GUE-AT(8-2)" in markdown and "Partial: 6 of 18 cells" in markdown
    assert "| ε_a = 0 (paper) |" in markdown
    assert_png_figure(tmp_path / "table4-at.png")
    result = run_table("accuracy", *common, "--no-progress")
    assert result.returncode == 0, result.stderr[-2000:]
    accuracy = json.loads((tmp_path / "accuracy.json").read_text())
    assert accuracy["gue-accuracy"]["generator"]["variant"] == "accuracy"
    assert accuracy["gue"]["training_curve"] and accuracy["gue-accuracy"]["training_curve"]
    result = run_table("table4-at", *common, "--generator", "rem-2=x.pt")
    assert result.returncode == 2 and "NAME=PATH" in result.stderr


@pytest.mark.slow
def test_survival_makes_its_rows_and_trains_the_defense_aware_generator(tmp_path: Path) -> None:
    """``survival --rows clean,gue-robust`` trains the defense-aware generator (the game with
    the victim's pipeline in it), its victims under every pipeline and the clean ones; the
    JSON has the ``{ATTACK: {TRANSFORM: accuracy}}`` shape; JPEG at 10 shares the ``jpeg``
    defense's cells."""
    common = ["--scale", "smoke", "--dataset", "digits", "--output-dir", str(tmp_path)]
    rows = "clean,gue-robust,gue-robust-achromatic,em-robust"
    result = run_table("survival", *common, "--no-progress", "--rows", rows)
    assert result.returncode == 0, result.stderr[-2000:]
    table = json.loads((tmp_path / "survival.json").read_text())
    transforms = ["none", "grayscale", "jpeg-10", "jpeg-30", "jpeg-50", "jpeg-75", "jpeg-90"]
    assert table["transforms"] == transforms
    assert set(table["rows"]) == {"clean", "gue-robust", "gue-robust-achromatic", "em-robust"}
    for row in table["rows"].values():
        assert list(row) == transforms and all(0.0 <= v <= 1.0 for v in row.values())
    assert set(table["goal_met"]) == {"gue-robust", "gue-robust-achromatic", "em-robust"}
    em = json.loads((tmp_path / "poisons" / "em-robust.json").read_text())
    assert em["info"]["follower_transforms"] == ["none", "grayscale", "jpeg-10:90"]
    cells = json.loads((tmp_path / "cells.json").read_text())
    assert "clean|jpeg|convnet-small" in cells and "clean|jpeg-10|convnet-small" not in cells
    generator = json.loads((tmp_path / "gue-robust" / "generator.json").read_text())
    assert generator["trained_against"] == ["none", "grayscale", "jpeg-10:90"]
    assert not generator["achromatic"]
    gray = json.loads((tmp_path / "gue-robust-achromatic" / "generator.json").read_text())
    assert gray["achromatic"] and gray["trained_against"] == generator["trained_against"]
    assert "Partial: 28 of 56 cells" in (tmp_path / "survival.md").read_text()
    assert_png_figure(tmp_path / "survival.png")


@pytest.mark.slow
def test_table_command_rejects_unknown_attacks(tmp_path: Path) -> None:
    result = run_table("table1", "--attacks", "em,magic", "--output-dir", str(tmp_path))
    assert result.returncode == 2 and "magic" in result.stderr
    result = run_table(
        "table1",
        "--dataset",
        "folder",
        "--data-dir",
        str(tmp_path / "none"),
        "--output-dir",
        str(tmp_path),
    )
    assert result.returncode == 1 and "error:" in result.stderr


@pytest.mark.parametrize(
    ("table", "source"),
    [
        *((name, f"tables-cpu/{name}.json") for name in ("table1", "table2", "table3", "table4")),
        ("table4-at", "tables-cpu-at/table4-at.json"),
        ("one-class", "tables-cpu-one-class/one-class.json"),
        ("table5", "tables-cpu/table5.json"),
        ("diagnostics", "tables-cpu/diagnostics.json"),
        ("accuracy", "tables-cpu-at/accuracy.json"),
        ("survival", "defense-survival/results.json"),
    ],
)
def test_each_table_figure_redraws_from_its_committed_json(
    table: str, source: str, tmp_path: Path
) -> None:
    import table_plots

    results = Path(__file__).resolve().parents[1] / "docs" / "results"
    output = tmp_path / f"{table}.png"
    table_plots.main([str(results / source), "--table", table, "--output", str(output)])
    assert_png_figure(output)


def test_twelve_curves_never_share_a_colour_and_a_line_style() -> None:
    import table_plots

    looks = [(look["color"], look["linestyle"]) for look in table_plots.styles(12)]
    assert len(set(looks)) == 12
