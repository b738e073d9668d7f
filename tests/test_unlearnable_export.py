"""Exporting poisons (lossless npz and PNG, with a manifest) and training victims on them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gue_helpers import EPS, small_game

from stackelberg.games.unlearnable.export import (
    export_npz,
    export_png_folder,
    poison_images,
    quantize_poison,
)
from stackelberg.games.unlearnable.victim import VictimSchedule, augment, train_victim
from stackelberg.models import ConvNet

# -- export and victims ---------------------------------------------------------------------


def test_npz_and_png_exports_are_lossless_and_carry_a_manifest(tmp_path: Path) -> None:
    from PIL import Image

    game = small_game()
    clean = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    poisoned = poison_images(game.leader, clean)
    manifest = export_npz(
        tmp_path / "p.npz",
        poisoned,
        clean,
        labels,
        EPS,
        indices=torch.arange(10, 16),
        source={"dataset": "toy"},
    )
    data = np.load(tmp_path / "p.npz")
    assert data["x"].shape == (6, 8, 8, 3) and data["x"].dtype == np.uint8
    assert data["indices"].tolist() == list(range(10, 16))
    expected = quantize_poison(clean, poisoned, EPS).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(data["x"], expected)
    assert manifest["measured_linf_levels"] <= 8 and manifest["images"] == 6
    assert (tmp_path / "p.json").is_file()

    folder = tmp_path / "png"
    export_png_folder(folder, poisoned, clean, labels, ("a", "b", "c", "d"), EPS)
    first = np.asarray(Image.open(folder / "a" / "0.png"))
    assert np.array_equal(first, expected[0])
    with pytest.raises(FileExistsError):
        export_png_folder(folder, poisoned, clean, labels, ("a", "b", "c", "d"), EPS)


def test_augment_crops_and_flips_within_the_padded_image() -> None:
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    g = torch.Generator().manual_seed(0)
    out = augment(x, g, padding=1)
    assert out.shape == x.shape
    for i in range(2):
        values = set(out[i].flatten().tolist()) - {0.0}
        assert values <= set(x[i].flatten().tolist())


def test_victim_learns_separable_data_and_reports_every_epoch() -> None:
    torch.manual_seed(0)
    labels = torch.arange(64) % 2
    images = torch.zeros(64, 1, 8, 8)
    images[labels == 1, :, :4] = 1.0  # class 1: bright top half
    model = ConvNet(1, 2, widths=(4, 8))
    result = train_victim(
        model,
        images,
        labels,
        images,
        labels,
        VictimSchedule.scaled(6, lr=0.1, batch_size=16),
        progress=False,
    )
    assert len(result.test_accuracy) == 6 and result.final == 1.0


def test_the_run_figures_are_drawn(tmp_path: Path) -> None:
    """The three figures of a run (victim curves, generator training, poison examples) are
    written as PNG figures, for RGB and for one-channel images."""
    from conftest import assert_png_figure

    from stackelberg.games.unlearnable.plots import (
        plot_generator_training,
        plot_poison_examples,
        plot_victim_curves,
    )

    plot_victim_curves(tmp_path / "victims.png", [0.3, 0.6], [0.3, 0.2], "smoke")
    history = [
        {"step": s, "poisoned_accuracy": 0.5 + 0.01 * s, "clean_accuracy": 0.4} for s in range(5)
    ]
    quick_tests = [{"epoch": 1, "validation_accuracy": 0.3}]
    plot_generator_training(tmp_path / "training.png", history, quick_tests, steps_per_epoch=4)
    for channels in (3, 1):
        clean = torch.randint(0, 256, (6, channels, 8, 8), dtype=torch.uint8)
        poisoned = (clean.int() + 2).clamp(0, 255).to(torch.uint8)
        labels = torch.tensor([0, 1, 2, 0, 1, 2])
        path = tmp_path / f"examples{channels}.png"
        plot_poison_examples(path, clean, poisoned, labels, ("a", "b", "c"), EPS)
        assert_png_figure(path)
    assert_png_figure(tmp_path / "victims.png")
    assert_png_figure(tmp_path / "training.png")
