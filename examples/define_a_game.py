"""Define a game from scratch and solve it with every solver of the library.

The game is Stackelberg's duopoly (von Stackelberg 1934): two firms sell the same good at the
price ``p = a − b(q₁ + q₂)`` and pay ``c`` per unit. The leader commits to its quantity ``q₁``
first; the follower, seeing it, picks ``q₂`` to maximize its own profit ``q₂(p − c)``, so
``q₂*(q₁) = (a − c − b q₁)/(2b)``. Anticipating that, the leader produces ``(a − c)/(2b)`` and
the follower ``(a − c)/(4b)``. If neither leads (Cournot–Nash), both produce ``(a − c)/(3b)``.

Run:  python examples/define_a_game.py [--a A --b B --c C] [--seed S] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch

import stackelberg as sg


class Duopoly(sg.Game):
    """Each firm's loss is minus its profit ``qᵢ (a − b(q₁ + q₂) − c)``."""

    def __init__(self, a: float, b: float, c: float) -> None:
        super().__init__(leader=sg.Variable(1.0), follower=sg.Variable(1.0))
        self.a, self.b, self.c = a, b, c

    def profit(self, own: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        return own * (self.a - self.b * (own + other) - self.c)

    def leader_loss(self, leader, follower, batch):
        return -self.profit(leader(), follower())

    def follower_loss(self, leader, follower, batch):
        return -self.profit(follower(), leader())

    def project(self) -> None:
        # Quantities cannot be negative.
        self.leader.value.clamp_(min=0.0)
        self.follower.value.clamp_(min=0.0)


# Per solver: its options, the leader's and the follower's learning rate, and the steps.
SETTINGS = {
    "GDA": ({}, 0.1, 0.1, 300),
    "BOME": ({"inner_steps": 30, "inner_lr": 0.4}, 0.05, 0.05, 600),
    "BackGradient": ({"inner_steps": 30, "inner_lr": 0.4}, 0.1, 0.4, 200),
    "TotalGradient": ({"linear_solver": "cg"}, 0.1, 0.4, 200),
}


def write_json_atomically(path: Path, payload: dict) -> None:
    """Write to a temporary file in the same folder, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(payload, handle, indent=2)
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", type=float, default=10.0, help="demand intercept a")
    parser.add_argument("--b", type=float, default=1.0, help="demand slope b")
    parser.add_argument("--c", type=float, default=1.0, help="unit cost c")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress", action="store_true", help="show a progress bar per solver")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    print(f"seed={args.seed} config={json.dumps(vars(args), default=str)}")

    margin = args.a - args.c
    stackelberg_point = (margin / (2 * args.b), margin / (4 * args.b))
    nash_point = (margin / (3 * args.b), margin / (3 * args.b))
    results = {"config": vars(args) | {"json": str(args.json)}, "solvers": {}}
    print(f"{'solver':<14} {'q1':>8} {'q2':>8}   leader profit")
    for name, (options, leader_lr, follower_lr, steps) in SETTINGS.items():
        game = Duopoly(args.a, args.b, args.c).double()
        solver = getattr(sg.solvers, name)(
            game,
            torch.optim.SGD(game.leader.parameters(), lr=leader_lr),
            torch.optim.SGD(game.follower.parameters(), lr=follower_lr),
            **options,
        )
        sg.solve(game, solver, None, steps, progress=args.progress)
        q1, q2 = float(game.leader.value.detach()), float(game.follower.value.detach())
        profit = float(game.profit(torch.tensor(q1), torch.tensor(q2)))
        print(f"{name:<14} {q1:8.4f} {q2:8.4f}   {profit:8.4f}")
        results["solvers"][name] = {"q1": q1, "q2": q2, "leader_profit": profit}
    for label, (q1, q2) in (("closed form", stackelberg_point), ("Cournot-Nash", nash_point)):
        profit = q1 * (args.a - args.b * (q1 + q2) - args.c)
        print(f"{label:<14} {q1:8.4f} {q2:8.4f}   {profit:8.4f}")
        results[label] = {"q1": q1, "q2": q2, "leader_profit": profit}
    if args.json is not None:
        write_json_atomically(args.json, results)
    print("GDA lands on the Nash point: it ignores that the follower reacts to the leader.")


if __name__ == "__main__":
    main()
