"""Gradient descent(-ascent): each player follows its own partial gradient.

Simultaneous GDA updates both players from the same point,

    w ← w − α ∇_w l(w, θ),    θ ← θ − β ∇_θ h(w, θ),

alternating GDA first moves the follower (``follower_steps`` times) and then the leader at the
follower's new position. Neither accounts for the follower's response to the leader, so the
fixed points are Nash equilibria (∇_w l = 0 and ∇_θ h = 0), not Stackelberg ones: on toy T2
GDA ends at (1, β) while the leader's optimum is ((1 + 2β)/(1 + β²), β·w*). It is the naive
baseline every other solver must beat.

Stochastic use: each gradient may be taken on a minibatch (the leader's loss on the leader's
stream, the follower's on the follower's); it is then SGD on each player's own loss, with
its usual assumptions (unbiased gradients, bounded variance, decreasing steps to converge).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from stackelberg.checks import check_int
from stackelberg.solvers.autograd import gradients
from stackelberg.solvers.base import Solver, StepInfo
from stackelberg.solvers.options import SolverOptions
from stackelberg.solvers.tree import tree_norm

__all__ = ["GDA", "GDAOptions"]


@dataclass(frozen=True)
class GDAOptions(SolverOptions):
    """GDA's options.

    Args:
        alternating: if ``True``, the follower moves first and the leader then takes its step at
            the follower's new parameters; if ``False`` (default), both step from the same point.
        follower_steps: follower steps per leader step (``>= 1``); in simultaneous mode the
            steps after the first follow the leader's update.
    """

    alternating: bool = False
    follower_steps: int = 1

    def validate(self) -> None:
        if not isinstance(self.alternating, bool):
            raise TypeError(f"alternating must be True or False, got {self.alternating!r}")
        check_int("follower_steps", self.follower_steps, 1)


class GDA(Solver):
    """Simultaneous or alternating gradient descent on each player's own loss.

    Built as ``GDA(game, leader_optimizer, follower_optimizer, options=None, **overrides)``
    (see ``Solver``); the options are ``GDAOptions``.

    Diagnostics: ``leader_loss``, ``follower_loss``, ``leader_grad_norm``,
    ``follower_grad_norm`` (each at the point where that player's last gradient was taken).
    """

    Options = GDAOptions
    options: GDAOptions
    _warned_zero_gradient = False

    def step(self, batch: Any = None) -> StepInfo:
        follower: dict[str, Tensor | float] = {}
        if self.options.alternating:
            follower = self._follower_steps(batch, self.options.follower_steps)
        w, theta = self.leader_params(), self.follower_params()
        leader_loss = self.leader_loss(w, theta, batch)
        leader_grad = gradients(leader_loss, w)
        if self.options.alternating:
            self.apply_updates((self.leader_optimizer, w, leader_grad))
        else:
            h = self.follower_loss(w, theta, batch)
            follower_grad = gradients(h, theta)
            self.apply_updates(
                (self.leader_optimizer, w, leader_grad),
                (self.follower_optimizer, theta, follower_grad),
            )
            follower = {"follower_loss": h.detach(), "follower_grad_norm": tree_norm(follower_grad)}
            if self.options.follower_steps > 1:
                follower = self._follower_steps(batch, self.options.follower_steps - 1)
        self.steps_taken += 1
        info = self.read_floats(
            {
                "leader_loss": leader_loss.detach(),
                "leader_grad_norm": tree_norm(leader_grad),
                **follower,
            }
        )
        if info["leader_grad_norm"] == 0.0 and not self._warned_zero_gradient:
            self._warned_zero_gradient = True
            warnings.warn(
                f"GDA: the leader's gradient ∇_w l is exactly zero at step {self.steps_taken - 1}, "
                "so the leader does not move. The leader's loss does not depend on the leader "
                "directly (only through the follower's response, as in hyper-cleaning or "
                "hyperparameter selection), which GDA ignores: use a bilevel solver (BOME, "
                "TotalGradient, BackGradient, SOBA). Shown once per solver.",
                RuntimeWarning,
                stacklevel=2,
            )
        return info
