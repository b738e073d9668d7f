"""BETA, PGD and the non-zero-sum adversarial-training game."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stackelberg.games.adversarial import (
    AdversarialTrainingGame,
    SignGradientDescent,
    adversarial_training,
    beta_attack,
    class_margins,
    pgd_attack,
    project_linf,
    robust_accuracy,
    signed_gradient_steps,
)

F64 = torch.float64


def linear_model(num_classes: int = 4, features: int = 6, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Linear(features, num_classes).double()


def test_class_margins() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0], [0.5, 0.0, -1.0]])
    y = torch.tensor([1, 0])
    assert class_margins(logits, y).tolist() == [[-2.0, 0.0, -1.0], [0.0, -0.5, -1.5]]


def test_beta_reaches_the_closed_form_worst_case_of_a_linear_model() -> None:
    """For f(x) = Wx + b and x inside the box, max_{‖η‖∞≤ε} f_j − f_y = m_j(x) + ε‖W_j − W_y‖₁."""
    model = linear_model()
    x = torch.full((5, 6), 0.5, dtype=F64) + 0.1 * torch.rand(
        5, 6, dtype=F64, generator=torch.Generator().manual_seed(1)
    )
    y = torch.tensor([0, 1, 2, 3, 0])
    epsilon = 0.2
    adversarial = beta_attack(model, x, y, epsilon, steps=20, step_size=0.05)
    W, b = model.weight.detach(), model.bias.detach()
    closed = class_margins(x @ W.T + b, y) + epsilon * (W[None] - W[y][:, None]).abs().sum(-1)
    closed[torch.arange(5), y] = -torch.inf
    achieved = class_margins(model(adversarial).detach(), y).max(dim=1).values
    assert torch.allclose(achieved, closed.max(dim=1).values, atol=1e-10)
    assert (adversarial - x).abs().max() <= epsilon + 1e-12


@settings(max_examples=20, deadline=None)
@given(
    batch=st.integers(1, 4),
    channels=st.integers(1, 2),
    epsilon=st.floats(0.01, 1.0),
    attack=st.sampled_from(["beta", "pgd"]),
    seed=st.integers(0, 1000),
)
def test_attacks_respect_the_budget_and_the_box(batch, channels, epsilon, attack, seed) -> None:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, channels, 4, 4, generator=generator)
    x[0, 0, 0, 0] = 0.0
    x[-1, -1, -1, -1] = 1.0
    y = torch.randint(0, 3, (batch,), generator=generator)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(channels * 16, 3))
    fn = beta_attack if attack == "beta" else pgd_attack
    adversarial = fn(model, x, y, epsilon, steps=3, generator=generator)
    assert adversarial.shape == x.shape
    assert (adversarial - x).abs().max() <= epsilon + 1e-6
    assert adversarial.min() >= 0 and adversarial.max() <= 1


@pytest.mark.slow
def test_beta_fools_at_least_as_often_as_pgd_on_a_trained_linear_model() -> None:
    torch.manual_seed(0)
    x = torch.rand(200, 6, dtype=F64)
    y = (x[:, 0] + x[:, 1] > x[:, 2] + x[:, 3]).long() + 2 * (x[:, 4] > 0.5).long()
    model = linear_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    for _ in range(300):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    batches = [(x, y)]
    clean = robust_accuracy(model, batches, None)
    beta = robust_accuracy(model, batches, lambda m, a, b: beta_attack(m, a, b, 0.05, steps=10))
    pgd = robust_accuracy(model, batches, lambda m, a, b: pgd_attack(m, a, b, 0.05, steps=10))
    assert clean > 0.8
    assert beta <= pgd < clean


@pytest.mark.parametrize("attack", ["beta", "pgd"])
@pytest.mark.slow
def test_adversarial_training_makes_a_linear_model_robust(attack: str) -> None:
    generator = torch.Generator().manual_seed(0)
    y = torch.arange(400) % 2
    x = (0.3 + 0.4 * y[:, None] + 0.05 * torch.randn(400, 4, generator=generator, dtype=F64)).clamp(
        0, 1
    )
    model = linear_model(num_classes=2, features=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    batches = [(x[i : i + 50], y[i : i + 50]) for i in range(0, 400, 50)]
    attack_fn = lambda m, a, b: beta_attack(m, a, b, 0.1, steps=5)  # noqa: E731
    before = robust_accuracy(model, batches, attack_fn)
    for _ in range(5):
        info = adversarial_training(
            model, batches, attack=attack, epsilon=0.1, num_classes=2, optimizer=optimizer, steps=5
        )
    assert info["examples"] == 400
    assert robust_accuracy(model, batches, attack_fn) > max(before, 0.95)


def test_the_game_follower_maximizes_each_class_margin() -> None:
    model = linear_model(num_classes=3, features=4)
    game = AdversarialTrainingGame(model, epsilon=0.1, num_classes=3, attack="beta")
    x = torch.full((2, 4), 0.5, dtype=F64)
    y = torch.tensor([0, 2])
    game.reset(x, torch.Generator().manual_seed(0))
    assert game.follower.value.shape == (6, 4)
    attacker = SignGradientDescent(game.follower.parameters(), lr=0.05)
    for _ in range(6):
        attacker.zero_grad()
        game.follower_loss(model, game.follower, (x, y)).backward()
        attacker.step()
        with torch.no_grad():
            game.project()
    W = model.weight.detach()
    # Copies are class-major: row r targets class r // 2 for input r % 2 (labels 0 and 2).
    expected = 0.1 * torch.sign(W[[0, 0, 1, 1, 2, 2]] - W[[0, 2, 0, 2, 0, 2]])
    eta = game.follower.value.detach()
    rows = [1, 2, 3, 4]  # the copies aimed at a wrong class
    assert torch.allclose(eta[rows], expected[rows])
    loss = game.leader_loss(model, game.follower, (x, y))
    assert loss.ndim == 0 and loss.requires_grad


def test_one_solver_serves_batches_of_any_size() -> None:
    """``reset`` rewrites the follower's parameter in place, so one attacker optimizer and one
    solver serve every batch (sizes 3 then 2) and train the classifier exactly as a solver
    built afresh for each batch does."""
    from stackelberg.solvers import GDA

    x = torch.rand(5, 4, dtype=F64, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 1, 0])
    batches = [(x[:3], y[:3]), (x[3:], y[3:])]

    def train(fresh_per_batch: bool) -> torch.Tensor:
        model = linear_model(num_classes=3, features=4)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.3)
        game = AdversarialTrainingGame(model, epsilon=0.1, num_classes=3, attack="beta")
        generator = torch.Generator().manual_seed(0)
        value = game.follower.value
        solver = None
        for bx, by in batches:
            game.reset(bx, generator)
            assert game.follower.value is value and value.shape == (3 * len(by), 4)
            if solver is None or fresh_per_batch:
                attacker = SignGradientDescent(game.follower.parameters(), lr=0.05)
                solver = GDA(game, optimizer, attacker, alternating=True, follower_steps=3)
            solver.step((bx, by))
        return torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    shared, fresh = train(fresh_per_batch=False), train(fresh_per_batch=True)
    assert torch.equal(shared, fresh)
    assert not torch.equal(
        shared, torch.cat([p.reshape(-1) for p in linear_model(3, 4).parameters()])
    )


@pytest.mark.parametrize("ascent", [True, False])
def test_signed_steps_reach_the_corner_of_a_linear_objective(ascent: bool) -> None:
    """On ``⟨g, δ⟩`` every step moves each coordinate by ``α`` toward ``±sign(g)``, so after
    ``k`` steps from zero it sits at ``min(kα, ε)·(±sign g)`` (exactly), and the box
    ``x + δ ∈ [0, 1]`` cuts it where ``x`` is near an edge; it works under ``no_grad`` too."""
    g = torch.tensor([[2.0, -0.5, 0.0, 3.0]], dtype=F64)
    x = torch.tensor([[0.5, 0.5, 0.5, 0.98]], dtype=F64)
    sign = 1.0 if ascent else -1.0
    with torch.no_grad():
        two = signed_gradient_steps(
            torch.zeros_like(x), lambda d: (g * d).sum(), steps=2, step_size=0.03,
            project=lambda d: project_linf(d, x, 0.1), ascent=ascent,
        )  # fmt: skip
        many = signed_gradient_steps(
            torch.zeros_like(x), lambda d: (g * d).sum(), steps=10, step_size=0.03,
            project=lambda d: project_linf(d, x, 0.1), ascent=ascent,
        )  # fmt: skip
    expected_two = sign * 0.06 * torch.sign(g)
    expected_many = sign * 0.1 * torch.sign(g)
    if ascent:  # the last coordinate climbs toward 1 and stops at the box: 0.98 + 0.02
        expected_two[0, 3], expected_many[0, 3] = 0.02, 0.02
    assert torch.allclose(two, expected_two, atol=1e-15)
    assert torch.allclose(many, expected_many, atol=1e-15)
    assert not two.requires_grad


def test_every_epsilon_is_checked_by_one_validator() -> None:
    """The attacks, the game, the defenses and the generators refuse the same bad budgets
    with the same message."""
    from stackelberg.models import UNetGenerator
    from stackelberg.unlearnable.defenses import AdversarialTraining

    model = linear_model()
    x, y = torch.rand(2, 6, dtype=F64), torch.tensor([0, 1])
    for build in (
        lambda e: pgd_attack(model, x, y, e),
        lambda e: AdversarialTrainingGame(model, e, 4),
        lambda e: AdversarialTraining(e),
        lambda e: UNetGenerator(e),
    ):
        with pytest.raises(ValueError, match=r"epsilon must be in \(0, 1\]"):
            build(1.5)
        with pytest.raises(TypeError, match="epsilon must be a real number"):
            build(True)


def test_bad_input_is_named() -> None:
    model = linear_model()
    x, y = torch.rand(2, 6, dtype=F64), torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"epsilon must be in \(0, 1\]"):
        beta_attack(model, x, y, 0.0)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\]"):
        beta_attack(model, x, torch.tensor([0, 7]), 0.1, num_classes=4)
    with pytest.raises(ValueError, match=r"inputs must lie in \[0, 1\]"):
        pgd_attack(model, x + 2, y, 0.1)
    with pytest.raises(ValueError, match="attack must be one of"):
        AdversarialTrainingGame(model, 0.1, 4, attack="fgsm")
    with pytest.raises(ValueError, match="no examples"):
        robust_accuracy(model, [], None)
