"""Back-gradient: differentiate the leader's loss through ``T`` unrolled follower steps.

The follower's response is approximated by ``T`` steps of gradient descent,

    θ_{t+1} = θ_t − α ∇_θ h(w, θ_t),    t = 0, …, T−1,

and the leader descends the exact gradient of ``L(w) = l(w, θ_T(w))``. Reverse-mode
differentiation of the recursion (Domke 2012; Maclaurin, Duvenaud, Adams 2015, Alg. 2;
Muñoz-González et al. 2017, Alg. 1) starts from ``a_T = ∇_θ l(w, θ_T)``, ``g = ∇_w l(w, θ_T)``
and runs, for t = T−1, …, 0,

    g   ← g − α ∇²_wθ h(w, θ_t) a_{t+1},
    a_t = a_{t+1} − α ∇²_θθ h(w, θ_t) a_{t+1},

ending with ``∇L = g``. The three modes differ only in how ``θ_t`` is available on the way back:

- ``"store"``: autograd keeps the whole unrolled graph (exact; memory ∝ T, activations included).
- ``"checkpoint"``: the forward pass keeps the iterates ``θ_t`` only and the backward pass
  rebuilds each step's graph (exact; memory ∝ T·P, no activations).
- ``"reverse"``: only ``θ_T`` is kept; each ``θ_t`` is reconstructed by undoing the step,
  ``θ_t ≈ θ_{t+1} + α ∇_θ h(w, θ_t)``, solved by ``inversion_steps`` fixed-point iterations
  started at ``θ_{t+1}`` (one iteration is the paper's ``θ_{t+1} + α∇h(w, θ_{t+1})``).
  Memory O(P) whatever ``T``; the answer is approximate, and the distance between the
  reconstructed and the true ``θ_0`` is reported as ``reconstruction_error``.

Stochastic use: the unroll reads the follower batch of its outer step for all ``T`` steps,
and the leader's loss its own batch; the result is the exact gradient of that sampled
unroll, an unbiased estimate only of the sampled problem (truncation biases it, as
deterministically).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from stackelberg.checks import check_bool, check_choice, check_int, check_positive
from stackelberg.solvers.autograd import gradients
from stackelberg.solvers.base import HypergradientSolver
from stackelberg.solvers.options import HypergradientOptions
from stackelberg.solvers.tree import TensorTuple, tree_add, tree_norm

__all__ = ["BackGradient", "BackGradientOptions"]

MODES = ("store", "checkpoint", "reverse")


def _leaves(tensors: TensorTuple) -> TensorTuple:
    return tuple(t.detach().requires_grad_(True) for t in tensors)


@dataclass(frozen=True)
class BackGradientOptions(HypergradientOptions):
    """BackGradient's options.

    Args:
        inner_steps: ``T``, the unrolled follower steps.
        inner_lr: ``α``, the unrolled steps' learning rate.
        mode: ``"store"``, ``"checkpoint"`` or ``"reverse"`` (see the module docstring).
        warm_start: unroll from the follower's current parameters (default); if ``False``, from
            the parameters it had when the solver was built, every step (the classic
            hyperparameter-optimization setting, where ``θ_0`` is a fixed initialization; it is
            part of ``BackGradient.state_dict``).
        follower_steps: follower-optimizer steps on ``h`` after each leader step (``>= 0``);
            with ``warm_start`` they carry the follower toward its best response between steps.
        inversion_steps: fixed-point iterations per undone step in ``"reverse"`` mode.
        keep_unrolled: after the leader's step, the follower takes ``θ_T``, the unroll's last
            iterate (ITD style: the inner steps are not taken again), then its own
            ``follower_steps`` (set ``follower_steps=0`` for ITD exactly).
    """

    aliases: ClassVar[Mapping[str, str]] = {
        "iterations": "inner_steps",
        "K": "inner_steps",
        "unroll_steps": "inner_steps",
    }

    inner_steps: int = 10
    inner_lr: float = 0.1
    mode: str = "store"
    warm_start: bool = True
    follower_steps: int = 1
    inversion_steps: int = 1
    keep_unrolled: bool = False

    def validate(self) -> None:
        check_int("inner_steps", self.inner_steps, 1)
        check_positive("inner_lr", self.inner_lr)
        check_choice("mode", self.mode, MODES)
        check_bool("warm_start", self.warm_start)
        super().validate()
        check_int("inversion_steps", self.inversion_steps, 1)
        check_bool("keep_unrolled", self.keep_unrolled)


class BackGradient(HypergradientSolver):
    """Unrolled-differentiation hypergradient for the leader.

    Built as ``BackGradient(game, leader_optimizer, follower_optimizer, options=None,
    **overrides)`` (see ``Solver``); the options are
    ``BackGradientOptions``.

    Diagnostics: ``leader_loss`` (``l(w, θ_T)``), ``follower_loss`` (``h(w, θ_T)``, or with
    ``follower_steps > 0`` the follower's loss at its last own step, beside
    ``follower_grad_norm``), ``hypergrad_norm``, ``reconstruction_error`` (``"reverse"`` only).
    """

    Options = BackGradientOptions
    options: BackGradientOptions

    def init_state(self) -> None:
        # θ_0 of every unroll when not warm-starting (a copy: the follower may still move).
        self._initial_theta: TensorTuple | None = (
            None
            if self.options.warm_start
            else tuple(p.detach().clone() for p in self.follower_params())
        )

    def state_dict(self) -> dict[str, Any]:
        """The step count and, without ``warm_start``, the fixed ``θ_0`` of every unroll."""
        initial = self._initial_theta
        return {
            **super().state_dict(),
            "initial_theta": None if initial is None else [t.clone() for t in initial],
        }

    def load_state_dict(self, state: Any) -> None:
        super().load_state_dict(state)
        saved = state.get("initial_theta")
        if (saved is None) != self.options.warm_start:
            raise ValueError(
                "the saved state is of a BackGradient with warm_start="
                f"{saved is None}, this one has warm_start={self.options.warm_start}"
            )
        if saved is not None:
            self._initial_theta = self._matching("initial_theta", saved)

    @property
    def divergence_hint(self) -> str:
        if self.options.mode == "reverse":
            return (
                "Undoing many contracting steps amplifies rounding errors (see the "
                "reconstruction_error diagnostic): use mode='checkpoint', fewer inner_steps, "
                "a smaller inner_lr or float64."
            )
        return "Try a smaller inner_lr or fewer inner_steps."

    # -- the inner recursion -------------------------------------------------------------

    @staticmethod
    def _at(t: int) -> str:
        return f"unrolled step {t}"

    def _follower_gradient(
        self, w: TensorTuple, theta: TensorTuple, batch: Any, t: int, *, create_graph: bool = False
    ) -> TensorTuple:
        loss = self.follower_loss(w, theta, batch, at=self._at(t))
        return gradients(loss, theta, create_graph=create_graph)

    def _inner_step(self, w: TensorTuple, theta: TensorTuple, batch: Any, t: int) -> TensorTuple:
        """``θ_{t+1} = θ_t − α∇_θ h(w, θ_t)`` without a graph."""
        theta = _leaves(theta)
        return tuple(
            x.detach()
            for x in tree_add(
                theta, self._follower_gradient(w, theta, batch, t), -self.options.inner_lr
            )
        )

    def _step_vjp(
        self, w: TensorTuple, theta_t: TensorTuple, adjoint: TensorTuple, batch: Any, t: int
    ) -> tuple[TensorTuple, TensorTuple]:
        """``(α ∇²_wθ h a, α ∇²_θθ h a)`` at ``θ_t``: the backward pass through one step."""
        theta_t = _leaves(theta_t)
        grad = self._follower_gradient(w, theta_t, batch, t, create_graph=True)
        products = gradients(grad, w + theta_t, grad_outputs=adjoint)
        products = tuple(self.options.inner_lr * p for p in products)
        return products[: len(w)], products[len(w) :]

    def _reconstruct(
        self, w: TensorTuple, theta_next: TensorTuple, batch: Any, t: int
    ) -> TensorTuple:
        """Undo one step: solve ``θ = θ_{t+1} + α∇_θ h(w, θ)`` by fixed-point iteration."""
        theta = theta_next
        for _ in range(self.options.inversion_steps):
            theta = _leaves(theta)
            step = self._follower_gradient(w, theta, batch, t)
            theta = tuple(x.detach() for x in tree_add(theta_next, step, self.options.inner_lr))
        return theta

    def _backward(
        self,
        w: TensorTuple,
        theta_T: TensorTuple,
        history: list[TensorTuple] | None,
        batch: Any,
    ) -> tuple[TensorTuple, TensorTuple, torch.Tensor]:
        """Run the adjoint recursion; returns ``(∇L, θ_0 used, l(w, θ_T))``."""
        theta_T = _leaves(theta_T)
        leader_loss = self.leader_loss(w, theta_T, batch, at=self._at(self.options.inner_steps))
        grads = gradients(leader_loss, w + theta_T)
        hypergrad, adjoint = grads[: len(w)], grads[len(w) :]
        theta = tuple(x.detach() for x in theta_T)
        for t in reversed(range(self.options.inner_steps)):
            theta = history[t] if history is not None else self._reconstruct(w, theta, batch, t)
            cross, curvature = self._step_vjp(w, theta, adjoint, batch, t)
            hypergrad = tree_add(hypergrad, cross, alpha=-1.0)
            adjoint = tree_add(adjoint, curvature, alpha=-1.0)
        return hypergrad, theta, leader_loss.detach()

    def _hypergradient(self, batch: Any) -> tuple[TensorTuple, dict[str, torch.Tensor | float]]:
        w = self.leader_params()
        theta_0 = self._initial_theta or tuple(p.detach().clone() for p in self.follower_params())
        info: dict[str, torch.Tensor | float] = {}
        if self.options.mode == "store":
            theta = _leaves(theta_0)
            for t in range(self.options.inner_steps):
                grad = self._follower_gradient(w, theta, batch, t, create_graph=True)
                theta = tree_add(theta, grad, -self.options.inner_lr)
            leader_loss = self.leader_loss(w, theta, batch, at=self._at(self.options.inner_steps))
            hypergrad = gradients(leader_loss, w)
            info["leader_loss"] = leader_loss.detach()
            theta_T = tuple(x.detach() for x in theta)
        else:
            history: list[TensorTuple] | None = [] if self.options.mode == "checkpoint" else None
            theta_T = theta_0
            for t in range(self.options.inner_steps):
                if history is not None:
                    history.append(theta_T)
                theta_T = self._inner_step(w, theta_T, batch, t)
            hypergrad, theta_0_used, info["leader_loss"] = self._backward(
                w, theta_T, history, batch
            )
            if self.options.mode == "reverse":
                error = tree_norm(tree_add(theta_0_used, theta_0, alpha=-1.0))
                info["reconstruction_error"] = error
        with torch.no_grad():
            info["follower_loss"] = self.follower_loss(
                w, theta_T, batch, at="at the end of the unroll", requires_grad=False
            )
        info["hypergrad_norm"] = tree_norm(hypergrad)
        if self.options.keep_unrolled:
            self._handover = theta_T
        return tuple(g.detach() for g in hypergrad), info
