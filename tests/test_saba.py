"""SABA: SAGA's estimates exactly, SOBA on one block, and the variance reduction that lets
constant steps reach the solution of a finite-sum problem where SOBA's stall."""

from __future__ import annotations

import pytest
import torch
from conftest import make_solver, relative_error

import stackelberg as sg
from stackelberg.data import TensorBatches
from stackelberg.games import toys
from stackelberg.solvers.saba import SAGAMemory

F64 = torch.float64


def test_the_memory_gives_sag_then_saga_estimates() -> None:
    memory = SAGAMemory()
    draws = [(0, 1.0), (1, 3.0), (0, 5.0), (2, 7.0), (1, 11.0)]
    table: dict[int, float] = {}
    for block, value in draws:
        (estimate,), total = memory.estimate(block, ((torch.tensor(value),),))
        if block in table:  # SAGA: new − old + mean of the table before the write
            expected = value - table[block] + sum(table.values()) / len(table)
        else:  # SAG's start: the mean over the blocks seen, this one included
            expected = (sum(table.values()) + value) / (len(table) + 1)
        assert float(estimate[0]) == pytest.approx(expected)
        memory.commit(block, ((torch.tensor(value),),), total)
        table[block] = value
    assert float(memory.total[0][0]) == pytest.approx(sum(table.values()))


def test_on_one_block_saba_is_soba() -> None:
    paths = {}
    for name in ("SOBA", "SABA"):
        game = toys.QuadraticGame.instance(dtype=F64)
        solver = make_solver(name, game)
        sg.solve(game, solver, None, 50, progress=False)
        paths[name] = torch.cat([p.detach().flatten() for p in game.parameters()])
    torch.testing.assert_close(paths["SABA"], paths["SOBA"], rtol=1e-12, atol=1e-12)


class FiniteSum(sg.Game):
    """``h = (1/n) Σ_i ½‖θ − A_i w − b_i‖²``, ``l = (1/m) Σ_j ½‖θ − c_j‖² + ½ r‖w‖²``:
    ``θ*(w) = Ā w + b̄`` and ``w* = −(ĀᵀĀ + rI)⁻¹ Āᵀ(b̄ − c̄)``."""

    def __init__(self, dim: int = 3, r: float = 0.5) -> None:
        super().__init__(
            leader=sg.Variable(torch.zeros(dim, dtype=F64)),
            follower=sg.Variable(torch.zeros(dim, dtype=F64)),
        )
        self.r = r

    def follower_loss(self, leader, follower, batch):
        a, b = batch
        residual = follower() - torch.einsum("nij,j->ni", a, leader()) - b
        return 0.5 * residual.pow(2).sum(1).mean()

    def leader_loss(self, leader, follower, batch):
        (c,) = batch
        return 0.5 * (follower() - c).pow(2).sum(1).mean() + 0.5 * self.r * leader().pow(2).sum()


def _finite_sum_run(solver_name: str, steps: int) -> float:
    g = torch.Generator().manual_seed(0)
    n, m, dim = 8, 8, 3
    a = torch.eye(dim, dtype=F64) + 0.5 * torch.randn(n, dim, dim, generator=g, dtype=F64)
    b = torch.randn(n, dim, generator=g, dtype=F64)
    c = torch.randn(m, dim, generator=g, dtype=F64)
    game = FiniteSum(dim)
    solver = make_solver(solver_name, game, 0.05, 0.2)
    blocks = solver_name == "SABA"
    sg.solve(
        game,
        solver,
        steps=steps,
        leader_data=TensorBatches(c, batch_size=1, seed=1, fixed_blocks=blocks),
        follower_data=TensorBatches(a, b, batch_size=1, seed=2, fixed_blocks=blocks),
        progress=False,
    )
    a_bar, b_bar, c_bar = a.mean(0), b.mean(0), c.mean(0)
    w_star = -torch.linalg.solve(
        a_bar.T @ a_bar + game.r * torch.eye(dim, dtype=F64), a_bar.T @ (b_bar - c_bar)
    )
    return relative_error(game.leader.value, w_star)


@pytest.mark.slow
def test_saba_reaches_the_finite_sum_solution_with_constant_steps_where_soba_stalls() -> None:
    saba, soba = _finite_sum_run("SABA", 3000), _finite_sum_run("SOBA", 3000)
    assert saba < 1e-6
    assert soba > 100 * saba


def test_data_that_is_not_indexed_is_refused_naming_the_game() -> None:
    game = FiniteSum()
    solver = make_solver("SABA", game, 0.05, 0.2)
    a = torch.eye(3, dtype=F64).expand(4, 3, 3)
    with pytest.raises(ValueError, match=r"SABA needs a finite set of indexed blocks.*FiniteSum"):
        solver.step(sg.BilevelBatch(leader=(torch.zeros(4, 3, dtype=F64),), follower=(a, a[:, 0])))
