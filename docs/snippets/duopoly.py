import torch

import stackelberg as sg


class Duopoly(sg.Game):
    """Two firms; price p = a − b(q1 + q2), unit cost c; each maximizes its own profit."""

    def __init__(self, a=10.0, b=1.0, c=1.0):
        super().__init__(leader=sg.Variable(1.0), follower=sg.Variable(1.0))
        self.a, self.b, self.c = a, b, c

    def leader_loss(self, leader, follower, batch):  # l(w, θ), minimized by the leader
        q1, q2 = leader(), follower()
        return -q1 * (self.a - self.b * (q1 + q2) - self.c)

    def follower_loss(self, leader, follower, batch):  # h(w, θ), minimized by the follower
        q1, q2 = leader(), follower()
        return -q2 * (self.a - self.b * (q1 + q2) - self.c)


game = Duopoly()
solver = sg.TotalGradient(
    game,
    leader_optimizer=torch.optim.SGD(game.leader.parameters(), lr=0.1),
    follower_optimizer=torch.optim.SGD(game.follower.parameters(), lr=0.4),
)
history = sg.solve(game, solver, data=None, steps=200)  # list of per-step diagnostics
print(game.leader.value, game.follower.value)  # ≈ 4.5, 2.25 (Nash would be 3, 3)
