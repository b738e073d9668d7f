"""BOME: bilevel optimization made easy (Liu, Ye, Wright, Stone, Liu, NeurIPS 2022).

BOME rewrites the bilevel problem through the value function,

    min_{w,θ} l(w, θ)   s.t.   q(w, θ) = h(w, θ) − min_θ' h(w, θ') ≤ 0,

and estimates the value function by ``T`` steps of an inner optimizer started from the current
follower (warm start): ``θ̂⁰ = θ``, ``θ̂ᵗ⁺¹ = θ̂ᵗ − α·step(∇_θ h(w, θ̂ᵗ))``, ``θ^T`` detached, so

    q̂(w, θ) = h(w, θ) − h(w, θ^T).                                   (paper, eq. 4)

Both players then move along one joint direction over ``v = (w, θ)`` given by the dynamic
barrier (paper, eq. 5–6):

    d = ∇l + λ ∇q̂,    λ = max( (φ − ⟨∇l, ∇q̂⟩) / (‖∇q̂‖² + δ), 0 ),

with ``φ = η‖∇q̂‖²`` (``phi="grad_norm"``, the paper's default) or ``φ = η·q̂``
(``phi="value"``). The rule guarantees ⟨d, ∇q̂⟩ ≥ φ, so q̂ decreases whenever it is not yet
optimal, and otherwise follows ∇l projected away from ∇q̂. The cost is ``T + 3`` first-order
gradients per step and O(P) memory: no second-order derivative is ever taken.

Stochastic use: the inner loop and the three outer gradients may read minibatches (the
inner loop reads the follower batch of its outer step); Liu et al. analyse the
deterministic method only, and ``λ`` depends nonlinearly on the gradients, so the step is
biased on minibatches: the measured curves on the real problems are the guide.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from stackelberg.checks import check_choice, check_int, check_positive
from stackelberg.solvers.autograd import detached, gradients
from stackelberg.solvers.base import Solver, StepInfo
from stackelberg.solvers.options import SolverOptions
from stackelberg.solvers.tree import TensorTuple, tree_add, tree_dot

__all__ = ["BOME", "BOMEOptions"]

_INNER_OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
}


@dataclass(frozen=True)
class BOMEOptions(SolverOptions):
    """BOME's options.

    Args:
        inner_steps: ``T``, the inner optimizer's steps that estimate ``min_θ h(w, θ)``.
        inner_lr: the inner optimizer's learning rate ``α``.
        inner_optimizer: ``"sgd"`` (gradient descent, as in the paper's analysis; with
            ``inner_momentum``, heavy ball, as in the BOME authors' hyper-cleaning script),
            ``"adam"`` (as in the GUE paper's code), or any ``torch.optim.Optimizer``
            subclass, built as ``inner_optimizer(params, lr=inner_lr)``.
        inner_momentum: the momentum of ``"sgd"`` (``0`` is plain gradient descent; the BOME
            authors use ``0.9`` on hyper-cleaning); only ``"sgd"`` takes it.
        keep_inner_state: keep the inner optimizer's state (momentum buffers, Adam's moments)
            from one outer step to the next instead of starting a fresh optimizer at every
            step; only the iterate is reset to the follower (θ̂⁰ = θ). The BOME authors'
            scripts do this. The state is part of ``BOME.state_dict``.
        eta: ``η`` of the control barrier ``φ`` (the BOME authors' scripts call it ``u1``).
        phi: ``"grad_norm"`` for ``φ = η‖∇q̂‖²`` (the paper's default) or ``"value"`` for
            ``φ = η·q̂`` (what the authors' hyper-cleaning script uses, with ``η = 0.1``).
        delta: ``δ``, guards the division when ``∇q̂`` vanishes (the authors use ``1e-8``).
    """

    aliases: ClassVar[Mapping[str, str]] = {
        "u1": "eta; the BOME authors' u1 is eta with phi='value'",
        "momentum": "inner_momentum",
        "inner_iterations": "inner_steps",
        "iterations": "inner_steps",
    }

    inner_steps: int = 10
    inner_lr: float = 0.01
    inner_optimizer: str | type[torch.optim.Optimizer] = "sgd"
    inner_momentum: float = 0.0
    keep_inner_state: bool = False
    eta: float = 0.5
    phi: str = "grad_norm"
    delta: float = 1e-12

    def validate(self) -> None:
        check_int("inner_steps", self.inner_steps, 1)
        check_positive("inner_lr", self.inner_lr)
        optimizer = self.inner_optimizer
        if not (isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer)):
            check_choice("inner_optimizer", optimizer, tuple(_INNER_OPTIMIZERS))
        check_positive("inner_momentum", self.inner_momentum, allow_zero=True)
        if self.inner_momentum >= 1:
            raise ValueError(f"inner_momentum must be in [0, 1), got {self.inner_momentum}")
        if self.inner_momentum and optimizer != "sgd":
            raise ValueError(
                f"inner_momentum is the momentum of inner_optimizer='sgd', got "
                f"inner_optimizer={optimizer!r}; configure another optimizer's momentum in "
                "its own class (a torch.optim.Optimizer subclass, e.g. with functools.partial)"
            )
        if not isinstance(self.keep_inner_state, bool):
            raise TypeError(
                f"keep_inner_state must be True or False, got {self.keep_inner_state!r}"
            )
        check_positive("eta", self.eta, allow_zero=True)
        check_choice("phi", self.phi, ("grad_norm", "value"))
        check_positive("delta", self.delta)

    def to_dict(self) -> dict[str, Any]:
        optimizer = self.inner_optimizer
        named = optimizer if isinstance(optimizer, str) else optimizer.__name__
        return {**super().to_dict(), "inner_optimizer": named}

    def make_inner_optimizer(self, params: list[torch.Tensor]) -> torch.optim.Optimizer:
        """The inner optimizer over ``params``."""
        if isinstance(self.inner_optimizer, str):
            kind = _INNER_OPTIMIZERS[self.inner_optimizer]
            if self.inner_momentum:
                return torch.optim.SGD(params, lr=self.inner_lr, momentum=self.inner_momentum)
            return kind(params, lr=self.inner_lr)  # type: ignore[call-arg]
        return self.inner_optimizer(params, lr=self.inner_lr)  # type: ignore[call-arg]


class BOME(Solver):
    """The BOME value-function method with the dynamic barrier.

    Built as ``BOME(game, leader_optimizer, follower_optimizer, options=None, **overrides)``
    (see ``Solver``); the options are ``BOMEOptions``. Both
    optimizers apply the joint direction ``d`` (its ``w`` and ``θ`` parts).

    Diagnostics: ``q`` (= q̂ at the current point), ``lambda``, ``grad_dot`` (⟨∇l, ∇q̂⟩),
    ``grad_q_norm`` (‖∇q̂‖), ``phi``, ``leader_loss`` (l), ``follower_loss`` (h).
    """

    Options = BOMEOptions
    options: BOMEOptions

    def init_state(self) -> None:
        #: With ``keep_inner_state``: the inner iterate's tensors and their optimizer, kept
        #: between outer steps (built at the first step).
        self._inner: tuple[list[torch.Tensor], torch.optim.Optimizer] | None = None

    def _inner_start(self) -> tuple[list[torch.Tensor], torch.optim.Optimizer]:
        """``θ̂⁰ = θ`` as fresh leaf tensors and the inner optimizer over them: a new one, or
        with ``keep_inner_state`` the kept one, its iterate reset to θ."""
        follower = self.follower_params()
        if not self.options.keep_inner_state:
            theta = [p.detach().clone().requires_grad_(True) for p in follower]
            return theta, self.options.make_inner_optimizer(theta)
        if self._inner is None:
            theta = [p.detach().clone().requires_grad_(True) for p in follower]
            self._inner = theta, self.options.make_inner_optimizer(theta)
        theta, optimizer = self._inner
        with torch.no_grad():
            for mine, p in zip(theta, follower, strict=True):
                mine.copy_(p)
        return theta, optimizer

    def state_dict(self) -> dict[str, Any]:
        """The step count and, with ``keep_inner_state``, the inner optimizer's state."""
        inner = None if self._inner is None else self._inner[1].state_dict()
        return {**super().state_dict(), "inner_optimizer": inner}

    def load_state_dict(self, state: Any) -> None:
        super().load_state_dict(state)
        saved = state.get("inner_optimizer")
        if saved is not None and not self.options.keep_inner_state:
            raise ValueError(
                "the saved state holds an inner optimizer's state (keep_inner_state=True); "
                "this BOME has keep_inner_state=False"
            )
        self._inner = None
        if saved is not None:
            _, optimizer = self._inner_start()
            optimizer.load_state_dict(saved)

    def inner_solution(self, batch: Any, follower_batch: Any = None) -> TensorTuple:
        """``θ^T``: ``T`` inner-optimizer steps on ``h(w, ·)`` from the current θ, detached.

        The leader is fixed during these steps, so the loss is evaluated on the game's
        ``follower_batch`` (for a generator game: the poisoned batch,
        computed once), or on ``follower_batch`` if given (a constant). Finiteness of the
        ``T`` losses is checked once, after the loop, so the loop never waits on the device.
        """
        theta_T = self._inner_solution(batch, follower_batch)
        self.read_floats({})  # raises if an inner loss was not finite
        return theta_T

    def _inner_solution(self, batch: Any, follower_batch: Any) -> TensorTuple:
        """``inner_solution`` with the losses' finiteness left to the step's next read."""
        w = tuple(p.detach() for p in self.leader_params())
        theta, optimizer = self._inner_start()
        if follower_batch is None:
            follower_batch = self.fixed_leader_batch(w, batch)
        for t in range(self.options.inner_steps):
            loss = self.follower_loss(w, theta, follower_batch, at=f"inner step {t}")
            for p, g in zip(theta, self.reduce(gradients(loss, theta)), strict=True):
                p.grad = g
            optimizer.step()
        return tuple(p.detach() for p in theta)

    def direction(self, batch: Any) -> tuple[TensorTuple, TensorTuple, StepInfo]:
        """The joint direction ``d = ∇l + λ∇q̂``, split into its leader and follower parts.

        The leader's work on the batch (``game.follower_batch``: for a generator game, the
        poisoned images) is done once, with grad: the inner loop reads it as a constant, and
        ``h(w, θ)`` and ``h(w, θ^T)`` share it, so one backward pass of ``h − h_T`` carries
        ``∂_x̃ h(θ) − ∂_x̃ h(θ^T)`` through the generator once. By the chain rule this is the
        same ``∇_w q̂`` as differentiating two separate generator passes.

        The inner and outer losses are checked for finiteness in the same read from the device
        as the diagnostics (``read_floats``): nothing synchronizes inside the inner loop, and
        the step's one other read is ``apply_updates``' check of the directions.
        """
        w, theta = self.leader_params(), self.follower_params()
        n_w = len(w)
        follower_batch = self.prepared_follower_batch(w, batch)
        theta_T = self._inner_solution(batch, detached(follower_batch))

        leader_loss = self.leader_loss(w, theta, batch)
        grad_l = self.reduce(gradients(leader_loss, w + theta))
        h = self.follower_loss(w, theta, follower_batch)
        h_T = self.follower_loss(w, theta_T, follower_batch, at="at the inner solution")
        # θ^T is a constant, so one backward pass of q̂ = h − h_T gives
        # ∇q̂ = (∇_w h(w, θ) − ∇_w h(w, θ^T), ∇_θ h(w, θ)).
        # Under data parallelism every gradient (and q) is averaged over ranks *before* λ is
        # computed, so that all ranks take the single-process step on the global batch.
        grad_q = self.reduce(gradients(h - h_T, w + theta))
        (q,) = self.reduce(((h - h_T).detach(),))

        grad_dot = tree_dot(grad_l, grad_q)
        grad_q_sq = tree_dot(grad_q, grad_q)
        phi = (
            self.options.eta * grad_q_sq
            if self.options.phi == "grad_norm"
            else self.options.eta * q
        )
        lam = torch.clamp((phi - grad_dot) / (grad_q_sq + self.options.delta), min=0.0)
        d = tree_add(grad_l, grad_q, alpha=lam)
        names = ("q", "lambda", "grad_dot", "grad_q_norm", "phi", "leader_loss", "follower_loss")
        values = (q, lam, grad_dot, torch.sqrt(grad_q_sq), phi, leader_loss, h)
        return d[:n_w], d[n_w:], self.read_floats(dict(zip(names, values, strict=True)))

    def step(self, batch: Any = None) -> StepInfo:
        leader_d, follower_d, info = self.direction(batch)
        self.apply_updates(
            (self.leader_optimizer, self.leader_params(), leader_d),
            (self.follower_optimizer, self.follower_params(), follower_d),
            synchronized=True,
        )
        self.steps_taken += 1
        return info
