"""The solver core's contract: one registry, frozen option records, exact state round trips,
linear solvers as objects with warm starts."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from conftest import make_solver, relative_error

import stackelberg as sg
from stackelberg.games import toys
from stackelberg.solvers import (
    CG,
    SOLVERS,
    BOMEOptions,
    LinearSolver,
    Neumann,
    NormalCG,
    TotalGradientOptions,
    make,
    options_for,
)

F64 = torch.float64

#: (registry name, options) of every solver and of the variants with extra state.
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "gda": ("gda", {"alternating": True}),
    "bome": ("bome", {"inner_steps": 5, "inner_lr": 0.3, "inner_optimizer": "adam"}),
    "backgradient": ("backgradient", {"inner_steps": 4, "inner_lr": 0.3}),
    "backgradient-cold": ("backgradient", {"inner_steps": 4, "inner_lr": 0.3, "warm_start": False}),
    "backgradient-reverse": (
        "backgradient",
        {"inner_steps": 4, "inner_lr": 0.3, "mode": "reverse"},
    ),
    # The warm start carries v.
    "total_gradient": ("total_gradient", {"linear_solver": CG(max_iterations=2)}),
    "total_gradient-neumann": (
        "total_gradient",
        {"linear_solver": Neumann(step=0.3, max_iterations=3)},
    ),
    "soba": ("soba", {}),
    "f2sa": ("f2sa", {"inner_steps": 3, "inner_lr": 0.3, "lambda_growth": 2.0}),  # z and λ
    "saba": ("saba", {}),  # v and the memory tables (one block without data)
}


def _build(name: str, options: dict[str, Any], seed: int) -> tuple[sg.Game, Any, list]:
    """A fresh T1 game whose players start at a ``seed``-dependent point, Adam and SGD with
    momentum (optimizers with state), and the solver."""
    torch.manual_seed(seed)
    game = toys.QuadraticGame.random(
        4,
        leader_init=torch.randn(4, dtype=F64),
        follower_init=torch.randn(4, dtype=F64),
        dtype=F64,
    )
    leader_opt = torch.optim.Adam(game.leader.parameters(), lr=0.05)
    follower_opt = torch.optim.SGD(game.follower.parameters(), lr=0.2, momentum=0.5)
    return game, make(name, game, leader_opt, follower_opt, **options), [leader_opt, follower_opt]


@pytest.mark.parametrize("case", list(CASES))
def test_five_steps_saved_and_loaded_into_a_fresh_build_equal_ten_steps(
    case: str, tmp_path
) -> None:
    name, options = CASES[case]
    game, solver, optimizers = _build(name, options, seed=0)
    for _ in range(10):
        solver.step()
    expected = [p.detach().clone() for p in game.parameters()]

    game, solver, optimizers = _build(name, options, seed=0)
    for _ in range(5):
        solver.step()
    path = tmp_path / "state.pt"
    torch.save(
        {
            "game": game.state_dict(),
            "optimizers": [o.state_dict() for o in optimizers],
            "solver": solver.state_dict(),
        },
        path,
    )
    game, solver, optimizers = _build(name, options, seed=1)  # another start, other RNG
    state = torch.load(path, weights_only=True)
    game.load_state_dict(state["game"])
    for optimizer, saved in zip(optimizers, state["optimizers"], strict=True):
        optimizer.load_state_dict(saved)
    solver.load_state_dict(state["solver"])
    assert solver.steps_taken == 5
    for _ in range(5):
        solver.step()
    for p, q in zip(game.parameters(), expected, strict=True):
        assert torch.allclose(p.detach(), q, atol=1e-12, rtol=0), case


def test_the_state_that_is_not_in_the_parameters_matters() -> None:
    """Without their state, a cold BackGradient and a warm-started TotalGradient resume
    elsewhere: the round trip above is not passing by accident."""
    for case in ("backgradient-cold", "total_gradient"):
        name, options = CASES[case]
        game, solver, _ = _build(name, options, seed=0)
        for _ in range(5):
            solver.step()
        saved = solver.state_dict()
        reference = solver.hypergradient()
        fresh_game, fresh, _ = _build(name, options, seed=1)
        fresh_game.load_state_dict(game.state_dict())
        assert relative_error(fresh.hypergradient()[0], reference[0]) > 1e-6, case
        fresh.load_state_dict(saved)
        assert relative_error(fresh.hypergradient()[0], reference[0]) < 1e-12, case


def test_loading_checks_the_solver_and_the_shapes() -> None:
    _, bome, _ = _build("bome", {}, seed=0)
    _, soba, _ = _build("soba", {}, seed=0)
    with pytest.raises(ValueError, match=r"saved by BOME on a .*; this is SOBA on a "):
        soba.load_state_dict(bome.state_dict())
    with pytest.raises(ValueError, match=r"shapes \[\(3,\)\]; this .*'s follower has \[\(4,\)\]"):
        soba.load_state_dict({"solver": "SOBA", "steps_taken": 0, "v": [torch.zeros(3)]})
    _, cold, _ = _build(*CASES["backgradient-cold"], seed=0)
    _, warm, _ = _build(*CASES["backgradient"], seed=0)
    with pytest.raises(ValueError, match="warm_start=True, this one has warm_start=False"):
        cold.load_state_dict(warm.state_dict())


# -- the registry and the option records -----------------------------------------------------


def test_make_builds_every_solver_by_name_with_its_option_record() -> None:
    game = toys.QuadraticGame.instance(dtype=F64)
    opts = (
        torch.optim.SGD(game.leader.parameters(), lr=0.1),
        torch.optim.SGD(game.follower.parameters(), lr=0.1),
    )
    for name, cls in SOLVERS.items():
        solver = make(name, game, *opts)
        assert type(solver) is cls and solver.options == cls.Options()
    record = BOMEOptions(inner_steps=3, eta=1.0)
    solver = make("bome", game, *opts, record, inner_lr=0.2)
    assert solver.options == BOMEOptions(inner_steps=3, eta=1.0, inner_lr=0.2)
    assert record.inner_lr == 0.01  # records are values: the override made a new one
    assert solver.options.to_dict()["inner_steps"] == 3


def test_bad_names_and_options_are_refused_in_one_line_that_lists_what_is_accepted() -> None:
    game = toys.QuadraticGame.instance(dtype=F64)
    opts = (
        torch.optim.SGD(game.leader.parameters(), lr=0.1),
        torch.optim.SGD(game.follower.parameters(), lr=0.1),
    )
    with pytest.raises(ValueError, match=r"solver must be one of bome, backgradient, .*got 'adam'"):
        make("adam", game, *opts)
    with pytest.raises(TypeError, match="BOME got unknown options 'steps', 'lr'; it accepts"):
        make("bome", game, *opts, steps=3, lr=0.1)
    with pytest.raises(TypeError, match="inner_steps must be an integer, got str"):
        make("bome", game, *opts, inner_steps="3")
    with pytest.raises(ValueError, match="eta must be a finite number >= 0"):
        options_for("bome", eta=-1.0)
    with pytest.raises(TypeError, match="SOBA takes SOBAOptions, got BOMEOptions"):
        make("soba", game, *opts, BOMEOptions())
    with pytest.raises(ValueError, match="linear_solver must be one of 'cg', 'normal_cg'"):
        TotalGradientOptions(linear_solver="lu")
    with pytest.raises(dataclasses.FrozenInstanceError):
        BOMEOptions().eta = 2.0  # type: ignore[misc]
    for message in (
        "it accepts inner_steps, inner_lr, inner_optimizer, inner_momentum, keep_inner_state, "
        "eta, phi, delta",
    ):
        with pytest.raises(TypeError, match=message):
            BOMEOptions().replace(step=1)


def test_the_deprecated_gue_names_still_work_and_warn() -> None:
    from stackelberg.unlearnable import training

    with pytest.warns(DeprecationWarning, match="GUE_SOLVER_OPTIONS"):
        defaults = training.SOLVER_DEFAULTS
    assert defaults["bome"]["inner_lr"] == 1e-4
    with pytest.warns(DeprecationWarning, match=r"stackelberg\.solvers\.make"):
        make_solver = training.make_solver
    game = toys.QuadraticGame.instance(dtype=F64)
    solver = make_solver(
        "bome",
        game,
        torch.optim.SGD(game.leader.parameters(), lr=0.1),
        torch.optim.SGD(game.follower.parameters(), lr=0.1),
    )
    assert solver.options == training.GUE_SOLVER_OPTIONS["bome"]


# -- linear solvers as objects -------------------------------------------------------------


def _system(n: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    matrix = (q * torch.logspace(0, 1, n, dtype=F64)) @ q.T
    return (matrix + matrix.T) / 2, torch.randn(n, generator=g, dtype=F64)


@pytest.mark.parametrize(
    "solver", [CG(100), NormalCG(400), Neumann(step=0.15, max_iterations=400)], ids=str
)
def test_linear_solver_objects_solve_and_warm_start(solver) -> None:
    matrix, b = _system()
    exact = torch.linalg.solve(matrix, b)

    def matvec(v):
        return (matrix @ v[0],)

    (x,), info = solver(matvec, (b,))
    assert relative_error(x, exact) < 1e-7 and info.residual < 1e-7
    assert info.matvecs >= info.iterations
    # From a start near the answer the same budget ends nearer.
    near = (exact + 1e-3 * torch.randn(b.shape, dtype=F64),)
    short = dataclasses.replace(solver, max_iterations=3)
    (cold,), _ = short(matvec, (b,))
    (warm,), _ = short(matvec, (b,), near)
    assert relative_error(warm, exact) < relative_error(cold, exact) / 10


def test_linear_solver_options_are_checked_once_at_build() -> None:
    with pytest.raises(ValueError, match="max_iterations must be an integer >= 1"):
        CG(0)
    with pytest.raises(ValueError, match="step must be a finite number > 0"):
        Neumann(step=-0.1)
    assert CG(7, 1e-6).to_dict() == {"name": "cg", "max_iterations": 7, "tol": 1e-6}


def test_a_linear_solver_round_trips_through_its_dict_form() -> None:
    for solver in (CG(7, 1e-6), NormalCG(3), Neumann(0.01, 10)):
        spec = solver.to_dict()
        assert LinearSolver.from_dict(spec) == solver
        # The option record reads the dict form too (a JSON config, a command line).
        assert TotalGradientOptions(linear_solver=spec).linear_solver == solver
        assert TotalGradientOptions(linear_solver=solver).to_dict()["linear_solver"] == spec
    with pytest.raises(ValueError, match="linear solver name must be one of 'cg'"):
        LinearSolver.from_dict({"name": "lu"})
    with pytest.raises(TypeError, match="got int"):
        TotalGradientOptions(linear_solver=3)  # type: ignore[arg-type]
    with pytest.raises(
        TypeError, match="CG got unknown field 'step'; it accepts max_iterations, tol"
    ):
        CG().replace(step=0.1)


def _hypergradient(**options: Any) -> torch.Tensor:
    game = toys.QuadraticGame.random(6, dtype=F64)
    return make_solver("TotalGradient", game, 0.1, 0.5, **options).hypergradient()[0]


def test_the_deprecated_names_of_a_linear_solver_still_work_and_warn() -> None:
    expected = _hypergradient(linear_solver=CG(20, tol=1e-8))
    with pytest.warns(DeprecationWarning) as caught:
        by_name = _hypergradient(linear_solver="cg", solver_iterations=20, tol=1e-8)
    assert torch.equal(by_name, expected)
    messages = [str(w.message) for w in caught]
    assert any("linear_solver='cg' is deprecated" in m for m in messages)
    assert any("solver_iterations, tol are deprecated" in m for m in messages)
    with pytest.warns(DeprecationWarning, match=r"set max_iterations on the linear solver"):
        options = TotalGradientOptions(solver_iterations=20)
    assert options.linear_solver == CG(20)
    with pytest.warns(DeprecationWarning, match="step on the linear solver"):
        options = TotalGradientOptions(linear_solver=Neumann(0.1, 5), neumann_step=0.01)
    assert options.linear_solver == Neumann(0.01, 5)
    # An old field the chosen solver does not have is refused, not silently dropped.
    with pytest.raises(TypeError, match="CG got unknown field 'step'"):
        TotalGradientOptions(neumann_step=0.01)
    with pytest.warns(DeprecationWarning, match=r"cg\(\) is deprecated; use CG"):
        assert sg.solvers.cg(7) == CG(7)
    with pytest.warns(DeprecationWarning, match=r"neumann\(\) is deprecated"):
        assert sg.solvers.neumann(0.2) == Neumann(0.2)


def test_warm_start_needs_fewer_products_for_the_same_path() -> None:
    """T1 (d = 20): CG to a 1e-4 relative residual every step. Started from the last step's
    ``v`` it uses fewer Hessian-vector products, and the path is the same to the solve's
    accuracy."""
    paths, products = {}, {}
    for warm in (False, True):
        game = toys.QuadraticGame.random(20, condition_number=50.0, dtype=F64)
        solver = make(
            "total_gradient",
            game,
            torch.optim.SGD(game.leader.parameters(), lr=0.1),
            torch.optim.SGD(game.follower.parameters(), lr=0.02),
            linear_solver=CG(100, tol=1e-4),
            warm_start=warm,
        )
        history = sg.solve(game, solver, None, 200, progress=False)
        products[warm] = sum(h["matvecs"] for h in history[1:])
        paths[warm] = game.leader.value.detach().clone()
    assert products[True] < 0.7 * products[False]
    assert relative_error(paths[True], paths[False]) < 1e-3


# -- the solver base: its hooks -------------------------------------------------------------


def test_a_solver_keeps_its_own_state_through_init_state_not_a_copied_constructor() -> None:
    """A new solver adds state by overriding ``init_state``, called once at the end of the
    base constructor with the options in place; the built-in ones do the same."""

    class CountingGDA(sg.solvers.GDA):
        def init_state(self) -> None:
            self.started_with = self.options.follower_steps
            self.calls = getattr(self, "calls", 0) + 1

    game = toys.QuadraticGame.random(4, dtype=F64)
    solver = CountingGDA(
        game,
        torch.optim.SGD(game.leader.parameters(), lr=0.1),
        torch.optim.SGD(game.follower.parameters(), lr=0.1),
        follower_steps=3,
    )
    assert (solver.calls, solver.started_with) == (1, 3)
    for name in SOLVERS:
        assert "__init__" not in vars(SOLVERS[name]), f"{name} copies the constructor"


def test_hypergradient_options_declare_and_check_follower_steps() -> None:
    from stackelberg.solvers import BackGradientOptions, HypergradientOptions

    for options in (BackGradientOptions(follower_steps=4), TotalGradientOptions(follower_steps=4)):
        assert isinstance(options, HypergradientOptions) and options.follower_steps == 4
        with pytest.raises(ValueError, match="follower_steps must be an integer >= 0"):
            options.replace(follower_steps=-1)


def test_the_gradient_reducer_is_a_constructor_argument_applied_to_every_gradient() -> None:
    """An identity reducer that counts its calls: BOME's step is unchanged, and every gradient
    it combines went through the reducer (the inner loop's, ∇l, ∇q̂ and q̂)."""
    calls = []

    def identity(tensors):
        calls.append(len(tensors))
        return tuple(tensors)

    steps = {}
    for reducer in (None, identity):
        game = toys.QuadraticGame.random(4, dtype=F64)
        solver = make_solver("BOME", game, gradient_reducer=reducer, inner_steps=3)
        solver.step()
        steps[reducer is None] = [p.detach().clone() for p in game.parameters()]
    assert len(calls) == 3 + 3  # 3 inner gradients, then ∇l, ∇q̂ and q̂
    for a, b in zip(steps[True], steps[False], strict=True):
        assert torch.equal(a, b)
    with pytest.raises(TypeError, match="gradient_reducer must be callable"):
        make_solver("GDA", game, gradient_reducer=3)
