"""The one place solvers are built by name: ``make``.

``make("bome", game, leader_optimizer, follower_optimizer, inner_steps=20)`` builds
``BOME`` with its defaults updated by the keyword options; an option
record (``options=BOMEOptions(...)``, for example a game's named defaults) may be given
instead or as well. Unknown names and unknown or ill-typed options are refused with a one-line
error that lists what is accepted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from stackelberg.game import Game
from stackelberg.solvers.backgradient import BackGradient
from stackelberg.solvers.base import Solver
from stackelberg.solvers.bome import BOME
from stackelberg.solvers.f2sa import F2SA
from stackelberg.solvers.gda import GDA
from stackelberg.solvers.options import SolverOptions
from stackelberg.solvers.saba import SABA
from stackelberg.solvers.soba import SOBA
from stackelberg.solvers.total_gradient import TotalGradient
from stackelberg.solvers.tree import TensorTuple

__all__ = ["SOLVERS", "make", "options_for"]

#: Every solver by its registry name.
SOLVERS: dict[str, type[Solver]] = {
    "bome": BOME,
    "backgradient": BackGradient,
    "total_gradient": TotalGradient,
    "soba": SOBA,
    "f2sa": F2SA,
    "saba": SABA,
    "gda": GDA,
}


def _solver_class(name: str) -> type[Solver]:
    if name not in SOLVERS:
        raise ValueError(f"solver must be one of {', '.join(SOLVERS)}; got {name!r}")
    return SOLVERS[name]


def options_for(name: str, options: SolverOptions | None = None, **overrides: Any) -> SolverOptions:
    """The option record ``make(name, ..., options, **overrides)`` would build, checked,
    without building a solver (to validate a configuration before a run starts)."""
    solver = _solver_class(name)
    return solver.Options.resolve(solver.__name__, options, overrides)


def make(
    name: str,
    game: Game,
    leader_optimizer: torch.optim.Optimizer,
    follower_optimizer: torch.optim.Optimizer,
    options: SolverOptions | None = None,
    *,
    gradient_reducer: Callable[[Sequence[Tensor]], TensorTuple] | None = None,
    **overrides: Any,
) -> Solver:
    """The solver ``name`` (one of ``SOLVERS``) for ``game``, with ``options`` (default:
    the solver's defaults) updated by ``overrides``; ``gradient_reducer`` as in ``Solver``
    (data parallelism)."""
    solver = _solver_class(name)
    return solver(
        game,
        leader_optimizer,
        follower_optimizer,
        options,
        gradient_reducer=gradient_reducer,
        **overrides,
    )
