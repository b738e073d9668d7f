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

Stochastic use: the Hessian-vector products, ``∇_θ l`` and the follower steps may read
minibatches (each loss its own stream); solving (1) on a sampled Hessian is the stochastic
AID estimate, biased by the solve's error and by the inverse of a sampled matrix. With
follower minibatches it is the fastest accurate cleaner measured on the BOME protocol
(``docs/results/hyper-cleaning/``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import InitVar, dataclass
from typing import Any

import torch

from stackelberg.checks import check_bool, check_choice, check_positive
from stackelberg.solvers.autograd import gradients
from stackelberg.solvers.base import HypergradientSolver
from stackelberg.solvers.linsolve import CG, LINEAR_SOLVERS, LinearSolver
from stackelberg.solvers.options import HypergradientOptions
from stackelberg.solvers.tree import TensorTuple, tree_add, tree_norm

__all__ = ["TotalGradient", "TotalGradientOptions"]


#: ``CG(50, 1e-10)``: a frozen record, safe to share as the default.
DEFAULT_LINEAR_SOLVER = CG()
#: The 0.1 names of a linear solver's fields, and the field each sets now.
_LEGACY_FIELDS = {"solver_iterations": "max_iterations", "tol": "tol", "neumann_step": "step"}


@dataclass(frozen=True)
class TotalGradientOptions(HypergradientOptions):
    """TotalGradient's options.

    Args:
        linear_solver: the solver of eq. (1), an object: ``CG(max_iterations, tol)`` (default
            ``CG(50, 1e-10)``; needs ``∇²_θθ h + μI ≻ 0``), ``NormalCG(...)`` (any Hessian,
            slower) or ``Neumann(step, max_iterations)`` (``α = step < 2/λ_max``; bounded on a
            network's indefinite Hessian). Its ``to_dict()`` form is read back too.
        damping: ``μ ≥ 0`` in eq. (1).
        follower_steps: follower-optimizer steps on ``h`` after each leader step (``>= 0``).
        follower_first: take the ``follower_steps`` before the hypergradient instead of after
            the leader's step (AID's order, as in the BOME authors' AID-CG: the hypergradient
            is then taken at a follower that has just tracked the current leader).
        warm_start: start each linear solve from the previous step's solution ``v`` (default);
            ``v`` is part of ``TotalGradient.state_dict``.
        solver_iterations: deprecated (0.1): the linear solver's ``max_iterations``, set on
            ``linear_solver`` with a ``DeprecationWarning``.
        tol: deprecated (0.1): the linear solver's ``tol``, likewise; refused for
            ``Neumann``, which has none.
        neumann_step: deprecated (0.1): the linear solver's ``step``, likewise; refused for
            ``CG`` and ``NormalCG``. A name (``"cg"``, ``"normal_cg"``, ``"neumann"``) in
            place of the object also still works, with a warning, for one release.
    """

    linear_solver: LinearSolver = DEFAULT_LINEAR_SOLVER
    damping: float = 0.0
    follower_steps: int = 1
    follower_first: bool = False
    warm_start: bool = True
    solver_iterations: InitVar[int | None] = None
    tol: InitVar[float | None] = None
    neumann_step: InitVar[float | None] = None

    def __post_init__(
        self, solver_iterations: int | None, tol: float | None, neumann_step: float | None
    ) -> None:
        legacy = {"solver_iterations": solver_iterations, "tol": tol, "neumann_step": neumann_step}
        object.__setattr__(self, "linear_solver", _linear_solver(self.linear_solver, legacy))
        self.validate()

    @classmethod
    def accepted(cls) -> tuple[str, ...]:
        return (*super().accepted(), *_LEGACY_FIELDS)

    def validate(self) -> None:
        check_positive("damping", self.damping, allow_zero=True)
        super().validate()
        check_bool("follower_first", self.follower_first)
        check_bool("warm_start", self.warm_start)


def _linear_solver(spec: Any, legacy: dict[str, Any]) -> LinearSolver:
    """``spec`` as a ``LinearSolver``, with the 0.1 field names in ``legacy`` applied."""
    if isinstance(spec, str):
        check_choice("linear_solver", spec, LINEAR_SOLVERS)
        warnings.warn(
            f"linear_solver={spec!r} is deprecated; pass the object, e.g. "
            f"{LinearSolver.from_dict({'name': spec})!r}",
            DeprecationWarning,
            stacklevel=5,
        )
        spec = LinearSolver.from_dict({"name": spec})
    elif isinstance(spec, Mapping):
        spec = LinearSolver.from_dict(spec)
    elif not isinstance(spec, LinearSolver):
        raise TypeError(
            "linear_solver must be a LinearSolver (CG(...), NormalCG(...), Neumann(...)), got "
            f"{type(spec).__name__} ({spec!r})"
        )
    given = {k: v for k, v in legacy.items() if v is not None}
    if not given:
        return spec
    changes = {_LEGACY_FIELDS[k]: v for k, v in given.items()}
    warnings.warn(
        f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} deprecated; set "
        f"{', '.join(changes)} on the linear solver: {spec.replace(**changes)!r}",
        DeprecationWarning,
        stacklevel=5,
    )
    return spec.replace(**changes)


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

    @property
    def follower_first(self) -> bool:
        return self.options.follower_first

    def init_state(self) -> None:
        self.linear_solver = self.options.linear_solver
        #: The last solution ``v`` of eq. (1), the next solve's start under ``warm_start``.
        self.v: TensorTuple | None = None

    @property
    def divergence_hint(self) -> str:
        return (
            "The linear solve may have failed (see the residual diagnostic): add damping for a "
            "singular Hessian, linear_solver=NormalCG(...) for an indefinite one, or "
            "Neumann(step) with a small step on a network follower."
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
