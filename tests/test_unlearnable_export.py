"""Exporting poisons (lossless npz and PNG, with a manifest) and training victims on them."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from gue_helpers import EPS, small_game

from stackelberg.models import ConvNet, LabelConditionedGenerator, UNetGenerator
from stackelberg.unlearnable.export import (
    calibrate_batchnorm,
    export_npz,
    export_png_folder,
    poison_images,
    quantize_poison,
)
from stackelberg.unlearnable.victim import VictimSchedule, augment, train_victim

# -- BatchNorm calibration -------------------------------------------------------------------


def _stale_generator() -> torch.nn.Module:
    """A generator whose running statistics belong to other weights (as during training)."""
    generator = small_game().leader
    generator.train()
    with torch.no_grad():
        generator(torch.rand(16, 3, 8, 8))  # statistics of these weights ...
        for p in generator.parameters():
            p.add_(0.5 * torch.randn_like(p))  # ... which then move
    return generator


def test_calibrated_generator_in_eval_mode_makes_the_training_mode_perturbation() -> None:
    generator = _stale_generator()
    clean = torch.randint(0, 256, (32, 3, 8, 8), dtype=torch.uint8)
    x = clean.float() / 255
    with torch.no_grad():
        trained_view = generator(x)  # training mode: each layer normalizes with x's statistics
        stale = generator.eval()(x)
    weights = [p.detach().clone() for p in generator.parameters()]

    assert calibrate_batchnorm(generator, clean, batch_size=32)  # one batch: x itself
    assert not generator.training  # the mode is left as it was
    with torch.no_grad():
        calibrated = generator(x)
    # Eval mode divides by the unbiased variance, training mode by the biased one (n ≥ 512
    # values per channel here): what remains is that factor, compounded over five layers.
    error, stale_error = (calibrated - trained_view).abs().max(), (stale - trained_view).abs().max()
    assert error < 0.03 * EPS and error < stale_error / 10
    assert all(torch.equal(a, b) for a, b in zip(weights, generator.parameters(), strict=True))
    assert all(
        m.momentum == 0.1 for m in generator.modules() if isinstance(m, torch.nn.BatchNorm2d)
    )


def test_calibration_averages_the_statistics_of_equal_batches() -> None:
    generator = _stale_generator()
    x = torch.rand(24, 3, 8, 8, dtype=torch.float64)
    generator.double()
    layers = [m for m in generator.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    seen: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(layers))}
    hooks = [
        layer.register_forward_hook(
            lambda _m, inputs, _o, i=i: seen[i].append(inputs[0].transpose(0, 1).flatten(1))
        )
        for i, layer in enumerate(layers)
    ]
    reference = copy.deepcopy(generator).train()
    order = torch.randperm(24, generator=torch.Generator().manual_seed(3))  # the seed's order
    with torch.no_grad():
        for chunk in x[order].split(8):
            reference(chunk)
    for hook in hooks:
        hook.remove()
    generator.train()
    calibrate_batchnorm(generator, x, batch_size=8, seed=3)
    assert generator.training
    for i, layer in enumerate(layers):
        mean = torch.stack([a.mean(1) for a in seen[i]]).mean(0)
        var = torch.stack([a.var(1, unbiased=True) for a in seen[i]]).mean(0)
        torch.testing.assert_close(layer.running_mean, mean)
        torch.testing.assert_close(layer.running_var, var)
        assert int(layer.num_batches_tracked) == 3


def test_calibration_of_images_sorted_by_class_finds_the_population_variance() -> None:
    generator = _stale_generator().eval()
    # two "classes" far apart: sorted batches would each see one, with a small variance
    dark = torch.randint(0, 60, (32, 3, 8, 8), dtype=torch.uint8)
    clean = torch.cat([dark, dark + 190])
    first = generator.down[0][1]  # the first BatchNorm: its input does not depend on others
    seen: list[torch.Tensor] = []
    hook = first.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0]))
    with torch.no_grad():
        generator(clean.float() / 255)
    hook.remove()
    population = seen[0].transpose(0, 1).flatten(1)
    calibrate_batchnorm(generator, clean, batch_size=8)
    torch.testing.assert_close(first.running_mean, population.mean(1), rtol=1e-4, atol=1e-5)
    within_class = population.reshape(population.shape[0], 2, -1).var(2).mean(1)
    assert (population.var(1) > 2 * within_class).any()  # what sorted batches would give
    ratio = first.running_var / population.var(1)
    assert ((ratio > 0.8) & (ratio < 1.2)).all(), ratio


def test_calibration_of_a_label_conditioned_generator_needs_the_labels() -> None:
    generator = LabelConditionedGenerator(UNetGenerator(EPS, 3, (4, 8)), num_classes=4)
    clean = torch.randint(0, 256, (8, 3, 8, 8), dtype=torch.uint8)
    with pytest.raises(ValueError, match="label-conditioned: pass the labels"):
        calibrate_batchnorm(generator, clean)
    assert calibrate_batchnorm(generator, clean, torch.arange(8) % 4)
    assert int(generator.base.head[1].num_batches_tracked) == 1


def test_calibration_is_a_no_op_without_batchnorm() -> None:
    generator = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), torch.nn.Tanh())
    before = {k: v.clone() for k, v in generator.state_dict().items()}
    assert not calibrate_batchnorm(generator, torch.zeros(4, 3, 8, 8, dtype=torch.uint8))
    assert all(torch.equal(before[k], v) for k, v in generator.state_dict().items())


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

    from stackelberg.unlearnable.plots import (
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
