"""The matrix-free linear solvers against torch.linalg.solve."""

from __future__ import annotations

import pytest
import torch
from conftest import relative_error
from hypothesis import given, settings
from hypothesis import strategies as st

from stackelberg.solvers.linsolve import (
    CG,
    LinearSolver,
    NormalCG,
    conjugate_gradient,
    neumann_series,
    normal_conjugate_gradient,
)

F64 = torch.float64


def random_spd(n: int, condition_number: float, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=F64))
    eigenvalues = torch.logspace(
        0, torch.log10(torch.tensor(condition_number)).item(), n, dtype=F64
    )
    return (q * eigenvalues) @ q.T


def as_matvec(matrix: torch.Tensor):
    return lambda v: (matrix @ v[0],)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 30),
    condition_number=st.floats(1.0, 1e3),
    seed=st.integers(0, 2**31 - 1),
)
def test_cg_solves_random_spd_systems(n: int, condition_number: float, seed: int) -> None:
    A = random_spd(n, condition_number, seed)
    b = torch.randn(n, generator=torch.Generator().manual_seed(seed + 1), dtype=F64)
    result = conjugate_gradient(as_matvec(A), (b,), max_iterations=5 * n, tol=1e-13)
    expected = torch.linalg.solve(A, b)
    assert relative_error(result.solution[0], expected) < 1e-8
    assert result.residual < 1e-10


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 15), seed=st.integers(0, 2**31 - 1))
def test_normal_cg_solves_random_spd_systems(n: int, seed: int) -> None:
    A = random_spd(n, 20.0, seed)
    b = torch.randn(n, generator=torch.Generator().manual_seed(seed + 1), dtype=F64)
    result = normal_conjugate_gradient(as_matvec(A), (b,), max_iterations=10 * n, tol=1e-14)
    assert relative_error(result.solution[0], torch.linalg.solve(A, b)) < 1e-7


def test_normal_cg_handles_an_indefinite_matrix_where_cg_stalls() -> None:
    A = torch.diag(torch.tensor([3.0, -1.0, 0.5], dtype=F64))
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=F64, generator=torch.Generator().manual_seed(0)))
    A = q @ A @ q.T
    b = torch.tensor([1.0, 2.0, -1.0], dtype=F64)
    normal = normal_conjugate_gradient(as_matvec(A), (b,), max_iterations=50, tol=1e-14)
    assert relative_error(normal.solution[0], torch.linalg.solve(A, b)) < 1e-8
    # Plain CG may stop on negative curvature; whatever it returns, its residual is the true one
    # (its recursion is exact up to rounding).
    plain = conjugate_gradient(as_matvec(A), (b,), max_iterations=50)
    true_residual = torch.linalg.norm(A @ plain.solution[0] - b) / torch.linalg.norm(b)
    assert float(plain.residual) == pytest.approx(float(true_residual), rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("n", [1, 5, 20])
def test_neumann_series_converges_at_its_rate(n: int) -> None:
    A = random_spd(n, 4.0, seed=n)
    b = torch.ones(n, dtype=F64)
    step = 1.0 / 4.0  # λ ∈ [1, 4]: contraction factor max|1 − αλ| = 0.75
    expected = torch.linalg.solve(A, b)
    iterations = (10, 40, 160)
    errors = [
        relative_error(
            neumann_series(as_matvec(A), (b,), step=step, max_iterations=k).solution[0], expected
        )
        for k in iterations
    ]
    # x_K − x* = −(I − αA)^K x*, so the relative error is at most 0.75^K.
    for k, error in zip(iterations, errors, strict=True):
        assert error <= 0.75**k + 1e-13
    assert errors[0] > errors[1] > errors[2]


def test_solvers_work_on_tuples_of_tensors() -> None:
    A = random_spd(6, 10.0, seed=1)

    def matvec(v):
        flat = torch.cat([t.reshape(-1) for t in v])
        out = A @ flat
        return (out[:2].reshape(2, 1), out[2:])

    b = (torch.ones(2, 1, dtype=F64), torch.arange(4, dtype=F64))
    expected = torch.linalg.solve(A, torch.cat([b[0].reshape(-1), b[1]]))
    for solver in (CG(100), NormalCG(100)):
        solution, _ = solver(matvec, b)
        assert solution[0].shape == (2, 1)
        got = torch.cat([t.reshape(-1) for t in solution])
        assert relative_error(got, expected) < 1e-8


def test_cg_stops_early_and_counts_iterations() -> None:
    A = torch.diag(torch.tensor([2.0, 2.0, 2.0], dtype=F64))
    result = conjugate_gradient(as_matvec(A), (torch.ones(3, dtype=F64),), max_iterations=50)
    assert result.iterations == 1
    assert torch.allclose(result.solution[0], torch.full((3,), 0.5, dtype=F64))


def test_a_fixed_budget_cg_matches_dense_cg_and_reads_nothing_it_needs_not() -> None:
    """``tol = 0``: every iteration is taken (no residual test), and the iterates are those of
    CG written densely, step for step, from a warm start (Nocedal & Wright, Alg. 5.2)."""
    A = random_spd(6, 50.0, seed=3)
    b = torch.linspace(-1.0, 1.0, 6, dtype=F64)
    x0 = torch.full((6,), 0.1, dtype=F64)
    x, r = x0.clone(), b - A @ x0
    p, rs = r.clone(), r @ r
    for _ in range(4):
        alpha = rs / (p @ A @ p)
        x, r = x + alpha * p, r - alpha * (A @ p)
        p, rs = r + (r @ r) / rs * p, r @ r
    result = conjugate_gradient(as_matvec(A), (b,), (x0,), max_iterations=4, tol=0.0)
    assert int(result.iterations) == 4
    assert torch.allclose(result.solution[0], x, rtol=1e-12, atol=1e-14)
    true_residual = torch.linalg.norm(A @ result.solution[0] - b) / torch.linalg.norm(b)
    assert float(result.residual) == pytest.approx(float(true_residual), rel=1e-8)


def test_cg_freezes_on_non_positive_curvature_without_reading_the_device() -> None:
    """A fixed-budget CG on an indefinite matrix stops moving at the first direction of
    non-positive curvature, exactly where the early-stopping form breaks off."""
    A = torch.diag(torch.tensor([1.0, -1.0], dtype=F64))
    b = torch.tensor([1.0, 1.0], dtype=F64)  # pᵀAp = 0 on the first direction
    fixed = conjugate_gradient(as_matvec(A), (b,), max_iterations=5, tol=0.0)
    early = conjugate_gradient(as_matvec(A), (b,), max_iterations=5, tol=1e-12)
    assert int(fixed.iterations) == int(early.iterations) == 0
    assert torch.equal(fixed.solution[0], torch.zeros(2, dtype=F64))
    assert torch.equal(early.solution[0], fixed.solution[0])
    assert float(fixed.residual) == pytest.approx(1.0)


def test_unknown_method_is_named() -> None:
    with pytest.raises(ValueError, match="linear solver name must be one of"):
        LinearSolver.from_dict({"name": "lu", "max_iterations": 3})
