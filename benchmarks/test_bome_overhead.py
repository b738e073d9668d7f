"""The cost of one BOME step on the GUE game against its floor (issue: "a BOME step with no
waste").

Not part of the default test run::

    python -m pytest benchmarks/test_bome_overhead.py --benchmark-json=results/bome_overhead.json

The models are the CPU presets' (``unet-small`` generator, ``convnet-small`` follower), the
batch is 128 random CIFAR-sized images, the solver is BOME with the GUE defaults (T = 10 inner
Adam steps). The *floor* is the work BOME cannot avoid, measured in the same process on the
same batch: ``T + 3`` forward and backward passes of the follower (T inner steps, ``h(w, θ)``,
``h(w, θ^T)`` and the leader's loss on clean data) plus one forward and backward pass of the
generator. ``extra_info["ratio"]`` is the median step time over the median floor time; the
goal is at most 1.15.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import pytest
import torch
from torch.nn import functional as F

from stackelberg.solvers import make
from stackelberg.unlearnable.presets import PRESETS, build_game

BATCH, ROUNDS, INNER_STEPS = 128, 5, 10


def _median_seconds(fn: Callable[[], object], rounds: int = ROUNDS) -> float:
    fn()  # warm-up
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@pytest.mark.parametrize("preset", ["cpu-paper-game"])
def test_bome_step_against_its_floor(benchmark, preset: str) -> None:
    torch.manual_seed(0)
    game = build_game(PRESETS[preset], 3, 10)
    generator, classifier = game.leader, game.follower
    x, y = torch.rand(BATCH, 3, 32, 32), torch.randint(0, 10, (BATCH,))
    solver = make(
        "bome",
        game,
        torch.optim.SGD(generator.parameters(), lr=0.1),
        torch.optim.SGD(classifier.parameters(), lr=0.01),
        inner_steps=INNER_STEPS,
        inner_lr=1e-4,
    )

    def follower_pass() -> None:
        F.cross_entropy(classifier(x), y).backward()

    def generator_pass() -> None:
        generator(x).sum().backward()

    follower = _median_seconds(follower_pass)
    generator_seconds = _median_seconds(generator_pass)
    floor = (INNER_STEPS + 3) * follower + generator_seconds
    game.zero_grad(set_to_none=True)

    benchmark.group = "BOME step against its floor, GUE game"
    benchmark.pedantic(lambda: solver.step((x, y)), rounds=ROUNDS, iterations=1, warmup_rounds=1)
    step = benchmark.stats.stats.median
    benchmark.extra_info.update(
        {
            "preset": preset,
            "batch": BATCH,
            "inner_steps": INNER_STEPS,
            "threads": torch.get_num_threads(),
            "follower_pass_s": follower,
            "generator_pass_s": generator_seconds,
            "floor_s": floor,
            "step_s": step,
            "ratio": step / floor,
        }
    )
