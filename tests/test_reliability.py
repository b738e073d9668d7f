"""Hostile and careless use: the ε budget can never be broken, no command deletes or replaces
what it did not write, and every user mistake is a one-line error (exit 1, or 2 for bad
usage) that names the problem.

Each test checks the exit code, the message, and that every byte that existed before still
exists unless the command was asked to replace it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import stackelberg as sg
from stackelberg.checks import check_epsilon
from stackelberg.games import toys
from stackelberg.unlearnable.budget import BudgetError, enforce_budget
from stackelberg.unlearnable.checkpoint import load_generator, save_generator
from stackelberg.unlearnable.cli import main
from stackelberg.unlearnable.presets import build_generator
from stackelberg.unlearnable.protect import protect_folder
from tests.conftest import make_solver
from tests.test_cli import saturated_generator

EPS = 8 / 255


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` and its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def still_there(before: dict[str, bytes], root: Path) -> bool:
    after = snapshot(root)
    return all(after.get(name) == data for name, data in before.items())


def photos(root: Path, count: int = 2, size: tuple[int, int] = (12, 10)) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"p{i}.png")
    return root


def poison_command(generator: Path, output: Path, *extra: str) -> list[str]:
    return [
        "poison",
        "--generator",
        str(generator),
        "--dataset",
        "digits",
        "--output",
        str(output),
        "--no-progress",
        *extra,
    ]


@pytest.fixture
def gray_generator(tmp_path: Path) -> Path:
    path = tmp_path / "gen" / "generator.pt"
    path.parent.mkdir()
    saturated_generator(path, channels=1)
    return path


@pytest.fixture
def rgb_generator(tmp_path: Path) -> Path:
    path = tmp_path / "gen-rgb" / "generator.pt"
    path.parent.mkdir()
    saturated_generator(path, channels=3)
    return path


# -- the budget ---------------------------------------------------------------------------------


def test_generator_with_nan_weights_is_refused_by_poison_and_protect(
    tmp_path: Path, gray_generator: Path, rgb_generator: Path, capsys
) -> None:
    for path in (gray_generator, rgb_generator):
        state = torch.load(path, weights_only=True)
        first = next(k for k, v in state.items() if v.is_floating_point())
        state[first] = torch.full_like(state[first], float("nan"))
        torch.save(state, path)
    out = tmp_path / "out.npz"
    assert main(poison_command(gray_generator, out)) == 1
    err = capsys.readouterr().err
    assert "non-finite weights" in err and str(gray_generator) in err
    assert not out.exists() and not out.with_suffix(".json").exists()
    source = photos(tmp_path / "photos")
    protected = tmp_path / "protected"
    assert main(["protect", str(source), str(protected), "--generator", str(rgb_generator)]) == 1
    assert "non-finite weights" in capsys.readouterr().err
    assert not protected.exists()


def test_non_finite_perturbation_is_an_error_never_a_black_image() -> None:
    clean = torch.full((1, 3, 4, 4), 100, dtype=torch.uint8)
    poisoned = torch.full((1, 3, 4, 4), float("nan"))
    with pytest.raises(BudgetError, match=r"from generator\.pt is not finite"):
        enforce_budget(clean, poisoned, EPS, source="generator.pt")
    too_far = clean + 9  # uint8 poisons are measured, never silently clipped
    with pytest.raises(BudgetError, match="9 levels, over the budget of 8"):
        enforce_budget(clean, too_far, EPS)


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (True, TypeError, "real number"),
        ("0.03", TypeError, "real number"),
        (-0.1, ValueError, r"\(0, 1\]"),
        (float("nan"), ValueError, r"\(0, 1\]"),
        (1.5, ValueError, r"\(0, 1\]"),
        (0.5 / 255, ValueError, "below one intensity level"),
    ],
)
def test_epsilon_is_validated_once_everywhere(value, error, message, tmp_path: Path) -> None:
    with pytest.raises(error, match=message):
        check_epsilon(value, whole_level=True)
    generator = saturated_generator(tmp_path / "g.pt")
    with pytest.raises(error, match=message):
        protect_folder(generator, photos(tmp_path / "in"), tmp_path / "out", epsilon=value)
    assert not (tmp_path / "out").exists()


def test_epsilon_true_in_generator_json_names_the_file_and_field(
    gray_generator: Path, tmp_path: Path, capsys
) -> None:
    meta = gray_generator.with_suffix(".json")
    record = json.loads(meta.read_text())
    meta.write_text(json.dumps({**record, "epsilon": True}))
    with pytest.raises(ValueError, match=r"the field 'epsilon'.*generator\.json"):
        load_generator(gray_generator)
    meta.write_text(json.dumps({**record, "in_channels": "three"}))
    assert main(poison_command(gray_generator, tmp_path / "o.npz")) == 1
    assert "'in_channels' must be a whole number from 1 to 4" in capsys.readouterr().err


def test_achromatic_generator_round_trips_and_a_wrong_flag_names_the_field(
    tmp_path: Path,
) -> None:
    """``achromatic`` is rebuilt from the metadata (absent: false, as in older files), and a
    value that is not true or false is refused with the file and field named."""
    torch.manual_seed(0)
    generator = build_generator("unet-small", EPS, 3, achromatic=True)
    record = {
        "architecture": "unet-small",
        "epsilon": EPS,
        "in_channels": 3,
        "label_conditioned": False,
        "num_classes": 10,
        "achromatic": True,
    }
    path = tmp_path / "generator.pt"
    save_generator(path, generator, record)
    loaded, _ = load_generator(path)
    x = torch.rand(2, 3, 16, 16)
    assert loaded.achromatic and torch.equal(loaded(x), generator.eval()(x))
    meta = path.with_suffix(".json")
    meta.write_text(json.dumps({k: v for k, v in record.items() if k != "achromatic"}))
    assert not load_generator(path)[0].achromatic
    meta.write_text(json.dumps({**record, "achromatic": "yes"}))
    with pytest.raises(ValueError, match=r"generator\.json: the field 'achromatic' must be true"):
        load_generator(path)


@pytest.mark.parametrize("text", ["1/2/3", "0.001", "2", "abc", "8/0", "true"])
def test_cli_epsilon_refuses_what_it_cannot_read(text: str, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(tmp_path / "run"), "--preset", "smoke", "--epsilon", text])
    assert exit_info.value.code == 2
    assert "not a budget" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_high_bit_depth_and_animated_images_are_skipped_with_a_reason(
    tmp_path: Path, rgb_generator: Path
) -> None:
    source = photos(tmp_path / "in", count=1)
    deep = (np.arange(16 * 16, dtype=np.uint16).reshape(16, 16) * 250).astype(np.uint16)
    Image.fromarray(deep).save(source / "deep.png")
    frames = [Image.new("RGB", (8, 8), (i * 40, 0, 0)) for i in range(3)]
    frames[0].save(source / "anim.gif", save_all=True, append_images=frames[1:])
    generator, _ = load_generator(rgb_generator)
    report = protect_folder(generator, source, tmp_path / "out", epsilon=EPS, progress=False)
    reasons = {s["input"]: s["reason"] for s in report.skipped}
    assert "high-bit-depth" in reasons["deep.png"] and "animated" in reasons["anim.gif"]
    assert [p["input"] for p in report.protected] == ["p0.png"]
    assert not (tmp_path / "out" / "deep.png").exists()


# -- nothing deleted that the program did not write ----------------------------------------------


def test_poison_png_overwrite_never_deletes_unrelated_files(
    tmp_path: Path, gray_generator: Path, capsys
) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.txt").write_text("years of work")
    before = snapshot(folder)
    command = poison_command(gray_generator, folder, "--format", "png", "--overwrite")
    assert main(command) == 1
    assert "did not write" in capsys.readouterr().err
    assert still_there(before, folder)
    # An earlier export (and only that) is replaced.
    export = tmp_path / "export"
    assert main(poison_command(gray_generator, export, "--format", "png")) == 0
    assert main(poison_command(gray_generator, export, "--format", "png")) == 1
    assert main(poison_command(gray_generator, export, "--format", "png", "--overwrite")) == 0
    (export / "extra.txt").write_text("added by hand")
    assert main(poison_command(gray_generator, export, "--format", "png", "--overwrite")) == 1
    assert (export / "extra.txt").read_text() == "added by hand"


def test_poison_into_the_working_directory_or_its_data_is_refused(
    tmp_path: Path, gray_generator: Path, monkeypatch, capsys
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.md").write_text("keep me")
    before = snapshot(work)
    monkeypatch.chdir(work)
    assert main(poison_command(gray_generator, Path("."), "--format", "png", "--overwrite")) == 1
    assert still_there(before, work)
    data = tmp_path / "data"
    data.mkdir()
    (data / "image.png").write_bytes(b"data")
    command = [*poison_command(gray_generator, data, "--format", "png"), "--data-dir", str(data)]
    assert main([*command, "--overwrite"]) == 1
    assert "overlaps --data-dir" in capsys.readouterr().err
    assert (data / "image.png").read_bytes() == b"data"
    # Through a link, too.
    link = tmp_path / "link"
    link.symlink_to(data)
    assert main([*poison_command(gray_generator, link / "x.npz"), "--data-dir", str(data)]) == 1


def test_poison_never_replaces_a_json_it_did_not_write(
    tmp_path: Path, gray_generator: Path, capsys
) -> None:
    before = snapshot(gray_generator.parent)
    target = gray_generator.parent / "generator.npz"  # its manifest would be generator.json
    assert main(poison_command(gray_generator, target, "--overwrite")) == 1
    assert "overlaps" in capsys.readouterr().err or not target.exists()
    assert still_there(before, gray_generator.parent)
    other = tmp_path / "other"
    other.mkdir()
    (other / "data.json").write_text('{"mine": true}')
    assert main(poison_command(gray_generator, other / "data.npz", "--overwrite")) == 1
    assert "never replaced" in capsys.readouterr().err
    assert (other / "data.json").read_text() == '{"mine": true}'


def test_evaluate_never_replaces_a_foreign_output(tmp_path: Path, capsys) -> None:
    report = tmp_path / "results.json"
    report.write_text('{"important": 1}')
    command = ["evaluate", "--dataset", "digits", "--epochs", "1", "--no-progress"]
    for extra in ([], ["--overwrite"]):
        assert main([*command, "--output", str(report), *extra]) == 1
        assert "never replaced" in capsys.readouterr().err
    assert report.read_text() == '{"important": 1}'


def test_protect_refuses_overlap_in_either_direction(tmp_path: Path, rgb_generator: Path) -> None:
    outer = tmp_path / "outer"
    source = photos(outer / "photos")
    before = snapshot(outer)
    generator = ["--generator", str(rgb_generator), "--no-progress"]
    assert main(["protect", str(source), str(outer), *generator]) == 1  # output holds input
    assert main(["protect", str(source), str(outer), *generator, "--overwrite"]) == 1
    assert main(["protect", str(source), str(source / "x"), *generator]) == 1  # and inside
    assert still_there(before, outer) and snapshot(outer) == before


def test_protect_replaces_only_its_own_outputs_and_keeps_every_batch(
    tmp_path: Path, rgb_generator: Path, capsys
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    Image.new("RGB", (4, 4)).save(out / "p0.png")  # someone's own picture, same name
    source = photos(tmp_path / "a")
    generator = ["--generator", str(rgb_generator), "--no-progress"]
    assert main(["protect", str(source), str(out), *generator, "--overwrite"]) == 1
    assert "never replaced" in capsys.readouterr().err
    assert Image.open(out / "p0.png").size == (4, 4)
    (out / "p0.png").unlink()
    assert main(["protect", str(source), str(out), *generator]) == 0
    second = tmp_path / "b"
    second.mkdir()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(second / "q.png")
    assert main(["protect", str(second), str(out), *generator]) == 0
    batches = json.loads((out / "protect_manifest.json").read_text())["batches"]
    assert [len(b["protected"]) for b in batches] == [2, 1]
    assert all(b["finished"] for b in batches)


def test_protect_resume_skips_what_an_interrupted_run_wrote(
    tmp_path: Path, rgb_generator: Path, capsys
) -> None:
    source = photos(tmp_path / "in", count=2)
    out = tmp_path / "out"
    generator = ["--generator", str(rgb_generator), "--no-progress"]
    assert main(["protect", str(source), str(out), *generator]) == 0
    written = snapshot(out)
    Image.new("RGB", (8, 8), (1, 2, 3)).save(source / "p2.png")  # the part not yet done
    assert main(["protect", str(source), str(out), *generator]) == 1
    assert "--resume" in capsys.readouterr().err
    assert main(["protect", str(source), str(out), *generator, "--resume"]) == 0
    assert "2 image(s) already protected" in capsys.readouterr().out
    assert (out / "p2.png").is_file()
    assert all(snapshot(out)[k] == v for k, v in written.items() if k.endswith(".png"))


def test_dangling_links_are_listed_as_skipped(tmp_path: Path, rgb_generator: Path) -> None:
    source = photos(tmp_path / "in", count=1)
    (source / "gone.png").symlink_to(tmp_path / "missing.png")
    generator, _ = load_generator(rgb_generator)
    report = protect_folder(generator, source, tmp_path / "out", epsilon=EPS, progress=False)
    assert {s["input"] for s in report.skipped} == {"gone.png"}


def test_train_writes_only_into_a_new_or_empty_folder(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "documents"
    folder.mkdir()
    (folder / "config.json").write_text('{"mine": true}')
    command = ["train", str(folder), "--preset", "smoke", "--dataset", "digits", "--no-progress"]
    assert main(command) == 1
    assert "not a training run" in capsys.readouterr().err
    assert (folder / "config.json").read_text() == '{"mine": true}'


# -- bounded resources --------------------------------------------------------------------------


def test_oversized_and_bomb_images_are_skipped_not_fatal(
    tmp_path: Path, rgb_generator: Path, monkeypatch
) -> None:
    source = photos(tmp_path / "in", count=1, size=(12, 10))
    Image.new("RGB", (64, 64)).save(source / "big.png")
    generator, _ = load_generator(rgb_generator)
    report = protect_folder(
        generator, source, tmp_path / "out", epsilon=EPS, max_pixels=1000, progress=False
    )
    assert "over the limit of 1000" in {s["input"]: s["reason"] for s in report.skipped}["big.png"]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # Pillow's own bomb limit
    report = protect_folder(generator, source, tmp_path / "out2", epsilon=EPS, progress=False)
    assert {s["input"] for s in report.skipped} == {"big.png", "p0.png"}
    assert json.loads((tmp_path / "out2" / "protect_manifest.json").read_text())["batches"]


@pytest.mark.parametrize("tile", ["1", "63", "-5", "x"])
def test_tile_has_a_sane_minimum(tile: str, tmp_path: Path, rgb_generator: Path, capsys) -> None:
    source = photos(tmp_path / "in", count=1)
    with pytest.raises(SystemExit) as exit_info:
        main(["protect", str(source), str(tmp_path / "o"), "--generator", str(rgb_generator),
              "--tile", tile])  # fmt: skip
    assert exit_info.value.code == 2


# -- resume compares the run --------------------------------------------------------------------


def test_resume_refuses_changed_settings_and_names_them(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    base = ["train", str(run), "--preset", "smoke", "--dataset", "digits", "--no-progress"]
    assert main([*base, "--epochs", "1"]) == 0
    before = snapshot(run)
    capsys.readouterr()
    assert main([*base, "--epochs", "2", "--resume", "--epsilon", "4/255"]) == 1
    err = capsys.readouterr().err
    assert "preset.epsilon" in err and "--resume" in err
    assert main([*base, "--epochs", "2", "--resume", "--seed", "3", "--train-size", "100"]) == 1
    err = capsys.readouterr().err
    assert "seed (0 → 3)" in err and "preset.train_size" in err
    assert snapshot(run) == before


# -- one-line errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"", b"garbage that is not a checkpoint"])
def test_unreadable_generator_file_never_suggests_an_unsafe_load(
    content: bytes, gray_generator: Path, tmp_path: Path, capsys
) -> None:
    gray_generator.write_bytes(content)
    assert main(poison_command(gray_generator, tmp_path / "o.npz")) == 1
    err = capsys.readouterr().err
    assert str(gray_generator) in err and "weights_only=False" not in err
    assert len(err.strip().splitlines()) == 1


def test_damaged_files_are_one_line_errors(tmp_path: Path, capsys) -> None:
    npz = tmp_path / "poisoned.npz"
    npz.write_bytes(b"PK\x03\x04 broken zip")
    command = ["evaluate", "--dataset", "digits", "--epochs", "1", "--no-progress"]
    assert main([*command, "--poisoned", str(npz)]) == 1
    assert "poisoned.npz" in capsys.readouterr().err
    archive = tmp_path / "data.tar.gz"
    archive.write_bytes(b"\x1f\x8b\x08\x00 not really gzip")
    assert main(["evaluate", "--dataset", "folder", "--data-dir", str(archive)]) == 1
    err = capsys.readouterr().err
    assert "data.tar.gz" in err and len(err.strip().splitlines()) == 1
    bad_labels = tmp_path / "labels.npz"
    np.savez(bad_labels, x=np.zeros((4, 8, 8, 1), np.uint8), y=np.array([0, 1, 2, 99]))
    assert main([*command, "--poisoned", str(bad_labels)]) == 1
    assert "labels must lie in [0, 10)" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_cuda_without_cuda_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    command = ["evaluate", "--dataset", "digits", "--device", "cuda", "--no-progress"]
    assert main(command) == 1
    assert "no CUDA device" in capsys.readouterr().err


def test_solve_with_a_solver_name_says_what_it_expects() -> None:
    game = toys.StackelbergVsNashGame()
    with pytest.raises(TypeError, match="solver must be a solver object"):
        sg.solve(game, "bome", None, 3, progress=False)  # type: ignore[arg-type]


def test_a_solver_state_names_the_solver_and_game_it_came_from() -> None:
    quadratic = toys.QuadraticGame.instance(dtype=torch.float64)
    other = toys.StackelbergVsNashGame()
    saved = make_solver("SOBA", quadratic).state_dict()
    with pytest.raises(ValueError, match="saved by SOBA on a QuadraticGame; this is BOME on a "):
        make_solver("BOME", quadratic).load_state_dict(saved)
    soba_elsewhere = make_solver("SOBA", other)
    with pytest.raises(ValueError, match="this is SOBA on a StackelbergVsNashGame"):
        soba_elsewhere.load_state_dict(saved)
    with pytest.raises(TypeError, match="takes what a solver's state_dict\\(\\) returned"):
        soba_elsewhere.load_state_dict([1, 2])  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["abc", None, {"a": 1}, [1, "a"], 1 + 2j])
def test_variable_refuses_what_is_not_a_real_number(value: object) -> None:
    with pytest.raises(TypeError, match=r"Variable needs (a number|real numbers)"):
        sg.Variable(value)  # type: ignore[arg-type]


def test_a_one_shot_data_iterator_gets_a_message_that_says_what_to_pass() -> None:
    game = toys.QuadraticGame.instance(dtype=torch.float64)
    solver = make_solver("SOBA", game, 0.01, 0.01)
    batches = (None for _ in range(3))
    with pytest.raises(ValueError, match=r"one-shot iterator \(generator\) and ran out after 3"):
        sg.solve(game, solver, batches, 5, progress=False)
    history = sg.solve(game, solver, [None] * 3, 5, progress=False)  # a list restarts
    assert len(history) == 5


# -- photos as people have them -----------------------------------------------------------------


def test_exif_orientation_is_applied_before_protecting(tmp_path: Path, rgb_generator: Path) -> None:
    source = tmp_path / "in"
    source.mkdir()
    image = Image.new("RGB", (16, 8), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    image.save(source / "phone.jpg", exif=exif.tobytes())
    generator, _ = load_generator(rgb_generator)
    protect_folder(generator, source, tmp_path / "out", epsilon=EPS, progress=False)
    assert Image.open(tmp_path / "out" / "phone.png").size == (8, 16)  # upright


def test_resume_accepts_a_run_begun_before_presets_had_the_achromatic_field(
    tmp_path: Path,
) -> None:
    """A run's ``config.json`` from before ``Preset.achromatic`` existed has no such key; the
    field's default (false) is what that run trained with, so ``--resume`` continues it."""
    run = tmp_path / "run"
    base = ["train", str(run), "--preset", "smoke", "--dataset", "digits", "--no-progress"]
    assert main([*base, "--epochs", "1"]) == 0
    config = json.loads((run / "config.json").read_text())
    del config["preset"]["achromatic"]
    (run / "config.json").write_text(json.dumps(config))
    assert main([*base, "--epochs", "2", "--resume"]) == 0
    assert json.loads((run / "training.json").read_text())["epoch"] == 2
