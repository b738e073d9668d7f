"""Shared helpers: build any solver on a game with plain SGD optimizers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

import stackelberg as sg

# Under pytest-xdist (``-n 2``) each worker computes on one thread: two workers of two threads
# each on a 2-core machine run slower than one process.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

#: The timeout of a subprocess a test runs: a guard against a hang, not a speed limit (speed is
#: measured in benchmarks/), so a loaded machine never fails a command that is still working.
HANG_TIMEOUT = 3600

SOLVERS = {
    "GDA": sg.GDA,
    "BOME": sg.BOME,
    "BackGradient": sg.BackGradient,
    "TotalGradient": sg.TotalGradient,
    "SOBA": sg.SOBA,
    "F2SA": sg.F2SA,
    "SABA": sg.solvers.SABA,
}


def as_blocks(solver_name: str, data: Any) -> Any:
    """``data`` as the solver reads it: for SABA, whose memory is indexed by data block, each
    batch of a list (or a single batch) as an ``sg.Indexed`` block; for the others as is."""
    if solver_name != "SABA":
        return data
    if isinstance(data, list):
        return [sg.Indexed(k, batch) for k, batch in enumerate(data)]
    return sg.Indexed(0, data)


def make_solver(
    name: str, game: sg.Game, leader_lr: float = 0.1, follower_lr: float = 0.1, **options: Any
) -> sg.solvers.Solver:
    leader_opt = torch.optim.SGD(game.leader.parameters(), lr=leader_lr)
    follower_opt = torch.optim.SGD(game.follower.parameters(), lr=follower_lr)
    return SOLVERS[name](game, leader_opt, follower_opt, **options)


def assert_png_figure(path: Path) -> None:
    """``path`` is a PNG image of a plot: it decodes, and it is at least 200 × 150 pixels
    (a figure, not an empty or truncated file)."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()  # decodes every byte: a truncated file raises here
        assert image.format == "PNG", f"{path} is {image.format}, not PNG"
        assert image.width >= 200 and image.height >= 150, f"{path} is {image.size}"


def relative_error(x: torch.Tensor, reference: torch.Tensor) -> float:
    x, reference = torch.as_tensor(x).detach(), torch.as_tensor(reference).detach()
    return float(torch.linalg.norm(x - reference) / torch.linalg.norm(reference))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def fake_mnist(root: Path, per_class: int = 3) -> Path:
    """A tiny MNIST-shaped image folder: 28×28 grayscale PNGs, ten digit classes."""
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        for digit in range(10):
            folder = root / "mnist-png" / split / str(digit)
            folder.mkdir(parents=True)
            for i in range(per_class):
                array = (torch.rand(28, 28, generator=generator) * 255).to(torch.uint8).numpy()
                Image.fromarray(array).save(folder / f"{i}.png")
    return root / "mnist-png"
