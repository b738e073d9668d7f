"""Matrix-free linear solvers over tuples of tensors.

The implicit-function hypergradient needs ``v`` with ``H v = b``, ``H = ∇²_θθ h`` (plus
damping), available only through Hessian-vector products. Each solver here takes
``matvec: v ↦ H v`` on tuples of tensors shaped like ``b`` and returns a
:class:`LinearSolveResult` whose ``residual`` is the true relative residual
``‖H x − b‖ / ‖b‖`` (one extra product).

- :func:`conjugate_gradient`: CG (Hestenes & Stiefel 1952; Nocedal & Wright, Alg. 5.2) for
  symmetric positive-definite ``H``; stops early at ``‖r‖ ≤ tol·‖b‖``.
- :func:`normal_conjugate_gradient`: CG on the normal equations ``Hᵀ H x = Hᵀ b``, which are
  positive semi-definite for any ``H``: slower (squared conditioning) but safe where the Hessian
  is indefinite or singular.
- :func:`neumann_series`: ``x = α Σ_{k<K} (I − α H)^k b``, the truncated Neumann series of
  ``H⁻¹`` (Lorraine, Vicol, Duvenaud 2020); converges when ``0 < α < 2/λ_max`` and ``H ≻ 0``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from stackelberg.solvers.base import (
    TensorTuple,
    check_choice,
    check_int,
    check_positive,
    tree_add,
    tree_dot,
    tree_norm,
    tree_scale,
)

__all__ = [
    "LINEAR_SOLVERS",
    "LinearSolveResult",
    "conjugate_gradient",
    "neumann_series",
    "normal_conjugate_gradient",
    "solve_linear",
]

MatVec = Callable[[TensorTuple], TensorTuple]
LINEAR_SOLVERS = ("cg", "normal_cg", "neumann")


@dataclass(frozen=True)
class LinearSolveResult:
    """A solution ``x``, the iterations it took and its relative residual ``‖Hx − b‖/‖b‖``."""

    solution: TensorTuple
    iterations: int
    residual: float


def _relative_residual(matvec: MatVec, x: TensorTuple, b: TensorTuple) -> float:
    b_norm = float(tree_norm(b))
    r_norm = float(tree_norm(tree_add(matvec(x), b, alpha=-1.0)))
    return r_norm / b_norm if b_norm > 0 else r_norm


def conjugate_gradient(
    matvec: MatVec,
    b: Sequence[Tensor],
    x0: Sequence[Tensor] | None = None,
    *,
    max_iterations: int = 100,
    tol: float = 1e-10,
) -> LinearSolveResult:
    """Solve ``H x = b`` for symmetric positive-definite ``H`` by conjugate gradients.

    Stops after ``max_iterations`` or once the recursive residual falls to ``tol·‖b‖``; a
    direction of non-positive curvature (``H`` not positive definite) also stops it, and the
    returned ``residual`` then shows how far off the answer is.
    """
    b = tuple(b)
    x = tuple(torch.zeros_like(t) for t in b) if x0 is None else tuple(x0)
    r = b if x0 is None else tree_add(b, matvec(x), alpha=-1.0)
    p = r
    rs = tree_dot(r, r)
    threshold = (tol * float(tree_norm(b))) ** 2
    iterations = 0
    for _ in range(max_iterations):
        if float(rs) <= threshold:
            break
        hp = matvec(p)
        curvature = tree_dot(p, hp)
        if float(curvature) <= 0:
            break
        alpha = rs / curvature
        x = tree_add(x, p, alpha=alpha)
        r = tree_add(r, hp, alpha=-alpha)
        rs_new = tree_dot(r, r)
        p = tree_add(r, p, alpha=rs_new / rs)
        rs = rs_new
        iterations += 1
    return LinearSolveResult(x, iterations, _relative_residual(matvec, x, b))


def normal_conjugate_gradient(
    matvec: MatVec,
    b: Sequence[Tensor],
    x0: Sequence[Tensor] | None = None,
    *,
    rmatvec: MatVec | None = None,
    max_iterations: int = 100,
    tol: float = 1e-10,
) -> LinearSolveResult:
    """Solve ``H x = b`` in the least-squares sense by CG on ``Hᵀ H x = Hᵀ b``.

    ``rmatvec`` is ``v ↦ Hᵀ v``; it defaults to ``matvec`` (a Hessian is symmetric).
    """
    rmatvec = matvec if rmatvec is None else rmatvec
    b = tuple(b)
    inner = conjugate_gradient(
        lambda v: rmatvec(matvec(v)), rmatvec(b), x0, max_iterations=max_iterations, tol=tol
    )
    x = inner.solution
    return LinearSolveResult(x, inner.iterations, _relative_residual(matvec, x, b))


def neumann_series(
    matvec: MatVec,
    b: Sequence[Tensor],
    *,
    step: float,
    max_iterations: int = 100,
) -> LinearSolveResult:
    """Approximate ``H⁻¹ b`` by ``α Σ_{k=0}^{K−1} (I − α H)^k b`` with ``K = max_iterations``.

    Converges geometrically, at rate ``max |1 − α λ_i(H)|``, when ``0 < α < 2/λ_max(H)`` and
    ``H`` is positive definite.
    """
    check_positive("step", step)
    b = tuple(b)
    term = b
    x = tree_scale(b, step)
    for _ in range(max_iterations - 1):
        term = tree_add(term, matvec(term), alpha=-step)
        x = tree_add(x, term, alpha=step)
    return LinearSolveResult(x, max_iterations, _relative_residual(matvec, x, b))


def solve_linear(
    method: str,
    matvec: MatVec,
    b: Sequence[Tensor],
    *,
    max_iterations: int,
    tol: float = 1e-10,
    neumann_step: float = 0.1,
) -> LinearSolveResult:
    """Dispatch to the solver named ``method`` (one of :data:`LINEAR_SOLVERS`)."""
    check_choice("linear_solver", method, LINEAR_SOLVERS)
    check_int("max_iterations", max_iterations, 1)
    if method == "cg":
        return conjugate_gradient(matvec, b, max_iterations=max_iterations, tol=tol)
    if method == "normal_cg":
        return normal_conjugate_gradient(matvec, b, max_iterations=max_iterations, tol=tol)
    return neumann_series(matvec, b, step=neumann_step, max_iterations=max_iterations)
