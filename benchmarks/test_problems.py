"""Every solver on the real bilevel problems: test metric against wall time and oracle calls.

    python -m pytest benchmarks/test_problems.py -s -m quick   # digits-sized (CI, < 1 min)
    STACKELBERG_MNIST=../shared/data/mnist-png.tar.gz \
        python -m pytest benchmarks/test_problems.py -s        # + MNIST, the BOME protocol

Each case runs one solver once (SOBA for ten times the steps: one follower gradient per
step against the others' ten, so every solver gets the same budget of follower gradients),
with ``experiments/bilevel_problems.py``'s defaults (the BOME authors' optimizers, each
solver's options from the recorded grid), evaluating at every step. The curves
(``{step, seconds, leader_evaluations, follower_evaluations, metrics…}``) are written to
``STACKELBERG_BENCH_OUTPUT`` (default: a temporary folder) as one JSON per run and one table
and plot per problem; ``extra_info`` holds each run's summary. The one assertion is
qualitative and holds on any machine: every bilevel solver ends with a better validation loss
than GDA, which ignores the follower's response and so cannot move the leader on these
problems.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bilevel_problems import RunConfig, compare, run, summarize

from stackelberg.solvers import SOLVERS
from stackelberg.utils.io import write_json

MNIST = os.environ.get("STACKELBERG_MNIST")

#: The digits-sized problems CI runs (about a second per solver).
QUICK = {
    "hyper-cleaning-digits": RunConfig(
        problem="hyper-cleaning", dataset="digits", train_size=600, val_size=200, steps=40,
        seed=0, threads=1,
    ),
    "hyperparameters-digits": RunConfig(
        problem="hyperparameters", dataset="digits", train_size=500, val_size=500, steps=60,
        seed=0, threads=1,
    ),
    "reweighting-digits": RunConfig(
        problem="reweighting", dataset="digits", model="mlp", largest=100, imbalance=20.0,
        val_per_class=10, steps=200, seed=0, threads=1, evaluate_every=10,
    ),
}  # fmt: skip

#: The BOME protocol on MNIST (50 000 / 5 000 / 10 000, noise 0.5), with STACKELBERG_MNIST.
FULL = {
    "hyper-cleaning-mnist": RunConfig(
        problem="hyper-cleaning", dataset="mnist", data_dir=MNIST or "", steps=40, seed=1,
    ),
}  # fmt: skip

RESULTS: dict[str, dict[str, dict[str, Any]]] = {}


def _cases() -> list[Any]:
    return list(_each_case())


def _each_case() -> Iterator[Any]:
    for problem in QUICK:
        for solver in SOLVERS:
            yield pytest.param(problem, solver, marks=pytest.mark.quick, id=f"{problem}-{solver}")
    for problem in FULL:
        skip = pytest.mark.skipif(MNIST is None, reason="set STACKELBERG_MNIST to the MNIST copy")
        for solver in SOLVERS:
            yield pytest.param(problem, solver, marks=skip, id=f"{problem}-{solver}")


@pytest.fixture(scope="module")
def output_dir() -> Iterator[Path]:
    folder = os.environ.get("STACKELBERG_BENCH_OUTPUT")
    path = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="bench-problems-"))
    path.mkdir(parents=True, exist_ok=True)
    yield path
    for problem, runs in RESULTS.items():
        files = []
        for solver, record in runs.items():
            file = path / f"{problem}-{solver}.json"
            write_json(file, {**record, "label": solver})
            files.append(file)
        print(f"\n{problem} (curves in {path}):")
        print(compare(files, path / problem, target=None), end="")


@pytest.mark.parametrize(("problem", "solver"), _cases())
def test_solver_on_a_real_problem(benchmark, output_dir: Path, problem: str, solver: str) -> None:
    config = {**QUICK, **FULL}[problem]
    # Equal budgets of follower gradients: SOBA takes one per step, the others about ten.
    steps = config.steps * (10 if solver in ("soba", "saba") else 1)
    config = dataclasses.replace(config, solver=solver, steps=steps)
    record: dict[str, Any] = {}

    def once() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # GDA's zero leader gradient
            record.update(run(config, progress=False))

    benchmark.group = f"{problem}: {config.steps} steps of each solver"
    benchmark.pedantic(once, rounds=1, iterations=1)
    RESULTS.setdefault(problem, {})[solver] = record
    summary = summarize(record)
    last = record["curve"][-1]
    benchmark.extra_info.update(
        {**summary, "final": {k: v for k, v in last.items() if k != "step"}}
    )
    assert last["step"] == config.steps


@pytest.mark.quick
def test_every_bilevel_solver_beats_gda_on_the_validation_loss() -> None:
    for problem, runs in RESULTS.items():
        if "gda" not in runs:
            continue
        gda = runs["gda"]["curve"][-1]["val_loss"]
        for solver, record in runs.items():
            if solver != "gda":
                final = record["curve"][-1]["val_loss"]
                assert final < gda, f"{solver} on {problem}: {final} against GDA's {gda}"
    assert RESULTS, "run the solver cases first (same session)"
    print(json.dumps({p: sorted(r) for p, r in RESULTS.items()}))
