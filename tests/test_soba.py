"""SOBA: its step against explicit Hessians, exact resume from its state, and its errors
(convergence to the closed forms is in test_convergence.py with the other solvers)."""

from __future__ import annotations

import pytest
import torch
from conftest import make_solver

import stackelberg as sg
from stackelberg.game import functional_view
from stackelberg.games import toys

F64 = torch.float64


def _losses(game: sg.Game, z: torch.Tensor, dw: int) -> tuple[torch.Tensor, torch.Tensor]:
    leader = functional_view(game.leader, (z[:dw],))
    follower = functional_view(game.follower, (z[dw:],))
    return game.leader_loss(leader, follower, None), game.follower_loss(leader, follower, None)


@pytest.mark.parametrize("damping", [0.0, 0.3])
def test_directions_equal_the_explicit_formulas(damping: float) -> None:
    game = toys.HyperparameterGame(dtype=F64)  # non-quadratic: the Hessians depend on (w, θ)
    solver = make_solver("SOBA", game, damping=damping)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in game.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=generator, dtype=F64))
    v = torch.randn(game.follower.value.shape, generator=generator, dtype=F64)
    solver.v = (v,)
    d_w, d_theta, d_v, _ = solver.directions()

    w, theta = game.leader.value.detach(), game.follower.value.detach()
    dw = w.numel()
    z = torch.cat([w, theta])
    grad_l = torch.autograd.functional.jacobian(lambda z: _losses(game, z, dw)[0], z)
    grad_h = torch.autograd.functional.jacobian(lambda z: _losses(game, z, dw)[1], z)
    hessian_h = torch.autograd.functional.hessian(lambda z: _losses(game, z, dw)[1], z)
    h_tt, h_wt = hessian_h[dw:, dw:], hessian_h[:dw, dw:]
    assert torch.allclose(d_theta[0], grad_h[dw:], atol=1e-12)
    assert torch.allclose(d_v[0], h_tt @ v + damping * v - grad_l[dw:], atol=1e-12)
    assert torch.allclose(d_w[0], grad_l[:dw] - h_wt @ v, atol=1e-12)


def test_step_moves_each_variable_by_its_own_step() -> None:
    game = toys.QuadraticGame.instance(dtype=F64)
    solver = make_solver("SOBA", game, leader_lr=0.1, follower_lr=0.5, linear_lr=0.2)
    w0, theta0 = game.leader.value.detach().clone(), game.follower.value.detach().clone()
    d_w, d_theta, d_v, _ = solver.directions()
    solver.step()
    assert torch.allclose(game.leader.value, w0 - 0.1 * d_w[0], atol=1e-14)
    assert torch.allclose(game.follower.value, theta0 - 0.5 * d_theta[0], atol=1e-14)
    assert torch.allclose(solver.v[0], -0.2 * d_v[0], atol=1e-14)  # v starts at zero


def _build(seed: int) -> tuple[sg.Game, sg.SOBA]:
    torch.manual_seed(seed)
    game = toys.HyperparameterGame(dtype=F64)
    leader_opt = torch.optim.SGD(game.leader.parameters(), lr=0.1, momentum=0.9)
    follower_opt = torch.optim.Adam(game.follower.parameters(), lr=0.05)
    return game, sg.SOBA(game, leader_opt, follower_opt, linear_lr=0.3)


def test_state_round_trip_continues_exactly(tmp_path) -> None:
    game, solver = _build(0)
    sg.solve(game, solver, None, 10, progress=False)
    expected = [p.detach().clone() for p in game.parameters()], solver.v

    game, solver = _build(0)
    sg.solve(game, solver, None, 5, progress=False)
    state = {
        "game": game.state_dict(),
        "leader_optimizer": solver.leader_optimizer.state_dict(),
        "follower_optimizer": solver.follower_optimizer.state_dict(),
        "solver": solver.state_dict(),
    }
    torch.save(state, tmp_path / "state.pt")
    game, solver = _build(123)  # a different seed: nothing may come from the RNG
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    game.load_state_dict(state["game"])
    solver.leader_optimizer.load_state_dict(state["leader_optimizer"])
    solver.follower_optimizer.load_state_dict(state["follower_optimizer"])
    solver.load_state_dict(state["solver"])
    assert solver.steps_taken == 5
    sg.solve(game, solver, None, 5, progress=False)
    for p, q in zip(game.parameters(), expected[0], strict=True):
        assert torch.allclose(p, q, atol=1e-12, rtol=0)
    assert torch.allclose(solver.v[0], expected[1][0], atol=1e-12, rtol=0)


def test_errors_name_the_problem() -> None:
    game = toys.QuadraticGame.instance(dtype=F64)
    with pytest.raises(ValueError, match="linear_lr must be a finite number > 0"):
        make_solver("SOBA", game, linear_lr=-1.0)
    solver = make_solver("SOBA", game)
    with pytest.raises(ValueError, match=r"v was saved for a follower of shapes \[\(5,\)\]"):
        solver.load_state_dict({"v": [torch.zeros(5)], "steps_taken": 0})
    before = [p.detach().clone() for p in game.parameters()]
    solver.v = (torch.full_like(solver.v[0], float("nan")),)
    with pytest.raises(ValueError, match=r"non-finite update for v at step 0; .* linear_lr must"):
        solver.step()
    assert all(torch.equal(p, q) for p, q in zip(game.parameters(), before, strict=True))
