"""Non-zero-sum adversarial training (Robey, Latorre, Pappas, Hassani, Cevher, ICLR 2024).

Adversarial training is usually written as the zero-sum game
``min_θ E max_{‖η‖∞≤ε} CE(f_θ(x + η), y)``, but maximizing the cross-entropy is only a
surrogate for the attacker's real aim, a misclassification. Robey et al. cast it as a bilevel,
non-zero-sum game: the defender (leader) minimizes CE at the attacker's perturbation, and the
attacker (follower) maximizes the *negative margin* (paper, eq. 4–6)

    η* ∈ argmax_{‖η‖∞ ≤ ε}  max_{j ≠ y} [f_θ(x + η)_j − f_θ(x + η)_y],

which is positive exactly when ``x + η`` is misclassified. The max over ``j`` is handled by
solving one problem per wrong class in parallel and keeping the best: the **Best Targeted
Attack** (BETA, paper Alg. 1), usable on its own to evaluate robustness.

- ``beta_attack`` and ``pgd_attack`` (Madry et al. 2018, PGD on the cross-entropy)
  perturb a batch within the ε-ball intersected with the ``[0, 1]`` box.
- ``AdversarialTrainingGame`` is the game: leader = classifier, follower = the batch's
  perturbations (one per class for BETA, one for PGD); ``adversarial_training`` runs it
  epoch by epoch with ``GDA`` (alternating: ``steps`` sign-gradient follower
  steps, then one classifier step), which gives BETA-AT and PGD-AT.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stackelberg.checks import check_epsilon, check_labels, check_unit_interval
from stackelberg.game import Game
from stackelberg.solvers.gda import GDA

__all__ = [
    "ATTACKS",
    "AdversarialTrainingGame",
    "Perturbations",
    "SignGradientDescent",
    "adversarial_training",
    "beta_attack",
    "class_margins",
    "pgd_attack",
    "project_linf",
    "robust_accuracy",
    "signed_gradient_steps",
]

ATTACKS = ("beta", "pgd")


def _check_batch(x: Tensor, y: Tensor, num_classes: int | None = None) -> None:
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{x.shape[0]} inputs but {y.shape[0]} labels")
    check_unit_interval(x, "inputs")
    if num_classes is not None:
        check_labels(y, num_classes, "labels")


def _step_size(epsilon: float, steps: int, step_size: float | None) -> float:
    """The given step, or Madry et al.'s default ``2.5ε/steps``."""
    return 2.5 * epsilon / steps if step_size is None else step_size


def _class_copies(t: Tensor, copies: int) -> Tensor:
    """``copies`` stacked copies of a batch, class-major: copy ``j`` is rows ``j·B … (j+1)·B``."""
    return t.repeat(copies, *([1] * (t.dim() - 1)))


def _targeted_margins(logits: Tensor, y: Tensor, copies: int) -> Tensor:
    """``(copies, B)``: the margin ``f_j − f_y`` of copy ``j`` toward its own class ``j``."""
    batch = y.shape[0]
    targets = torch.arange(copies, device=y.device).repeat_interleave(batch)
    margins = class_margins(logits, _class_copies(y, copies)).gather(1, targets[:, None])
    return margins.view(copies, batch)


def class_margins(logits: Tensor, y: Tensor) -> Tensor:
    """``f_j − f_y`` for every class ``j`` (``(B, K)``; zero at ``j = y``)."""
    return logits - logits.gather(1, y[:, None])


def project_linf(delta: Tensor, x: Tensor, epsilon: float) -> Tensor:
    """Onto ``{‖δ‖∞ ≤ ε} ∩ {x + δ ∈ [0, 1]}``."""
    return torch.maximum(torch.minimum(delta.clamp(-epsilon, epsilon), 1 - x), -x)


def _random_start(x: Tensor, epsilon: float, generator: torch.Generator | None) -> Tensor:
    noise = torch.rand(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
    return project_linf((2 * noise - 1) * epsilon, x, epsilon)


class _EvalMode:
    """Put a model in eval mode for an attack and restore its mode afterwards."""

    def __init__(self, model: Any) -> None:
        model = getattr(model, "module", model)  # a FunctionalView switches its module
        self.model, self.was_training = model, model.training

    def __enter__(self) -> None:
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.was_training)


def signed_gradient_steps(
    delta: Tensor,
    objective: Callable[[Tensor], Tensor],
    *,
    steps: int,
    step_size: float,
    project: Callable[[Tensor], Tensor],
    ascent: bool = True,
) -> Tensor:
    """``steps`` projected ℓ∞ steepest-ascent (or descent) steps on a perturbation,

        δ ← Π(δ ± α·sign ∇_δ objective(δ)),

    the step shared by PGD (Madry et al. 2018), BETA, TRADES' inner maximization and the
    error-minimizing / targeted / robust noises of the unlearnable-example attacks (which
    descend). ``project`` maps a step back onto the feasible set (the ε-ball, and the box
    ``x + δ ∈ [0, 1]`` where the inputs must stay images). The steps take their own gradients
    whatever the caller's grad mode (a loss reported under ``torch.no_grad()`` still trains at
    the attack point); the result is detached.
    """
    sign = 1.0 if ascent else -1.0
    delta = delta.detach()
    with torch.enable_grad():
        for _ in range(steps):
            delta.requires_grad_(True)
            (grad,) = torch.autograd.grad(objective(delta), delta)
            delta = project(delta.detach() + sign * step_size * grad.sign()).detach()
    return delta


def _signed_ascent(
    model: nn.Module,
    x: Tensor,
    objective: Callable[[Tensor], Tensor],
    epsilon: float,
    steps: int,
    step_size: float,
    random_start: bool,
    generator: torch.Generator | None,
) -> Tensor:
    """``signed_gradient_steps`` on ``objective(f(x + δ))`` over the ε-ball ∩ box, from a
    random start in that set (or zero), with the model in eval mode; returns ``δ``."""
    delta = _random_start(x, epsilon, generator) if random_start else torch.zeros_like(x)
    with _EvalMode(model):
        return signed_gradient_steps(
            delta,
            lambda d: objective(model(x + d)),
            steps=steps,
            step_size=step_size,
            project=lambda d: project_linf(d, x, epsilon),
        )


def _best_targets(margins: Tensor, y: Tensor) -> Tensor:
    """For ``(K, B)`` margins of copy ``j`` toward class ``j``, the best wrong class per input."""
    margins = margins.clone()
    margins[y, torch.arange(y.shape[0], device=y.device)] = -torch.inf  # j = y is no target
    return margins.argmax(dim=0)


def pgd_attack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    epsilon: float,
    steps: int = 10,
    step_size: float | None = None,
    *,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """PGD on the cross-entropy (Madry et al. 2018): ``steps`` signed ascent steps of size
    ``step_size`` (default ``2.5ε/steps``) projected onto the ε-ball and the box.

    Returns the adversarial inputs ``x + δ``.
    """
    epsilon = check_epsilon(epsilon)
    _check_batch(x, y)
    delta = _signed_ascent(
        model,
        x,
        lambda logits: F.cross_entropy(logits, y),
        epsilon,
        steps,
        _step_size(epsilon, steps, step_size),
        random_start,
        generator,
    )
    return (x + delta).detach()


def beta_attack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    epsilon: float,
    steps: int = 10,
    step_size: float | None = None,
    *,
    num_classes: int | None = None,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """BETA (Robey et al., Alg. 1): for every wrong class ``j`` in parallel, ``steps`` signed
    ascent steps on ``f_j(x + η_j) − f_y(x + η_j)`` from a random start in the ε-ball; return
    ``x + η_{j*}`` for the class ``j*`` with the largest final margin.

    Costs ``K`` times a PGD attack of the same number of steps (one copy of the batch per class).
    """
    epsilon = check_epsilon(epsilon)
    _check_batch(x, y, num_classes)
    with _EvalMode(model), torch.no_grad():
        k = model(x[:1]).shape[1] if num_classes is None else num_classes
    repeated_x = _class_copies(x, k)
    delta = _signed_ascent(
        model,
        repeated_x,
        lambda logits: _targeted_margins(logits, y, k).sum(),
        epsilon,
        steps,
        _step_size(epsilon, steps, step_size),
        random_start,
        generator,
    )
    with _EvalMode(model), torch.no_grad():
        best = _best_targets(_targeted_margins(model(repeated_x + delta), y, k), y)
    chosen = delta.view(k, *x.shape)[best, torch.arange(x.shape[0], device=x.device)]
    return (x + chosen).detach()


@torch.no_grad()
def _correct(model: nn.Module, x: Tensor, y: Tensor) -> int:
    with _EvalMode(model):
        return int((model(x).argmax(dim=1) == y).sum())


def robust_accuracy(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    attack: Callable[[nn.Module, Tensor, Tensor], Tensor] | None,
) -> float:
    """Accuracy on ``attack(model, x, y)`` (clean accuracy when ``attack`` is ``None``)."""
    correct = total = 0
    for x, y in batches:
        inputs = x if attack is None else attack(model, x, y)
        correct += _correct(model, inputs, y)
        total += y.shape[0]
    if total == 0:
        raise ValueError("no examples to evaluate")
    return correct / total


class SignGradientDescent(torch.optim.Optimizer):
    """``p ← p − lr·sign(∇p)``: steepest descent in ℓ∞, the step of PGD and BETA."""

    def __init__(self, params: Iterable[Tensor], lr: float) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad.sign(), alpha=-group["lr"])


class Perturbations(nn.Module):
    """The attacker's strategy for one batch: ``copies`` perturbations of each input."""

    inputs: Tensor

    def __init__(self, like: Tensor) -> None:
        super().__init__()
        self.value = nn.Parameter(like.new_zeros(1))
        self.register_buffer("inputs", like.new_zeros(1))

    def forward(self) -> Tensor:
        return self.value


class AdversarialTrainingGame(Game):
    """Adversarial training as a leader–follower game on one batch at a time.

    Leader: ``classifier`` (θ), minimizing ``CE(f_θ(x + η*), y)``. Follower: the batch's
    perturbations η, within ``‖η‖∞ ≤ ε`` and ``x + η ∈ [0, 1]`` (``project``).

    - ``attack="beta"`` (non-zero-sum, Robey et al.): ``K`` perturbations per input, the
      ``j``-th maximizing the margin ``f_j − f_y``; the leader trains on the one with the largest
      margin (the choice is not differentiated).
    - ``attack="pgd"`` (zero-sum, Madry et al.): one perturbation per input maximizing CE.

    Call ``reset`` with each new batch before solving on it (it draws the random start).
    """

    follower: Perturbations

    def __init__(
        self, classifier: nn.Module, epsilon: float, num_classes: int, attack: str = "beta"
    ) -> None:
        if attack not in ATTACKS:
            raise ValueError(f"attack must be one of {ATTACKS}, got {attack!r}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        weight = next(iter(classifier.parameters()), None)
        if weight is None:
            raise ValueError("the classifier has no parameters to train")
        # on the classifier's device and dtype, where every batch's perturbations will live
        super().__init__(classifier, Perturbations(weight.detach()))
        self.epsilon = check_epsilon(epsilon)
        self.num_classes = num_classes
        self.attack = attack

    @property
    def copies(self) -> int:
        return self.num_classes if self.attack == "beta" else 1

    def reset(self, x: Tensor, generator: torch.Generator | None = None) -> None:
        """A new batch ``x``: its feasible set (``‖η‖∞ ≤ ε``, ``x + η ∈ [0, 1]``, which
        ``project`` needs) and a fresh start, uniform in that set.

        The start is written into the follower's one parameter in place (resized when the
        batch size changes), so optimizers and solvers built on the game stay valid from batch
        to batch; the losses still read ``x`` from their ``batch`` argument.
        """
        check_unit_interval(x, "inputs")
        repeated = _class_copies(x, self.copies).detach()
        start = _random_start(repeated, self.epsilon, generator)
        with torch.no_grad():
            self.follower.value.set_(start.to(self.follower.value))  # type: ignore[call-overload]
        self.follower.inputs = repeated

    def _logits(self, leader: Any, follower: Any, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, _ = batch
        return leader(_class_copies(x, self.copies) + follower())

    def follower_loss(self, leader: Any, follower: Any, batch: tuple[Tensor, Tensor]) -> Tensor:
        """``−Σ_j margin_j`` (BETA) or ``−CE`` (PGD), averaged over the batch."""
        _, y = batch
        logits = self._logits(leader, follower, batch)
        if self.attack == "pgd":
            return -F.cross_entropy(logits, y)
        return -_targeted_margins(logits, y, self.copies).sum() / y.shape[0]

    def leader_loss(self, leader: Any, follower: Any, batch: tuple[Tensor, Tensor]) -> Tensor:
        """``CE(f_θ(x + η*), y)`` with η* the best (largest-margin) perturbation per input."""
        _, y = batch
        n = y.shape[0]
        eta = follower()
        if self.attack == "beta":
            with torch.no_grad():
                margins = _targeted_margins(self._logits(leader, follower, batch), y, self.copies)
                best = _best_targets(margins, y)
            eta = eta.view(self.copies, n, *eta.shape[1:])[best, torch.arange(n, device=y.device)]
        x, _ = batch
        return F.cross_entropy(leader(x + eta), y)

    def project(self) -> None:
        value = self.follower.value
        value.copy_(project_linf(value, self.follower.inputs, self.epsilon))


def adversarial_training(
    classifier: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    attack: str,
    epsilon: float,
    num_classes: int,
    optimizer: torch.optim.Optimizer,
    steps: int = 10,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """One epoch of BETA-AT or PGD-AT: for each batch, ``steps`` sign-gradient attacker steps
    then one classifier step on the best perturbation (alternating ``GDA``).

    Returns the epoch's mean training loss (CE on the perturbed inputs) and its example count.
    """
    game = AdversarialTrainingGame(classifier, epsilon, num_classes, attack)
    attacker = SignGradientDescent(
        game.follower.parameters(), lr=_step_size(epsilon, steps, step_size)
    )
    solver = GDA(game, optimizer, attacker, alternating=True, follower_steps=steps)
    total_loss = total = 0.0
    classifier.train()
    for x, y in batches:
        _check_batch(x, y, num_classes)
        game.reset(x, generator)
        info = solver.step((x, y))
        total_loss += info["leader_loss"] * y.shape[0]
        total += y.shape[0]
    return {"loss": total_loss / max(total, 1), "examples": total}
