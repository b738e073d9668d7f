"""TotalGradient against the implicit-function gradient built from dense matrices."""

from __future__ import annotations

import pytest
import torch
from conftest import make_solver, relative_error

import stackelberg as sg
from stackelberg.games import toys
from stackelberg.solvers import CG, LinearSolver, Neumann, NormalCG

F64 = torch.float64


def implicit_gradient_reference(game: sg.Game, damping: float = 0.0) -> torch.Tensor:
    """∇_w l − (∂∇_θh/∂w)ᵀ (∇²_θθ h + μI)⁻¹ ∇_θ l from dense Jacobians and torch.linalg.solve."""
    w0 = game.leader.value.detach().clone()
    theta0 = game.follower.value.detach().clone()

    def h(w: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        return game.follower_loss(lambda: w, lambda: theta, None)

    def leader_loss(w: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        return game.leader_loss(lambda: w, lambda: theta, None)

    grad_theta_h = torch.func.grad(h, argnums=1)
    hessian = torch.func.jacrev(grad_theta_h, argnums=1)(w0, theta0)
    cross = torch.func.jacrev(grad_theta_h, argnums=0)(w0, theta0)  # ∂∇_θh/∂w: (dθ, dw)
    grad_w_l, grad_theta_l = torch.func.grad(leader_loss, argnums=(0, 1))(w0, theta0)
    eye = torch.eye(hessian.shape[0], dtype=hessian.dtype)
    v = torch.linalg.solve(hessian + damping * eye, grad_theta_l)
    return grad_w_l - cross.T @ v


GAMES = {
    "T1": lambda: toys.QuadraticGame.instance(
        dtype=F64, leader_init=[0.3, -0.7], follower_init=[1.5, 0.2]
    ),
    "T1-d20": lambda: toys.QuadraticGame.random(
        20, condition_number=5.0, seed=3, dtype=F64, leader_init=torch.linspace(-1, 1, 20)
    ),
    "T4": lambda: toys.HyperparameterGame(
        dtype=F64, leader_init=[0.4, -0.2], follower_init=[0.5, 1.0]
    ),
}


@pytest.mark.parametrize("game_name", list(GAMES))
# Neumann needs α < 2/λ_max; κ(A) ≤ 5 keeps λ_max small enough for α = 0.1 everywhere.
@pytest.mark.parametrize(
    "linear_solver", [CG(100), NormalCG(2000), Neumann(0.1, 2000)], ids=lambda s: s.name
)
def test_hypergradient_matches_dense_implicit_function_gradient(
    linear_solver: LinearSolver, game_name: str
) -> None:
    game = GAMES[game_name]()
    solver = make_solver("TotalGradient", game, linear_solver=linear_solver)
    (hypergrad,) = solver.hypergradient()
    assert relative_error(hypergrad, implicit_gradient_reference(game)) < 1e-6


@pytest.mark.parametrize("linear_solver", [CG(), NormalCG()], ids=str)
def test_damping_solves_the_shifted_system(linear_solver: LinearSolver) -> None:
    game = GAMES["T4"]()
    solver = make_solver("TotalGradient", game, linear_solver=linear_solver, damping=0.3)
    (hypergrad,) = solver.hypergradient()
    assert relative_error(hypergrad, implicit_gradient_reference(game, damping=0.3)) < 1e-8


def test_step_reports_the_residual_and_changes_parameters() -> None:
    game = GAMES["T1"]()
    solver = make_solver("TotalGradient", game, linear_solver=CG(max_iterations=1))
    before = game.leader.value.detach().clone()
    info = solver.step()
    # One CG iteration on a 2-d system leaves a residual; it is reported, not hidden.
    assert info["residual"] > 1e-6
    assert info["solver_iterations"] == 1
    assert not torch.equal(before, game.leader.value.detach())
    assert {"leader_loss", "follower_loss", "hypergrad_norm", "follower_grad_norm"} <= set(info)


def test_hypergradient_changes_no_state() -> None:
    game = GAMES["T4"]()
    solver = make_solver("TotalGradient", game)
    before = [p.detach().clone() for p in game.parameters()]
    solver.hypergradient()
    assert all(torch.equal(a, b) for a, b in zip(before, game.parameters(), strict=True))
    assert all(p.grad is None for p in game.parameters())


def test_hypergradient_is_in_leader_parameter_order_for_modules() -> None:
    """A leader with several parameter tensors gets one gradient per tensor, in order."""

    class TwoPart(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Parameter(torch.tensor([0.4], dtype=F64))
            self.b = torch.nn.Parameter(torch.tensor([-0.2], dtype=F64))

        def forward(self) -> torch.Tensor:
            return torch.cat([self.a, self.b])

    reference_game = GAMES["T4"]()
    game = toys.HyperparameterGame(dtype=F64, follower_init=[0.5, 1.0])
    game.leader = TwoPart()
    solver = make_solver("TotalGradient", game)
    grads = solver.hypergradient()
    assert [g.shape for g in grads] == [torch.Size([1]), torch.Size([1])]
    expected = implicit_gradient_reference(reference_game)
    assert relative_error(torch.cat(grads), expected) < 1e-8
