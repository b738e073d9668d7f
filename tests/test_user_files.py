"""Every file a user hands us goes through one loader: a damaged, foreign or hostile file is a
one-line error that names it (exit 1), never a traceback, never torch's advice to load it
with ``weights_only=False``, and nothing is written before the refusal.

Also: inputs ``protect`` cannot honour are listed, never reinterpreted, the budget is
measured on what a person sees, and outputs are known by their bytes, not their names.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stackelberg.data.cifar import load_cifar
from stackelberg.unlearnable.checkpoint import load_generator
from stackelberg.unlearnable.cli import main
from stackelberg.unlearnable.ledger import MANIFEST
from stackelberg.unlearnable.protect import protect_folder
from stackelberg.utils.files import FileFormatError, file_sha256
from tests.test_cli import saturated_generator
from tests.test_reliability import photos, poison_command, snapshot

EPS = 8 / 255


class _Payload:
    """Runs code when unpickled, if anything ever unpickles it."""

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (exec, ("open('PWNED', 'w').write('x')",))


def _malicious(path: Path) -> None:
    buffer = io.BytesIO()
    torch.save({"epoch": 1, "payload": _Payload()}, buffer)
    path.write_bytes(buffer.getvalue())


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "weights_only=False" not in err and "Traceback" not in err
    return lines[0]


@pytest.fixture
def finished_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    command = ["train", str(run), "--preset", "smoke", "--dataset", "digits", "--no-progress"]
    assert main([*command, "--epochs", "1"]) == 0
    return run


# -- checkpoint.pt, config.json ------------------------------------------------------------


@pytest.mark.parametrize("damage", ["malicious", "random", "empty", "truncated"])
def test_inspect_and_resume_refuse_a_damaged_training_checkpoint_in_one_line(
    damage: str, finished_run: Path, capsys, monkeypatch
) -> None:
    monkeypatch.chdir(finished_run.parent)
    checkpoint = finished_run / "checkpoint.pt"
    if damage == "malicious":
        _malicious(checkpoint)
    elif damage == "random":
        checkpoint.write_bytes(np.random.default_rng(0).bytes(4096))
    elif damage == "empty":
        checkpoint.write_bytes(b"")
    else:
        checkpoint.write_bytes(checkpoint.read_bytes()[:2000])
    before = snapshot(finished_run)
    capsys.readouterr()
    assert main(["inspect", str(checkpoint)]) == 1
    assert str(checkpoint) in _one_line(capsys.readouterr().err)
    resume = ["train", str(finished_run), "--preset", "smoke", "--dataset", "digits"]
    assert main([*resume, "--resume", "--epochs", "2", "--no-progress"]) == 1
    assert "checkpoint.pt" in _one_line(capsys.readouterr().err)
    assert snapshot(finished_run) == before
    assert not (finished_run.parent / "PWNED").exists()


def test_resume_refuses_a_folder_that_is_not_a_run_before_writing(tmp_path: Path, capsys) -> None:
    downloaded = tmp_path / "downloaded"
    downloaded.mkdir()
    saturated_generator(downloaded / "generator.pt", channels=1)
    before = snapshot(downloaded)
    command = ["train", "--preset", "smoke", "--dataset", "digits", "--no-progress", "--resume"]
    assert main([*command, str(downloaded)]) == 1
    assert "not a training run: it has no config.json" in _one_line(capsys.readouterr().err)
    assert snapshot(downloaded) == before
    assert main([*command, str(tmp_path / "nothing-here")]) == 1
    assert "nothing to resume" in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "nothing-here").exists()


def test_resume_without_a_checkpoint_says_there_is_nothing_to_resume(
    finished_run: Path, capsys
) -> None:
    (finished_run / "checkpoint.pt").unlink()
    command = ["train", str(finished_run), "--preset", "smoke", "--dataset", "digits"]
    assert main([*command, "--resume", "--no-progress"]) == 1
    assert "nothing to resume" in _one_line(capsys.readouterr().err)


def test_a_config_json_of_another_kind_is_refused_on_resume(finished_run: Path, capsys) -> None:
    (finished_run / "config.json").write_text('{"command": "evaluate"}')
    before = snapshot(finished_run)
    command = ["train", str(finished_run), "--preset", "smoke", "--dataset", "digits"]
    assert main([*command, "--resume", "--no-progress"]) == 1
    assert "is not a training run's config.json" in _one_line(capsys.readouterr().err)
    assert snapshot(finished_run) == before


def test_resume_on_other_data_is_one_line_and_keeps_the_config(
    finished_run: Path, tmp_path: Path, capsys
) -> None:
    before = (finished_run / "config.json").read_bytes()
    command = ["train", str(finished_run), "--preset", "smoke", "--dataset", "digits"]
    missing = tmp_path / "no-such-data"
    assert main([*command, "--resume", "--no-progress", "--data-dir", str(missing)]) == 0
    assert json.loads((finished_run / "config.json").read_text())["data_dir"] == str(missing)
    (finished_run / "config.json").write_bytes(before)
    capsys.readouterr()
    folder = tmp_path / "other"
    for split in ("train", "test"):
        for name in ("a", "b"):
            (folder / split / name).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (8, 8), (i, 0, 0)).save(folder / split / name / f"{i}.png")
    other = ["train", str(finished_run), "--preset", "smoke", "--dataset", "folder"]
    assert main([*other, "--resume", "--no-progress", "--data-dir", str(folder)]) == 1
    assert "dataset" in _one_line(capsys.readouterr().err)
    assert (finished_run / "config.json").read_bytes() == before


def test_inspect_on_a_folder_says_it_is_a_folder(tmp_path: Path, capsys) -> None:
    assert main(["inspect", str(tmp_path)]) == 1
    assert "is a folder" in _one_line(capsys.readouterr().err)


# -- generator.json ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("architecture", "unet", "does not fit generator.json"),
        ("architecture", "transformer", "'architecture' must be one of"),
        ("in_channels", 1, "does not fit generator.json"),
        ("in_channels", 10**9, "'in_channels' must be a whole number from 1 to 4"),
        ("label_conditioned", True, "does not fit generator.json"),
    ],
)
def test_an_edited_generator_json_is_one_line(
    field: str, value: object, message: str, tmp_path: Path, capsys
) -> None:
    path = tmp_path / "generator.pt"
    saturated_generator(path, channels=3)
    meta = path.with_suffix(".json")
    meta.write_text(json.dumps({**json.loads(meta.read_text()), field: value}))
    assert main(["inspect", str(path)]) == 1
    assert message in _one_line(capsys.readouterr().err)


# -- npz and CIFAR -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "labels",
    [np.array([0.5, 1, 2, 3]), np.array([1j, 1, 2, 3]), np.array(["cat", "dog", "cat", "dog"])],
    ids=["fractional", "complex", "strings"],
)
def test_npz_labels_must_be_whole_numbers(labels: np.ndarray, tmp_path: Path, capsys) -> None:
    path = tmp_path / "poisoned.npz"
    np.savez(path, x=np.zeros((4, 8, 8, 1), np.uint8), y=labels)
    command = ["evaluate", "--dataset", "digits", "--epochs", "1", "--no-progress"]
    assert main([*command, "--poisoned", str(path)]) == 1
    assert "y must hold one whole-number label per image" in _one_line(capsys.readouterr().err)


def _cifar_archive(path: Path, data: np.ndarray) -> None:
    labels = [i % 10 for i in range(len(data))]
    members = {f"data_batch_{i}": {b"data": data, b"labels": labels} for i in range(1, 6)}
    members["test_batch"] = {b"data": data, b"labels": labels}
    members["batches.meta"] = {b"label_names": [f"c{i}".encode() for i in range(10)]}
    with tarfile.open(path, "w:gz") as archive:
        for name, content in members.items():
            payload = pickle.dumps(content)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))


def test_float_cifar_data_is_refused_not_cast_to_black(tmp_path: Path) -> None:
    path = tmp_path / "cifar-10-python.tar.gz"
    _cifar_archive(path, np.random.default_rng(0).random((10, 3072)))
    with pytest.raises(FileFormatError, match=r"data must be \(N, 3072\) uint8.*float64"):
        load_cifar("cifar10", path)
    _cifar_archive(path, np.zeros((10, 3072), np.uint8))
    assert load_cifar("cifar10", path)["train"].images.shape == (50, 3, 32, 32)


def test_a_truncated_cifar_archive_is_one_line(tmp_path: Path, capsys) -> None:
    path = tmp_path / "cifar-10-python.tar.gz"
    _cifar_archive(path, np.zeros((200, 3072), np.uint8))
    path.write_bytes(path.read_bytes()[:3000])
    command = ["evaluate", "--dataset", "cifar10", "--data-dir", str(path), "--no-progress"]
    assert main(command) == 1
    assert "truncated or damaged" in _one_line(capsys.readouterr().err)


# -- protect's inputs ----------------------------------------------------------------------------


def _bmp_565(width: int, height: int) -> bytes:
    """A 16-bit BMP with 5-6-5 bit fields: under 8 bits per channel."""
    row = (width * 2 + 3) // 4 * 4
    pixels = b"".join(
        b"".join(
            struct.pack("<H", (x * 4 % 32) << 11 | (y * 8 % 64) << 5 | 7) for x in range(width)
        ).ljust(row, b"\0")
        for y in range(height)
    )
    offset = 14 + 40 + 12
    header = b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 16, 3, len(pixels), 2835, 2835, 0, 0)
    return header + info + struct.pack("<III", 0xF800, 0x07E0, 0x001F) + pixels


def test_bit_depth_is_judged_per_channel_in_every_container(tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.mkdir()
    (source / "packed.bmp").write_bytes(_bmp_565(6, 4))
    wide = np.random.default_rng(0).integers(0, 65535, (4, 5, 3)).astype(">u2")
    (source / "wide.ppm").write_bytes(b"P6\n5 4\n65535\n" + wide.tobytes())
    gray = np.random.default_rng(1).integers(0, 1023, (4, 5)).astype(">u2")
    (source / "ten-bit.pgm").write_bytes(b"P5\n5 4\n1023\n" + gray.tobytes())
    path = tmp_path / "generator.pt"
    saturated_generator(path, channels=3)
    generator, _ = load_generator(path)
    report = protect_folder(generator, source, tmp_path / "out", epsilon=EPS, progress=False)
    assert [p["input"] for p in report.protected] == ["packed.bmp"]
    reasons = {s["input"]: s["reason"] for s in report.skipped}
    assert set(reasons) == {"wide.ppm", "ten-bit.pgm"}
    assert all("high-bit-depth" in reason for reason in reasons.values())


def test_a_gray_generator_keeps_a_colour_photo_in_colour_within_the_budget(
    tmp_path: Path,
) -> None:
    source = photos(tmp_path / "in", count=1, size=(40, 30))
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (30, 40), np.uint8)).save(
        source / "gray.png"
    )
    rgb, gray = tmp_path / "rgb.pt", tmp_path / "gray.pt"
    saturated_generator(rgb, channels=3)
    saturated_generator(gray, channels=1)
    for name, checkpoint in (("rgb", rgb), ("gray", gray)):
        generator, _ = load_generator(checkpoint)
        out = tmp_path / name
        report = protect_folder(generator, source, out, epsilon=EPS, progress=False)
        for entry in report.protected:
            original = np.asarray(Image.open(source / entry["input"]), np.int16)
            written = np.asarray(Image.open(out / entry["output"]), np.int16)
            original = original if original.ndim == 3 else original[..., None]
            written = written if written.ndim == 3 else written[..., None]
            assert written.shape[-1] >= original.shape[-1], (name, entry)
            measured = int(np.abs(written - original).max())
            assert 0 < measured <= 8 and entry["linf_levels"] == measured, (name, entry)
        colour = np.asarray(Image.open(out / "p0.png"))
        assert colour.ndim == 3 and colour.shape[-1] == 3  # never written as grayscale


# -- outputs known by their bytes ----------------------------------------------------------------


def test_protect_never_replaces_an_output_the_user_changed(tmp_path: Path, capsys) -> None:
    path = tmp_path / "generator.pt"
    saturated_generator(path, channels=3)
    source, out = photos(tmp_path / "in", count=2), tmp_path / "out"
    args = ["protect", str(source), str(out), "--generator", str(path), "--no-progress"]
    assert main(args) == 0
    manifest = json.loads((out / MANIFEST).read_text())["batches"][0]["protected"]
    assert all(e["sha256"] == file_sha256(out / e["output"]) for e in manifest)
    Image.new("RGB", (12, 10), (200, 0, 0)).save(out / "p0.png")  # the user's own edit
    edited = snapshot(out)
    for flag in ("--overwrite", "--resume"):
        assert main([*args, flag]) == 1
        assert "changed since protect wrote it" in _one_line(capsys.readouterr().err)
        assert snapshot(out) == edited


def test_protect_never_writes_through_a_linked_subfolder_into_the_input(
    tmp_path: Path, capsys
) -> None:
    path = tmp_path / "generator.pt"
    saturated_generator(path, channels=3)
    source = photos(tmp_path / "in" / "sub", count=1).parent
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").symlink_to(source / "sub")
    before = snapshot(source)
    args = ["protect", str(source), str(out), "--generator", str(path), "--no-progress"]
    assert main(args) == 1
    assert "leads outside the output folder" in _one_line(capsys.readouterr().err)
    assert snapshot(source) == before


@pytest.mark.parametrize(
    "manifest",
    [{"batches": [1, 2]}, {"batches": [{"protected": [{"x": 1}]}]}, {"protected": "all"}],
)
def test_a_manifest_that_only_looks_like_one_is_refused_in_one_line(
    manifest: dict, tmp_path: Path, capsys
) -> None:
    path = tmp_path / "generator.pt"
    saturated_generator(path, channels=3)
    out = tmp_path / "out"
    out.mkdir()
    (out / MANIFEST).write_text(json.dumps(manifest))
    source = photos(tmp_path / "in", count=1)
    args = ["protect", str(source), str(out), "--generator", str(path), "--no-progress"]
    assert main([*args, "--resume"]) == 1
    assert "never replaced" in _one_line(capsys.readouterr().err)
    assert json.loads((out / MANIFEST).read_text()) == manifest
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST]


def test_protect_resume_with_nothing_to_resume_says_so(tmp_path: Path, capsys) -> None:
    path = tmp_path / "generator.pt"
    saturated_generator(path, channels=3)
    source = photos(tmp_path / "in", count=1)
    args = ["protect", str(source), str(tmp_path / "out"), "--generator", str(path)]
    assert main([*args, "--resume", "--no-progress"]) == 1
    assert "nothing to resume" in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_poison_png_overwrite_keeps_changed_files_and_foreign_folders(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    path = tmp_path / "generator.pt"
    saturated_generator(path, channels=1)
    out = tmp_path / "export"
    command = poison_command(path, out, "--format", "png", "--split", "test")
    assert main(command) == 0
    first = sorted((out / "0").iterdir())[0]
    first.write_bytes(first.read_bytes() + b"edited")  # the user saved over one output
    (out / "my-empty-folder").mkdir()
    before = snapshot(out)
    assert main([*command, "--overwrite"]) == 1
    assert "changed since poison wrote it" in _one_line(capsys.readouterr().err)
    first.write_bytes(before[str(first.relative_to(out))][: -len(b"edited")])
    assert main([*command, "--overwrite"]) == 1
    assert "my-empty-folder/, a folder the export did not make" in _one_line(
        capsys.readouterr().err
    )
    assert (out / "my-empty-folder").is_dir()
    (out / "my-empty-folder").rmdir()
    monkeypatch.chdir(out / "0")  # from inside the export, `--output .` and the like
    inside = poison_command(path, Path(".."), "--format", "png", "--split", "test")
    assert main([*inside, "--overwrite"]) == 1
    assert "holds the folder this command runs in" in _one_line(capsys.readouterr().err)
    monkeypatch.chdir(out)
    assert main([*poison_command(path, Path("."), "--format", "png"), "--overwrite"]) == 1
    assert "holds the folder this command runs in" in _one_line(capsys.readouterr().err)
    assert (out / "manifest.json").is_file()
    monkeypatch.chdir(tmp_path)
    assert main([*command, "--overwrite"]) == 0


def test_a_run_that_failed_before_its_first_checkpoint_can_be_started_again(
    tmp_path: Path, capsys
) -> None:
    run = tmp_path / "run"
    command = ["train", str(run), "--preset", "smoke", "--dataset", "digits", "--no-progress"]
    assert main([*command, "--train-size", "10"]) == 1  # fewer images than one batch
    assert "fewer than one batch" in _one_line(capsys.readouterr().err)
    assert [p.name for p in run.iterdir()] == ["config.json"]
    assert main([*command, "--epochs", "1"]) == 0


def test_poison_npz_overwrite_keeps_a_file_the_user_changed(tmp_path: Path, capsys) -> None:
    path = tmp_path / "generator.pt"
    saturated_generator(path, channels=1)
    output = tmp_path / "poisoned.npz"
    command = poison_command(path, output, "--split", "test")
    assert main(command) == 0
    assert main([*command, "--overwrite"]) == 0  # its own output: replaced
    output.write_bytes(output.read_bytes() + b"appended by the user")
    before = output.read_bytes()
    assert main([*command, "--overwrite"]) == 1
    assert "changed since `poison` wrote it" in _one_line(capsys.readouterr().err)
    assert output.read_bytes() == before
