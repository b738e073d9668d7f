"""stackelberg: bilevel optimization and Stackelberg (leader/follower) games in PyTorch.

The public API::

    import stackelberg as sg

    class MyGame(sg.Game):
        def leader_loss(self, leader, follower, batch): ...
        def follower_loss(self, leader, follower, batch): ...

    solver = sg.solvers.BOME(game, leader_optimizer, follower_optimizer, inner_steps=10)
    history = sg.solve(game, solver, data, steps=1000)
"""

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from stackelberg import _moved

if TYPE_CHECKING:  # what the names below resolve to, for type checkers and editors
    from stackelberg import solvers  # the lazy subpackages resolve through __getattr__
    from stackelberg.game import BilevelBatch, Game, Indexed, Variable
    from stackelberg.solve import History, solve
    from stackelberg.solvers import BOME, F2SA, GDA, SOBA, BackGradient, TotalGradient

#: Every public name, imported on first use: ``import stackelberg`` loads nothing heavy (not
#: even torch), so the command line answers ``--help`` at once; ``sg.Game`` or ``sg.solve``
#: loads the game API and the solvers, ``sg.games.toys`` the games, and so on.
_LAZY = {
    **{name: "stackelberg.game" for name in ("BilevelBatch", "Game", "Indexed", "Variable")},
    **{name: "stackelberg.solve" for name in ("History", "solve")},
    **{
        name: "stackelberg.solvers"
        for name in ("BOME", "F2SA", "GDA", "SOBA", "BackGradient", "TotalGradient")
    },
}
_LAZY_SUBMODULES = ("data", "games", "models", "solvers", "unlearnable", "utils")

_moved.install()  # stackelberg.games.unlearnable and stackelberg.cli, moved in 0.2


def __getattr__(name: str) -> Any:
    if name in _LAZY_SUBMODULES:
        value: Any = importlib.import_module(f"stackelberg.{name}")
    elif name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    else:
        raise AttributeError(f"module 'stackelberg' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """``stackelberg.solve`` is the function. Importing the submodule of the same name makes
    the import system set the package's attribute to that module; this keeps the function."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "solve" and isinstance(value, types.ModuleType):
            value = value.solve
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


__all__ = [
    "BOME",
    "F2SA",
    "GDA",
    "SOBA",
    "BackGradient",
    "BilevelBatch",
    "Game",
    "History",
    "Indexed",
    "TotalGradient",
    "Variable",
    "data",
    "games",
    "models",
    "solve",
    "solvers",
    "unlearnable",
    "utils",
]

__version__ = "0.1.0"
