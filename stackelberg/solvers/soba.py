"""SOBA: a single-loop solver that amortizes the implicit-function linear system.

Dagréou, Ablin, Vaiter & Moreau, "A framework for bilevel optimization that enables stochastic
and global variance reduction algorithms", NeurIPS 2022 (Eq. 6 and Algorithm 1). Total gradient
descent (``TotalGradient``) solves ``(∇²_θθ h) v = ∇_θ l`` to
tolerance at every step; SOBA keeps ``v`` as a third variable and moves the follower, ``v``
and the leader by *one* step each, all from the same point ``(w, θ, v)``::

    D_θ = ∇_θ h(w, θ)
    D_v = (∇²_θθ h(w, θ) + μ I) v − ∇_θ l(w, θ)         (the gradient of ½ vᵀ(H + μI)v − vᵀ∇_θ l)
    D_w = ∇_w l(w, θ) − ∇²_wθ h(w, θ) v                 (eq. (1) of total_gradient with v)

    θ ← θ − ρ D_θ,    v ← v − ρ_v D_v,    w ← w − γ D_w.

``θ`` and ``w`` move by their optimizers (``ρ``, ``γ`` their learning rates, so momentum or
Adam apply); ``v`` by plain gradient descent with step ``linear_lr``. Its fixed points are
exactly those of total gradient descent: ``∇_θ h = 0``, ``v`` solving the damped system and the
total gradient vanishing, i.e. the Stackelberg points. One step costs one leader and one
follower gradient plus one Hessian-vector product, whose two blocks ``∇²_θθ h · v`` and
``∇²_wθ h · v`` come from a single double-backward pass of ``⟨∇_θ h, v⟩``.

``v`` starts at zero; ``SOBA.state_dict`` saves it so a resumed run continues exactly.

Stochastic use: made for it. Each step may draw a follower and a leader minibatch
independently; their analysis assumes unbiased estimates of the five
terms with bounded variance and steps that decrease (``O(1/√k)``); with constant steps it
settles in a noise ball, which ``SABA`` removes on finite sums.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from stackelberg.checks import check_positive
from stackelberg.solvers.autograd import gradients
from stackelberg.solvers.base import Solver, StepInfo
from stackelberg.solvers.options import SolverOptions
from stackelberg.solvers.tree import TensorTuple, tree_add, tree_norm

__all__ = ["SOBA", "SOBAOptions"]


def _detached(tensors: TensorTuple) -> TensorTuple:
    return tuple(t.detach() for t in tensors)


@dataclass(frozen=True)
class SOBAOptions(SolverOptions):
    """SOBA's options.

    Args:
        linear_lr: ``ρ_v``, the step of ``v``; by default (``None``) the follower optimizer's
            learning rate (the paper uses the same step for both). Stability needs
            ``ρ_v < 2 / λ_max(∇²_θθ h + μI)``.
        damping: ``μ ≥ 0``, added to the follower's Hessian in the system for ``v``.
    """

    linear_lr: float | None = None
    damping: float = 0.0

    def validate(self) -> None:
        if self.linear_lr is not None:
            check_positive("linear_lr", self.linear_lr)
        check_positive("damping", self.damping, allow_zero=True)


class SOBA(Solver):
    """Single-loop bilevel solver: follower, linear-system estimate ``v`` and leader move one
    step each per outer step (see the module doc).

    Built as ``SOBA(game, leader_optimizer, follower_optimizer, options=None, **overrides)``
    (see ``Solver``); the options are ``SOBAOptions``.

    Diagnostics: ``leader_loss`` and ``follower_loss`` (before the step), ``follower_grad_norm``
    ``‖D_θ‖``, ``linear_residual`` ``‖D_v‖ / ‖∇_θ l‖`` (how well ``v`` solves its system),
    ``hypergrad_norm`` ``‖D_w‖``.
    """

    Options = SOBAOptions
    options: SOBAOptions

    def init_state(self) -> None:
        linear_lr = self.options.linear_lr
        if linear_lr is None:
            linear_lr = check_positive(
                "the follower optimizer's lr (SOBA's default linear_lr)",
                self.follower_optimizer.param_groups[0]["lr"],
            )
        self.linear_lr = float(linear_lr)
        self.v: TensorTuple = tuple(torch.zeros_like(p) for p in self.follower_params())

    @property
    def divergence_hint(self) -> str:
        return (
            "Try smaller learning rates: linear_lr must stay below 2 / λ_max of the follower's "
            "Hessian, and the follower's lr too; add damping for a singular Hessian."
        )

    def directions(
        self, batch: Any = None
    ) -> tuple[TensorTuple, TensorTuple, TensorTuple, StepInfo]:
        """``(D_w, D_θ, D_v)`` at the current point (see the module doc) and diagnostics;
        changes no parameter."""
        w, theta, leader_loss, grad_w_l, grad_theta_l, h, grad_theta_h = self.implicit_terms(batch)
        second = gradients(grad_theta_h, theta + w, grad_outputs=self.v)
        hv, cross = second[: len(theta)], second[len(theta) :]
        grad_theta_h, hv, cross, grad_theta_l, grad_w_l = self._estimates(
            batch, _detached(grad_theta_h), hv, cross, grad_theta_l, grad_w_l
        )
        if self.options.damping:
            hv = tree_add(hv, self.v, alpha=self.options.damping)
        d_v = tree_add(hv, grad_theta_l, alpha=-1.0)
        d_w = tree_add(grad_w_l, cross, alpha=-1.0)
        d_theta = tuple(g.detach() for g in grad_theta_h)
        scale = tree_norm(grad_theta_l)
        info = self.read_floats(
            {
                "leader_loss": leader_loss.detach(),
                "follower_loss": h.detach(),
                "follower_grad_norm": tree_norm(d_theta),
                "linear_residual": tree_norm(d_v) / torch.clamp(scale, min=1e-30),
                "hypergrad_norm": tree_norm(d_w),
            }
        )
        return _detached(d_w), d_theta, _detached(d_v), info

    def _estimates(
        self,
        batch: Any,
        grad_theta_h: TensorTuple,
        hv: TensorTuple,
        cross: TensorTuple,
        grad_theta_l: TensorTuple,
        grad_w_l: TensorTuple,
    ) -> tuple[TensorTuple, TensorTuple, TensorTuple, TensorTuple, TensorTuple]:
        """The five terms of the directions as the step uses them: SOBA takes the batch's own
        (``SABA`` corrects them with its memory)."""
        return grad_theta_h, hv, cross, grad_theta_l, grad_w_l

    def step(self, batch: Any = None) -> StepInfo:
        d_w, d_theta, d_v, info = self.directions(batch)
        d_v = self.reduce(d_v)
        self.apply_updates(
            (self.leader_optimizer, self.leader_params(), d_w),
            (self.follower_optimizer, self.follower_params(), d_theta),
            states={"v": d_v},
        )
        self.v = tree_add(self.v, d_v, alpha=-self.linear_lr)
        self.steps_taken += 1
        return info

    def state_dict(self) -> dict[str, Any]:
        """The step count and ``v``."""
        return {**super().state_dict(), "v": [t.detach().clone() for t in self.v]}

    def load_state_dict(self, state: Any) -> None:
        """Restore ``state_dict``'s output; ``v``'s shapes must match the follower's."""
        super().load_state_dict(state)
        self.v = self._matching("v", state["v"])
