"""Data parallelism: BOME under 2-process DDP (gloo, CPU) takes exactly the single-process
steps on the same global batch, and the data-parallel helpers are no-ops in one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import stackelberg as sg
from stackelberg.utils import distributed
from tests.conftest import HANG_TIMEOUT

STEPS = 4


class WeightedRidge(sg.Game):
    """Follower: ridge regression with per-feature penalties exp(w); leader: the follower's
    squared error on a validation half of each row. Both losses are batch means."""

    def follower_loss(self, leader, follower, batch):
        x, y = batch
        fit = ((x[:, :3] @ follower() - y) ** 2).mean()
        return fit + (torch.exp(leader()) * follower() ** 2).sum() / 10

    def leader_loss(self, leader, follower, batch):
        x, y = batch
        return ((x[:, 3:] @ follower() - y) ** 2).mean()


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 6, generator=g, dtype=torch.float64)
    return x, x[:, :3].sum(1) + 0.1 * torch.randn(8, generator=g, dtype=torch.float64)


def bome_steps(x: torch.Tensor, y: torch.Tensor, reducer=None) -> list[torch.Tensor]:
    game = WeightedRidge(
        sg.Variable(torch.zeros(3, dtype=torch.float64)),
        sg.Variable(torch.full((3,), 0.5, dtype=torch.float64)),
    )
    solver = sg.solvers.BOME(
        game,
        torch.optim.SGD(game.leader.parameters(), lr=0.1),
        torch.optim.SGD(game.follower.parameters(), lr=0.1),
        inner_steps=3,
        inner_lr=0.1,
        inner_optimizer="adam",
        eta=0.5,
        phi="value",
        gradient_reducer=reducer,
    )
    lambdas = [solver.step((x, y))["lambda"] for _ in range(STEPS)]
    assert max(lambdas) > 0  # the barrier is active: λ depends on the averaged gradients
    return [game.leader.value.detach().clone(), game.follower.value.detach().clone()]


def _worker(rank: int, world: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        x, y = data()
        index = distributed.shard(torch.arange(len(y)))
        params = bome_steps(x[index], y[index], reducer=distributed.all_reduce_mean)
        torch.save(params, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_bome_under_two_process_ddp_equals_the_single_process_steps(tmp_path: Path) -> None:
    out = str(tmp_path / "params")
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), out), nprocs=2, join=True)
    x, y = data()
    reference = bome_steps(x, y)
    for rank in range(2):
        params = torch.load(f"{out}.{rank}", weights_only=True)
        for got, want in zip(params, reference, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    # Not a vacuous test: one shard alone, without averaging, lands elsewhere.
    half = bome_steps(x[:4], y[:4])
    assert not torch.allclose(half[0], reference[0], atol=1e-6)


def test_helpers_are_no_ops_in_one_process() -> None:
    assert distributed.world_size() == 1 and distributed.rank() == 0
    assert distributed.is_main_process() and not distributed.setup()
    index = torch.arange(6)
    assert torch.equal(distributed.shard(index), index)
    tensors = (torch.ones(2),)
    assert distributed.all_reduce_mean(tensors)[0] is tensors[0]


def _shard_worker(rank: int, world: int, init_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        assert distributed.shard(torch.arange(6)).tolist() == [[0, 1, 2], [3, 4, 5]][rank]
        with pytest.raises(ValueError, match="does not split evenly"):
            distributed.shard(torch.arange(5))
        (mean,) = distributed.all_reduce_mean((torch.tensor([float(rank)]),))
        assert mean.item() == 0.5
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_shards_and_means_across_two_processes(tmp_path: Path) -> None:
    mp.spawn(_shard_worker, args=(2, str(tmp_path / "init")), nprocs=2, join=True)


@pytest.mark.slow
def test_cli_train_and_evaluate_run_under_torchrun(tmp_path: Path) -> None:
    launch = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "stackelberg.unlearnable.cli",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = tmp_path / "run"
    trained = subprocess.run(
        [
            *launch,
            "train",
            str(run),
            "--preset",
            "smoke",
            "--dataset",
            "digits",
            "--epochs",
            "1",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=HANG_TIMEOUT,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert json.loads((run / "config.json").read_text())["processes"] == 2
    assert (run / "generator.pt").is_file() and (run / "checkpoint.pt").is_file()
    report = tmp_path / "victim.json"
    evaluated = subprocess.run(
        [
            *launch,
            "evaluate",
            "--dataset",
            "digits",
            "--victim",
            "convnet-small",
            "--epochs",
            "1",
            "--output",
            str(report),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=HANG_TIMEOUT,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert evaluated.stdout.count("clean test accuracy") == 1  # printed by rank 0 only
    assert 0 <= json.loads(report.read_text())["test_accuracy"] <= 1
