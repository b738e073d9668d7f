"""The unlearnable-example game: payoffs, the budget, the cached inner batch, training resume,
export and victim training."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SOLVERS, make_solver
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

import stackelberg as sg
from stackelberg.data import ImageDataset
from stackelberg.games.unlearnable import (
    UnlearnableGame,
    attacker_loss,
    cw_margin,
    surrogate_loss,
)
from stackelberg.games.unlearnable.export import (
    export_npz,
    export_png_folder,
    poison_images,
    quantize_poison,
)
from stackelberg.games.unlearnable.training import GeneratorTraining, TrainingConfig
from stackelberg.games.unlearnable.victim import VictimSchedule, augment, train_victim
from stackelberg.models import (
    ConvNet,
    EncoderDecoderGenerator,
    LabelConditionedGenerator,
    ResNet18,
    UNetGenerator,
)

EPS = 8 / 255


def small_game(variant: str = "standard", seed: int = 0, **options) -> UnlearnableGame:
    torch.manual_seed(seed)
    generator = UNetGenerator(EPS, in_channels=3, widths=(4, 8))
    classifier = ConvNet(3, 4, widths=(4, 8))
    return UnlearnableGame(generator, classifier, EPS, variant, **options)


def batch(n: int = 8, seed: int = 1, classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 8, 8, generator=g), torch.randint(0, classes, (n,), generator=g)


# -- payoffs ----------------------------------------------------------------------------------


def test_surrogate_loss_matches_its_definition_and_bound() -> None:
    logits = torch.tensor([[2.0, 0.5, -1.0, 0.0], [0.1, 0.2, 0.3, 0.4]])
    y = torch.tensor([0, 3])
    expected = torch.stack(
        [
            -max(
                F.cross_entropy(logits[i : i + 1], torch.tensor([k])) for k in range(4) if k != y[i]
            )
            for i in range(2)
        ]
    )
    assert torch.allclose(surrogate_loss(logits, y), expected, atol=1e-6)
    # The bound −log(K − 1) is reached at p_y = 0 with the other classes uniform.
    extreme = torch.tensor([[-1e4, 1.0, 1.0, 1.0]])
    assert torch.allclose(surrogate_loss(extreme, torch.tensor([0])), torch.tensor(-math.log(3)))


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 12), st.integers(0, 2**31 - 1), st.floats(0.1, 20.0))
def test_surrogate_loss_bounds_hold(classes: int, seed: int, scale: float) -> None:
    g = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(16, classes, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (16,), generator=g)
    sur = surrogate_loss(logits, y)
    assert (sur <= -math.log(classes - 1) + 1e-9).all()
    ce = F.cross_entropy(logits, y, reduction="none")
    mass = (classes - 1) * torch.exp(sur)
    ok = mass < 1 - 1e-6  # where 1 − mass is computed without cancellation
    lower = -torch.log1p(-mass[ok])
    assert (ce[ok] >= lower - 1e-7).all()  # equality for K = 2


def test_cw_margin_and_the_attacker_losses_by_hand() -> None:
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0]])
    y = torch.tensor([0, 0])
    assert torch.allclose(cw_margin(logits, y), torch.tensor([2.0 - 3.0, 5.0 - 0.0]))
    assert torch.allclose(attacker_loss("cw", logits, y), torch.tensor([-1.0, 0.0]))
    assert torch.allclose(
        attacker_loss("cw", logits, y, cw_confidence=2.0), torch.tensor([-1.0, 2.0])
    )
    ce = F.cross_entropy(logits, y, reduction="none")
    assert torch.allclose(attacker_loss("ce", logits, y), ce)
    assert torch.allclose(attacker_loss("ce_clip", logits, y, ce_clip=1.0), ce.clamp(max=1.0))
    with pytest.raises(ValueError, match="attacker loss must be one of"):
        attacker_loss("mse", logits, y)


def test_leader_loss_is_minus_the_clean_surrogate_and_follower_loss_sees_the_poison() -> None:
    game = small_game()
    x, y = batch()
    expected_leader = -surrogate_loss(game.follower(x), y).mean()
    assert torch.allclose(game.leader_loss(game.leader, game.follower, (x, y)), expected_leader)
    poisoned = (x + game.leader(x)).clamp(0, 1)
    expected_follower = F.cross_entropy(game.follower(poisoned), y)
    assert torch.allclose(game.follower_loss(game.leader, game.follower, (x, y)), expected_follower)


def test_accuracy_variant_reports_exact_accuracy() -> None:
    game = small_game("accuracy")
    x, y = batch(32)
    with torch.no_grad():
        logits = game.follower(x)
    info = game.diagnostics((x, y))
    assert info["clean_accuracy"] == pytest.approx(float((logits.argmax(1) == y).float().mean()))
    leader = game.leader_loss(game.leader, game.follower, (x, y))
    assert torch.allclose(leader, -cw_margin(logits, y).clamp(max=0).mean(), atol=1e-6)


def test_the_ce_attacker_gradient_grows_without_bound_and_the_surrogate_does_not() -> None:
    """The paper's ablation: maximizing CE drives the logit gap up with a gradient that
    keeps its size, while L_sur saturates at −log(K − 1)."""
    logits = torch.zeros(1, 10, requires_grad=True)
    y = torch.tensor([0])
    for name, final in (("ce", None), ("sur", -math.log(9))):
        z = logits.detach().clone().requires_grad_(True)
        for _ in range(200):
            (g,) = torch.autograd.grad(attacker_loss(name, z, y).sum(), z)
            z = (z + 1.0 * g).detach().requires_grad_(True)
        value = float(attacker_loss(name, z.detach(), y))
        if final is None:
            assert value > 50  # unbounded
        else:
            assert value == pytest.approx(final, abs=1e-2)


@pytest.mark.parametrize("loss", ["pgd", "trades"])
def test_adversarial_variant_trains_on_worse_points(loss: str) -> None:
    game = small_game("adversarial", adversarial_epsilon=8 / 255, adversarial_loss=loss)
    x, y = batch(16)
    plain = small_game("standard")
    plain.load_state_dict(game.state_dict())
    torch.manual_seed(0)
    adversarial = game.follower_loss(game.leader, game.follower, (x, y))
    clean = plain.follower_loss(plain.leader, plain.follower, (x, y))
    assert adversarial > clean
    grads = torch.autograd.grad(adversarial, list(game.leader.parameters()), allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)  # the poison still matters


@pytest.mark.parametrize("loss", ["pgd", "trades"])
@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_every_solver_steps_the_adversarial_variant(solver: str, loss: str) -> None:
    """The attack inside ``L_c`` takes its own gradients, so the losses a solver reports under
    ``torch.no_grad()`` (BackGradient's end-of-unroll loss, for one) work too."""
    game = small_game("adversarial", adversarial_epsilon=4 / 255, adversarial_loss=loss)
    leader = torch.cat([p.detach().flatten() for p in game.leader.parameters()])
    follower = torch.cat([p.detach().flatten() for p in game.follower.parameters()])
    stepper = make_solver(solver, game, 0.05, 0.05)
    for _ in range(3):  # BOME's λ is 0 on the first steps of this game: ∇_w f = 0
        info = stepper.step(batch(16))
        assert math.isfinite(info["follower_loss"]) and math.isfinite(info["leader_loss"])
    leader_moved = torch.cat([p.detach().flatten() for p in game.leader.parameters()]) - leader
    follower_moved = torch.cat([p.detach().flatten() for p in game.follower.parameters()])
    assert (follower_moved - follower).abs().max() > 1e-4
    # GDA's leader gradient is ∇_w F = 0: the leader loss is on clean data (the naive baseline)
    assert (leader_moved.abs().max() > 1e-6) == (solver != "GDA")
    twin = copy.deepcopy(game)  # the loss updates batch-norm statistics the attack reads
    with torch.no_grad():
        torch.manual_seed(0)
        quiet = game.follower_loss(game.leader, game.follower, batch(16))
    torch.manual_seed(0)
    loud = twin.follower_loss(twin.leader, twin.follower, batch(16))
    assert torch.equal(quiet, loud.detach())


def test_bad_configuration_is_refused() -> None:
    generator, classifier = UNetGenerator(EPS, widths=(4, 8)), ConvNet(3, 4, widths=(4,))
    with pytest.raises(ValueError, match="variant must be one of"):
        UnlearnableGame(generator, classifier, EPS, "robust")
    with pytest.raises(ValueError, match="epsilon must be in"):
        UnlearnableGame(generator, classifier, 2.0)
    with pytest.raises(ValueError, match="Carlini"):
        UnlearnableGame(generator, classifier, EPS, "accuracy", attacker_loss="sur")
    game = UnlearnableGame(generator, classifier, 4 / 255)  # generator's ε is 8/255
    with pytest.raises(ValueError, match="exceeds the budget"):
        game.follower_loss(game.leader, game.follower, batch())
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        game.follower_loss(game.leader, game.follower, (torch.rand(3, 8, 8), torch.zeros(3)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        game.follower_loss(
            game.leader,
            game.follower,
            (torch.rand(2, 3, 8, 8) * 255, torch.zeros(2, dtype=torch.long)),
        )
    with pytest.raises(ValueError, match="int64 tensor of shape"):
        game.follower_loss(game.leader, game.follower, (torch.rand(2, 3, 8, 8), torch.zeros(2)))
    with pytest.raises(TypeError, match="pair"):
        game.leader_loss(game.leader, game.follower, torch.rand(2, 3, 8, 8))


# -- the budget -------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    st.sampled_from(["unet", "encoder-decoder"]),
    st.integers(1, 3),
    st.sampled_from([1, 3]),
    st.sampled_from([8, 12, 16]),
    st.floats(1 / 255, 32 / 255),
    st.integers(0, 2**31 - 1),
)
def test_every_output_respects_the_budget(
    kind: str, n: int, channels: int, size: int, epsilon: float, seed: int
) -> None:
    torch.manual_seed(seed)
    generator = (
        UNetGenerator(epsilon, channels, widths=(4, 8, 8))
        if kind == "unet"
        else EncoderDecoderGenerator(epsilon, channels, width=4)
    )
    with torch.no_grad():
        for p in generator.parameters():
            p.mul_(50.0)  # saturate the tanh
    x = torch.rand(n, channels, size, size)
    x[0, 0, 0, 0], x[-1, -1, -1, -1] = 0.0, 1.0  # the box edges
    game = UnlearnableGame(generator, ConvNet(channels, 3, widths=(4,)), epsilon)
    poisoned = poison_images(game.leader, x)
    assert (poisoned - x).abs().max() <= epsilon + 1e-6
    assert poisoned.min() >= 0 and poisoned.max() <= 1
    clean8 = (x * 255).round().to(torch.uint8)
    exported = quantize_poison(clean8, poisoned, epsilon)
    assert (exported.int() - clean8.int()).abs().max() <= math.floor(255 * epsilon + 1e-6)


def test_generators_check_their_input() -> None:
    with pytest.raises(ValueError, match=r"divisible by 4"):
        UNetGenerator(EPS, widths=(4, 8, 8))(torch.rand(1, 3, 10, 10))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        EncoderDecoderGenerator(EPS)(torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"epsilon must be in \(0, 1\]"):
        UNetGenerator(0.0)
    assert ResNet18(num_classes=7)(torch.rand(2, 3, 32, 32)).shape == (2, 7)


def test_rounding_not_truncation() -> None:
    clean = torch.tensor([[[[100, 100, 100]]]], dtype=torch.uint8)
    poisoned = torch.tensor([[[[100.6, 99.4, 108.0]]]]) / 255
    out = quantize_poison(clean, poisoned, 8 / 255)
    assert out.flatten().tolist() == [101, 99, 108]
    small_budget = quantize_poison(clean, torch.tensor([[[[107.9, 92.2, 100.0]]]]) / 255, 0.03)
    assert small_budget.flatten().tolist() == [107, 93, 100]  # ⌊255·0.03⌋ = 7 levels


# -- solvers on the game --------------------------------------------------------------------


def _bome(game: UnlearnableGame) -> sg.BOME:
    return sg.BOME(
        game,
        torch.optim.SGD(game.leader.parameters(), lr=0.1),
        torch.optim.SGD(game.follower.parameters(), lr=0.01),
        inner_steps=3,
        inner_lr=1e-2,
        inner_optimizer="adam",
        eta=1.5,
    )


def _old_bome_direction(game: UnlearnableGame, data, inner_steps: int, inner_lr: float, eta: float):
    """The BOME direction as the solver computed it before the generator pass was shared
    (written out by hand): the generator runs again inside every inner step and once more for
    each of h(w, θ) and h(w, θ^T), and ∇q̂ comes from two separate generator backward passes."""
    w, theta = list(game.leader.parameters()), list(game.follower.parameters())
    generator, classifier = game.leader, game.follower
    x, y = data

    def h(params):
        return F.cross_entropy(
            torch.func.functional_call(classifier, params, (game.poison(generator, x),)), y
        )

    names = [n for n, _ in classifier.named_parameters()]
    inner = [p.detach().clone().requires_grad_(True) for p in theta]
    optimizer = torch.optim.Adam(inner, lr=inner_lr)
    for _ in range(inner_steps):
        with torch.no_grad():
            poisoned = game.poison(generator, x)
        loss = F.cross_entropy(
            torch.func.functional_call(
                classifier, dict(zip(names, inner, strict=True)), (poisoned,)
            ),
            y,
        )
        grads = torch.autograd.grad(loss, inner)
        for p, g in zip(inner, grads, strict=True):
            p.grad = g
        optimizer.step()
    theta_T = {n: p.detach() for n, p in zip(names, inner, strict=True)}
    leader_loss = game.leader_loss(generator, classifier, data)
    grad_l = torch.autograd.grad(leader_loss, w + theta, allow_unused=True)
    grad_l = [
        torch.zeros_like(p) if g is None else g for g, p in zip(grad_l, w + theta, strict=True)
    ]
    h_w = torch.autograd.grad(h(dict(zip(names, theta, strict=True))), w + theta)
    h_T_w = torch.autograd.grad(h(theta_T), w, allow_unused=True)
    grad_q = [a - b for a, b in zip(h_w[: len(w)], h_T_w, strict=True)] + list(h_w[len(w) :])
    dot = sum((a * b).sum() for a, b in zip(grad_l, grad_q, strict=True))
    norm_sq = sum((b * b).sum() for b in grad_q)
    lam = torch.clamp((eta * norm_sq - dot) / (norm_sq + 1e-12), min=0.0)
    return [a + lam * b for a, b in zip(grad_l, grad_q, strict=True)]


def test_bome_step_runs_the_generator_once_and_equals_the_old_formula() -> None:
    torch.manual_seed(0)
    game = small_game().double()
    data = batch(16)
    data = (data[0].double(), data[1])
    calls = {"forward": 0, "backward": 0}

    def forward_hook(*_):
        calls["forward"] += 1

    def backward_hook(grad):
        calls["backward"] += 1  # once per backward pass that reaches the generator's weights
        return grad

    handles = [
        game.leader.register_forward_hook(forward_hook),
        next(game.leader.parameters()).register_hook(backward_hook),
    ]
    state = {k: v.clone() for k, v in game.state_dict().items()}
    leader_d, follower_d, info = _bome(game).direction(data)
    for handle in handles:
        handle.remove()
    assert calls == {"forward": 1, "backward": 1}
    assert info["lambda"] > 0  # the barrier is active, so ∇_w q̂ reaches the generator
    game.load_state_dict(state)
    expected = _old_bome_direction(game, data, inner_steps=3, inner_lr=1e-2, eta=1.5)
    got = list(leader_d) + list(follower_d)
    assert sum(float(d.abs().sum()) for d in leader_d) > 0
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("solver", ["bome", "backgradient", "total_gradient", "gda"])
def test_every_solver_takes_a_training_step(solver: str) -> None:
    game = small_game()
    x, y = batch(16)
    train = ImageDataset((x * 255).round().to(torch.uint8), y, ("a", "b", "c", "d"))
    config = TrainingConfig(epochs=1, batch_size=8, solver=solver, log_every=1)
    if solver == "bome":
        config.solver_options = {"inner_steps": 2}
    training = GeneratorTraining(game, config, train)
    before = [p.detach().clone() for p in game.parameters()]
    history = training.run(progress=False)
    assert len(history) == 2 and all(np.isfinite(h["clean_accuracy"]) for h in history)
    changed = [not torch.equal(a, b) for a, b in zip(before, game.parameters(), strict=True)]
    assert any(changed)


# -- training: checkpoints and resume ----------------------------------------------------------


def _training(
    run_dir: Path,
    epochs: int,
    seed: int = 0,
    solver: str = "bome",
    solver_options: dict | None = None,
) -> GeneratorTraining:
    game = small_game(seed=seed)
    g = torch.Generator().manual_seed(5)
    images = torch.randint(0, 256, (48, 3, 8, 8), generator=g, dtype=torch.uint8)
    labels = torch.arange(48) % 4
    train = ImageDataset(images, labels, ("a", "b", "c", "d"))
    validation = ImageDataset(images[:16], labels[:16], train.classes)
    config = TrainingConfig(
        epochs=epochs,
        batch_size=16,
        solver=solver,
        solver_options={"inner_steps": 2} if solver_options is None else solver_options,
        log_every=1,
        quick_test_every=1,
        quick_test=VictimSchedule.scaled(1, lr=0.05, batch_size=16),
    )
    return GeneratorTraining(
        game,
        config,
        train,
        validation=validation,
        victim_factory=lambda: ConvNet(3, 4, widths=(4,)),
        run_dir=run_dir,
    )


@pytest.mark.parametrize(
    ("solver", "options"),
    [("bome", None), ("total_gradient", {"solver_iterations": 2})],  # the latter carries v
)
def test_resume_after_interrupt_reproduces_the_uninterrupted_run_exactly(
    tmp_path: Path, solver: str, options: dict | None
) -> None:
    torch.manual_seed(123)
    whole = _training(tmp_path / "whole", epochs=3, solver=solver, solver_options=options)
    whole.run(progress=False)

    torch.manual_seed(123)
    first = _training(tmp_path / "split", epochs=1, solver=solver, solver_options=options)
    first.run(progress=False)  # "interrupted" after epoch 1: only its checkpoint survives
    torch.manual_seed(999)  # the new process starts from another RNG state
    # fresh weights, overwritten
    second = _training(tmp_path / "split", epochs=3, seed=7, solver=solver, solver_options=options)
    assert second.resume() and second.epoch == 1
    second.run(progress=False)

    for a, b in zip(
        whole.game.state_dict().values(), second.game.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    assert whole.history == second.history
    assert whole.quick_tests == second.quick_tests
    assert whole.best_epoch == second.best_epoch


def test_checkpoints_load_with_weights_only_and_refuse_other_settings(tmp_path: Path) -> None:
    training = _training(tmp_path, epochs=1)
    training.run(progress=False)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and "generator" in state
    assert (tmp_path / "training.json").is_file()
    other = _training(tmp_path, epochs=2)
    other.config.generator_lr = 0.5
    with pytest.raises(ValueError, match=r"other settings: generator_lr \(0\.1 → 0\.5\)"):
        other.resume()
    other = _training(tmp_path, epochs=2, solver_options={"inner_steps": 3})
    with pytest.raises(ValueError, match=r"other settings: solver_options\.inner_steps \(2 → 3\)"):
        other.resume()
    # The same options spelled out in full are the same settings.
    spelled = {**sg.solvers.options_for("bome", inner_steps=2).to_dict(), "inner_lr": 1e-4}
    spelled |= {"inner_optimizer": "adam", "eta": 1.5}
    assert _training(tmp_path, epochs=2, solver_options=spelled).resume()


def test_checkpoints_written_before_solver_state_dicts_still_resume(tmp_path: Path) -> None:
    training = _training(tmp_path, epochs=1)
    training.run(progress=False)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    solver_state = state.pop("solver")
    torch.save({**state, "solver_steps": solver_state["steps_taken"]}, tmp_path / "checkpoint.pt")
    resumed = _training(tmp_path, epochs=2)
    assert resumed.resume() and resumed.solver.steps_taken == training.solver.steps_taken > 0


def test_quick_test_keeps_the_generator_with_the_lowest_validation_accuracy(tmp_path: Path) -> None:
    training = _training(tmp_path, epochs=3)
    training.run(progress=False)
    scores = [t["validation_accuracy"] for t in training.quick_tests]
    assert training.best_score == min(scores)
    assert training.best_epoch == 1 + scores.index(min(scores))
    assert training.use_best_generator() == training.best_epoch
    for key, value in training.game.leader.state_dict().items():
        assert torch.equal(value, training.best_generator[key])


# -- export and victims ---------------------------------------------------------------------


def test_npz_and_png_exports_are_lossless_and_carry_a_manifest(tmp_path: Path) -> None:
    from PIL import Image

    game = small_game()
    clean = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    poisoned = poison_images(game.leader, clean)
    manifest = export_npz(
        tmp_path / "p.npz",
        poisoned,
        clean,
        labels,
        EPS,
        indices=torch.arange(10, 16),
        source={"dataset": "toy"},
    )
    data = np.load(tmp_path / "p.npz")
    assert data["x"].shape == (6, 8, 8, 3) and data["x"].dtype == np.uint8
    assert data["indices"].tolist() == list(range(10, 16))
    expected = quantize_poison(clean, poisoned, EPS).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(data["x"], expected)
    assert manifest["measured_linf_levels"] <= 8 and manifest["images"] == 6
    assert (tmp_path / "p.json").is_file()

    folder = tmp_path / "png"
    export_png_folder(folder, poisoned, clean, labels, ("a", "b", "c", "d"), EPS)
    first = np.asarray(Image.open(folder / "a" / "0.png"))
    assert np.array_equal(first, expected[0])
    with pytest.raises(FileExistsError):
        export_png_folder(folder, poisoned, clean, labels, ("a", "b", "c", "d"), EPS)


def test_augment_crops_and_flips_within_the_padded_image() -> None:
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    g = torch.Generator().manual_seed(0)
    out = augment(x, g, padding=1)
    assert out.shape == x.shape
    for i in range(2):
        values = set(out[i].flatten().tolist()) - {0.0}
        assert values <= set(x[i].flatten().tolist())


def test_victim_learns_separable_data_and_reports_every_epoch() -> None:
    torch.manual_seed(0)
    labels = torch.arange(64) % 2
    images = torch.zeros(64, 1, 8, 8)
    images[labels == 1, :, :4] = 1.0  # class 1: bright top half
    model = ConvNet(1, 2, widths=(4, 8))
    result = train_victim(
        model,
        images,
        labels,
        images,
        labels,
        VictimSchedule.scaled(6, lr=0.1, batch_size=16),
        progress=False,
    )
    assert len(result.test_accuracy) == 6 and result.final == 1.0


def test_label_conditioned_generator_starts_as_its_base_and_keeps_the_budget() -> None:
    torch.manual_seed(0)
    base = UNetGenerator(EPS, widths=(4, 8))
    conditioned = LabelConditionedGenerator(base, num_classes=4, pattern_size=2)
    x, y = batch(6)
    assert torch.allclose(conditioned(x, y), base(x))
    with torch.no_grad():
        conditioned.patterns.fill_(100.0)
    delta = conditioned(x, y)
    assert delta.abs().max() <= EPS and delta.min() > 0.99 * EPS  # saturated at +ε
    game = UnlearnableGame(conditioned, ConvNet(3, 4, widths=(4,)), EPS)
    assert game.conditional
    with pytest.raises(ValueError, match="label-conditioned"):
        poison_images(conditioned, x)
    poisoned = poison_images(conditioned, x, y)
    assert torch.allclose(poisoned, (x + delta).clamp(0, 1), atol=1e-6)
    with torch.no_grad():
        conditioned.patterns.fill_(0.1)
    loss = game.follower_loss(game.leader, game.follower, (x, y))
    (grad,) = torch.autograd.grad(loss, [conditioned.patterns])
    assert grad[y.unique()].abs().sum() > 0  # the class patterns get a gradient


def test_error_minimizing_weight_adds_kappa_times_the_follower_loss() -> None:
    plain = small_game()
    weighted = small_game(error_minimizing_weight=0.7)
    weighted.load_state_dict(plain.state_dict())
    data = batch()
    expected = plain.leader_loss(plain.leader, plain.follower, data) + 0.7 * plain.follower_loss(
        plain.leader, plain.follower, data
    )
    got = weighted.leader_loss(weighted.leader, weighted.follower, data)
    assert torch.allclose(got, expected)
    # With κ > 0 the leader's loss depends on the generator directly.
    grads = torch.autograd.grad(got, list(weighted.leader.parameters()), allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    with pytest.raises(ValueError, match="error_minimizing_weight"):
        small_game(error_minimizing_weight=-1.0)


@pytest.mark.slow
def test_presets_build_and_the_paper_models_take_a_bome_step() -> None:
    from stackelberg.games.unlearnable.presets import PRESETS, build_classifier, build_generator

    for preset in PRESETS.values():
        generator = build_generator(
            preset.generator,
            preset.epsilon,
            3,
            num_classes=10 if preset.label_conditioned else None,
        )
        classifier = build_classifier(preset.classifier, 3, 10)
        UnlearnableGame(
            generator, classifier, preset.epsilon, preset.variant, **preset.game_options
        )
    paper = PRESETS["paper"]
    torch.manual_seed(0)
    game = UnlearnableGame(
        build_generator(paper.generator, paper.epsilon, 3),
        build_classifier(paper.classifier, 3, 10),
        paper.epsilon,
    )
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    train = ImageDataset((x * 255).round().to(torch.uint8), y, tuple("abcdefghij"))
    config = TrainingConfig(epochs=1, batch_size=4, solver_options={"inner_steps": 1}, log_every=1)
    history = GeneratorTraining(game, config, train).run(progress=False)
    assert len(history) == 1 and np.isfinite(history[0]["leader_loss"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bome_inner_loop_never_waits_on_the_cuda_device() -> None:
    game = small_game().to("cuda")
    solver = _bome(game)
    data = tuple(t.to("cuda") for t in batch(16))
    w = tuple(p.detach() for p in solver.leader_params())
    inner_batch = solver.fixed_leader_batch(w, data)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        theta_T = solver.inner_solution(data, inner_batch)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(t.is_cuda for t in theta_T)
    info = solver.step(data)  # the whole step, with its one read-back, still works
    assert math.isfinite(info["q"])
