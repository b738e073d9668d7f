import torch

import stackelberg as sg
from stackelberg.games.toys import QuadraticGame

game = QuadraticGame.instance()
solver = sg.solvers.make(
    "total_gradient",
    game,
    torch.optim.SGD(game.leader.parameters(), lr=0.1),
    torch.optim.SGD(game.follower.parameters(), lr=0.5),
    linear_solver=sg.solvers.CG(max_iterations=20, tol=1e-6),  # warm-started by default
)
sg.solve(game, solver, None, steps=300, progress=False)
state = solver.state_dict()  # with game.state_dict() and the optimizers': an exact resume
