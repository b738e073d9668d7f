"""What real bilevel problems need from the API: two data streams, an evaluation hook with
wall time, BOME's inner optimizer, the unroll handed to the follower, clear warnings."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import SOLVERS, as_blocks, make_solver

import stackelberg as sg
from stackelberg.solvers.autograd import detached


class TwoSetGame(sg.Game):
    """Ridge regression whose strength the leader picks; the losses check which data set they
    were handed (the leader's batches are tagged "val", the follower's "train")."""

    def __init__(self) -> None:
        super().__init__(sg.Variable(torch.zeros(())), torch.nn.Linear(3, 1))
        self.seen: dict[str, list[int]] = {"leader": [], "follower": []}

    def follower_loss(self, leader, follower, batch):
        tag, number, x, y = batch
        assert tag == "train", f"the follower's loss got the {tag} batch"
        self.seen["follower"].append(number)
        residual = follower(x).squeeze(-1) - y
        return torch.mean(residual**2) + torch.exp(leader()) * follower.weight.pow(2).sum()

    def leader_loss(self, leader, follower, batch):
        tag, number, x, y = batch
        assert tag == "val", f"the leader's loss got the {tag} batch"
        self.seen["leader"].append(number)
        return torch.mean((follower(x).squeeze(-1) - y) ** 2)


def tagged(tag: str, count: int, seed: int) -> list[tuple[str, int, torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for number in range(count):
        x = torch.randn(8, 3, generator=generator)
        batches.append((tag, number, x, x @ torch.tensor([1.0, -1.0, 0.5])))
    return batches


@pytest.mark.parametrize("name", list(SOLVERS))
def test_every_solver_hands_each_loss_its_own_stream(name: str) -> None:
    game = TwoSetGame()
    solver = make_solver(name, game, leader_lr=0.01, follower_lr=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # GDA: ∇_w l = 0 here, as it should
        sg.solve(
            game,
            solver,
            steps=5,
            leader_data=as_blocks(name, tagged("val", 2, 0)),
            follower_data=as_blocks(name, tagged("train", 3, 1)),
            progress=False,
        )
    # Each stream cycles on its own: the leader's over 2 batches, the follower's over 3.
    assert set(game.seen["leader"]) == {0, 1}
    assert set(game.seen["follower"]) == {0, 1, 2}


def test_the_streams_are_drawn_independently_one_batch_each_per_step() -> None:
    handed: list[sg.BilevelBatch] = []

    class Recording(sg.solvers.GDA):
        def step(self, batch=None):
            handed.append(batch)
            return super().step(batch)

    game = TwoSetGame()
    solver = Recording(
        game,
        torch.optim.SGD(game.leader.parameters(), lr=0.1),
        torch.optim.SGD(game.follower.parameters(), lr=0.1),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        sg.solve(
            game,
            solver,
            steps=6,
            leader_data=tagged("val", 2, 0),
            follower_data=tagged("train", 3, 1),
            progress=False,
        )
    assert [b.leader[1] for b in handed] == [0, 1, 0, 1, 0, 1]
    assert [b.follower[1] for b in handed] == [0, 1, 2, 0, 1, 2]
    # detached() keeps the pairing
    again = detached(handed[0])
    assert isinstance(again, sg.BilevelBatch) and again.leader[1] == 0


def test_a_stream_may_be_absent_for_a_loss_that_reads_no_data() -> None:
    class NoValidation(TwoSetGame):
        def leader_loss(self, leader, follower, batch):
            assert batch is None
            return follower.weight.sub(1.0).pow(2).sum()

    game = NoValidation()
    solver = make_solver("TotalGradient", game, leader_lr=0.01, follower_lr=0.05)
    sg.solve(game, solver, steps=3, follower_data=tagged("train", 2, 0), progress=False)
    assert game.seen["follower"]


def test_solve_refuses_mixed_or_malformed_streams_with_a_clear_error() -> None:
    game = TwoSetGame()
    solver = make_solver("BOME", game)
    with pytest.raises(ValueError, match=r"either data .* or leader_data and follower_data"):
        sg.solve(game, solver, tagged("val", 1, 0), 1, leader_data=tagged("val", 1, 0))
    with pytest.raises(TypeError, match="follower_data must be an iterable of batches"):
        sg.solve(game, solver, steps=1, leader_data=[], follower_data=torch.zeros(3))
    with pytest.raises(ValueError, match="leader_data yielded no batch"):
        sg.solve(
            game,
            solver,
            steps=1,
            leader_data=[],
            follower_data=tagged("train", 1, 0),
            progress=False,
        )
    with pytest.raises(TypeError, match="needs steps"):
        sg.solve(game, solver, None)
    with pytest.raises(TypeError, match="evaluate must return a mapping"):
        sg.solve(
            game,
            solver,
            steps=1,
            leader_data=tagged("val", 1, 0),
            follower_data=tagged("train", 1, 0),
            evaluate=lambda g: 0.5,
            progress=False,
        )


def test_evaluation_runs_on_its_schedule_and_wall_time_is_recorded() -> None:
    game = TwoSetGame()
    solver = make_solver("TotalGradient", game, leader_lr=0.01, follower_lr=0.05)
    calls: list[bool] = []

    def evaluate(g: sg.Game) -> dict[str, float]:
        calls.append(torch.is_grad_enabled())
        return {"weight_norm": g.follower.weight.norm()}

    seen_in_callback: list[dict[str, float]] = []
    history = sg.solve(
        game,
        solver,
        steps=7,
        leader_data=tagged("val", 2, 0),
        follower_data=tagged("train", 3, 1),
        evaluate=evaluate,
        evaluate_every=3,
        callback=lambda step, info: seen_in_callback.append(dict(info)),
        progress=False,
    )
    assert isinstance(history, sg.History) and len(history) == 7
    assert [e["step"] for e in history.evaluations] == [0, 3, 6, 7]
    assert not any(calls)  # evaluated under torch.no_grad()
    seconds = [info["seconds"] for info in history]
    assert all(s > 0 for s in seconds) and seconds == sorted(seconds)
    assert [e["seconds"] for e in history.evaluations[1:]] == [seconds[2], seconds[5], seconds[6]]
    assert "weight_norm" in history[2] and "weight_norm" not in history[3]
    assert "weight_norm" in seen_in_callback[5] and "seconds" in seen_in_callback[0]
    # oracle counts: TotalGradient evaluates l once and h once per hypergradient, plus h
    # once per follower step (follower_steps=1 by default)
    last = history.evaluations[-1]
    assert last["leader_evaluations"] == 7 and last["follower_evaluations"] == 14


def test_a_callback_that_stops_the_run_still_gets_a_final_evaluation() -> None:
    game = TwoSetGame()
    solver = make_solver("SOBA", game, leader_lr=0.01, follower_lr=0.05)
    history = sg.solve(
        game,
        solver,
        steps=50,
        leader_data=tagged("val", 1, 0),
        follower_data=tagged("train", 1, 1),
        evaluate=lambda g: {"one": 1.0},
        evaluate_every=10,
        callback=lambda step, info: step == 3,
        progress=False,
    )
    assert len(history) == 4
    assert [e["step"] for e in history.evaluations] == [0, 4]


# -- BOME's inner optimizer ----------------------------------------------------------------


def quadratic_game(dtype: torch.dtype = torch.float64) -> sg.Game:
    from stackelberg.games import toys

    return toys.QuadraticGame.random(dim=4, seed=3).to(dtype)


def test_bome_inner_momentum_is_heavy_ball_from_the_follower() -> None:
    game = quadratic_game()
    solver = make_solver("BOME", game, inner_steps=6, inner_lr=0.05, inner_momentum=0.9)
    theta_T = solver.inner_solution(None)
    # heavy ball, by hand: b ← μb + g, θ ← θ − αb (torch's SGD momentum, dampening 0)
    w = tuple(p.detach() for p in game.leader.parameters())
    theta = [p.detach().clone() for p in game.follower.parameters()]
    buffers = [torch.zeros_like(t) for t in theta]
    for _ in range(6):
        current = [t.clone().requires_grad_(True) for t in theta]
        loss = solver.follower_loss(w, current, None)
        grads = torch.autograd.grad(loss, current)
        buffers = [0.9 * b + g for b, g in zip(buffers, grads, strict=True)]
        theta = [t - 0.05 * b for t, b in zip(theta, buffers, strict=True)]
    for mine, reference in zip(theta_T, theta, strict=True):
        torch.testing.assert_close(mine, reference, rtol=1e-12, atol=1e-12)


def test_bome_keeps_the_inner_state_across_steps_and_resumes_exactly() -> None:
    def run(steps: int, state=None, game=None):
        game = game or quadratic_game()
        solver = make_solver(
            "BOME", game, inner_steps=3, inner_lr=0.05, inner_momentum=0.9, keep_inner_state=True
        )
        if state is not None:
            solver.load_state_dict(state)
        for _ in range(steps):
            solver.step(None)
        return game, solver

    full_game, _ = run(4)
    half_game, half = run(2)
    state = half.state_dict()
    assert state["inner_optimizer"]["state"]  # the momentum buffers are saved
    resumed_game, _ = run(2, state=state, game=half_game)
    for a, b in zip(full_game.parameters(), resumed_game.parameters(), strict=True):
        assert torch.equal(a, b)
    # and it differs from a fresh inner optimizer at every step
    fresh_game = quadratic_game()
    fresh = make_solver("BOME", fresh_game, inner_steps=3, inner_lr=0.05, inner_momentum=0.9)
    for _ in range(4):
        fresh.step(None)
    assert not torch.equal(fresh_game.follower.value, full_game.follower.value)


def test_bome_takes_any_optimizer_class_and_refuses_bad_inner_settings() -> None:
    game = quadratic_game()
    solver = make_solver("BOME", game, inner_optimizer=torch.optim.Adagrad, inner_lr=0.1)
    assert solver.options.to_dict()["inner_optimizer"] == "Adagrad"
    solver.step(None)
    with pytest.raises(ValueError, match="inner_momentum is the momentum of inner_optimizer='sgd'"):
        make_solver("BOME", game, inner_optimizer="adam", inner_momentum=0.9)
    with pytest.raises(ValueError, match=r"inner_momentum must be in \[0, 1\)"):
        make_solver("BOME", game, inner_momentum=1.0)
    with pytest.raises(ValueError, match="keep_inner_state=False"):
        make_solver("BOME", game).load_state_dict(
            make_solver("BOME", game, keep_inner_state=True, inner_momentum=0.5).state_dict()
            | {"inner_optimizer": {"state": {}, "param_groups": []}}
        )


def test_the_authors_option_names_point_to_ours() -> None:
    game = quadratic_game()
    with pytest.raises(
        TypeError, match="u1: use eta; the BOME authors' u1 is eta with phi='value'"
    ):
        make_solver("BOME", game, u1=0.1)
    with pytest.raises(TypeError, match="momentum: use inner_momentum"):
        make_solver("BOME", game, momentum=0.9)


# -- the unroll handed to the follower --------------------------------------------------------


def test_backgradient_hands_the_unrolled_iterate_to_the_follower() -> None:
    game = quadratic_game()
    theta_0 = [p.detach().clone() for p in game.follower.parameters()]
    w_0 = [p.detach().clone() for p in game.leader.parameters()]
    solver = make_solver(
        "BackGradient", game, inner_steps=4, inner_lr=0.1, keep_unrolled=True, follower_steps=0
    )
    solver.step(None)
    theta = theta_0
    for _ in range(4):  # θ_{t+1} = θ_t − α∇_θ h(w_0, θ_t)
        current = [t.clone().requires_grad_(True) for t in theta]
        grads = torch.autograd.grad(solver.follower_loss(w_0, current, None), current)
        theta = [t - 0.1 * g for t, g in zip(theta, grads, strict=True)]
    for p, reference in zip(game.follower.parameters(), theta, strict=True):
        torch.testing.assert_close(p.detach(), reference, rtol=1e-12, atol=1e-12)
    # hypergradient() alone moves nothing
    before = [p.detach().clone() for p in game.follower.parameters()]
    solver.hypergradient(None)
    assert all(torch.equal(a, b) for a, b in zip(before, game.follower.parameters(), strict=True))


# -- GDA on a problem whose leader loss ignores the leader -------------------------------------


def test_gda_says_once_that_the_leader_gradient_is_zero() -> None:
    game = TwoSetGame()
    solver = make_solver("GDA", game)
    with pytest.warns(RuntimeWarning, match="leader's gradient ∇_w l is exactly zero") as caught:
        sg.solve(
            game,
            solver,
            steps=3,
            leader_data=tagged("val", 1, 0),
            follower_data=tagged("train", 1, 1),
            progress=False,
        )
    assert sum("exactly zero" in str(w.message) for w in caught) == 1


def test_total_gradient_follower_first_is_follower_steps_then_the_hypergradient() -> None:
    first = quadratic_game()
    solver = make_solver("TotalGradient", first, follower_steps=3, follower_first=True)
    reference = quadratic_game()
    plain = make_solver("TotalGradient", reference, follower_steps=0)
    for _ in range(2):
        solver.step(None)
        for _ in range(3):  # AID's order, by hand: three follower SGD steps on ∇_θ h
            theta = tuple(reference.follower.parameters())
            loss = reference.follower_loss(reference.leader, reference.follower, None)
            for p, g in zip(theta, torch.autograd.grad(loss, theta), strict=True):
                p.grad = g
            plain.follower_optimizer.step()
        plain.step(None)
    for a, b in zip(first.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
