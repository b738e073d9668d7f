"""The outer loop: data streams, an evaluation hook, progress and the history of a run."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from tqdm.auto import tqdm

from stackelberg.checks import check_int
from stackelberg.game import BilevelBatch, Game
from stackelberg.solvers.base import Solver, StepInfo

__all__ = ["History", "solve"]

_SHOWN = ("leader_loss", "follower_loss", "q", "residual", "reconstruction_error")


class History(list[StepInfo]):
    """What ``solve`` returns: one diagnostics dict per step taken (a list), and the
    evaluations.

    Every step's dict holds ``"step"`` (its index) and ``"seconds"`` (the solver's wall time
    since the start of the run, evaluation excluded). ``evaluations`` lists one dict per
    evaluation: ``"step"`` (steps taken when it ran: 0 is the starting point), ``"seconds"``,
    ``"leader_evaluations"`` / ``"follower_evaluations"`` (loss evaluations so far, the
    oracle calls) and the metrics the ``evaluate`` hook returned. A step that was followed
    by an evaluation also carries its metrics.
    """

    evaluations: list[dict[str, float]]

    def __init__(self) -> None:
        super().__init__()
        self.evaluations = []


def _batches(data: Iterable[Any] | None, name: str) -> Iterator[Any]:
    """``None`` forever for a game without data; otherwise the data, restarted when
    exhausted."""
    if data is None:
        return itertools.repeat(None)
    if not isinstance(data, Iterable) or isinstance(data, torch.Tensor):
        raise TypeError(
            f"{name} must be an iterable of batches (a list of batches, a DataLoader) or None, "
            f"got {type(data).__name__}; for one full batch pass [batch]"
        )

    one_shot = iter(data) is data  # a generator or iterator: it cannot be restarted

    def cycle() -> Iterator[Any]:
        drawn = 0
        while True:
            for batch in data:
                drawn += 1
                yield batch
            if one_shot and drawn:
                raise ValueError(
                    f"{name} is a one-shot iterator ({type(data).__name__}) and ran out after "
                    f"{drawn} batch(es); solve restarts its data when it is exhausted, so pass "
                    "something it can iterate again (a list of batches, a DataLoader) or fewer "
                    "steps"
                )
            if not drawn:
                raise ValueError(f"{name} yielded no batch; pass None for a game without data")

    return cycle()


def _stream(
    data: Iterable[Any] | None,
    leader_data: Iterable[Any] | None,
    follower_data: Iterable[Any] | None,
) -> Iterator[Any]:
    """One batch per outer step: from ``data``, or a ``BilevelBatch`` drawing from the two
    streams independently."""
    if leader_data is None and follower_data is None:
        return _batches(data, "data")
    if data is not None:
        raise ValueError(
            "pass either data (one stream both losses read) or leader_data and follower_data "
            "(one stream each), not both"
        )
    leader = _batches(leader_data, "leader_data")
    follower = _batches(follower_data, "follower_data")
    return (BilevelBatch(next(leader), next(follower)) for _ in itertools.count())


def _metrics(evaluate: Callable[[Game], Mapping[str, float]], game: Game) -> dict[str, float]:
    with torch.no_grad():
        result = evaluate(game)
    if not isinstance(result, Mapping):
        raise TypeError(
            f"evaluate must return a mapping of metric names to numbers, got "
            f"{type(result).__name__}"
        )
    metrics = {}
    for key, value in result.items():
        number = float(value.item() if isinstance(value, torch.Tensor) else value)
        if not math.isfinite(number):
            raise ValueError(f"evaluate returned a non-finite {key!r}: {number}")
        metrics[str(key)] = number
    return metrics


def solve(
    game: Game,
    solver: Solver,
    data: Iterable[Any] | None = None,
    steps: int | None = None,
    callback: Callable[[int, StepInfo], Any] | None = None,
    progress: bool = True,
    *,
    leader_data: Iterable[Any] | None = None,
    follower_data: Iterable[Any] | None = None,
    evaluate: Callable[[Game], Mapping[str, float]] | None = None,
    evaluate_every: int = 1,
) -> History:
    """Run ``steps`` outer iterations of ``solver`` on ``game``.

    Args:
        game: the game ``solver`` was built for.
        solver: any solver of ``stackelberg.solvers``.
        data: an iterable of batches that both losses read (a list, a ``DataLoader``:
            iterated again when it runs out, so one pass is one epoch), or ``None`` for a game
            without data.
        steps: the number of outer iterations (``>= 1``).
        callback: called as ``callback(step, info)`` after every step (and after its
            evaluation, whose metrics ``info`` then holds); a truthy return value stops the
            loop early.
        progress: show a tqdm progress bar with the latest losses.
        leader_data: instead of ``data``: the batches ``leader_loss`` reads (validation
            data), drawn independently of ``follower_data``; full batch is ``[batch]``.
        follower_data: the batches ``follower_loss`` reads (training data). Each outer step
            hands the solver a ``BilevelBatch`` of one batch from each stream; one of the two
            may be ``None`` for a loss that reads no data.
        evaluate: ``evaluate(game)`` returns test metrics (``{"test_accuracy": ...}``); it
            runs under ``torch.no_grad()`` before the first step, every ``evaluate_every``
            steps and after the last, and its time is not counted in ``"seconds"``.
        evaluate_every: the evaluation period, in steps.

    Returns:
        A ``History``: one diagnostics dict per step taken, each with ``"step"`` and
        ``"seconds"`` added, and ``.evaluations``.
    """
    if not isinstance(solver, Solver):
        raise TypeError(
            f"solver must be a solver object such as stackelberg.BOME(game, leader_optimizer, "
            f"follower_optimizer), got {type(solver).__name__} {solver!r}"
        )
    if solver.game is not game:
        raise ValueError("solver was built for a different game than the one passed to solve")
    if steps is None:
        raise TypeError("solve() needs steps, the number of outer iterations")
    check_int("steps", steps, 1)
    check_int("evaluate_every", evaluate_every, 1)
    if evaluate is not None and not callable(evaluate):
        raise TypeError(f"evaluate must be callable as evaluate(game), got {evaluate!r}")
    history = History()
    batches = _stream(data, leader_data, follower_data)
    seconds = 0.0

    def record_evaluation(taken: int) -> dict[str, float]:
        assert evaluate is not None
        metrics = _metrics(evaluate, game)
        history.evaluations.append(
            {
                "step": float(taken),
                "seconds": seconds,
                "leader_evaluations": float(solver.evaluations["leader_loss"]),
                "follower_evaluations": float(solver.evaluations["follower_loss"]),
                **metrics,
            }
        )
        return metrics

    if evaluate is not None:
        record_evaluation(0)
    with tqdm(total=steps, disable=not progress, desc=solver.name, dynamic_ncols=True) as bar:
        for step in range(steps):
            batch = next(batches)
            start = time.perf_counter()
            info = solver.step(batch)
            seconds += time.perf_counter() - start
            info = {"step": float(step), "seconds": seconds, **info}
            last = step == steps - 1
            if evaluate is not None and ((step + 1) % evaluate_every == 0 or last):
                info.update(record_evaluation(step + 1))
            history.append(info)
            bar.update(1)
            if progress:
                bar.set_postfix({k: f"{info[k]:.3g}" for k in _SHOWN if k in info}, refresh=False)
            if callback is not None and callback(step, info):
                if evaluate is not None and history.evaluations[-1]["step"] != step + 1:
                    info.update(record_evaluation(step + 1))
                break
    return history
