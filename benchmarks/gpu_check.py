"""The GPU check: CUDA-only tests, 200 outer steps of the ``paper`` preset, protect throughput.

Run it whenever a CUDA machine is available (under 8 minutes on one H200-class GPU, nothing
downloaded; the ``paper`` steps run on random CIFAR-shaped batches, since only their speed is
measured)::

    bash benchmarks/gpu_check.sh            # or: python benchmarks/gpu_check.py --output F

It writes one JSON (default ``results/gpu_check.json``):

- ``tests``: pytest's summary line for the tests that need CUDA (``-k cuda``), and its exit
  status;
- ``preset_steps``: the ``paper`` preset's game (U-Net 64–512 generator, ResNet-18
  follower, batch 256, BOME T = 10 with the official settings) for ``--steps`` outer steps:
  seconds per step (median and mean after the warm-up), the projected time of the preset's
  epochs on CIFAR-10, and peak GPU memory; also whether the inner loop ran with no host
  synchronization (``torch.cuda.set_sync_debug_mode("error")`` around one inner solution);
- ``protect``: images per second at 32×32 and 512×512 with that generator (PNG I/O included).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from stackelberg.data.folders import ImageDataset
from stackelberg.unlearnable.checkpoint import load_generator, save_generator
from stackelberg.unlearnable.presets import PRESETS, build_game
from stackelberg.unlearnable.protect import protect_folder
from stackelberg.unlearnable.training import GeneratorTraining
from stackelberg.utils.io import write_json

ROOT = Path(__file__).resolve().parents[1]


def cuda_tests() -> dict[str, Any]:
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-k", "cuda", str(ROOT / "tests")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    lines = [line for line in completed.stdout.splitlines() if line.strip()]
    return {"returncode": completed.returncode, "summary": lines[-1] if lines else ""}


def preset_steps(
    name: str, steps: int, device: torch.device
) -> tuple[dict[str, Any], torch.nn.Module]:
    preset = PRESETS[name]
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    game = build_game(preset, 3, 10).to(device)
    size = preset.training.batch_size
    images = torch.randint(0, 256, (size * 4, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (size * 4,))
    config = dataclasses.replace(preset.training, quick_test_every=0)
    dataset = ImageDataset(images, labels, tuple("abcdefghij"))
    training = GeneratorTraining(game, config, dataset)
    solver = training.solver
    batches = [
        (
            (images[i * size : (i + 1) * size].float() / 255).to(device),
            labels[i * size : (i + 1) * size].to(device),
        )
        for i in range(4)
    ]
    sync = torch.cuda.synchronize if cuda else (lambda _: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for step in range(steps):
        sync(device)
        start = time.perf_counter()
        solver.step(batches[step % 4])
        sync(device)
        times.append(time.perf_counter() - start)

    w = tuple(p.detach() for p in solver.leader_params())
    inner_batch = solver.fixed_leader_batch(w, batches[0])
    inner_loop_syncs = "not checked (CPU)"
    if cuda:
        sync(device)
        try:
            torch.cuda.set_sync_debug_mode("error")
            solver.inner_solution(batches[0], inner_batch)
            inner_loop_syncs = "none"
        except RuntimeError as error:
            inner_loop_syncs = f"synchronized: {error}"
        finally:
            torch.cuda.set_sync_debug_mode("default")

    steady = times[10:] if len(times) > 20 else times
    steps_per_epoch = 49_000 // size
    result = {
        "preset": name,
        "steps": steps,
        "batch_size": size,
        "seconds_per_step_median": statistics.median(steady),
        "seconds_per_step_mean": statistics.fmean(steady),
        "first_step_seconds": times[0],
        "projected_hours_for_the_preset_on_cifar10": statistics.median(steady)
        * steps_per_epoch
        * preset.training.epochs
        / 3600,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
        "inner_loop_host_syncs": inner_loop_syncs,
    }
    return result, game.leader


def protect_throughput(
    generator: torch.nn.Module, architecture: str, device: torch.device, counts: tuple[int, int]
) -> list[dict[str, Any]]:
    records = []
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "generator.pt"
        meta = {
            "architecture": architecture,
            "epsilon": 8 / 255,
            "in_channels": 3,
            "label_conditioned": False,
            "num_classes": 10,
        }
        save_generator(path, generator, meta)
        generator, _ = load_generator(path, device)
        for size, count in zip((32, 512), counts, strict=True):
            source, target = Path(tmp) / f"in{size}", Path(tmp) / f"out{size}"
            source.mkdir()
            for i in range(count):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(source / f"{i:04d}.png")
            start = time.perf_counter()
            protect_folder(generator, source, target, epsilon=8 / 255, progress=False)
            seconds = time.perf_counter() - start
            records.append({"size": size, "images": count, "images_per_second": count / seconds})
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--preset", default="paper", choices=sorted(PRESETS))
    parser.add_argument("--device", default="cuda", help="cuda (default); cpu only to try it")
    parser.add_argument("--images", default="500,50", help="protect: images at 32², 512²")
    parser.add_argument("--skip-tests", action="store_true", help="do not run the CUDA tests")
    parser.add_argument("--output", type=Path, default=ROOT / "results" / "gpu_check.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: no CUDA device is visible to PyTorch; the GPU check needs one")
    cuda = device.type == "cuda"
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if cuda else str(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }
    print(f"GPU check on {report['device']}, torch {report['torch']}", flush=True)
    if not args.skip_tests:
        report["tests"] = cuda_tests()
        print(f"CUDA tests: {report['tests']['summary']}", flush=True)
    report["preset_steps"], generator = preset_steps(args.preset, args.steps, device)
    print(json.dumps(report["preset_steps"], indent=2), flush=True)
    counts = tuple(int(c) for c in args.images.split(","))
    architecture = PRESETS[args.preset].generator
    report["protect"] = protect_throughput(generator, architecture, device, counts)  # type: ignore[arg-type]
    print(json.dumps(report["protect"], indent=2), flush=True)
    write_json(args.output, report)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
