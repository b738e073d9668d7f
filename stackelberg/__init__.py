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
from typing import Any

from stackelberg import _moved, solvers
from stackelberg.game import BilevelBatch, Game, Indexed, Variable
from stackelberg.solve import History, solve
from stackelberg.solvers import BOME, F2SA, GDA, SOBA, BackGradient, TotalGradient

#: Imported on first use (``sg.games.toys``, ``sg.data.load_dataset``, ``sg.unlearnable``):
#: ``import stackelberg`` loads the game API and the solvers only, not Pillow or the
#: unlearnable-example application.
_LAZY_SUBMODULES = ("data", "games", "models", "unlearnable", "utils")

_moved.install()  # stackelberg.games.unlearnable and stackelberg.cli, moved in 0.2


def __getattr__(name: str) -> Any:
    if name in _LAZY_SUBMODULES:
        module = importlib.import_module(f"stackelberg.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'stackelberg' has no attribute {name!r}")


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
