"""Hyper-cleaning solved with TorchOpt's implicit differentiation, as a peer of ours.

    python experiments/torchopt_hyper_cleaning.py --data-dir ../shared/data/mnist-png.tar.gz \
        --init BOME/hpo/save_data_cleaning/mnist_pretrained.pt --steps 60 --output to.json

AID-CG written the way TorchOpt's documentation writes implicit differentiation: the inner
solver (T momentum-SGD steps on ``h`` from the current follower) is wrapped in
``torchopt.diff.implicit.custom_root`` with the optimality condition ``∇_θ h(θ, w) = 0`` and
``torchopt.linear_solve.solve_cg(maxiter=K)``; the leader takes an SGD step on the validation
loss at the returned ``θ(w)``, and the follower keeps ``θ(w)``. The problem, the data, the
start and the optimizers are ``bilevel_problems.py``'s (the BOME authors' settings), so the
curve is comparable with ours and theirs; the output has the same layout.
Needs the ``[bench]`` extra (TorchOpt).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from bilevel_problems import RunConfig, build
from torch import Tensor

from stackelberg.utils.io import write_json


def solve_with_torchopt(config: RunConfig, inner_steps: int, cg_iterations: int) -> dict[str, Any]:
    """Run AID-CG through TorchOpt on ``config``'s hyper-cleaning instance."""
    import torchopt

    if config.threads is not None:
        torch.set_num_threads(config.threads)
    game, _, data = build(config)
    (x_train, y_train), (x_val, y_val) = data.train, data.val
    linear = game.follower.linear
    shape = linear.weight.shape
    split = shape.numel()
    theta = torch.cat([linear.weight.detach().reshape(-1), linear.bias.detach()])
    w = game.leader.weights
    settings = config.optimizer_settings()
    leader_opt = torch.optim.SGD([w], lr=settings["leader"][0], momentum=settings["leader"][1])
    lr, momentum = settings["follower"]

    def logits(theta_: Tensor, x: Tensor) -> Tensor:
        return x @ theta_[:split].view(shape).T + theta_[split:]

    def follower_loss(theta_: Tensor, w_: Tensor) -> Tensor:
        per_sample = F.cross_entropy(logits(theta_, x_train), y_train, reduction="none")
        return torch.mean(torch.clamp(w_, 0.0, 1.0) * per_sample) + config.l2 * theta_.pow(2).sum()

    grad_h = torch.func.grad(follower_loss, argnums=0)

    @torchopt.diff.implicit.custom_root(
        grad_h, argnums=1, solve=torchopt.linear_solve.solve_cg(maxiter=cg_iterations)
    )
    def inner_solve(theta_init: Tensor, w_: Tensor) -> Tensor:
        with torch.no_grad():  # heavy ball from the current follower, as AID-CG's inner loop
            theta_, velocity = theta_init, torch.zeros_like(theta_init)
            for _ in range(inner_steps):
                velocity = momentum * velocity + grad_h(theta_, w_)
                theta_ = theta_ - lr * velocity
        return theta_

    def evaluate(step: int, seconds: float) -> dict[str, float]:
        with torch.no_grad():
            linear.weight.copy_(theta[:split].view(shape))
            linear.bias.copy_(theta[split:])
        return {"step": float(step), "seconds": seconds, **data.metrics(game)}

    curve = [evaluate(0, 0.0)]
    seconds = 0.0
    for step in range(config.steps):
        start = time.perf_counter()
        theta_new = inner_solve(theta, w)
        loss = F.cross_entropy(logits(theta_new, x_val), y_val)
        leader_opt.zero_grad()
        loss.backward()
        leader_opt.step()
        with torch.no_grad():
            w.clamp_(0.0, 1.0)
        theta = theta_new.detach()
        seconds += time.perf_counter() - start
        if (step + 1) % config.evaluate_every == 0 or step + 1 == config.steps:
            curve.append(evaluate(step + 1, seconds))
    return {
        "method": "TorchOpt AID-CG",
        "config": {"inner_steps": inner_steps, "cg_iterations": cg_iterations, **vars(config)},
        "torchopt": torchopt.__version__,
        "curve": curve,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--init", help="follower start (as bilevel_problems.py's --init)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--inner-steps", type=int, default=10)
    parser.add_argument("--cg-iterations", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--evaluate-every", type=int, default=1)
    parser.add_argument("--label", default="TorchOpt AID-CG")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    config = RunConfig(
        problem="hyper-cleaning",
        solver="total_gradient",  # unused: only the game, data and optimizers are taken
        steps=args.steps,
        seed=args.seed,
        data_dir=args.data_dir,
        init=args.init,
        threads=args.threads,
        evaluate_every=args.evaluate_every,
    )
    print(f"seed {config.seed}; config {json.dumps(vars(args), default=str)}", flush=True)
    record = solve_with_torchopt(config, args.inner_steps, args.cg_iterations)
    record["label"] = args.label
    write_json(args.output, record)
    best = max(record["curve"], key=lambda row: row["test_accuracy"])
    print(json.dumps(best))
    return 0


if __name__ == "__main__":
    sys.exit(main())
