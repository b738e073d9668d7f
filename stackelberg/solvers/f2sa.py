"""F2SA: the fully first-order penalty method of Kwon, Kwon, Wright & Nowak (ICML 2023).

With ``l`` the leader's loss and ``h`` the follower's, F2SA replaces the bilevel problem by the
penalty ``L_λ(w, z, θ) = l(w, z) + λ (h(w, z) − h(w, θ))`` (with their ``y`` our
auxiliary ``z`` and their ``z`` our follower ``θ``). Its gradient in ``w`` at
``z ≈ z*_λ(w) = argmin_z l(w, z) + λ h(w, z)`` and ``θ ≈ θ*(w) = argmin_θ h(w, θ)`` approaches
the hypergradient with an ``O(1/λ)`` bias (their analysis; measured in ``tests/test_f2sa.py``),
using first derivatives only. Each outer step (their Algorithm 1):

    θ ← θ − γ ∇_θ h(w, θ)                          (T times: the follower's optimizer)
    z ← z − (γ/λ) (∇_z l(w, z) + λ ∇_z h(w, z))      (T times: ``inner_lr`` = γ)
    w ← w − ξ [∇_w l(w, z) + λ (∇_w h(w, z) − ∇_w h(w, θ))]   (the leader's optimizer)
    λ ← min(λ + λ_growth, λ_max)

The auxiliary's step ``γ/λ`` is theirs (``α_k = γ_k/λ_k``): it moves ``z`` on the ``λh`` part
at the follower's rate whatever ``λ``, so a growing ``λ`` never destabilizes it. They grow
``λ`` polynomially with step sizes that decay to match; here ``λ`` grows by ``λ_growth`` per
outer step up to ``λ_max`` with constant step sizes, which keeps the ``O(1/λ)`` bias bounded
by ``1/λ_max``.

Stochastic use: every gradient above may be taken on minibatches, the leader's loss on the
leader's stream and the follower's on the follower's (``sg.solve(leader_data=,
follower_data=)``); the analysis assumes unbiased gradient estimates with bounded variance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from stackelberg.checks import check_int, check_positive
from stackelberg.solvers.autograd import gradients
from stackelberg.solvers.base import Solver, StepInfo
from stackelberg.solvers.options import SolverOptions
from stackelberg.solvers.tree import TensorTuple, tree_add, tree_norm

__all__ = ["F2SA", "F2SAOptions"]


@dataclass(frozen=True)
class F2SAOptions(SolverOptions):
    """F2SA's options.

    Args:
        inner_steps: ``T``, the follower's steps and the auxiliary's per outer step (``>= 1``).
        inner_lr: ``γ``, the auxiliary's base step; it moves with ``γ/λ`` on ``l + λh``.
        lambda_init: ``λ`` at the first step (``> 0``).
        lambda_growth: added to ``λ`` after every outer step (``>= 0``).
        lambda_max: the largest ``λ`` (``>= lambda_init``); the hypergradient's bias is
            ``O(1/λ)``.
    """

    inner_steps: int = 10
    inner_lr: float = 0.1
    lambda_init: float = 1.0
    lambda_growth: float = 1.0
    lambda_max: float = 100.0

    def validate(self) -> None:
        check_int("inner_steps", self.inner_steps, 1)
        check_positive("inner_lr", self.inner_lr)
        check_positive("lambda_init", self.lambda_init)
        check_positive("lambda_growth", self.lambda_growth, allow_zero=True)
        check_positive("lambda_max", self.lambda_max)
        if self.lambda_max < self.lambda_init:
            raise ValueError(
                f"lambda_max ({self.lambda_max}) must be >= lambda_init ({self.lambda_init})"
            )


class F2SA(Solver):
    """The fully first-order penalty method (see the module doc): no Hessian-vector product.

    Built as ``F2SA(game, leader_optimizer, follower_optimizer, options=None, **overrides)``
    (see ``Solver``); the options are ``F2SAOptions``. The follower's optimizer takes its
    ``T`` steps on ``h``; the auxiliary ``z`` (shaped like the follower's parameters, started
    at them) and ``λ`` are the solver's own state, in ``state_dict``.

    Diagnostics: ``leader_loss`` (``l(w, z)``), ``follower_loss`` (``h(w, θ)`` at the last
    follower step), ``penalty`` (``h(w, z) − h(w, θ) ≥ 0`` at a solved ``θ``), ``lambda``,
    ``hypergrad_norm``, ``follower_grad_norm``.
    """

    Options = F2SAOptions
    options: F2SAOptions

    def init_state(self) -> None:
        #: The auxiliary ``z ≈ argmin l + λh``, started at the follower's parameters.
        self.z: TensorTuple = tuple(p.detach().clone() for p in self.follower_params())
        #: The penalty weight of the next step.
        self.penalty_weight = float(self.options.lambda_init)

    @property
    def divergence_hint(self) -> str:
        return (
            "Try smaller learning rates: inner_lr must stay below 2 / λ_max of the follower's "
            "Hessian, and the leader's lr must shrink as λ grows (lower lambda_max)."
        )

    def _auxiliary_steps(self, w: TensorTuple, batch: Any, weight: float) -> TensorTuple:
        """``T`` steps of ``z`` on ``l(w, ·) + λ h(w, ·)`` with step ``γ/λ``, ``w`` fixed."""
        follower_batch = self.fixed_leader_batch(w, batch)
        step = self.options.inner_lr / weight
        z = self.z
        for t in range(self.options.inner_steps):
            z = tuple(p.detach().requires_grad_(True) for p in z)
            at = f"auxiliary step {t}"
            objective = self.leader_loss(w, z, batch, at=at) + weight * self.follower_loss(
                w, z, follower_batch, at=at
            )
            z = tree_add(z, self.reduce(gradients(objective, z)), alpha=-step)
        return tuple(p.detach() for p in z)

    def step(self, batch: Any = None) -> StepInfo:
        weight = self.penalty_weight
        follower = self._follower_steps(batch, self.options.inner_steps)
        w = self.leader_params()
        z = self._auxiliary_steps(tuple(p.detach() for p in w), batch, weight)
        theta = tuple(p.detach() for p in self.follower_params())
        follower_batch = self.prepared_follower_batch(w, batch)
        # l(w, z) may reach w only through z (hyper-cleaning): its ∇_w is then zero.
        leader_loss = self.leader_loss(w, z, batch, requires_grad=False)
        penalty = self.follower_loss(w, z, follower_batch) - self.follower_loss(
            w, theta, follower_batch
        )
        grad_l = self.reduce(gradients(leader_loss, w))
        grad_penalty = self.reduce(gradients(penalty, w))
        direction = tree_add(grad_l, grad_penalty, alpha=weight)
        self.apply_updates((self.leader_optimizer, w, direction), states={"z": z})
        self.z = z
        self.penalty_weight = min(weight + self.options.lambda_growth, self.options.lambda_max)
        self.steps_taken += 1
        values: dict[str, Tensor | float] = {
            "leader_loss": leader_loss.detach(),
            "penalty": penalty.detach(),
            "lambda": weight,
            "hypergrad_norm": tree_norm(direction),
            **follower,
        }
        return self.read_floats(values)

    def state_dict(self) -> dict[str, Any]:
        """The step count, the auxiliary ``z`` and the next step's ``λ``."""
        return {
            **super().state_dict(),
            "z": [t.detach().clone() for t in self.z],
            "lambda": self.penalty_weight,
        }

    def load_state_dict(self, state: Any) -> None:
        """Restore ``state_dict``'s output; ``z``'s shapes must match the follower's."""
        super().load_state_dict(state)
        self.z = self._matching("z", state["z"])
        self.penalty_weight = float(state["lambda"])
