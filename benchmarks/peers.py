"""Peers on the T1 benchmark problem: the same bilevel problem solved the way two other
libraries would, to compare time to tolerance with this library's solvers in one process.

T1 (``toys.QuadraticGame.random(100, 10)``): ``h(w, θ) = ½θᵀAθ − θᵀ(Bw + c)`` (ridge-like
follower), ``l(w, θ) = ½‖θ − θ_t‖² + (ρ/2)‖w‖²``. Each peer is written as a user of that
library would write it, with tensors and closures, not through this library's game API:

- ``torchopt``: TorchOpt's implicit differentiation (``torchopt.diff.implicit.custom_root``,
  the implicit function theorem on ``∇_θ h = 0``) with its CG linear solver; the follower is
  solved by ``inner_steps`` gradient steps warm-started from the last solution, the leader
  takes SGD steps on ``l(w, θ*(w))``.
- ``unrolled``: reverse-mode differentiation through ``inner_steps`` unrolled gradient steps
  written with ``torch.func.grad``, warm-started from the last follower.

Both report a step function with the same contract as the benchmark's solvers: one outer
step, leader and follower updated in place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from stackelberg.games import toys


@dataclass(frozen=True)
class Peer:
    """A peer method's settings on T1."""

    method: str
    leader_lr: float
    follower_lr: float
    inner_steps: int
    budget: int
    cg_iterations: int = 100
    cg_tol: float = 1e-5  # TorchOpt's default relative tolerance


#: Tuned on this instance like the library's solvers: TorchOpt's fastest was one follower
#: step per outer step at leader lr 2.5 (1, 3 and 10 steps at 1.0–2.5 tried; 2.5 is also
#: TotalGradient's), with CG capped at 20 iterations (100, 20 and 10 reach 1e-3 in 24–26
#: steps at the same speed; 9 or fewer never do, since each solve starts from zero);
#: unrolled differentiation diverges at lr 2.5 and is run at 1.0.
PEERS = {
    "TorchOpt implicit (CG)": Peer("torchopt", 2.5, 0.15, 1, 1000, cg_iterations=20),
    "unrolled torch.func": Peer("unrolled", 1.0, 0.15, 50, 1000),
}


def t1_losses(
    game: toys.QuadraticGame,
) -> tuple[Callable[[Tensor, Tensor], Tensor], Callable[[Tensor, Tensor], Tensor]]:
    """``h(θ, w)`` and ``l(θ, w)`` of T1 as closures over the game's constants."""
    A, B, c, target, rho = game.A, game.B, game.c, game.theta_target, game.rho

    def follower_loss(theta: Tensor, w: Tensor) -> Tensor:
        return 0.5 * theta @ (A @ theta) - theta @ (B @ w + c)

    def leader_loss(theta: Tensor, w: Tensor) -> Tensor:
        return 0.5 * torch.sum((theta - target) ** 2) + 0.5 * rho * torch.sum(w**2)

    return follower_loss, leader_loss


def build_peer(name: str, game: toys.QuadraticGame) -> Callable[[], dict[str, Any]]:
    """One outer step of peer ``name`` on ``game`` (whose players it updates in place)."""
    peer = PEERS[name]
    follower_loss, leader_loss = t1_losses(game)
    w = game.leader.value
    leader_opt = torch.optim.SGD([w], lr=peer.leader_lr)
    theta = game.follower.value.detach().clone()
    grad_h = torch.func.grad(follower_loss, argnums=0)

    def _outer_step(respond: Callable[[Tensor], Tensor]) -> Callable[[], dict[str, Any]]:
        """One leader SGD step on ``l(θ(w), w)`` with ``θ(w) = respond(θ_last)``
        differentiable in ``w``; the follower keeps ``θ(w)`` as its next start."""

        def step() -> dict[str, Any]:
            nonlocal theta
            theta_new = respond(theta)
            loss = leader_loss(theta_new, w)
            leader_opt.zero_grad()
            loss.backward()
            leader_opt.step()
            theta = theta_new.detach()
            with torch.no_grad():
                game.follower.value.copy_(theta)
            return {"leader_loss": float(loss.detach())}

        return step

    if peer.method == "torchopt":
        import torchopt

        def optimality(theta_: Tensor, w_: Tensor) -> Tensor:
            return grad_h(theta_, w_)

        @torchopt.diff.implicit.custom_root(
            optimality,
            argnums=1,
            solve=torchopt.linear_solve.solve_cg(maxiter=peer.cg_iterations, rtol=peer.cg_tol),
        )
        def inner_solve(theta_init: Tensor, w_: Tensor) -> Tensor:
            with torch.no_grad():
                theta_ = theta_init
                for _ in range(peer.inner_steps):
                    theta_ = theta_ - peer.follower_lr * grad_h(theta_, w_)
            return theta_

        return _outer_step(lambda theta_: inner_solve(theta_, w))

    if peer.method == "unrolled":

        def unroll(theta_t: Tensor) -> Tensor:
            for _ in range(peer.inner_steps):
                theta_t = theta_t - peer.follower_lr * grad_h(theta_t, w)
            return theta_t

        return _outer_step(unroll)
    raise ValueError(f"unknown peer method {peer.method!r}")
