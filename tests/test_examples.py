"""The examples run end to end and print what they promise."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import HANG_TIMEOUT, assert_png_figure, fake_mnist

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_define_a_game_finds_the_stackelberg_point(tmp_path: Path) -> None:
    output = tmp_path / "duopoly.json"
    completed = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "define_a_game.py"), "--json", str(output)],
        capture_output=True,
        text=True,
        check=True,
        timeout=HANG_TIMEOUT,
    )
    assert "seed=0" in completed.stdout
    results = json.loads(output.read_text())
    for name in ("BOME", "BackGradient", "TotalGradient"):
        assert results["solvers"][name]["q1"] == pytest.approx(4.5, rel=1e-2)
        assert results["solvers"][name]["q2"] == pytest.approx(2.25, rel=1e-2)
    assert results["solvers"]["GDA"]["q1"] == pytest.approx(3.0, rel=1e-4)
    assert results["closed form"]["q1"] == 4.5


@pytest.mark.slow
def test_poisoning_example_smoke(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "poisoning_attack.py"),
            "--datasets", "breast_cancer",
            "--victims", "logreg",
            "--fractions", "0", "0.1",
            "--splits", "1",
            "--outer-steps", "3",
            "--train-steps", "20",
            "--memory-steps", "5",
            "--output-dir", str(tmp_path),
        ],
        capture_output=True, text=True, check=True, timeout=HANG_TIMEOUT,
    )  # fmt: skip
    results = json.loads((tmp_path / "results.json").read_text())
    cell = results["cells"]["breast_cancer/logreg"]
    assert set(cell["fractions"]) == {"0.0", "0.1"}
    for row in cell["fractions"].values():
        for key in ("label_flip", "reverse", "checkpoint"):
            assert 0.0 <= row[key]["mean"] <= 1.0
    assert len(cell["hypergradient_relative_error"]) == 1
    assert set(results["memory_mib"]) == {"store", "checkpoint", "reverse"}
    assert_png_figure(tmp_path / "test_error.png")
    assert "label flip" in (tmp_path / "results.md").read_text()


@pytest.mark.slow
def test_adversarial_example_smoke_and_resume(tmp_path: Path) -> None:
    data = fake_mnist(tmp_path / "data")
    command = [
        sys.executable,
        str(ROOT / "examples" / "adversarial_training.py"),
        "--data-dir", str(data),
        "--output-dir", str(tmp_path / "out"),
        "--train-size", "20", "--eval-size", "10", "--final-eval-size", "10",
        "--batch-size", "10", "--steps", "2", "--warmup-epochs", "1", "--width", "2",
    ]  # fmt: skip
    subprocess.run(
        [*command, "--epochs", "2"],
        capture_output=True,
        text=True,
        check=True,
        timeout=HANG_TIMEOUT,
    )
    first = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert [row["epoch"] for row in first["history"]["beta"]] == [0, 1]
    resumed = subprocess.run(
        [*command, "--epochs", "3", "--resume"],
        capture_output=True,
        text=True,
        check=True,
        timeout=HANG_TIMEOUT,
    )
    assert "resumed after epoch 1" in resumed.stdout
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert [row["epoch"] for row in metrics["history"]["pgd"]] == [0, 1, 2]
    assert metrics["history"]["pgd"][:2] == first["history"]["pgd"]
    final = metrics["final"]["beta"]
    assert 0 <= final["beta"] <= 1 and 0 <= final["clean"] <= 1
    assert_png_figure(tmp_path / "out" / "robust_accuracy.png")


def _run_unlearnable(*args: str, same_threads: bool = False) -> subprocess.CompletedProcess:
    """The example on the ``smoke`` preset; ``same_threads``: on as many threads as this
    process (a bit-for-bit comparison with an in-process run needs the same reduction order)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())} if same_threads else None
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "unlearnable_cifar.py"),
            "--preset",
            "smoke",
            "--no-progress",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=HANG_TIMEOUT,
        env=env,
    )


@pytest.mark.slow
def test_unlearnable_example_smoke_on_a_cifar_archive(tmp_path: Path) -> None:
    """End to end on a tiny archive in the official CIFAR-10 format: metrics, export, plots,
    and the refusal to overwrite a run without --resume."""
    import numpy as np
    from test_cifar import write_cifar10

    archive, _ = write_cifar10(tmp_path, per_batch=80)
    out = tmp_path / "run"
    completed = _run_unlearnable(
        "--dataset", "cifar10", "--data-dir", str(archive), "--output-dir", str(out), "--seed", "3"
    )
    assert completed.returncode == 0, completed.stderr
    assert "seed 3" in completed.stdout and '"preset"' in completed.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("clean_victim_accuracy", "poisoned_victim_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["epsilon"] == pytest.approx(8 / 255) and metrics["seed"] == 3
    assert metrics["config"]["preset"]["name"] == "smoke"
    assert (
        len(metrics["poisoned_victim_curve"])
        == metrics["config"]["preset"]["victim_schedule"]["epochs"]
    )
    data = np.load(out / "poisoned_train.npz")
    assert data["x"].dtype == np.uint8 and data["x"].shape[1:] == (32, 32, 3)
    assert len(data["x"]) == len(data["y"]) == len(data["indices"]) == 256
    assert metrics["measured_linf_levels"] <= 8
    for name in (
        "victim_accuracy.png",
        "training.png",
        "examples.png",
        "generator.pt",
        "poisoned_train.json",
    ):
        assert (out / name).is_file()
    torch.load(out / "generator.pt", weights_only=True)

    again = _run_unlearnable(
        "--dataset", "cifar10", "--data-dir", str(archive), "--output-dir", str(out)
    )
    assert again.returncode != 0 and "--resume" in again.stderr
    resumed = _run_unlearnable(
        "--dataset",
        "cifar10",
        "--data-dir",
        str(archive),
        "--output-dir",
        str(out),
        "--seed",
        "3",
        "--resume",
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stdout


@pytest.mark.slow
def test_the_example_trains_the_generator_stackelberg_train_does(tmp_path: Path) -> None:
    """The example is a script over the library's pipeline, not a second one: for the same
    preset, data and seed it trains exactly the generator that ``stackelberg train`` does."""
    from stackelberg.unlearnable.cli import main as cli

    example = _run_unlearnable(
        "--dataset", "digits", "--output-dir", str(tmp_path / "example"), same_threads=True
    )
    assert example.returncode == 0, example.stderr
    common = ["--preset", "smoke", "--dataset", "digits", "--no-progress"]
    assert cli(["train", str(tmp_path / "cli"), *common]) == 0
    ours = torch.load(tmp_path / "example" / "generator.pt", weights_only=True)
    theirs = torch.load(tmp_path / "cli" / "generator.pt", weights_only=True)
    assert ours.keys() == theirs.keys()
    for name, tensor in theirs.items():
        assert torch.equal(ours[name], tensor), name
    quick = json.loads((tmp_path / "example" / "metrics.json").read_text())["quick_tests"]
    assert quick == json.loads((tmp_path / "cli" / "generator.json").read_text())["quick_tests"]
    # `poison --preset` poisons the same training subset into the same file contents ...
    import numpy as np

    from stackelberg.unlearnable.presets import PRESETS

    cli_npz = tmp_path / "cli" / "poisoned.npz"
    generator = str(tmp_path / "cli" / "generator.pt")
    data = ["--dataset", "digits", "--no-progress"]
    assert (
        cli(
            [
                "poison",
                "--generator",
                generator,
                "--output",
                str(cli_npz),
                "--preset",
                "smoke",
                *data,
            ]
        )
        == 0
    )
    with (
        np.load(tmp_path / "example" / "poisoned_train.npz") as theirs_npz,
        np.load(cli_npz) as ours_npz,
    ):
        for key in ("x", "y", "indices"):
            assert np.array_equal(theirs_npz[key], ours_npz[key]), key
    # ... and `evaluate --preset` trains the preset's victim with its schedule.
    smoke = PRESETS["smoke"]
    for poisoned in ([], ["--poisoned", str(cli_npz)]):
        report_path = tmp_path / f"evaluate{len(poisoned)}.json"
        args = ["evaluate", "--preset", "smoke", *poisoned, *data, "--output", str(report_path)]
        assert cli(args) == 0
        report = json.loads(report_path.read_text())
        assert report["victim"] == smoke.victim and report["preset"] == "smoke"
        assert report["schedule"]["epochs"] == smoke.victim_schedule.epochs
        assert report["schedule"]["lr"] == smoke.victim_schedule.lr
        assert len(report["test_curve"]) == smoke.victim_schedule.epochs
        assert report["training_images"] == smoke.train_size  # the preset's subset, both ways


@pytest.mark.slow
def test_unlearnable_example_on_digits_and_a_missing_archive(tmp_path: Path) -> None:
    completed = _run_unlearnable(
        "--dataset", "digits", "--output-dir", str(tmp_path / "d"), "--solver", "backgradient"
    )
    assert completed.returncode == 0, completed.stderr
    metrics = json.loads((tmp_path / "d" / "metrics.json").read_text())
    assert metrics["config"]["preset"]["training"]["solver"] == "backgradient"
    missing = _run_unlearnable(
        "--dataset",
        "cifar10",
        "--data-dir",
        str(tmp_path / "none"),
        "--output-dir",
        str(tmp_path / "m"),
    )
    assert missing.returncode != 0
    assert "cifar-10-python.tar.gz" in missing.stderr and "Traceback" not in missing.stderr


@pytest.mark.slow
def test_gpu_check_script_runs_on_the_cpu(tmp_path: Path) -> None:
    """The GPU check is run rarely (only when a GPU is lent): keep it from rotting."""
    output = tmp_path / "gpu_check.json"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "gpu_check.py"),
            "--device", "cpu",
            "--preset", "smoke",
            "--steps", "2",
            "--images", "2,1",
            "--skip-tests",
            "--output", str(output),
        ],
        check=True,
        capture_output=True,
        timeout=HANG_TIMEOUT,
    )  # fmt: skip
    report = json.loads(output.read_text())
    assert report["preset_steps"]["steps"] == 2
    assert report["preset_steps"]["seconds_per_step_median"] > 0
    assert [r["size"] for r in report["protect"]] == [32, 512]
    assert all(r["images_per_second"] > 0 for r in report["protect"])


def _load_study():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "gue_paper_game_study", ROOT / "experiments" / "gue_paper_game_study.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def _study_on_random_images(monkeypatch, n: int):
    """The study module, reading ``n`` random 32×32 images (10 classes) as every split."""
    from stackelberg.data.folders import ImageDataset

    study = _load_study()
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
    data = ImageDataset(images, torch.arange(n) % 10, tuple(str(k) for k in range(10)))
    monkeypatch.setattr(study, "load_dataset", lambda *args: {"train": data, "test": data})
    monkeypatch.setattr(study, "split_preset_data", lambda *args: (data, None, data, data))
    return study, data


def _untrained_snapshots(run_dir: Path, steps: tuple[int, ...]) -> Path:
    """``run_dir`` with an untrained ``unet-small`` saved as the snapshot of each step."""
    from stackelberg.unlearnable.checkpoint import save_generator
    from stackelberg.unlearnable.presets import build_generator

    (run_dir / "snapshots").mkdir(parents=True)
    generator = build_generator("unet-small", 8 / 255, 3)
    metadata = {"architecture": "unet-small", "label_conditioned": False, "num_classes": 10}
    metadata.update({"epsilon": 8 / 255, "in_channels": 3})
    for step in steps:
        save_generator(run_dir / "snapshots" / f"step-{step:05d}.pt", generator, metadata)
    return run_dir


def test_study_extrapolation_recovers_a_log_linear_curve() -> None:
    study = _load_study()
    # accuracy = 0.9 − 0.05·log2(steps): 35 % at log2(steps) = 11, i.e. 2048 steps
    victims = {str(k): {"test_accuracy": 0.9 - 0.05 * math.log2(k)} for k in (128, 256, 1024)}
    fit = study.extrapolate(victims)
    assert fit["slope_per_doubling"] == pytest.approx(-0.05)
    assert fit["intercept"] == pytest.approx(0.9)
    assert fit["steps_to_goal"] == 2048
    flat = study.extrapolate({"1287": {"test_accuracy": 0.749}, "2574": {"test_accuracy": 0.751}})
    assert flat["steps_to_goal"] is None
    assert study.extrapolate({"1287": {"test_accuracy": 0.7}}) is None
    measured = study.extrapolate(
        {"1287": {"test_accuracy": 0.7556}, "2574": {"test_accuracy": 0.7507}}
    )
    assert measured["steps_to_goal"] > 1e20  # falls, but by half a point per doubling
    assert "within the run-to-run noise" in study._extrapolation_text(measured, 1.2)
    assert "within" not in study._extrapolation_text(fit, 1.2)
    # 2048 steps of 3.6 s each: 2.05 hours
    assert "(≈ 2.05 h of BOME steps on 2 cores)" in study._extrapolation_text(fit, 3.6)


def test_study_report_writes_json_readme_and_plot(tmp_path: Path) -> None:
    study = _load_study()
    run_dir = tmp_path / "runs" / "official"
    run_dir.mkdir(parents=True)
    history = [
        {"step": 20 * (i + 1), "clean_accuracy": 0.4, "poisoned_accuracy": 0.4 + 0.01 * i}
        for i in range(10)
    ]
    # two epochs of 117 steps checkpointed; the history logged every 20 steps stops at 200
    (run_dir / "training.json").write_text(json.dumps({"epoch": 2, "history": history}))
    (run_dir / "config.json").write_text(json.dumps({"seed": 0}))
    victims = {"1287": {"test_accuracy": 0.749}, "2574": {"test_accuracy": 0.7505}}
    (run_dir / "victims.json").write_text(json.dumps(victims))
    (tmp_path / "runs" / "clean.json").write_text(json.dumps({"test_accuracy": 0.767}))
    out = tmp_path / "report"
    study.main(["report", "--runs-dir", str(tmp_path / "runs"), "--output-dir", str(out)])
    result = json.loads((out / "official.json").read_text())
    assert result["steps_done"] == 234 and result["victims"] == victims
    assert result["gap_curve"] == [[100, 0.02, 0.4], [200, 0.07, 0.4]]
    assert result["extrapolation"]["steps_to_goal"] is None
    assert result["seconds_per_step"] == study.RUNS["official"].seconds_per_step
    text = (out / "README.md").read_text()
    assert "| `official` |" in text and "1287: 74.9, 2574: 75.0" in text
    assert "never reaches the goal" in text and "Clean victim: **76.7 %**" in text
    assert "train official --resume --defer-victims" in text and "victims official" in text
    assert "# clean victim: done" in text
    assert_png_figure(out / "study.png")


def test_study_victims_evaluates_only_the_snapshots_without_one(
    tmp_path: Path, monkeypatch
) -> None:
    study, data = _study_on_random_images(monkeypatch, 12)
    images = data.images
    seen: list[torch.Tensor] = []

    def fake_victim(preset, poisoned, data, seed, progress):
        seen.append(poisoned)
        return {"test_accuracy": 0.5, "validation_accuracy": 0.5}

    monkeypatch.setattr(study, "evaluate_victim", fake_victim)
    run_dir = _untrained_snapshots(tmp_path / "official", (1287, 2574))
    earlier = {"1287": {"test_accuracy": 0.75}}
    (run_dir / "victims.json").write_text(json.dumps(earlier))
    study.main(["victims", "official", "--data-dir", "x", "--runs-dir", str(tmp_path)])
    victims = json.loads((run_dir / "victims.json").read_text())
    assert victims["1287"] == earlier["1287"]  # evaluated before: kept, not redone
    assert victims["2574"]["test_accuracy"] == 0.5 and len(seen) == 1
    assert victims["2574"]["measured_linf_levels"] <= 8
    assert (seen[0].int() - images.int()).abs().max() <= 8


def test_study_diagnose_measures_each_snapshot_once_and_the_report_shows_it(
    tmp_path: Path, monkeypatch
) -> None:
    study, data = _study_on_random_images(monkeypatch, 20)
    # a class-wise shortcut: each class's images moved by its own ±8/255 sign pattern
    patterns = torch.randint(0, 2, (10, 3, 32, 32)).float() * 2 - 1

    def shortcut(generator, clean):
        return (clean.float() / 255 + 8 / 255 * patterns[data.labels]).clamp(0, 1)

    monkeypatch.setattr(study, "poison_images", shortcut)
    augment: list[bool] = []

    def fake_victim(preset, poisoned, data, seed, progress, *, augment=True, seen=augment):
        seen.append(augment)
        return {"test_accuracy": 0.25, "validation_accuracy": 0.25}

    monkeypatch.setattr(study, "evaluate_victim", fake_victim)
    run_dir = _untrained_snapshots(tmp_path / "official", (1287,))
    common = ["--data-dir", "x", "--runs-dir", str(tmp_path), "--no-progress"]
    study.main(["diagnose", "official", *common])
    first = json.loads((run_dir / "diagnostics.json").read_text())["1287"]
    assert augment == []  # no victim unless asked for
    for key in ("noise_only_accuracy", "linear_train_accuracy", "linear_test_accuracy"):
        assert 0 <= first[key] <= 1
    # δ is (up to the clamp at 0 and 1) the class's pattern: linearly separable, also held out
    assert first["linear_train_accuracy"] == 1.0 and first["linear_test_accuracy"] == 1.0
    study.main(["diagnose", "official", "--victim-without-augmentation", *common])
    second = json.loads((run_dir / "diagnostics.json").read_text())["1287"]
    assert augment == [False]
    assert second["noise_only_accuracy"] == first["noise_only_accuracy"]  # kept, not redone
    assert second["victim_without_augmentation"]["test_accuracy"] == 0.25
    study.main(["diagnose", "clean", "--victim-without-augmentation", *common])
    assert augment == [False, False]
    # the snapshot (an untrained U-Net: running statistics 0 and 1) recalibrated first
    study.main(["diagnose", "official", "--calibrate-batchnorm", *common])
    assert augment == [False, False, True]  # the study's victim, with its augmentation
    third = json.loads((run_dir / "diagnostics.json").read_text())["1287"]
    calibrated = third.pop("calibrated_batchnorm")
    assert third == second  # the snapshot's own measures are untouched
    assert calibrated["victim"]["test_accuracy"] == 0.25
    assert calibrated["linear_test_accuracy"] == 1.0  # the same shortcut: poison_images is faked
    before, after = calibrated["agreement_as_saved"], calibrated["agreement_calibrated"]
    assert after["same_sign"] > 0.95 and after["cosine"] > 0.99
    assert before["cosine"] < after["cosine"]
    second["calibrated_batchnorm"] = calibrated
    # the report shows the table with the clean baseline
    history = [{"step": 20, "clean_accuracy": 0.4, "poisoned_accuracy": 0.4}]
    (run_dir / "training.json").write_text(json.dumps({"epoch": 1, "history": history}))
    (run_dir / "config.json").write_text(json.dumps({"seed": 0}))
    out = tmp_path / "report"
    study.main(["report", "--runs-dir", str(tmp_path), "--output-dir", str(out)])
    text = (out / "README.md").read_text()
    noise = f"{100 * first['noise_only_accuracy']:.1f}"
    assert f"| `official` | 1287 | {noise} | 100.0 / " in text and "| 25.0 |" in text
    assert "Clean victim without augmentation: **25.0 %**" in text
    assert "## The generator's BatchNorm statistics" in text
    row = f"| `official` | 1287 | {100 * before['same_sign']:.1f} ({before['cosine']:.2f}) | "
    assert row in text and "| 100.0 | 25.0 | — |" in text  # no victim of the saved snapshot
    assert json.loads((out / "official.json").read_text())["diagnostics"]["1287"] == second


@pytest.mark.slow
def test_the_demo_preset_runs_end_to_end_at_its_budget(tmp_path: Path) -> None:
    """The demo's pipeline on digits, shortened (its figures need MNIST: docs/results/demo/):
    a label-conditioned generator at ε = 32/255, exported within that budget, and the
    picture of clean, perturbation and protected images."""
    out = tmp_path / "demo"
    result = _run_unlearnable(
        "--preset", "demo", "--dataset", "digits", "--output-dir", str(out),
        "--epochs", "1", "--victim-epochs", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epsilon"] == pytest.approx(32 / 255) and metrics["measured_linf_levels"] <= 32
    assert json.loads((out / "generator.json").read_text())["label_conditioned"] is True
    assert_png_figure(out / "examples.png")
