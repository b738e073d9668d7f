"""The `stackelberg` command end to end in a temporary folder: train (interrupted and resumed)
→ inspect → poison → evaluate → protect, and its refusals and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from stackelberg.unlearnable.budget import enforce_budget
from stackelberg.unlearnable.checkpoint import save_generator
from stackelberg.unlearnable.cli import main
from stackelberg.unlearnable.game import apply_perturbation
from stackelberg.unlearnable.presets import build_generator
from stackelberg.unlearnable.protect import perturb_image, protect_pixels

EPS = 8 / 255
LEVELS = 8


@pytest.mark.slow
def test_train_resume_inspect_poison_evaluate(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    base = ["train", str(run), "--preset", "smoke", "--dataset", "digits", "--no-progress"]
    assert main([*base, "--epochs", "1"]) == 0
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1
    # A finished or interrupted run is never silently restarted ...
    assert main([*base, "--epochs", "2"]) == 1
    assert "--resume" in capsys.readouterr().err
    # ... and --resume continues it, to exactly the generator of an uninterrupted run.
    assert main([*base, "--epochs", "2", "--resume"]) == 0
    assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 2
    straight = tmp_path / "straight"
    assert main(["train", str(straight), *base[2:], "--epochs", "2"]) == 0
    resumed = torch.load(run / "generator.pt", weights_only=True)
    uninterrupted = torch.load(straight / "generator.pt", weights_only=True)
    for name, tensor in uninterrupted.items():
        assert torch.equal(resumed[name], tensor), name
    capsys.readouterr()

    assert main(["inspect", str(run / "generator.pt")]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["architecture"] == "unet-small" and described["epsilon"] == pytest.approx(EPS)
    assert described["dataset"] == "digits" and described["solver"] == "bome"
    assert main(["inspect", str(run / "checkpoint.pt")]) == 0
    assert json.loads(capsys.readouterr().out)["epoch"] == 2

    poisoned = tmp_path / "poisoned.npz"
    poison = [
        "poison",
        "--generator",
        str(run / "generator.pt"),
        "--dataset",
        "digits",
        "--output",
        str(poisoned),
        "--no-progress",
    ]
    assert main(poison) == 0
    stored = np.load(poisoned, allow_pickle=False)
    manifest = json.loads(poisoned.with_suffix(".json").read_text())
    assert stored["x"].dtype == np.uint8 and manifest["measured_linf_levels"] <= LEVELS
    assert main(poison) == 1 and "--overwrite" in capsys.readouterr().err
    assert main([*poison, "--overwrite"]) == 0

    result = tmp_path / "victim.json"
    assert (
        main(
            [
                "evaluate",
                "--poisoned",
                str(poisoned),
                "--dataset",
                "digits",
                "--victim",
                "convnet-small",
                "--defense",
                "cutout",
                "--epochs",
                "1",
                "--output",
                str(result),
                "--no-progress",
            ]
        )
        == 0
    )
    report = json.loads(result.read_text())
    assert 0 <= report["test_accuracy"] <= 1 and report["defense"] == "cutout"
    assert "clean test accuracy" in capsys.readouterr().out

    # The trained (one-channel) generator protects a folder of odd-sized photos.
    photos, protected = tmp_path / "photos", tmp_path / "protected"
    originals = photo_folder(photos)
    assert (
        main(
            [
                "protect",
                str(photos),
                str(protected),
                "--generator",
                str(run / "generator.pt"),
                "--no-progress",
            ]
        )
        == 0
    )
    for name, clean in originals.items():
        gray = np.asarray(Image.fromarray(clean).convert("L")).astype(int)
        written = np.asarray(Image.open(protected / Path(name).with_suffix(".png")).convert("L"))
        assert written.shape == gray.shape and np.abs(written - gray).max() <= LEVELS


def saturated_generator(path: Path, channels: int = 3) -> nn.Module:
    torch.manual_seed(0)
    generator = build_generator("unet-small", EPS, channels)
    with torch.no_grad():
        for parameter in generator.parameters():  # large weights: ε·tanh saturates at ±ε
            parameter.normal_(0, 1)
    save_generator(
        path,
        generator,
        {
            "architecture": "unet-small",
            "epsilon": EPS,
            "in_channels": channels,
            "label_conditioned": False,
            "num_classes": 10,
        },
    )
    return generator


def photo_folder(root: Path) -> dict[str, np.ndarray]:
    """Images of odd sizes and modes, a corrupt PNG and a text file, in nested folders."""
    rng = np.random.default_rng(0)
    (root / "trip" / "day2").mkdir(parents=True)
    pictures = {
        "a.png": rng.integers(0, 256, (13, 7, 3), dtype=np.uint8),
        "trip/b.jpg": rng.integers(0, 256, (50, 33, 3), dtype=np.uint8),
        "trip/day2/c.png": rng.integers(0, 256, (9, 40, 4), dtype=np.uint8),  # RGBA
        "gray.png": rng.integers(0, 256, (17, 17), dtype=np.uint8),
    }
    for name, pixels in pictures.items():
        Image.fromarray(pixels).save(root / name, quality=95)
    (root / "trip" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png")
    (root / "notes.txt").write_text("not an image")
    return {name: np.asarray(Image.open(root / name).convert("RGB")) for name in pictures}


def test_protect_keeps_the_budget_after_png_round_trip_and_reports_bad_files(
    tmp_path: Path, capsys
) -> None:
    saturated_generator(tmp_path / "g.pt")
    photos, out = tmp_path / "photos", tmp_path / "protected"
    originals = photo_folder(photos)
    command = [
        "protect",
        str(photos),
        str(out),
        "--generator",
        str(tmp_path / "g.pt"),
        "--tile",
        "64",
        "--no-progress",
    ]
    assert main(command) == 0
    captured = capsys.readouterr()
    assert "broken.png" in captured.err and "notes.txt" in captured.err
    manifest = json.loads((out / "protect_manifest.json").read_text())["batches"][-1]
    assert manifest["finished"]
    assert {s["input"] for s in manifest["skipped"]} == {"trip/broken.png", "notes.txt"}
    assert len(manifest["protected"]) == 4
    for name, clean in originals.items():
        written = Image.open(out / Path(name).with_suffix(".png"))
        assert written.size == (clean.shape[1], clean.shape[0])
        change = np.abs(np.asarray(written.convert("RGB")).astype(int) - clean.astype(int))
        assert change.max() <= LEVELS  # the budget holds after rounding and PNG round trip
        assert change.max() > 0
    rgba = np.asarray(Image.open(out / "trip" / "day2" / "c.png"))
    source = np.asarray(Image.open(photos / "trip" / "day2" / "c.png"))
    assert np.array_equal(rgba[..., 3], source[..., 3])  # alpha kept
    assert all(entry["linf_levels"] <= LEVELS for entry in manifest["protected"])

    # Existing outputs are never replaced without --overwrite, and inputs are never touched.
    before = (out / "a.png").read_bytes()
    assert main(command) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "a.png").read_bytes() == before
    assert main([*command, "--overwrite"]) == 0
    assert (
        main(
            ["protect", str(photos), str(photos / "inside"), "--generator", str(tmp_path / "g.pt")]
        )
        == 1
    )


class _Local(nn.Module):
    """Two 3×3 convolutions: each output pixel depends on inputs at most 2 pixels away. Records
    the size of every input it sees."""

    downsampling = 1

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, 3, 3, padding=1)
        )
        self.seen: list[tuple[int, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(x.shape[-2:]))
        return EPS * torch.tanh(10 * self.net(x))


def test_tiling_equals_the_whole_image_when_the_halo_covers_the_receptive_field() -> None:
    torch.manual_seed(0)
    generator = _Local()
    x = torch.rand(1, 3, 70, 45)
    whole = perturb_image(generator, x, tile=1024)
    tiled = perturb_image(generator, x, tile=16, overlap=6)  # halo 3 > receptive radius 2
    assert max(max(size) for size in generator.seen[1:]) <= 16
    assert torch.allclose(whole, tiled, atol=1e-6)
    too_thin = perturb_image(generator, x, tile=16, overlap=2)  # halo 1 < 2: seams differ
    assert not torch.allclose(whole, too_thin, atol=1e-6)


def test_protect_pixels_streams_the_tiles_and_equals_quantizing_the_whole_image() -> None:
    torch.manual_seed(1)
    generator = _Local()
    pixels = np.random.default_rng(0).integers(0, 256, (150, 97, 3), dtype=np.uint8)
    protected = protect_pixels(generator, pixels, EPS, tile=64, overlap=16)
    assert max(max(size) for size in generator.seen) <= 64  # never more than one tile
    clean = torch.from_numpy(pixels).permute(2, 0, 1)[None]
    x = clean.float() / 255
    reference = enforce_budget(
        clean, apply_perturbation(x, perturb_image(generator, x, tile=64, overlap=16)), EPS
    )
    assert np.array_equal(protected, reference[0].permute(1, 2, 0).numpy())
    change = np.abs(protected.astype(int) - pixels.astype(int))
    assert change.max() == 8 and change.mean() > 1  # the budget is used and held


@pytest.mark.slow
def test_usage_errors_exit_with_2_and_missing_files_with_1(tmp_path: Path, capsys) -> None:
    command = [sys.executable, "-m", "stackelberg.unlearnable.cli"]
    assert subprocess.run([*command, "train"], capture_output=True).returncode == 2
    bad = subprocess.run(
        [*command, "train", str(tmp_path), "--epsilon", "2"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "ε must be in (0, 1]" in bad.stderr
    assert main(["inspect", str(tmp_path / "nothing.pt")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert (
        main(
            [
                "protect",
                str(tmp_path / "none"),
                str(tmp_path / "out"),
                "--generator",
                str(tmp_path / "g.pt"),
            ]
        )
        == 1
    )


@pytest.mark.slow
def test_another_solver_keeps_the_presets_options_it_has_and_says_what_it_drops(
    tmp_path: Path, capsys
) -> None:
    """``smoke`` sets BOME's ``inner_steps`` to 2: BackGradient has the option and keeps it."""
    run = tmp_path / "run"
    args = ["train", str(run), "--preset", "smoke", "--dataset", "digits", "--no-progress"]
    assert main([*args, "--epochs", "1", "--solver", "backgradient"]) == 0
    err = capsys.readouterr().err
    assert "--solver backgradient: kept the preset smoke's options" in err
    assert "(inner_steps=2)" in err and "dropped the ones it has not (none)" in err
    config = json.loads((run / "config.json").read_text())
    options = config["preset"]["training"]["solver_options"]
    assert config["preset"]["training"]["solver"] == "backgradient"
    assert options["inner_steps"] == 2 and options["mode"] == "store"
