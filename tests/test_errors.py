"""Bad input gets a clear error that names the problem."""

from __future__ import annotations

import pytest
import torch
from conftest import SOLVERS, make_solver

import stackelberg as sg
from stackelberg.games import toys


class BrokenGame(sg.Game):
    """T2 whose follower loss turns bad after a given number of evaluations."""

    def __init__(self, failure: str, after: int = 0) -> None:
        super().__init__(sg.Variable(0.5), sg.Variable(0.5))
        self.failure, self.after, self.calls = failure, after, 0

    def leader_loss(self, leader, follower, batch):
        return (leader() - 1.0) ** 2 + (follower() - 2.0) ** 2

    def follower_loss(self, leader, follower, batch):
        self.calls += 1
        loss = 0.5 * (follower() - 0.5 * leader()) ** 2
        if self.calls <= self.after:
            return loss
        if self.failure == "vector":
            return loss * torch.ones(3)
        if self.failure == "nan":
            return loss * float("nan")
        if self.failure == "number":
            return 1.0
        if self.failure == "detached":
            return loss.detach()
        return loss


@pytest.mark.parametrize("solver_name", list(SOLVERS))
def test_non_scalar_loss_names_the_player_and_the_step(solver_name: str) -> None:
    game = BrokenGame("vector", after=3)
    solver = make_solver(solver_name, game)
    with pytest.raises(
        ValueError, match=r"follower_loss must return a scalar tensor, got shape \(3,\)"
    ):
        sg.solve(game, solver, None, 20, progress=False)


@pytest.mark.parametrize("solver_name", list(SOLVERS))
def test_non_finite_loss_names_the_player_and_the_step(solver_name: str) -> None:
    game = BrokenGame("nan", after=3)
    solver = make_solver(solver_name, game)
    with pytest.raises(
        ValueError, match=rf"follower_loss is not finite \(nan\) at {solver_name} step"
    ):
        sg.solve(game, solver, None, 20, progress=False)


def test_bome_names_the_inner_step() -> None:
    game = BrokenGame("nan", after=2)
    solver = make_solver("BOME", game, inner_steps=5)
    with pytest.raises(ValueError, match=r"at BOME step 0 inner step 2"):
        solver.step()


def test_backgradient_names_the_unrolled_step() -> None:
    game = BrokenGame("nan", after=4)
    solver = make_solver("BackGradient", game, inner_steps=10)
    with pytest.raises(ValueError, match=r"at BackGradient step 0 unrolled step 4"):
        solver.step()


def test_loss_that_is_not_a_tensor_or_detached() -> None:
    with pytest.raises(TypeError, match="follower_loss must return a tensor, got float"):
        make_solver("GDA", BrokenGame("number")).step()
    with pytest.raises(ValueError, match="does not depend on any parameter"):
        make_solver("GDA", BrokenGame("detached")).step()


def test_player_that_is_not_a_module() -> None:
    with pytest.raises(TypeError, match=r"the follower must be a torch\.nn\.Module"):
        sg.Game(sg.Variable(1.0), torch.zeros(2))


def test_player_with_no_parameters() -> None:
    with pytest.raises(ValueError, match="the leader has no parameters that require grad"):
        sg.Game(torch.nn.ReLU(), sg.Variable(1.0))
    frozen = sg.Variable(1.0).requires_grad_(False)
    with pytest.raises(ValueError, match="the follower has no parameters that require grad"):
        sg.Game(sg.Variable(1.0), frozen)


def test_shared_parameters_are_refused() -> None:
    shared = sg.Variable(1.0)
    with pytest.raises(ValueError, match="share a parameter"):
        sg.Game(shared, shared)


def test_players_on_different_devices() -> None:
    with pytest.raises(ValueError, match=r"different devices \(follower on meta, leader on cpu\)"):
        sg.Game(sg.Variable(1.0), sg.Variable(torch.zeros(2, device="meta")))


def test_a_game_moved_apart_after_construction_is_caught_by_the_solver() -> None:
    game = toys.StackelbergVsNashGame()
    game.follower.to("meta")
    with pytest.raises(ValueError, match="different devices"):
        make_solver("GDA", game)


@pytest.mark.parametrize(
    ("solver_name", "options", "error", "message"),
    [
        ("BOME", {"inner_steps": 0}, ValueError, "inner_steps must be an integer >= 1, got 0"),
        ("BOME", {"inner_steps": 2.5}, TypeError, "inner_steps must be an integer"),
        (
            "BOME",
            {"phi": "norm"},
            ValueError,
            "phi must be one of 'grad_norm', 'value'; got 'norm'",
        ),
        ("BOME", {"inner_optimizer": "rmsprop"}, ValueError, "inner_optimizer must be one of"),
        ("BOME", {"inner_lr": -1.0}, ValueError, "inner_lr must be a finite number > 0"),
        ("BOME", {"eta": float("nan")}, ValueError, "eta must be a finite number >= 0"),
        ("BackGradient", {"inner_steps": 0}, ValueError, "inner_steps must be an integer >= 1"),
        (
            "BackGradient",
            {"mode": "fast"},
            ValueError,
            "mode must be one of 'store', 'checkpoint', 'reverse'",
        ),
        ("BackGradient", {"warm_start": "yes"}, TypeError, "warm_start must be True or False"),
        ("TotalGradient", {"linear_solver": "lu"}, ValueError, "linear_solver must be one of"),
        ("TotalGradient", {"damping": -0.1}, ValueError, "damping must be a finite number >= 0"),
        (
            "TotalGradient",
            {"linear_solver": {"name": "cg", "max_iterations": 0}},
            ValueError,
            "max_iterations must be an integer >= 1",
        ),
        ("GDA", {"follower_steps": 0}, ValueError, "follower_steps must be an integer >= 1"),
        ("GDA", {"alternating": 1}, TypeError, "alternating must be True or False"),
    ],
)
def test_bad_options_are_named(solver_name, options, error, message) -> None:
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_solver(solver_name, toys.StackelbergVsNashGame(), **options)


def test_unknown_option_is_a_type_error() -> None:
    with pytest.raises(
        TypeError, match="BOME got unknown option 'inner_step'; it accepts inner_steps"
    ):
        make_solver("BOME", toys.StackelbergVsNashGame(), inner_step=3)


def test_optimizers_are_checked() -> None:
    game = toys.StackelbergVsNashGame()
    follower_opt = torch.optim.SGD(game.follower.parameters(), lr=0.1)
    with pytest.raises(TypeError, match=r"leader_optimizer must be a torch\.optim\.Optimizer"):
        sg.GDA(game, 0.1, follower_opt)
    swapped = torch.optim.SGD(game.follower.parameters(), lr=0.1)
    with pytest.raises(
        ValueError, match=r"leader_optimizer holds a parameter .* not one of the leader.s"
    ):
        sg.GDA(game, swapped, follower_opt)
    with pytest.raises(TypeError, match=r"game must be a stackelberg\.Game"):
        sg.GDA(game.leader, follower_opt, follower_opt)


def test_toy_games_validate_their_constants() -> None:
    with pytest.raises(ValueError, match="A must be symmetric positive definite"):
        toys.QuadraticGame([[1.0, 0.0], [0.0, -1.0]], torch.eye(2), [0.0, 0.0], [0.0, 0.0], 0.1)
    with pytest.raises(ValueError, match="u_i / v_i must exceed 1"):
        toys.HyperparameterGame(u=[1.0, 3.0], v=[1.0, 1.0])
    with pytest.raises(ValueError, match="epsilon must be > 0"):
        toys.BoxPoisoningGame(torch.zeros(3, 2), torch.zeros(2), epsilon=0.0)


@pytest.mark.slow
def test_diverging_reverse_mode_names_the_unrolled_step() -> None:
    """Undoing 2000 steps that contract by 0.9 amplifies rounding errors past overflow."""

    class Scalar(sg.Game):
        def leader_loss(self, leader, follower, batch):
            return (follower() - 1.0) ** 2 + torch.cos(follower()) * leader()

        def follower_loss(self, leader, follower, batch):
            return 0.5 * follower() ** 2 - leader() * torch.sin(follower())

    game = Scalar(sg.Variable(0.1), sg.Variable(5.0)).double()
    solver = make_solver("BackGradient", game, inner_steps=2000, inner_lr=1.9, mode="reverse")
    before = [p.detach().clone() for p in game.parameters()]
    with pytest.raises(
        ValueError,
        match=r"follower_loss is not finite \(inf\) at BackGradient step 0 unrolled step",
    ):
        solver.step()
    assert all(torch.equal(a, b) for a, b in zip(before, game.parameters(), strict=True))


def test_non_finite_update_is_refused_and_nothing_moves() -> None:
    class Cusp(sg.Game):
        def leader_loss(self, leader, follower, batch):
            return torch.sqrt(torch.abs(leader())) + follower() ** 2

        def follower_loss(self, leader, follower, batch):
            return (follower() - leader()) ** 2

    game = Cusp(sg.Variable(0.0), sg.Variable(1.0))
    solver = make_solver("GDA", game)
    with pytest.raises(
        ValueError, match=r"GDA computed a non-finite update for the leader at step 0; no parameter"
    ):
        solver.step()
    assert float(game.leader.value.detach()) == 0.0
    assert float(game.follower.value.detach()) == 1.0
