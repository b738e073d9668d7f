"""BackGradient's three modes against the analytic gradient of the unrolled objective."""

from __future__ import annotations

import pytest
import torch
from conftest import make_solver, relative_error

from stackelberg.games import toys

F64 = torch.float64


def _t1_at(w: list[float], theta: list[float]) -> toys.QuadraticGame:
    return toys.QuadraticGame.instance(dtype=F64, leader_init=w, follower_init=theta)


def unrolled_gradient_t1(game: toys.QuadraticGame, steps: int, lr: float) -> torch.Tensor:
    """∇_w of L(w) = l(w, θ_T(w)) for θ_{t+1} = (I − αA)θ_t + α(Bw + c), in closed form.

    θ_T = Pᵀθ_0 + Σ_{k<T} P^k α(Bw + c) with P = I − αA, so dθ_T/dw = (I − P^T) A⁻¹ B and
    ∇L = (dθ_T/dw)ᵀ (θ_T − θ_t) + ρ w.
    """
    A, B, c = game.A, game.B, game.c
    w, theta = game.leader.value.detach(), game.follower.value.detach()
    P = torch.eye(2, dtype=F64) - lr * A
    for _ in range(steps):
        theta = P @ theta + lr * (B @ w + c)
    P_T = torch.linalg.matrix_power(P, steps)
    jacobian = (torch.eye(2, dtype=F64) - P_T) @ torch.linalg.solve(A, B)
    return jacobian.T @ (theta - game.theta_target) + game.rho * w


@pytest.mark.parametrize("steps", [1, 5, 50])
def test_store_mode_matches_the_analytic_unrolled_gradient(steps: int) -> None:
    game = _t1_at([0.3, -0.7], [1.5, 0.2])
    solver = make_solver("BackGradient", game, inner_steps=steps, inner_lr=0.3, mode="store")
    (hypergrad,) = solver.hypergradient()
    assert relative_error(hypergrad, unrolled_gradient_t1(game, steps, 0.3)) < 1e-8


def test_checkpoint_mode_equals_store_mode_to_float64_precision() -> None:
    game = _t4()
    store = make_solver("BackGradient", game, inner_steps=25, inner_lr=0.2, mode="store")
    checkpoint = make_solver("BackGradient", game, inner_steps=25, inner_lr=0.2, mode="checkpoint")
    assert relative_error(checkpoint.hypergradient()[0], store.hypergradient()[0]) < 1e-12


def _t4() -> toys.HyperparameterGame:
    """T4 away from its optimum: ∇²_wθ h = diag(e^w θ) depends on θ, so reconstruction matters."""
    return toys.HyperparameterGame(dtype=F64, leader_init=[0.4, -0.2], follower_init=[0.5, 1.0])


def test_reverse_mode_agrees_where_the_inner_map_contracts() -> None:
    # α = 0.1 < 2/λ_max(∇²_θθ h) ≈ 0.8: the inner map contracts.
    store = make_solver("BackGradient", _t4(), inner_steps=50, inner_lr=0.1, mode="store")
    game = _t4()
    reverse = make_solver("BackGradient", game, inner_steps=50, inner_lr=0.1, mode="reverse")
    assert relative_error(reverse.hypergradient()[0], store.hypergradient()[0]) < 1e-3
    # Undoing contracting steps amplifies errors, so θ_0 itself is recovered only roughly;
    # those errors enter the hypergradient weighted by the decaying adjoint.
    info = reverse.step()
    assert 0 < info["reconstruction_error"] < 1.0


def test_reverse_mode_reconstruction_improves_with_inversion_steps() -> None:
    reference = make_solver("BackGradient", _t4(), inner_steps=20, inner_lr=0.1).hypergradient()[0]
    errors, hypergrad_errors = [], []
    for inversion_steps in (1, 2, 5):
        solver = make_solver(
            "BackGradient",
            _t4(),
            inner_steps=20,
            inner_lr=0.1,
            mode="reverse",
            inversion_steps=inversion_steps,
        )
        hypergrad_errors.append(relative_error(solver.hypergradient()[0], reference))
        errors.append(solver.step()["reconstruction_error"])
    assert errors[0] > errors[1] > errors[2]
    assert hypergrad_errors[0] > hypergrad_errors[1] > hypergrad_errors[2]
    assert hypergrad_errors[2] < 1e-4


def test_reverse_mode_is_exact_on_a_quadratic_follower() -> None:
    # With h quadratic in θ the Hessian products do not depend on θ_t: any reconstruction
    # error leaves the hypergradient exact.
    game = _t1_at([0.3, -0.7], [1.5, 0.2])
    solver = make_solver("BackGradient", game, inner_steps=30, inner_lr=0.2, mode="reverse")
    assert relative_error(solver.hypergradient()[0], unrolled_gradient_t1(game, 30, 0.2)) < 1e-10


def test_store_mode_matches_finite_differences_on_a_nonquadratic_game() -> None:
    game = _t4()
    solver = make_solver("BackGradient", game, inner_steps=15, inner_lr=0.3)
    (hypergrad,) = solver.hypergradient()

    def unrolled_loss(w: torch.Tensor) -> float:
        theta = torch.tensor([0.5, 1.0], dtype=F64)
        for _ in range(15):
            theta = theta - 0.3 * (theta - game.u + torch.exp(w) * theta)
        return float(0.5 * torch.sum((theta - game.v) ** 2))

    w0, h = game.leader.value.detach(), 1e-6
    fd = torch.stack(
        [
            torch.tensor((unrolled_loss(w0 + h * e) - unrolled_loss(w0 - h * e)) / (2 * h))
            for e in torch.eye(2, dtype=F64)
        ]
    )
    assert relative_error(hypergrad, fd) < 1e-7


@pytest.mark.parametrize("mode", ["store", "checkpoint", "reverse"])
def test_hypergradient_changes_no_state(mode: str) -> None:
    game = _t1_at([0.3, -0.7], [1.5, 0.2])
    solver = make_solver("BackGradient", game, inner_steps=5, mode=mode)
    before = [p.detach().clone() for p in game.parameters()]
    solver.hypergradient()
    assert all(torch.equal(a, b) for a, b in zip(before, game.parameters(), strict=True))
    assert all(p.grad is None for p in game.parameters())
    assert solver.steps_taken == 0


def test_cold_start_unrolls_from_the_initial_follower_every_step() -> None:
    game = _t1_at([0.3, -0.7], [1.5, 0.2])
    solver = make_solver(
        "BackGradient", game, inner_steps=10, inner_lr=0.3, warm_start=False, follower_steps=3
    )
    solver.step()
    # The follower has moved, but the unroll still starts from the initial θ_0.
    assert not torch.equal(game.follower.value.detach(), torch.tensor([1.5, 0.2], dtype=F64))
    moved_w, moved_theta = game.leader.value.detach().clone(), game.follower.value.detach().clone()
    fresh = _t1_at(moved_w.tolist(), [1.5, 0.2])
    expected = unrolled_gradient_t1(fresh, 10, 0.3)
    assert not torch.equal(moved_theta, torch.tensor([1.5, 0.2], dtype=F64))
    assert relative_error(solver.hypergradient()[0], expected) < 1e-10
