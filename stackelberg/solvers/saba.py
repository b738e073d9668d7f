"""SABA: SOBA with SAGA's memory, variance-reduced for finite sums.

Dagréou, Ablin, Vaiter & Moreau, NeurIPS 2022 (Algorithm 2). When the follower's loss is a
finite sum over blocks of data, ``h = (1/n) Σ_i h_i``, and the leader's over its own blocks,
``l = (1/m) Σ_j l_j``, SOBA's directions drawn on one block each are unbiased but noisy, and
SOBA needs decreasing steps to converge. SABA keeps, for every block, the last value of each of
the five terms it drew there and replaces each term ``q_k`` by SAGA's estimate

    q̂ = q_k − M[k] + (1/n) Σ_k' M[k'],    then M[k] ← q_k,

whose variance vanishes as the iterates converge, so constant steps reach the solution at
the rate of full-batch descent (their convergence analysis). The terms (SOBA's, module ``soba``):
``∇_θ h_i``, ``∇²_θθ h_i v``, ``∇²_wθ h_i v`` per follower block ``i``; ``∇_θ l_j``,
``∇_w l_j`` per leader block ``j``.

Memory: one entry per block and term: ``n · (2 P_θ + P_w) + m · (P_θ + P_w)`` numbers, for
``P_θ`` follower and ``P_w`` leader parameters (with per-sample blocks and a leader weight per
sample, as in hyper-cleaning, that is quadratic in the data: use blocks of many samples).

Until every block has been seen once, the mean runs over the blocks seen so far, the current
one included (SAG's start); afterwards it is SAGA's. A memory entry is written only once the
step is applied, so a refused (non-finite) step leaves the memory as it was.

Data: a finite set of indexed blocks, ``Indexed(k, batch)`` (``TensorBatches(...,
fixed_blocks=True)``), one stream or two (``sg.solve(leader_data=, follower_data=)``); a game
without data (``batch=None``, the deterministic toys) is one block, and SABA is then SOBA.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from stackelberg.game import BilevelBatch, Indexed
from stackelberg.solvers.base import StepInfo
from stackelberg.solvers.soba import SOBA, SOBAOptions
from stackelberg.solvers.tree import TensorTuple, tree_add, tree_scale

__all__ = ["SABA", "SABAOptions", "SAGAMemory"]


@dataclass(frozen=True)
class SABAOptions(SOBAOptions):
    """SABA's options: SOBA's (``linear_lr``, ``damping``); the memory needs none."""


class SAGAMemory:
    """SAGA's table for a tuple of terms: one entry per block index, and their running sum."""

    def __init__(self) -> None:
        self.entries: dict[int, tuple[TensorTuple, ...]] = {}
        self.total: tuple[TensorTuple, ...] | None = None

    def estimate(
        self, block: int, terms: tuple[TensorTuple, ...]
    ) -> tuple[tuple[TensorTuple, ...], tuple[TensorTuple, ...]]:
        """SAGA's estimates of ``terms`` drawn on ``block`` (see the module doc), and the sum
        the memory will hold once ``commit(block, terms, ...)`` stores them."""
        old = self.entries.get(block)
        total = self.total
        if total is None:
            new_total = terms
        elif old is None:
            new_total = tuple(tree_add(s, t) for s, t in zip(total, terms, strict=True))
        else:
            new_total = tuple(
                tree_add(tree_add(s, o, alpha=-1.0), t)
                for s, o, t in zip(total, old, terms, strict=True)
            )
        count = len(self.entries) + (old is None)
        if old is None:  # SAG's start: the mean of the blocks seen, this one included
            return tuple(tree_scale(s, 1.0 / count) for s in new_total), new_total
        assert total is not None
        estimates = tuple(
            tree_add(tree_add(t, o, alpha=-1.0), tree_scale(s, 1.0 / count))
            for t, o, s in zip(terms, old, total, strict=True)
        )
        return estimates, new_total

    def commit(
        self, block: int, terms: tuple[TensorTuple, ...], total: tuple[TensorTuple, ...]
    ) -> None:
        self.entries[block] = terms
        self.total = total

    def state(self) -> dict[str, Any]:
        return {
            "entries": {k: [list(t) for t in v] for k, v in self.entries.items()},
            "total": None if self.total is None else [list(t) for t in self.total],
        }

    def load(self, state: dict[str, Any], device: torch.device | None = None) -> None:
        def terms(saved: Any) -> tuple[TensorTuple, ...]:
            return tuple(tuple(t.to(device) for t in term) for term in saved)

        self.entries = {int(k): terms(v) for k, v in state.get("entries", {}).items()}
        total = state.get("total")
        self.total = None if total is None else terms(total)


class SABA(SOBA):
    """SOBA with SAGA's memory (see the module doc): variance-reduced on finite sums.

    Built as ``SABA(game, leader_optimizer, follower_optimizer, options=None, **overrides)``;
    the options are ``SABAOptions`` (SOBA's). The memory tables are in ``state_dict``.

    Raises:
        ValueError: a batch that is not an ``Indexed`` block of a finite data set (the game is
            named).
    """

    Options = SABAOptions
    options: SABAOptions

    def init_state(self) -> None:
        super().init_state()
        self.follower_memory = SAGAMemory()
        self.leader_memory = SAGAMemory()
        self._staged: list[tuple[SAGAMemory, int, tuple[TensorTuple, ...], Any]] = []

    def _blocks(self, batch: Any) -> tuple[int, int]:
        """The follower's and the leader's block indices in ``batch``."""
        if batch is None:
            return 0, 0
        parts = (
            (batch.follower, batch.leader) if isinstance(batch, BilevelBatch) else (batch, batch)
        )
        for part in parts:
            if not isinstance(part, Indexed):
                raise ValueError(
                    f"SABA needs a finite set of indexed blocks of data: each batch an "
                    f"Indexed(block, batch), e.g. from TensorBatches(..., fixed_blocks=True); "
                    f"{type(self.game).__name__}'s data gave a {type(part).__name__}"
                )
        return parts[0].index, parts[1].index

    def _estimates(
        self,
        batch: Any,
        grad_theta_h: TensorTuple,
        hv: TensorTuple,
        cross: TensorTuple,
        grad_theta_l: TensorTuple,
        grad_w_l: TensorTuple,
    ) -> tuple[TensorTuple, TensorTuple, TensorTuple, TensorTuple, TensorTuple]:
        follower_block, leader_block = self._blocks(batch)
        follower_terms = (grad_theta_h, hv, cross)
        leader_terms = (grad_theta_l, grad_w_l)
        follower_hat, follower_total = self.follower_memory.estimate(follower_block, follower_terms)
        leader_hat, leader_total = self.leader_memory.estimate(leader_block, leader_terms)
        self._staged = [
            (self.follower_memory, follower_block, follower_terms, follower_total),
            (self.leader_memory, leader_block, leader_terms, leader_total),
        ]
        return (*follower_hat, *leader_hat)  # type: ignore[return-value]

    def step(self, batch: Any = None) -> StepInfo:
        self._staged = []
        info = super().step(batch)  # raises, before any change, on a non-finite step
        for memory, block, terms, total in self._staged:
            memory.commit(block, terms, total)
        self._staged = []
        return info

    def state_dict(self) -> dict[str, Any]:
        """SOBA's state and the two memory tables."""
        return {
            **super().state_dict(),
            "follower_memory": self.follower_memory.state(),
            "leader_memory": self.leader_memory.state(),
        }

    def load_state_dict(self, state: Any) -> None:
        """Restore ``state_dict``'s output, the memory on the follower's device."""
        super().load_state_dict(state)
        device = self.v[0].device if self.v else None
        self.follower_memory = SAGAMemory()
        self.follower_memory.load(state.get("follower_memory", {}), device)
        self.leader_memory = SAGAMemory()
        self.leader_memory.load(state.get("leader_memory", {}), device)
