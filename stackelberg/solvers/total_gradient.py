"""Total gradient descent: the implicit-function (Stackelberg) gradient of the leader.

Where the follower is at a non-degenerate optimum, ``∇_θ h(w, θ*(w)) = 0`` defines ``θ*(w)``
implicitly and the implicit function theorem gives ``dθ*/dw = −(∇²_θθ h)⁻¹ ∇²_θw h``. The
leader's total (Stackelberg) gradient is then

    ∇_w l − ∇²_wθ h · v,    where    (∇²_θθ h + μ I) v = ∇_θ l,               (1)

evaluated at the current follower θ, with damping ``μ ≥ 0`` (μ = 0 is the exact formula;
μ > 0 regularizes a singular Hessian). This is the leader update of total gradient
descent-ascent (TGDA, Evtushenko 1974; Fiez, Chasnov, Ratliff 2020; Lu, Kamath, Yu 2022).
``v`` is found matrix-free from Hessian-vector products (double backward) by CG,
normal-equation CG or a Neumann series (:mod:`stackelberg.solvers.linsolve`). After each leader
step the follower takes ``follower_steps`` gradient steps on ``h`` with its optimizer, so the
pair tracks the best-response curve; the fixed points are exactly the Stackelberg points where
(1) vanishes and ``∇_θ h = 0``.
"""

from __future__ import annotations

from typing import Any

import torch

from stackelberg.game import Game
from stackelberg.solvers.base import (
    HypergradientSolver,
    StepInfo,
    TensorTuple,
    check_choice,
    check_int,
    check_positive,
    gradients,
    tree_add,
    tree_norm,
)
from stackelberg.solvers.linsolve import LINEAR_SOLVERS, solve_linear

__all__ = ["TotalGradient"]


class TotalGradient(HypergradientSolver):
    """Implicit-function hypergradient for the leader, gradient steps for the follower.

    Args:
        game, leader_optimizer, follower_optimizer: see :class:`~stackelberg.solvers.Solver`.
        linear_solver: ``"cg"`` (default; needs ``∇²_θθ h + μI ≻ 0``), ``"normal_cg"`` (any
            Hessian, slower) or ``"neumann"``.
        solver_iterations: the linear solver's iteration budget.
        damping: ``μ ≥ 0`` in eq. (1).
        follower_steps: follower-optimizer steps on ``h`` after each leader step (``>= 0``).
        tol: relative residual at which CG stops early.
        neumann_step: ``α`` of the Neumann series; it must satisfy ``α < 2/λ_max(∇²_θθ h)``.

    Diagnostics: ``leader_loss`` (where the hypergradient was taken), ``follower_loss`` (there,
    or with ``follower_steps > 0`` at the follower's last own step, beside
    ``follower_grad_norm``), ``residual`` (relative residual of (1)), ``solver_iterations``
    (used), ``hypergrad_norm``.
    """

    def __init__(
        self,
        game: Game,
        leader_optimizer: torch.optim.Optimizer,
        follower_optimizer: torch.optim.Optimizer,
        *,
        linear_solver: str = "cg",
        solver_iterations: int = 50,
        damping: float = 0.0,
        follower_steps: int = 1,
        tol: float = 1e-10,
        neumann_step: float = 0.1,
    ) -> None:
        super().__init__(game, leader_optimizer, follower_optimizer)
        self.linear_solver = check_choice("linear_solver", linear_solver, LINEAR_SOLVERS)
        self.solver_iterations = check_int("solver_iterations", solver_iterations, 1)
        self.damping = check_positive("damping", damping, allow_zero=True)
        self.follower_steps = check_int("follower_steps", follower_steps, 0)
        self.tol = check_positive("tol", tol, allow_zero=True)
        self.neumann_step = check_positive("neumann_step", neumann_step)

    @property
    def divergence_hint(self) -> str:
        return (
            "The linear solve may have failed (see the residual diagnostic): add damping for a "
            "singular Hessian, use linear_solver='normal_cg' for an indefinite one, or lower "
            "neumann_step."
        )

    def _hypergradient(self, batch: Any) -> tuple[TensorTuple, StepInfo]:
        w, theta, leader_loss, grad_w_l, grad_theta_l, h, grad_theta_h = self.implicit_terms(batch)

        def hessian_vector(v: TensorTuple) -> TensorTuple:
            hv = gradients(grad_theta_h, theta, grad_outputs=v, retain_graph=True)
            return tree_add(hv, v, alpha=self.damping) if self.damping else hv

        result = solve_linear(
            self.linear_solver,
            hessian_vector,
            grad_theta_l,
            max_iterations=self.solver_iterations,
            tol=self.tol,
            neumann_step=self.neumann_step,
        )
        cross = gradients(grad_theta_h, w, grad_outputs=result.solution)
        hypergrad = tree_add(grad_w_l, cross, alpha=-1.0)
        info = {
            "leader_loss": float(leader_loss.detach()),
            "follower_loss": float(h.detach()),
            "residual": result.residual,
            "solver_iterations": float(result.iterations),
            "hypergrad_norm": float(tree_norm(hypergrad)),
        }
        return tuple(g.detach() for g in hypergrad), info
