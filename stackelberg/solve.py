"""The outer loop: run a solver for a number of steps with a progress bar."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from tqdm.auto import tqdm

from stackelberg.game import Game
from stackelberg.solvers.base import Solver, StepInfo, check_int

__all__ = ["solve"]

_SHOWN = ("leader_loss", "follower_loss", "q", "residual", "reconstruction_error")


def _batches(data: Iterable[Any] | None) -> Iterator[Any]:
    """``None`` forever for deterministic games; otherwise the data, restarted when exhausted."""
    if data is None:
        return itertools.repeat(None)
    if not isinstance(data, Iterable):
        raise TypeError(f"data must be an iterable of batches or None, got {type(data).__name__}")

    def cycle() -> Iterator[Any]:
        while True:
            empty = True
            for batch in data:
                empty = False
                yield batch
            if empty:
                raise ValueError("data yielded no batch; pass None for a deterministic game")

    return cycle()


def solve(
    game: Game,
    solver: Solver,
    data: Iterable[Any] | None,
    steps: int,
    callback: Callable[[int, StepInfo], Any] | None = None,
    progress: bool = True,
) -> list[StepInfo]:
    """Run ``steps`` outer iterations of ``solver`` on ``game``.

    Args:
        game: the game ``solver`` was built for.
        solver: any solver of ``stackelberg.solvers``.
        data: an iterable of batches (a list, a ``DataLoader``: iterated again when it runs
            out, so one pass is one epoch), or ``None`` for a deterministic game.
        steps: the number of outer iterations (``>= 1``).
        callback: called as ``callback(step, info)`` after every step; a truthy return value
            stops the loop early.
        progress: show a tqdm progress bar with the latest losses.

    Returns:
        One diagnostics dict per step taken, each with its ``"step"`` index added.
    """
    if not isinstance(solver, Solver):
        raise TypeError(
            f"solver must be a solver object such as stackelberg.BOME(game, leader_optimizer, "
            f"follower_optimizer), got {type(solver).__name__} {solver!r}"
        )
    if solver.game is not game:
        raise ValueError("solver was built for a different game than the one passed to solve")
    check_int("steps", steps, 1)
    history: list[StepInfo] = []
    batches = _batches(data)
    with tqdm(total=steps, disable=not progress, desc=solver.name, dynamic_ncols=True) as bar:
        for step in range(steps):
            info = {"step": float(step), **solver.step(next(batches))}
            history.append(info)
            bar.update(1)
            if progress:
                bar.set_postfix({k: f"{info[k]:.3g}" for k in _SHOWN if k in info}, refresh=False)
            if callback is not None and callback(step, info):
                break
    return history
