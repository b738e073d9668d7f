"""The unlearnable-example game: payoffs, variants, the budget, generators and presets."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from conftest import SOLVERS, as_blocks, make_solver
from gue_helpers import EPS, batch, small_game
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

from stackelberg.data import ImageDataset
from stackelberg.models import (
    ConvNet,
    EncoderDecoderGenerator,
    LabelConditionedGenerator,
    ResNet18,
    UNetGenerator,
)
from stackelberg.unlearnable import (
    UnlearnableGame,
    attacker_loss,
    cw_margin,
    surrogate_loss,
)
from stackelberg.unlearnable.export import (
    poison_images,
    quantize_poison,
)
from stackelberg.unlearnable.training import GeneratorTraining, TrainingConfig

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
        info = stepper.step(as_blocks(solver, batch(16)))
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


@pytest.mark.parametrize("conditioned", [False, True])
def test_achromatic_generator_is_one_gray_perturbation_that_grayscale_and_jpeg_chroma_keep(
    conditioned: bool,
) -> None:
    """``δ_c = ε·tanh(mean_c' z_c')``: the same in every channel, within ε, with BT.601 luma
    ``δ`` itself and JPEG chroma (Cb, Cr of JFIF) zero; the gradient reaches the weights."""
    from stackelberg.unlearnable.transforms import grayscale

    torch.manual_seed(0)
    base = UNetGenerator(EPS, widths=(4, 8), achromatic=True)
    x, y = batch(6)
    generator = LabelConditionedGenerator(base, 4, pattern_size=2) if conditioned else base
    if conditioned:
        with torch.no_grad():
            generator.patterns.normal_(0, 3)  # different per channel: the mean makes it gray
    delta = generator(x, y) if conditioned else generator(x)
    z = base.logits(x) + (
        F.interpolate(generator.patterns, size=x.shape[-2:], mode="bilinear")[y]
        if conditioned
        else 0
    )
    expected = EPS * torch.tanh(z.mean(1, keepdim=True)).expand_as(z)
    assert torch.allclose(delta, expected, atol=1e-7)
    assert delta.abs().max() <= EPS and delta.abs().max() > 0.1 * EPS
    assert torch.equal(delta[:, 0], delta[:, 1]) and torch.equal(delta[:, 0], delta[:, 2])
    luma = grayscale(delta)
    assert torch.allclose(luma, delta, atol=1e-7)
    cb = -0.168736 * delta[:, 0] - 0.331264 * delta[:, 1] + 0.5 * delta[:, 2]
    cr = 0.5 * delta[:, 0] - 0.418688 * delta[:, 1] - 0.081312 * delta[:, 2]
    assert cb.abs().max() < 1e-7 and cr.abs().max() < 1e-7
    weights = base.head[0].weight
    (grad,) = torch.autograd.grad(delta.sum(), [weights])
    assert grad.abs().sum() > 0
    plain = UNetGenerator(EPS, widths=(4, 8))
    plain.load_state_dict(base.state_dict())
    assert not torch.equal(plain(x)[:, 0], plain(x)[:, 1])  # the option is what makes it gray
    assert "achromatic=True" in repr(base)


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
    from stackelberg.unlearnable.presets import PRESETS, build_classifier, build_generator

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


def test_a_presets_game_options_are_a_checked_record() -> None:
    from stackelberg.unlearnable.game import GameOptions
    from stackelberg.unlearnable.presets import PRESETS

    preset = PRESETS["cpu-em-at2"]
    assert isinstance(preset.game_options, GameOptions)
    assert preset.game_options.error_minimizing_weight == 1.0
    assert preset.game_options.adversarial_epsilon == 2 / 255
    # It unpacks as the game's keyword arguments, and its dict form reads back.
    assert dict(**preset.game_options) == preset.game_options.to_dict()
    assert GameOptions.from_mapping(preset.game_options.to_dict()) == preset.game_options
    with pytest.raises(
        TypeError, match="UnlearnableGame got unknown option 'error_minimising_weight'; it accepts"
    ):
        preset.with_changes(game_options={"error_minimising_weight": 1.0})
    with pytest.raises(ValueError, match="adversarial_steps must be >= 1"):
        preset.game_options.replace(adversarial_steps=0)
