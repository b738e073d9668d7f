"""F2SA against the implicit-function hypergradient: its direction's bias is O(1/λ)
(Kwon et al. 2023, Lemma 3.1), measured on T1 against dense matrices."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import make_solver, relative_error
from test_total_gradient import implicit_gradient_reference

import stackelberg as sg
from stackelberg.games import toys

F64 = torch.float64


def _direction(penalty_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """F2SA's leader direction at T1's start, with the follower and the auxiliary solved to
    machine precision (500 inner steps), and the reference hypergradient there."""
    game = toys.QuadraticGame.instance(dtype=F64)
    w0 = game.leader.value.detach().clone()
    solver = make_solver(
        "F2SA",
        game,
        1.0,
        0.5,
        inner_steps=500,
        inner_lr=0.5,
        lambda_init=penalty_weight,
        lambda_growth=0.0,
        lambda_max=penalty_weight,
    )
    # The reference at the follower's point after its steps: T1's follower converges there.
    solver._follower_steps(None, 500)
    reference = implicit_gradient_reference(game)
    solver.step()
    return w0 - game.leader.value.detach(), reference


def test_the_direction_approaches_the_hypergradient_as_one_over_lambda() -> None:
    errors = [relative_error(*_direction(weight)) for weight in (10.0, 100.0, 1000.0)]
    assert errors[0] < 0.2
    for coarse, fine in itertools.pairwise(errors):
        assert fine == pytest.approx(coarse / 10, rel=0.3)  # O(1/λ): ten times λ, a tenth


def test_lambda_grows_on_its_schedule_and_its_options_are_checked() -> None:
    game = toys.QuadraticGame.instance(dtype=F64)
    solver = make_solver(
        "F2SA",
        game,
        0.01,
        0.1,
        inner_steps=2,
        lambda_init=1.0,
        lambda_growth=2.0,
        lambda_max=4.0,
    )
    assert [solver.step()["lambda"] for _ in range(4)] == [1.0, 3.0, 4.0, 4.0]
    with pytest.raises(ValueError, match=r"lambda_max \(0.5\) must be >= lambda_init \(1.0\)"):
        sg.solvers.options_for("f2sa", lambda_max=0.5)
