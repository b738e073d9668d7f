"""The data-poisoning game: its losses, its hypergradient and its attack."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import relative_error

import stackelberg as sg
from stackelberg.games.poisoning import (
    PoisoningGame,
    error_rate,
    fit_full_batch,
    flip_labels,
    label_flip_poisons,
)
from stackelberg.models import MLP, LogisticRegression

F64 = torch.float64


def blobs(n: int, seed: int, dim: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Two Gaussian blobs mapped into [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    centers = torch.tensor([0.3, 0.7], dtype=F64)[y][:, None]
    x = centers + 0.08 * torch.randn(n, dim, generator=generator, dtype=F64)
    return x.clamp(0, 1), y


def small_game(victim: torch.nn.Module | None = None, count: int = 4) -> PoisoningGame:
    torch.manual_seed(0)
    train, validation = blobs(20, 1), blobs(40, 2)
    poisons = label_flip_poisons(*validation, count, 2, torch.Generator().manual_seed(3))
    victim = victim if victim is not None else LogisticRegression(4, 2).double()
    return PoisoningGame(victim, train, validation, poisons, 2, weight_decay=1e-2)


def solver_for(game: PoisoningGame, mode: str, steps: int = 20, lr: float = 0.5, **options):
    return sg.BackGradient(
        game,
        torch.optim.SGD(game.leader.parameters(), lr=0.1),
        torch.optim.SGD(game.follower.parameters(), lr=lr),
        inner_steps=steps,
        inner_lr=lr,
        mode=mode,
        warm_start=False,
        follower_steps=0,
        **options,
    )


def test_losses_are_the_union_training_loss_and_minus_the_validation_loss() -> None:
    game = small_game()
    victim = game.follower
    x = torch.cat([game.train_x, game.leader.features])
    y = torch.cat([game.train_y, game.leader.labels])
    penalty = sum(float(p.detach().pow(2).sum()) for p in victim.parameters())
    expected = float(F.cross_entropy(victim(x), y).detach()) + 0.5 * 1e-2 * penalty
    loss = game.follower_loss(game.leader, victim).detach()
    assert float(loss) == pytest.approx(expected, rel=1e-12)
    validation = float(F.cross_entropy(victim(game.val_x), game.val_y).detach())
    assert float(game.leader_loss(game.leader, victim).detach()) == pytest.approx(-validation)


def test_hypergradient_matches_finite_differences() -> None:
    game = small_game()
    solver = solver_for(game, "store", steps=15)
    (hypergrad,) = solver.hypergradient()
    theta_0 = [p.detach().clone() for p in game.follower.parameters()]

    def unrolled_validation_loss(features: torch.Tensor) -> float:
        victim = LogisticRegression(4, 2).double()
        with torch.no_grad():
            for p, q in zip(victim.parameters(), theta_0, strict=True):
                p.copy_(q)
        x = torch.cat([game.train_x, features])
        y = torch.cat([game.train_y, game.leader.labels])
        fit_full_batch(victim, x, y, steps=15, lr=0.5, weight_decay=1e-2)
        return float(F.cross_entropy(victim(game.val_x), game.val_y).detach())

    features = game.leader.features.detach()
    h = 1e-6
    for index in [(0, 0), (1, 2), (3, 3)]:
        bump = torch.zeros_like(features)
        bump[index] = h
        fd = (
            unrolled_validation_loss(features + bump) - unrolled_validation_loss(features - bump)
        ) / (2 * h)
        assert float(hypergrad[index]) == pytest.approx(-fd, rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("victim", ["logreg", "mlp"])
def test_reverse_mode_agrees_with_store_mode_on_small_steps(victim: str) -> None:
    torch.manual_seed(7)
    model = LogisticRegression(4, 2) if victim == "logreg" else MLP(4, 2, hidden=8)
    game = small_game(model.double())
    exact = solver_for(game, "store", steps=20, lr=0.2).hypergradient()[0]
    reverse = solver_for(game, "reverse", steps=20, lr=0.2, inversion_steps=10).hypergradient()[0]
    assert relative_error(reverse, exact) < 1e-3


@pytest.mark.slow
def test_attack_raises_the_validation_loss_and_keeps_the_box() -> None:
    game = small_game(count=6)
    solver = sg.BackGradient(
        game,
        torch.optim.Adam(game.leader.parameters(), lr=0.05),
        torch.optim.SGD(game.follower.parameters(), lr=0.5),
        inner_steps=30,
        inner_lr=0.5,
        mode="reverse",
        warm_start=False,
        follower_steps=0,
    )
    history = sg.solve(game, solver, None, 40, progress=False)
    assert -history[-1]["leader_loss"] > -history[0]["leader_loss"] + 0.05
    features = game.leader.features.detach()
    assert features.min() >= 0 and features.max() <= 1


def test_label_flips() -> None:
    y = torch.tensor([0, 1, 1, 0])
    assert flip_labels(y, 2).tolist() == [1, 0, 0, 1]
    many = torch.arange(10).repeat(20)
    flipped = flip_labels(many, 10, torch.Generator().manual_seed(0))
    assert bool((flipped != many).all()) and int(flipped.max()) <= 9
    x = torch.rand(5, 3)
    px, py = label_flip_poisons(x, torch.zeros(5, dtype=torch.int64), 3, 2)
    assert px.shape == (3, 3) and py.tolist() == [1, 1, 1]


def test_retrained_victim_error_rate() -> None:
    torch.manual_seed(0)
    x, y = blobs(60, 4)
    model = fit_full_batch(LogisticRegression(4, 2).double(), x, y, steps=300, lr=0.5)
    assert error_rate(model, *blobs(200, 5)) < 0.05


def test_bad_input_is_named() -> None:
    train, validation = blobs(10, 1), blobs(10, 2)
    victim = LogisticRegression(4, 2).double()
    empty = (torch.zeros(0, 4, dtype=F64), torch.zeros(0, dtype=torch.int64))
    with pytest.raises(ValueError, match="the poison set is empty"):
        PoisoningGame(victim, train, validation, empty, 2)
    bad_labels = (torch.full((2, 4), 0.5, dtype=F64), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match=r"poison labels must lie in \[0, 1\]"):
        PoisoningGame(victim, train, validation, bad_labels, 2)
    outside = (torch.full((2, 4), 1.5, dtype=F64), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"poison features must lie in \[0, 1\]"):
        PoisoningGame(victim, train, validation, outside, 2)
    with pytest.raises(ValueError, match="count must be >= 1"):
        label_flip_poisons(*train, 0, 2)


def test_peak_memory_sees_a_large_allocation() -> None:
    def allocate() -> float:
        block = torch.ones(64 * 2**20 // 8, dtype=F64)  # 64 MiB
        return float(block.sum())

    result, extra = sg.utils.peak_memory(allocate)
    assert result == 64 * 2**20 // 8
    assert 48 * 2**20 < extra < 256 * 2**20


def test_the_old_name_of_fit_full_batch_still_works_and_warns() -> None:
    import stackelberg.games.poisoning as poisoning

    with pytest.warns(DeprecationWarning, match="use fit_full_batch"):
        assert poisoning.train_victim is poisoning.fit_full_batch
