"""Victim-side defenses, each against an independent computation of what it should do."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from stackelberg.unlearnable.defenses import (
    DEFENSES,
    AdversarialTraining,
    CutMix,
    Cutout,
    Grayscale,
    JPEGCompression,
    Mixup,
    make_defense,
)
from stackelberg.unlearnable.presets import build_classifier
from stackelberg.unlearnable.victim import VictimSchedule, train_victim

K = 5


def batch(n: int = 8, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.rand(n, 3, size, size, generator=g), torch.arange(n) % K


def test_mixup_is_a_convex_combination_with_matching_soft_labels() -> None:
    x, y = batch()
    mixed, target = Mixup(K).batch(nn.Identity(), x, y, torch.Generator().manual_seed(0))
    assert torch.allclose(target.sum(1), torch.ones(len(y)))
    lam = float(target[torch.arange(len(y)), y].min())  # λ (or more if partner shares the class)
    # Each mixed image is λx_i + (1 − λ)x_j for the j its soft label names.
    for i in range(len(y)):
        candidates = [
            j
            for j in range(len(y))
            if torch.allclose(mixed[i], lam * x[i] + (1 - lam) * x[j], atol=1e-6)
            or torch.allclose(mixed[i], (1 - lam) * x[i] + lam * x[j], atol=1e-6)
        ]
        assert candidates


def test_cutmix_label_weight_is_the_pasted_area() -> None:
    x, y = batch()
    mixed, target = CutMix(K).batch(nn.Identity(), x, y, torch.Generator().manual_seed(1))
    changed = (mixed != x).any(dim=1)  # (N, H, W): where pixels came from the partner
    box = changed.any(0)
    area = float(box.float().mean())
    # Images whose partner is a different class: label weight on y equals 1 − box area.
    weight = target[torch.arange(len(y)), y]
    assert 0 < area < 1
    assert torch.allclose(weight.min(), torch.tensor(1 - area), atol=1e-6)
    assert torch.allclose(target.sum(1), torch.ones(len(y)))


def test_cutout_zeroes_a_square_clipped_at_the_border() -> None:
    x = torch.ones(64, 1, 32, 32)
    out, _ = Cutout(16).batch(
        nn.Identity(), x, torch.zeros(64, dtype=torch.long), torch.Generator().manual_seed(0)
    )
    zeros = (out == 0).flatten(1).sum(1)
    assert zeros.max() == 256 and zeros.min() >= 64  # interior square, or a corner quarter
    rows = (out[:, 0] == 0).any(2).sum(1)
    cols = (out[:, 0] == 0).any(1).sum(1)
    assert torch.equal(zeros, rows * cols)  # a rectangle


def test_grayscale_matches_pil_luma_and_jpeg_matches_a_pil_round_trip() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (3, 3, 16, 16), generator=g, dtype=torch.uint8)
    gray = Grayscale().prepare_train(images)
    assert torch.equal(gray, Grayscale().prepare_test(images))
    for i in range(3):
        pil = np.asarray(Image.fromarray(images[i].permute(1, 2, 0).numpy()).convert("L"))
        assert (gray[i, 0].int() - torch.from_numpy(pil.copy()).int()).abs().max() <= 1
        assert torch.equal(gray[i, 0], gray[i, 1]) and torch.equal(gray[i, 0], gray[i, 2])
    jpeg = JPEGCompression(10)
    squeezed = jpeg.prepare_train(images)
    assert torch.equal(jpeg.prepare_test(images), images)  # clean test images stay as they are
    buffer = io.BytesIO()
    Image.fromarray(images[1].permute(1, 2, 0).numpy()).save(buffer, format="JPEG", quality=10)
    reference = torch.from_numpy(np.asarray(Image.open(buffer).convert("RGB")).copy())
    assert torch.equal(squeezed[1], reference.permute(2, 0, 1))
    assert not torch.equal(squeezed, images)


def test_adversarial_training_batches_stay_in_the_ball_and_raise_the_loss() -> None:
    torch.manual_seed(0)
    model = build_classifier("convnet-small", 3, K)
    x, y = batch()
    defense = AdversarialTraining(8 / 255, steps=5)
    adversarial, target = defense.batch(model, x, y, torch.Generator().manual_seed(0))
    assert model.training and torch.equal(target, y)
    assert (adversarial - x).abs().max() <= 8 / 255 + 1e-6
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    model.eval()
    with torch.no_grad():
        assert F.cross_entropy(model(adversarial), y) > F.cross_entropy(model(x), y)


def test_make_defense_names_and_errors() -> None:
    assert set(DEFENSES) == {
        "none",
        "mixup",
        "cutout",
        "cutmix",
        "at-2",
        "at-4",
        "at-8",
        "grayscale",
        "jpeg",
    }
    assert make_defense("at-4", K).epsilon == pytest.approx(4 / 255)
    assert make_defense("at-8", K, steps=2).steps == 2
    assert make_defense("jpeg", K, quality=30).quality == 30
    with pytest.raises(ValueError, match="defense must be one of"):
        make_defense("blur", K)
    with pytest.raises(ValueError, match="takes no options"):
        make_defense("grayscale", K, quality=3)
    with pytest.raises(ValueError, match="quality"):
        JPEGCompression(0)


@pytest.mark.parametrize("name", sorted(DEFENSES))
def test_every_defense_trains_a_victim(name: str) -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (48, 3, 16, 16), generator=g, dtype=torch.uint8)
    labels = torch.arange(48) % K
    options = {"steps": 1} if name.startswith("at-") else {}
    result = train_victim(
        build_classifier("convnet-small", 3, K),
        images,
        labels,
        images[:16],
        labels[:16],
        VictimSchedule.scaled(1, lr=0.05, batch_size=16),
        defense=make_defense(name, K, **options),
        test_every_epoch=False,
        progress=False,
    )
    assert result.tested_epochs == [1] and 0 <= result.final <= 1
