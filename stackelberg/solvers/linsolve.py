"""Matrix-free linear solvers over tuples of tensors.

The implicit-function hypergradient needs ``v`` with ``H v = b``, ``H = ∇²_θθ h`` (plus
damping), available only through Hessian-vector products. Each solver here takes
``matvec: v ↦ H v`` on tuples of tensors shaped like ``b`` and returns a
``LinearSolveResult`` whose ``residual`` is the relative residual ``‖H x − b‖ / ‖b‖``
(CG's recursive one; the true one, for one extra product, from the other two). Iterations and
residual are 0-d tensors left on the device, so a solve with a fixed budget never waits for it.

- ``conjugate_gradient``: CG (Hestenes & Stiefel 1952; Nocedal & Wright, Alg. 5.2) for
  symmetric positive-definite ``H``; stops early at ``‖r‖ ≤ tol·‖b‖``.
- ``normal_conjugate_gradient``: CG on the normal equations ``Hᵀ H x = Hᵀ b``, which are
  positive semi-definite for any ``H``: slower (squared conditioning) but safe where the Hessian
  is indefinite or singular.
- ``neumann_series``: ``x = α Σ_{k<K} (I − α H)^k b``, the truncated Neumann series of
  ``H⁻¹`` (Lorraine, Vicol, Duvenaud 2020); converges when ``0 < α < 2/λ_max`` and ``H ≻ 0``.

One way to name each: the classes ``CG``, ``NormalCG`` and ``Neumann``, small frozen records
that check their own fields when built (as Lineax's solvers do) and are callable,
``solver(matvec, b, x0) -> (x, info)``; ``x0`` warm-starts the solve (``TotalGradient`` passes
the previous step's solution). ``LinearSolver.from_dict`` reads back what ``to_dict`` wrote.
The factories ``cg()``, ``normal_cg()``, ``neumann()`` of 0.1 still work, with a
``DeprecationWarning``.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor

from stackelberg.checks import check_choice, check_int, check_known, check_positive
from stackelberg.solvers.tree import TensorTuple, tree_add, tree_dot, tree_norm, tree_scale

__all__ = [
    "CG",
    "LINEAR_SOLVERS",
    "LinearSolveInfo",
    "LinearSolveResult",
    "LinearSolver",
    "Neumann",
    "NormalCG",
    "conjugate_gradient",
    "neumann_series",
    "normal_conjugate_gradient",
]

MatVec = Callable[[TensorTuple], TensorTuple]


@dataclass(frozen=True)
class LinearSolveResult:
    """A solution ``x``, the iterations it took and its relative residual ``‖Hx − b‖/‖b‖``
    (0-d tensors on the solution's device: ``float()`` or ``int()`` reads them)."""

    solution: TensorTuple
    iterations: Tensor
    residual: Tensor


def _relative(r_norm: Tensor, b: TensorTuple) -> Tensor:
    """``r_norm / ‖b‖``, or ``r_norm`` itself for ``b = 0``, computed on the device."""
    b_norm = tree_norm(b)
    return r_norm / torch.where(b_norm > 0, b_norm, torch.ones_like(b_norm))


def _relative_residual(matvec: MatVec, x: TensorTuple, b: TensorTuple) -> Tensor:
    return _relative(tree_norm(tree_add(matvec(x), b, alpha=-1.0)), b)


def conjugate_gradient(
    matvec: MatVec,
    b: Sequence[Tensor],
    x0: Sequence[Tensor] | None = None,
    *,
    max_iterations: int = 100,
    tol: float = 1e-10,
) -> LinearSolveResult:
    """Solve ``H x = b`` for symmetric positive-definite ``H`` by conjugate gradients
    (Nocedal & Wright, Alg. 5.2).

    Stops after ``max_iterations``, or once the residual falls to ``tol·‖b‖`` when ``tol > 0``
    (a test read from the device every iteration). A direction of non-positive curvature
    (``H`` not positive definite) freezes the iterate where it is; the returned ``residual``
    then shows how far off it is. With ``tol = 0`` the solve reads nothing from the device: a
    fixed budget, the curvature test applied on the device.

    The residual reported is CG's recursive one, ``r_k = r_{k−1} − α_k H p_k``: equal to
    ``b − H x_k`` in exact arithmetic (Nocedal & Wright, Alg. 5.2), so no product is spent on it.
    """
    b = tuple(b)
    x = tuple(torch.zeros_like(t) for t in b) if x0 is None else tuple(x0)
    r = b if x0 is None else tree_add(b, matvec(x), alpha=-1.0)
    p = r
    rs = tree_dot(r, r)
    threshold = (tol * float(tree_norm(b))) ** 2 if tol > 0 else None
    active = torch.ones((), dtype=torch.bool, device=rs.device)
    iterations = torch.zeros((), dtype=torch.int64, device=rs.device)
    zero = torch.zeros((), dtype=rs.dtype, device=rs.device)
    for _ in range(max_iterations):
        if threshold is not None and float(rs) <= threshold:
            break
        hp = matvec(p)
        curvature = tree_dot(p, hp)
        active = active & (curvature > 0)
        alpha = torch.where(active, rs / curvature, zero)
        x = tree_add(x, p, alpha=alpha)
        r = tree_add(r, hp, alpha=-alpha)
        rs_new = tree_dot(r, r)
        p = tree_add(r, p, alpha=torch.where(active, rs_new / rs, zero))
        rs = rs_new
        iterations = iterations + active.to(torch.int64)
        if threshold is not None and not bool(active):
            break
    return LinearSolveResult(x, iterations, _relative(torch.sqrt(rs), b))


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
    x0: Sequence[Tensor] | None = None,
    *,
    step: float,
    max_iterations: int = 100,
) -> LinearSolveResult:
    """Approximate ``H⁻¹ b`` by ``α Σ_{k=0}^{K−1} (I − α H)^k b`` with ``K = max_iterations``;
    from a start ``x0``, by ``x0 + α Σ_k (I − α H)^k (b − H x0)`` (the same series on the
    residual, so a good start needs fewer terms).

    Converges geometrically, at rate ``max |1 − α λ_i(H)|``, when ``0 < α < 2/λ_max(H)`` and
    ``H`` is positive definite.
    """
    check_positive("step", step)
    b = tuple(b)
    term = b if x0 is None else tree_add(b, matvec(tuple(x0)), alpha=-1.0)
    x = tree_scale(term, step) if x0 is None else tree_add(tuple(x0), term, alpha=step)
    for _ in range(max_iterations - 1):
        term = tree_add(term, matvec(term), alpha=-step)
        x = tree_add(x, term, alpha=step)
    iterations = torch.full((), max_iterations, dtype=torch.int64, device=x[0].device)
    return LinearSolveResult(x, iterations, _relative_residual(matvec, x, b))


class LinearSolveInfo(NamedTuple):
    """What a ``LinearSolver`` reports: iterations taken and the relative residual
    ``‖Hx − b‖/‖b‖`` (0-d tensors on the device, see ``LinearSolveResult``), and the
    Hessian-vector products used (a warm start's first residual and a residual check included)."""

    iterations: Tensor
    matvecs: int
    residual: Tensor


@dataclass(frozen=True)
class LinearSolver:
    """Base of the configured linear solvers: ``solver(matvec, b, x0=None) -> (x, info)``.

    Subclasses are frozen dataclasses that check their fields in ``__post_init__`` and set
    ``name``, the key of their ``to_dict()`` form.
    """

    name: ClassVar[str] = ""

    def __call__(
        self, matvec: MatVec, b: Sequence[Tensor], x0: Sequence[Tensor] | None = None
    ) -> tuple[TensorTuple, LinearSolveInfo]:
        counted, count = _counting(matvec)
        result = self._solve(counted, b, x0)
        return result.solution, LinearSolveInfo(result.iterations, count[0], result.residual)

    def _solve(
        self, matvec: MatVec, b: Sequence[Tensor], x0: Sequence[Tensor] | None
    ) -> LinearSolveResult:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """The solver's name and fields (JSON-ready): ``{"name": "cg", "max_iterations": 50,
        "tol": 1e-10}``."""
        return {"name": self.name, **dataclasses.asdict(self)}

    def replace(self, **changes: Any) -> LinearSolver:
        """A copy with ``changes``, checked like a new solver; a field this solver does not
        have is refused with the ones it has."""
        fields = [f.name for f in dataclasses.fields(self)]
        check_known(type(self).__name__, changes, fields, kind="field")
        return dataclasses.replace(self, **changes)

    @staticmethod
    def from_dict(spec: Mapping[str, Any]) -> LinearSolver:
        """The solver ``to_dict`` described: ``{"name": ..., **fields}``."""
        fields = dict(spec)
        name = fields.pop("name", None)
        check_choice("linear solver name", name, LINEAR_SOLVERS)
        return _BY_NAME[name](**fields)


def _counting(matvec: MatVec) -> tuple[MatVec, list[int]]:
    count = [0]

    def counted(v: TensorTuple) -> TensorTuple:
        count[0] += 1
        return matvec(v)

    return counted, count


@dataclass(frozen=True)
class _ConjugateGradients(LinearSolver):
    """The fields both CG solvers have, checked once."""

    max_iterations: int = 50
    tol: float = 1e-10

    def __post_init__(self) -> None:
        check_int("max_iterations", self.max_iterations, 1)
        object.__setattr__(self, "tol", check_positive("tol", self.tol, allow_zero=True))


@dataclass(frozen=True)
class CG(_ConjugateGradients):
    """Conjugate gradients (``conjugate_gradient``) for ``H ≻ 0``: at most
    ``max_iterations`` iterations, stopping at a relative residual of ``tol`` (``tol = 0``:
    always the full budget, with no read from the device)."""

    name: ClassVar[str] = "cg"

    def _solve(self, matvec: MatVec, b: Sequence[Tensor], x0: Any) -> LinearSolveResult:
        return conjugate_gradient(matvec, b, x0, max_iterations=self.max_iterations, tol=self.tol)


@dataclass(frozen=True)
class NormalCG(_ConjugateGradients):
    """CG on the normal equations (``normal_conjugate_gradient``), for any ``H``: safe where
    the Hessian is indefinite or singular, at twice the products per iteration and squared
    conditioning (fields as ``CG``'s)."""

    name: ClassVar[str] = "normal_cg"

    def _solve(self, matvec: MatVec, b: Sequence[Tensor], x0: Any) -> LinearSolveResult:
        return normal_conjugate_gradient(
            matvec, b, x0, max_iterations=self.max_iterations, tol=self.tol
        )


@dataclass(frozen=True)
class Neumann(LinearSolver):
    """The truncated Neumann series (``neumann_series``) with ``α = step`` and
    ``max_iterations`` terms; converges for ``0 < α < 2/λ_max(H)`` and ``H ≻ 0``, and with a
    small ``α`` stays bounded where CG does not (a network's Hessian away from a minimum)."""

    step: float = 0.1
    max_iterations: int = 50
    name: ClassVar[str] = "neumann"

    def __post_init__(self) -> None:
        object.__setattr__(self, "step", check_positive("step", self.step))
        check_int("max_iterations", self.max_iterations, 1)

    def _solve(self, matvec: MatVec, b: Sequence[Tensor], x0: Any) -> LinearSolveResult:
        return neumann_series(matvec, b, x0, step=self.step, max_iterations=self.max_iterations)


_BY_NAME: dict[str, type[LinearSolver]] = {c.name: c for c in (CG, NormalCG, Neumann)}
#: The names ``to_dict`` writes (and, deprecated, ``TotalGradient(linear_solver=...)`` takes).
LINEAR_SOLVERS = tuple(_BY_NAME)


def _deprecated_factory(cls: type[LinearSolver], old: str) -> Callable[..., LinearSolver]:
    def factory(*args: Any, **kwargs: Any) -> LinearSolver:
        warnings.warn(
            f"{old}() is deprecated; use {cls.__name__}(...), the same fields",
            DeprecationWarning,
            stacklevel=2,
        )
        return cls(*args, **kwargs)

    factory.__name__ = factory.__qualname__ = old
    factory.__doc__ = f"Deprecated: ``{cls.__name__}(...)``."
    return factory


cg = _deprecated_factory(CG, "cg")
normal_cg = _deprecated_factory(NormalCG, "normal_cg")
neumann = _deprecated_factory(Neumann, "neumann")
