"""Peak memory of one BackGradient hypergradient, measured in a fresh process.

The follower is a small MLP (32 → 256 → 1) fitted by mean squared error on a batch of 512
inputs scaled by the leader's per-feature factors ``exp(w)``; the leader's loss is the MLP's
error on a validation batch. One BackGradient step (hypergradient, leader update, one
follower step) unrolls ``--inner-steps`` follower steps.

The peak is measured by :func:`stackelberg.utils.peak_memory` after a warm-up step with 2
inner steps. Prints one JSON object.

    python benchmarks/memory_probe.py --mode store --inner-steps 100 [--device cuda]
"""

from __future__ import annotations

import argparse
import json

import torch

import stackelberg as sg


class ScaledRegression(sg.Game):
    """Leader: log input scales; follower: an MLP regressor."""

    def __init__(self, features: int = 32, hidden: int = 256, batch: int = 512) -> None:
        follower = torch.nn.Sequential(
            torch.nn.Linear(features, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1)
        )
        super().__init__(sg.Variable(torch.zeros(features)), follower)
        generator = torch.Generator().manual_seed(0)
        target = torch.randn(features, generator=generator)
        for split in ("train", "val"):
            x = torch.randn(batch, features, generator=generator)
            self.register_buffer(f"x_{split}", x)
            self.register_buffer(f"y_{split}", torch.sin(x @ target))

    def _error(self, leader, follower, x, y):
        prediction = follower(x * torch.exp(leader())).squeeze(-1)
        return torch.mean((prediction - y) ** 2)

    def follower_loss(self, leader, follower, batch):
        return self._error(leader, follower, self.x_train, self.y_train)

    def leader_loss(self, leader, follower, batch):
        return self._error(leader, follower, self.x_val, self.y_val)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("store", "checkpoint", "reverse"), required=True)
    parser.add_argument("--inner-steps", type=int, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--inner-lr",
        type=float,
        default=0.002,
        help="small enough that undoing 1000 steps in reverse mode stays finite",
    )
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device(args.device)
    game = ScaledRegression().to(device, getattr(torch, args.dtype))

    def solver(inner_steps: int) -> sg.BackGradient:
        return sg.BackGradient(
            game,
            torch.optim.SGD(game.leader.parameters(), lr=0.1),
            torch.optim.SGD(game.follower.parameters(), lr=0.1),
            inner_steps=inner_steps,
            inner_lr=args.inner_lr,
            mode=args.mode,
        )

    solver(2).step()
    sg.utils.return_freed_memory_to_os()  # this process only measures: tight CPU numbers
    info, extra = sg.utils.peak_memory(solver(args.inner_steps).step, device)
    parameters = sum(p.numel() for p in game.follower.parameters())
    print(
        json.dumps(
            {
                "mode": args.mode,
                "inner_steps": args.inner_steps,
                "device": str(device),
                "follower_parameters": parameters,
                "extra_bytes": extra,
                "dtype": args.dtype,
                "reconstruction_error": info.get("reconstruction_error"),
            }
        )
    )


if __name__ == "__main__":
    main()
