"""stackelberg: bilevel optimization and Stackelberg (leader/follower) games in PyTorch.

The public API::

    import stackelberg as sg

    class MyGame(sg.Game):
        def leader_loss(self, leader, follower, batch): ...
        def follower_loss(self, leader, follower, batch): ...

    solver = sg.solvers.BOME(game, leader_optimizer, follower_optimizer, inner_steps=10)
    history = sg.solve(game, solver, data, steps=1000)
"""

from stackelberg import data, games, models, solvers, utils
from stackelberg.game import Game, Variable
from stackelberg.solve import solve
from stackelberg.solvers import BOME, GDA, SOBA, BackGradient, TotalGradient

__all__ = [
    "BOME",
    "GDA",
    "SOBA",
    "BackGradient",
    "Game",
    "TotalGradient",
    "Variable",
    "data",
    "games",
    "models",
    "solve",
    "solvers",
    "utils",
]

__version__ = "0.1.0"
