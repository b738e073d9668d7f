"""The follower's pipeline (``unlearnable.transforms``): the differentiable JPEG codec
against Pillow's encoder, gradients through the transforms against finite differences, the
seeded draws and their exact resume, and the defense-aware game."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from gue_helpers import EPS, batch, small_game

from stackelberg.data import ImageDataset
from stackelberg.unlearnable.defenses import Grayscale
from stackelberg.unlearnable.training import GeneratorTraining, TrainingConfig
from stackelberg.unlearnable.transforms import FollowerTransforms, grayscale, jpeg

pytest.importorskip("kornia")

F64 = torch.float64


def smooth_images(n: int = 16, size: int = 32, seed: int = 0) -> torch.Tensor:
    """uint8 ``(n, 3, size, size)`` images: a few low-frequency waves per channel plus a little
    noise, the kind of content JPEG is designed for."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.linspace(0, torch.pi, size)
    yy, xx = torch.meshgrid(grid, grid, indexing="ij")
    out = torch.zeros(n, 3, size, size)
    for _ in range(4):
        f = torch.rand(n, 3, 2, 1, 1, generator=g) * 6
        phase = torch.rand(n, 3, 1, 1, generator=g) * 2 * torch.pi
        out += torch.sin(f[:, :, 0] * xx + f[:, :, 1] * yy + phase) / 4
    out += 0.03 * torch.randn(n, 3, size, size, generator=g)
    return ((out + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8)


def pillow_jpeg(images: torch.Tensor, quality: int) -> torch.Tensor:
    """Pillow's real encode and decode, image by image."""
    from PIL import Image

    decoded = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, "JPEG", quality=quality)
        buffer.seek(0)
        decoded.append(torch.from_numpy(np.array(Image.open(buffer).convert("RGB"))))
    return torch.stack(decoded).permute(0, 3, 1, 2)


@pytest.mark.parametrize("quality", [10, 30, 50, 75, 90])
def test_the_differentiable_codec_follows_pillows_jpeg(quality: int) -> None:
    """Stated tolerance: on average the codec's output is within 5 intensity levels of
    Pillow's, and less than half as far from Pillow's as Pillow's is from the input (measured
    2026-12-02 with kornia 0.9 on these images: 4.4 / 3.4 / 3.0 / 2.3 / 2.0 levels against
    changes of 21.4 / 13.3 / 10.1 / 7.6 / 5.9 at qualities 10 / 30 / 50 / 75 / 90). The codec
    replaces rounding by a cubic approximation, so it cannot match bit for bit."""
    x = smooth_images()
    reference = pillow_jpeg(x, quality).double()
    coded = jpeg(x.double() / 255, quality) * 255
    distance = (coded - reference).abs().mean()
    change = (reference - x.double()).abs().mean()
    assert distance < 5.0
    assert distance < 0.5 * change


def test_grayscale_is_the_defenses_luma_before_rounding() -> None:
    x = smooth_images(4)
    ours = grayscale(x.double() / 255) * 255
    defense = Grayscale().prepare_train(x).double()
    assert ours.shape == x.shape and torch.equal(ours[:, 0], ours[:, 2])
    assert (ours - defense).abs().max() <= 0.5 + 1e-9  # the defense rounds to whole levels
    one_channel = torch.rand(2, 1, 8, 8)
    assert grayscale(one_channel) is one_channel


@pytest.mark.parametrize(
    "transform", ["grayscale", "jpeg-10", "jpeg-75", "crop-flip", "jpeg-50+crop-flip"]
)
def test_gradients_through_the_transforms_match_finite_differences(transform: str) -> None:
    """The directional derivative of ``⟨c, T(x)⟩`` along random directions, by autograd and
    by central differences in float64 (step 1e-6)."""
    g = torch.Generator().manual_seed(1)
    x = (smooth_images(2, 16).double() / 255).clamp(0.05, 0.95)
    follower = FollowerTransforms([transform])
    weights = torch.randn(x.shape, generator=g, dtype=F64)
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad((weights * follower(x)).sum(), x)
    h = 1e-6
    for _ in range(3):
        v = torch.randn(x.shape, generator=g, dtype=F64)
        with torch.no_grad():
            up = (weights * follower(x + h * v)).sum()
            down = (weights * follower(x - h * v)).sum()
        numeric = float((up - down) / (2 * h))
        assert float((grad * v).sum()) == pytest.approx(numeric, rel=1e-5, abs=1e-7)


def test_draws_are_seeded_resumable_and_cover_every_name() -> None:
    names = ["none", "grayscale", "jpeg-10", "jpeg-30:90"]
    first = FollowerTransforms(names, seed=3)
    drawn = [first.resample() for _ in range(60)]
    assert all(len(steps) == 1 for steps in drawn)
    assert {kind for ((kind, _),) in drawn} == {"none", "grayscale", "jpeg"}
    qualities = {q for ((kind, q),) in drawn if kind == "jpeg"}
    assert 10 in qualities and all(q == 10 or 30 <= q <= 90 for q in qualities)
    assert len(qualities) > 3  # the range is drawn from, not one value
    replay = FollowerTransforms(names, seed=3)
    assert [replay.resample() for _ in range(60)] == drawn
    # a state dict taken after 20 draws resumes the same sequence in a fresh object
    saved = FollowerTransforms(names, seed=3)
    for _ in range(20):
        saved.resample()
    resumed = FollowerTransforms(names, seed=3)
    resumed.load_state_dict(saved.state_dict())
    assert resumed.current == drawn[19]
    assert [resumed.resample() for _ in range(40)] == drawn[20:]
    other = FollowerTransforms(names, seed=4)
    assert [other.resample() for _ in range(20)] != drawn[:20]


def test_crop_flip_is_the_victims_augmentation_fixed_within_a_draw() -> None:
    """``crop-flip`` applies ``victim.augment``: every call within one draw crops and flips the
    same way (the value function of one outer step sees one pipeline), a new draw differently;
    in a composition the steps run left to right (JPEG on the image, then the crop)."""
    x = smooth_images(8, 16).float() / 255
    follower = FollowerTransforms(["crop-flip"], seed=2)
    follower.resample()
    once, again = follower(x), follower(x)
    assert torch.equal(once, again) and not torch.equal(once, x)
    # each image is a shifted window of the zero-padded image, or its mirror
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for image, source in zip(once, padded, strict=True):
        windows = [
            w
            for i in range(9)
            for j in range(9)
            for w in (source[:, i : i + 16, j : j + 16], source[:, i : i + 16, j : j + 16].flip(2))
        ]
        assert any(torch.equal(image, w) for w in windows)
    follower.resample()
    assert not torch.equal(follower(x), once)
    composed = FollowerTransforms(["jpeg-30+crop-flip"], seed=2)
    assert composed.resample() == (("jpeg", 30), ("crop-flip", 0))
    cropped_only = FollowerTransforms(["jpeg-30+crop-flip"], seed=2)
    cropped_only.resample()
    cropped_only.current = (("none", 0), ("crop-flip", 0))  # the same crops, without the codec
    assert torch.allclose(composed(x), cropped_only(jpeg(x, 30)), atol=1e-6)


def test_bad_transform_names_are_refused() -> None:
    for bad, message in (
        ("blur", "unknown follower transform 'blur'"),
        ("jpeg-0", "1 <= LOW <= HIGH <= 100"),
        ("jpeg-90:30", "1 <= LOW <= HIGH <= 100"),
        ("crop-flip+blur", "unknown follower transform 'blur'"),
        ("jpeg-10+", "unknown follower transform ''"),
    ):
        with pytest.raises(ValueError, match=message):
            FollowerTransforms([bad])
    with pytest.raises(ValueError, match="non-empty list"):
        FollowerTransforms("jpeg-10")
    with pytest.raises(ValueError, match=r"JPEG quality must be in \[1, 100\]"):
        jpeg(torch.rand(1, 3, 8, 8), 0)
    with pytest.raises(TypeError, match="must be a FollowerTransforms"):
        small_game(follower_transforms=["jpeg-10"])


def test_the_leader_trains_through_the_victims_jpeg() -> None:
    """The follower sees ``T(x̃)``, and the follower's loss still reaches the generator's
    parameters through the codec; the published poison keeps the budget."""
    plain = small_game()
    game = small_game(follower_transforms=FollowerTransforms(["jpeg-10"]))
    x, y = batch(4, classes=4)
    x = torch.nn.functional.interpolate(x, size=16)  # JPEG works on 8×8 blocks
    poisoned = plain.follower_batch(plain.leader, (x, y))
    seen = game.follower_batch(game.leader, (x, y))
    assert torch.allclose(seen.poisoned, jpeg(poisoned.poisoned, 10), atol=1e-6)
    assert (poisoned.poisoned - x).abs().max() <= EPS + 1e-6
    loss = game.follower_loss(game.leader, game.follower, (x, y))
    grads = torch.autograd.grad(loss, list(game.leader.parameters()), allow_unused=True)
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0


def test_training_with_transforms_resumes_exactly(tmp_path: Path) -> None:
    """Two epochs in one go, and one epoch, a checkpoint and a fresh object for the second,
    draw the same transforms and end with the same generator."""
    images = (torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 255).round()
    train = ImageDataset(images.to(torch.uint8), torch.arange(16) % 4, ("a", "b", "c", "d"))
    names = ["none", "grayscale", "jpeg-10:90"]

    def training(run_dir: Path, epochs: int) -> GeneratorTraining:
        game = small_game(follower_transforms=FollowerTransforms(names, seed=5))
        config = TrainingConfig(
            epochs=epochs,
            batch_size=8,
            solver="bome",
            solver_options={"inner_steps": 2},
            log_every=1,
        )
        return GeneratorTraining(game, config, train, run_dir=run_dir)

    whole = training(tmp_path / "whole", 2)
    whole.run(progress=False)
    first = training(tmp_path / "split", 1)
    first.run(progress=False)
    second = training(tmp_path / "split", 2)
    assert second.resume()
    assert second.game.follower_transforms.current == first.game.follower_transforms.current
    second.run(progress=False)
    assert int(second.game.follower_transforms.draws) == 4
    for a, b in zip(whole.game.leader.parameters(), second.game.leader.parameters(), strict=True):
        assert torch.equal(a, b)
