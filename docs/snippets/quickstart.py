import torch

import stackelberg as sg


class Duopoly(sg.Game):
    """Price 10 − (q1 + q2), unit cost 1: each firm maximizes its own profit."""

    def __init__(self):
        super().__init__(leader=sg.Variable(1.0), follower=sg.Variable(1.0))

    def leader_loss(self, leader, follower, batch):  # l(w, θ): the leader minimizes it
        return -leader() * (9 - leader() - follower())

    def follower_loss(self, leader, follower, batch):  # h(w, θ): the follower minimizes it
        return -follower() * (9 - leader() - follower())


game = Duopoly()
leader_opt = torch.optim.SGD(game.leader.parameters(), lr=0.1)
follower_opt = torch.optim.SGD(game.follower.parameters(), lr=0.4)
solver = sg.solvers.make("total_gradient", game, leader_opt, follower_opt)
sg.solve(game, solver, data=None, steps=200)
print(game.leader.value.item(), game.follower.value.item())  # 4.5, 2.25 (Nash: 3, 3)
