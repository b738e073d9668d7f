"""Total gradient descent: the implicit-function (Stackelberg) gradient of the leader.

Where the follower is at a non-degenerate optimum, ``∇_θ h(w, θ*(w)) = 0`` defines ``θ*(w)``
implicitly and the implicit function theorem gives ``dθ*/dw = −(∇²_θθ h)⁻¹ ∇²_θw h``. The
leader's total (Stackelberg) gradient is then

    ∇_w l − ∇²_wθ h · v,    where    (∇²_θθ h + μ I) v = ∇_θ l,               (1)

evaluated at the current follower θ, with damping ``μ ≥ 0`` (μ = 0 is the exact formula;
μ > 0 regularizes a singular Hessian). This is the leader update of total gradient
descent-ascent (TGDA, Evtushenko 1974; Fiez, Chasnov, Ratliff 2020; Lu, Kamath, Yu 2022).
``v`` is found matrix-free from Hessian-vector products (double backward) by CG,
normal-equation CG or a Neumann series (``stackelberg.solvers.linsolve``), started from the
previous step's ``v`` (warm start: the follower and the leader move little between steps, so
the previous solution is close and the solve needs fewer products). After each leader
step the follower takes ``follower_steps`` gradient steps on ``h`` with its optimizer, so the
pair tracks the best-response curve; the fixed points are exactly the Stackelberg points where
(1) vanishes and ``∇_θ h = 0``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from stackelberg.checks import check_choice, check_int, check_positive
from stackelberg.game import Game
from stackelberg.solvers.autograd import gradients
from stackelberg.solvers.base import HypergradientSolver
from stackelberg.solvers.linsolve import LINEAR_SOLVERS, LinearSolver, linear_solver
from stackelberg.solvers.options import SolverOptions
from stackelberg.solvers.tree import TensorTuple, tree_add, tree_norm

__all__ = ["TotalGradient", "TotalGradientOptions"]


@dataclass(frozen=True)
class TotalGradientOptions(SolverOptions):
    """TotalGradient's options.

    Args:
        linear_solver: a ``LinearSolver`` (``cg(...)``,
            ``normal_cg(...)``, ``neumann(...)``) or, in the older form, a name: ``"cg"``
            (default; needs ``∇²_θθ h + μI ≻ 0``), ``"normal_cg"`` (any Hessian, slower) or
            ``"neumann"``, configured by the three options below.
        solver_iterations: a named linear solver's iteration budget.
        tol: relative residual at which a named CG stops early.
        neumann_step: ``α`` of a named Neumann series; it must satisfy ``α < 2/λ_max(∇²_θθ h)``.
        damping: ``μ ≥ 0`` in eq. (1).
        follower_steps: follower-optimizer steps on ``h`` after each leader step (``>= 0``).
        follower_first: take the ``follower_steps`` before the hypergradient instead of after
            the leader's step (AID's order, as in the BOME authors' AID-CG: the hypergradient
            is then taken at a follower that has just tracked the current leader).
        warm_start: start each linear solve from the previous step's solution ``v`` (default);
            ``v`` is part of ``TotalGradient.state_dict``.
    """

    linear_solver: str | LinearSolver = "cg"
    solver_iterations: int = 50
    tol: float = 1e-10
    neumann_step: float = 0.1
    damping: float = 0.0
    follower_steps: int = 1
    follower_first: bool = False
    warm_start: bool = True

    def validate(self) -> None:
        if not isinstance(self.linear_solver, LinearSolver):
            check_choice("linear_solver", self.linear_solver, LINEAR_SOLVERS)
        check_int("solver_iterations", self.solver_iterations, 1)
        check_positive("tol", self.tol, allow_zero=True)
        check_positive("neumann_step", self.neumann_step)
        check_positive("damping", self.damping, allow_zero=True)
        check_int("follower_steps", self.follower_steps, 0)
        if not isinstance(self.follower_first, bool):
            raise TypeError(f"follower_first must be True or False, got {self.follower_first!r}")
        if not isinstance(self.warm_start, bool):
            raise TypeError(f"warm_start must be True or False, got {self.warm_start!r}")

    def solver(self) -> LinearSolver:
        """The linear solver these options name or hold."""
        return linear_solver(
            self.linear_solver,
            max_iterations=self.solver_iterations,
            tol=self.tol,
            neumann_step=self.neumann_step,
        )


class TotalGradient(HypergradientSolver):
    """Implicit-function hypergradient for the leader, gradient steps for the follower.

    Built as ``TotalGradient(game, leader_optimizer, follower_optimizer, options=None,
    **overrides)`` (see ``Solver``); the options are
    ``TotalGradientOptions``.

    Diagnostics: ``leader_loss`` (where the hypergradient was taken), ``follower_loss`` (there,
    or with ``follower_steps > 0`` at the follower's last own step, beside
    ``follower_grad_norm``), ``residual`` (relative residual of (1)), ``solver_iterations``
    (used), ``matvecs`` (Hessian-vector products of the solve), ``hypergrad_norm``.
    """

    Options = TotalGradientOptions
    options: TotalGradientOptions

    def __init__(
        self,
        game: Game,
        leader_optimizer: torch.optim.Optimizer,
        follower_optimizer: torch.optim.Optimizer,
        options: TotalGradientOptions | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__(game, leader_optimizer, follower_optimizer, options, **overrides)
        self.linear_solver = self.options.solver()
        #: The last solution ``v`` of eq. (1), the next solve's start under ``warm_start``.
        self.v: TensorTuple | None = None

    @property
    def divergence_hint(self) -> str:
        return (
            "The linear solve may have failed (see the residual diagnostic): add damping for a "
            "singular Hessian, use linear_solver='normal_cg' for an indefinite one, or lower "
            "neumann_step."
        )

    def _hypergradient(self, batch: Any) -> tuple[TensorTuple, dict[str, torch.Tensor | float]]:
        w, theta, leader_loss, grad_w_l, grad_theta_l, h, grad_theta_h = self.implicit_terms(batch)
        damping = self.options.damping

        def hessian_vector(v: TensorTuple) -> TensorTuple:
            hv = gradients(grad_theta_h, theta, grad_outputs=v, retain_graph=True)
            return tree_add(hv, v, alpha=damping) if damping else hv

        start = self.v if self.options.warm_start else None
        v, solve = self.linear_solver(hessian_vector, grad_theta_l, start)
        cross = gradients(grad_theta_h, w, grad_outputs=v)
        hypergrad = tree_add(grad_w_l, cross, alpha=-1.0)
        if self.options.warm_start:
            self.v = tuple(t.detach() for t in v)
        info: dict[str, torch.Tensor | float] = {
            "leader_loss": leader_loss.detach(),
            "follower_loss": h.detach(),
            "residual": solve.residual,
            "solver_iterations": solve.iterations,
            "matvecs": solve.matvecs,
            "hypergrad_norm": tree_norm(hypergrad),
        }
        return tuple(g.detach() for g in hypergrad), info

    def hypergradient(self, batch: Any = None) -> TensorTuple:
        """The leader's hypergradient at the current point (see
        ``hypergradient``); the warm start
        ``v`` is left as it was."""
        saved = self.v
        try:
            return super().hypergradient(batch)
        finally:
            self.v = saved

    def state_dict(self) -> dict[str, Any]:
        """The step count and the warm start ``v`` (``None`` before the first solve)."""
        v = self.v
        return {**super().state_dict(), "v": None if v is None else [t.clone() for t in v]}

    def load_state_dict(self, state: Any) -> None:
        super().load_state_dict(state)
        saved = state.get("v")
        self.v = None if saved is None else self._matching("v", saved)
