"""The Game/Variable API, functional views, the solve loop, dtypes and devices."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import SOLVERS, as_blocks, make_solver

import stackelberg as sg
from stackelberg.game import functional_view
from stackelberg.games import toys
from stackelberg.solvers import CG


class ShrinkageGame(sg.Game):
    """Leader: a log shrinkage strength; follower: a linear model fitted on batches (x, y)."""

    def __init__(self) -> None:
        super().__init__(sg.Variable(torch.zeros(())), torch.nn.Linear(3, 1))

    def follower_loss(self, leader, follower, batch):
        x, y = batch
        prediction = follower(x).squeeze(-1)
        return torch.mean((prediction - y) ** 2) + torch.exp(leader()) * torch.mean(prediction**2)

    def leader_loss(self, leader, follower, batch):
        x, y = batch
        return torch.mean((follower(x).squeeze(-1) - 2.0 * y) ** 2)


def regression_batches(n_batches: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(n_batches):
        x = torch.randn(16, 3, generator=generator)
        batches.append((x, x @ torch.tensor([1.0, -2.0, 0.5])))
    return batches


def test_variable_holds_a_copy_and_returns_it() -> None:
    source = torch.tensor([1.0, 2.0])
    variable = sg.Variable(source)
    assert isinstance(variable.value, torch.nn.Parameter)
    assert variable() is variable.value
    source[0] = 5.0
    assert variable.value[0] == 1.0
    assert sg.Variable(3).value.dtype == torch.get_default_dtype()


def test_functional_view_uses_the_given_parameters() -> None:
    linear = torch.nn.Linear(2, 1)
    weight, bias = torch.ones(1, 2), torch.zeros(1)
    view = functional_view(linear, (weight, bias))
    x = torch.tensor([[1.0, 2.0]])
    assert torch.equal(view(x), torch.tensor([[3.0]]))
    assert not torch.equal(linear(x), view(x))
    with pytest.raises(ValueError, match="has 2 trainable parameters, got 1"):
        functional_view(linear, (weight,))


def test_game_moves_with_to_and_keeps_buffers() -> None:
    game = toys.QuadraticGame.instance()
    game.to(torch.float64)
    assert game.A.dtype == torch.float64
    assert game.leader.value.dtype == torch.float64


def test_define_a_game_in_a_few_lines() -> None:
    class Square(sg.Game):
        def leader_loss(self, leader, follower, batch):
            return (follower() - 3.0) ** 2 + 0.0 * leader()

        def follower_loss(self, leader, follower, batch):
            return (follower() - leader()) ** 2

    game = Square(sg.Variable(0.0), sg.Variable(0.0))
    solver = make_solver("TotalGradient", game, 0.1, 0.3)
    sg.solve(game, solver, None, 300, progress=False)
    assert float(game.leader.value.detach()) == pytest.approx(3.0, abs=1e-4)


@pytest.mark.parametrize("solver_name", list(SOLVERS))
def test_solve_cycles_through_batches_and_records_history(solver_name: str) -> None:
    game = ShrinkageGame()
    solver = make_solver(solver_name, game, 0.05, 0.05)
    data = as_blocks(solver_name, regression_batches(3))
    history = sg.solve(game, solver, data, 7, progress=False)
    assert [info["step"] for info in history] == list(range(7))
    assert all(math.isfinite(v) for info in history for v in info.values())
    assert solver.steps_taken == 7


def test_solve_stops_when_the_callback_says_so() -> None:
    game = toys.StackelbergVsNashGame()
    seen = []

    def callback(step, info):
        seen.append(step)
        return step == 4

    history = sg.solve(game, make_solver("GDA", game), None, 100, callback=callback, progress=False)
    assert len(history) == 5 and seen == [0, 1, 2, 3, 4]


def test_solve_rejects_bad_arguments() -> None:
    game, other = toys.StackelbergVsNashGame(), toys.StackelbergVsNashGame()
    solver = make_solver("GDA", game)
    with pytest.raises(ValueError, match="different game"):
        sg.solve(other, solver, None, 3)
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        sg.solve(game, solver, None, 0)
    with pytest.raises(ValueError, match="data yielded no batch"):
        sg.solve(game, solver, [], 3, progress=False)
    with pytest.raises(TypeError, match="data must be an iterable"):
        sg.solve(game, solver, 5, 3, progress=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("solver_name", list(SOLVERS))
def test_every_solver_keeps_the_dtype(solver_name: str, dtype: torch.dtype) -> None:
    game = ShrinkageGame().to(dtype)
    batches = as_blocks(solver_name, [(x.to(dtype), y.to(dtype)) for x, y in regression_batches(2)])
    solver = make_solver(solver_name, game, 0.05, 0.05)
    info = sg.solve(game, solver, batches, 3, progress=False)[-1]
    assert all(p.dtype == dtype for p in game.parameters())
    assert all(p.grad is None or p.grad.dtype == dtype for p in game.parameters())
    assert math.isfinite(info["leader_loss"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("solver_name", list(SOLVERS))
def test_every_solver_runs_on_cuda(solver_name: str) -> None:
    game = toys.QuadraticGame.instance(dtype=torch.float64).to("cuda")
    solver = make_solver(solver_name, game, 0.05, 0.05)
    sg.solve(game, solver, None, 5, progress=False)
    assert game.leader.value.is_cuda and game.follower.value.is_cuda


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("solver_name", list(SOLVERS))
def test_a_step_reads_the_device_only_at_its_checks_on_cuda(solver_name: str) -> None:
    """Every synchronization outside ``host_read`` (the step's one check of its losses and
    directions, and its diagnostics) raises under the sync debug mode. TotalGradient runs CG
    with a fixed budget (``tol=0``): an early stop on the residual would read it every
    iteration."""
    game = toys.QuadraticGame.random(8, dtype=torch.float32).to("cuda")
    options = {"linear_solver": CG(5, tol=0.0)} if solver_name == "TotalGradient" else {}
    solver = make_solver(solver_name, game, 0.05, 0.05, **options)
    solver.step()  # first-step allocations
    torch.cuda.set_sync_debug_mode("error")
    try:
        info = solver.step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert math.isfinite(info["leader_loss"])


def test_progress_bar_shows_losses(capsys: pytest.CaptureFixture[str]) -> None:
    game = toys.StackelbergVsNashGame()
    sg.solve(game, make_solver("BOME", game), None, 3, progress=True)
    err = capsys.readouterr().err
    assert "BOME" in err and "leader_loss" in err


def test_functional_view_exposes_its_parameters_for_regularizers() -> None:
    linear = torch.nn.Linear(2, 1)
    weight, bias = torch.ones(1, 2), torch.zeros(1)
    view = functional_view(linear, (weight, bias))
    assert [t is s for t, s in zip(view.parameters(), (weight, bias), strict=True)] == [True, True]
    assert sum(float(p.pow(2).sum()) for p in view.parameters()) == 2.0


def test_functional_view_attributes_are_the_views_own() -> None:
    """``view.weight`` is the substituted tensor, ``view.encoder`` a view with its share of the
    parameters, and buffers and plain attributes are the module's: a loss can read what it
    needs from the argument it is given, never from ``self``."""
    torch.manual_seed(0)
    module = torch.nn.Sequential()
    module.encoder = torch.nn.Linear(3, 2)
    module.head = torch.nn.Linear(2, 1)
    module.register_buffer("labels", torch.tensor([1, 0]))
    module.note = "kept"
    params = [torch.randn_like(p) for p in module.parameters()]
    view = functional_view(module, params)
    assert view.encoder.weight is params[0] and view.head.bias is params[3]
    x = torch.randn(4, 3)
    assert torch.allclose(view.encoder(x), x @ params[0].T + params[1])
    assert torch.equal(view.labels, module.labels) and view.note == "kept"
    with pytest.raises(AttributeError):
        _ = view.missing


def test_import_loads_the_core_only() -> None:
    """``import stackelberg`` brings the game API and the solvers, not Pillow or the
    unlearnable-example application; those load when first used."""
    import subprocess
    import sys

    code = (
        "import sys, stackelberg as sg\n"
        "assert 'PIL' not in sys.modules and 'stackelberg.unlearnable' not in sys.modules\n"
        "assert sg.games.toys.QuadraticGame and sg.data.load_dataset\n"
        "print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
