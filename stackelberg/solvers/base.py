"""The interface every solver shares.

A solver is built as ``Solver(game, leader_optimizer, follower_optimizer, **options)`` and
advanced by ``Solver.step``. It computes update directions for the players, writes them
into the parameters' ``.grad`` and lets the given ``torch.optim`` optimizers apply them, so
momentum, Adam, weight decay and learning-rate schedulers behave as usual; the game's
``project`` hook runs after every update.

Parameters travel between the helpers as tuples of tensors in ``module.parameters()`` order
(trainable parameters only).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor

# The `name as name` imports: names that lived here in 0.1 (now in stackelberg.checks,
# solvers.tree and solvers.autograd) stay importable from here, outside this module's API.
from stackelberg.checks import check_choice as check_choice
from stackelberg.checks import check_int as check_int
from stackelberg.checks import check_positive as check_positive
from stackelberg.game import (
    Game,
    batch_for,
    check_finite_losses,
    checked_loss,
    functional_view,
    trainable_parameters,
)
from stackelberg.solvers.autograd import detached as detached
from stackelberg.solvers.autograd import gradients, host_read, preserved_buffers
from stackelberg.solvers.options import HypergradientOptions, SolverOptions
from stackelberg.solvers.tree import TensorTuple, tree_norm
from stackelberg.solvers.tree import tree_add as tree_add
from stackelberg.solvers.tree import tree_dot as tree_dot
from stackelberg.solvers.tree import tree_scale as tree_scale

__all__ = [
    "HypergradientSolver",
    "ImplicitTerms",
    "Solver",
    "SolverOptions",
    "StepInfo",
    "TensorTuple",
]

StepInfo = dict[str, float]


class ImplicitTerms(NamedTuple):
    """What ``Solver.implicit_terms`` returns."""

    w: TensorTuple
    theta: TensorTuple
    leader_loss: Tensor
    grad_w_l: TensorTuple
    grad_theta_l: TensorTuple
    follower_loss: Tensor
    grad_theta_h: TensorTuple  # differentiable in (w, θ)


class Solver:
    """Base class of the solvers: holds the game, the two optimizers and the options, applies
    updates.

    Subclasses set ``Options`` (their ``SolverOptions`` record) and implement
    ``step``. Helpers evaluate the players' losses at arbitrary parameter tuples (through
    functional views) with checks that name the loss and the step.

    Args:
        game: the game to solve.
        leader_optimizer: a ``torch.optim.Optimizer`` over (some of) the leader's
            parameters; it applies the leader's update direction.
        follower_optimizer: the same for the follower.
        options: the solver's option record (default: its defaults).
        gradient_reducer: under data parallelism, ``tensors ↦ their mean over the ranks``
            (``utils.distributed.all_reduce_mean``), applied to every gradient the step
            combines; ``None`` (default) in a single process.
        **overrides: options by name, applied on top of ``options``.
    """

    Options: ClassVar[type[SolverOptions]] = SolverOptions

    def __init__(
        self,
        game: Game,
        leader_optimizer: torch.optim.Optimizer,
        follower_optimizer: torch.optim.Optimizer,
        options: SolverOptions | None = None,
        *,
        gradient_reducer: Callable[[Sequence[Tensor]], TensorTuple] | None = None,
        **overrides: Any,
    ) -> None:
        if not isinstance(game, Game):
            raise TypeError(f"game must be a stackelberg.Game, got {type(game).__name__}")
        self.options = self.Options.resolve(self.name, options, overrides)
        game.check_players()
        self.game = game
        self.leader_optimizer = self._checked_optimizer("leader", leader_optimizer)
        self.follower_optimizer = self._checked_optimizer("follower", follower_optimizer)
        self.steps_taken = 0
        #: How many times each loss was evaluated (each evaluation is followed by at most one
        #: backward pass, or a double-backward one for a Hessian-vector product): the
        #: oracle-call count that benchmarks plot their curves against.
        self.evaluations = {"leader_loss": 0, "follower_loss": 0}
        #: Losses evaluated since the last read, ``(value, name, where)``: their finiteness is
        #: checked at the next read (``apply_updates`` or ``read_floats``), all at once.
        self._pending_checks: list[tuple[Tensor, str, str]] = []
        if gradient_reducer is not None and not callable(gradient_reducer):
            raise TypeError(
                f"gradient_reducer must be callable (tensors -> averaged tensors), got "
                f"{type(gradient_reducer).__name__}"
            )
        #: Averages gradients over data-parallel ranks (``utils.distributed.all_reduce_mean``);
        #: ``None`` in a single process.
        self.gradient_reducer = gradient_reducer
        self.init_state()

    def init_state(self) -> None:
        """Set up what the solver carries between steps beyond the base's (BOME's kept inner
        optimizer, SOBA's and TotalGradient's ``v``, BackGradient's fixed ``θ_0``). Called once,
        at the end of ``__init__``, with the game, optimizers and ``options`` in place; a
        subclass overrides it instead of copying the constructor."""

    def reduce(self, tensors: Sequence[Tensor]) -> TensorTuple:
        """``tensors`` averaged over data-parallel ranks (unchanged in a single process)."""
        return tuple(tensors) if self.gradient_reducer is None else self.gradient_reducer(tensors)

    @property
    def name(self) -> str:
        return type(self).__name__

    def _checked_optimizer(self, role: str, optimizer: Any) -> torch.optim.Optimizer:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"{role}_optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
            )
        own = {id(p) for p in getattr(self.game, role).parameters()}
        for group in optimizer.param_groups:
            for p in group["params"]:
                if id(p) not in own:
                    raise ValueError(
                        f"{role}_optimizer holds a parameter of shape {tuple(p.shape)} that is "
                        f"not one of the {role}'s parameters"
                    )
        return optimizer

    # -- parameters and losses -----------------------------------------------------------

    def leader_params(self) -> TensorTuple:
        """The leader's trainable parameters (the module's own tensors)."""
        return trainable_parameters(self.game.leader)

    def follower_params(self) -> TensorTuple:
        """The follower's trainable parameters (the module's own tensors)."""
        return trainable_parameters(self.game.follower)

    def _loss(
        self,
        name: str,
        w: Sequence[Tensor],
        theta: Sequence[Tensor],
        batch: Any,
        at: str,
        requires_grad: bool,
        check_finite: bool,
    ) -> Tensor:
        views = functional_view(self.game.leader, w), functional_view(self.game.follower, theta)
        self.evaluations[name] += 1
        value = getattr(self.game, name)(*views, batch_for(name, batch))
        where = self.where(at)
        value = checked_loss(value, name, where, requires_grad=requires_grad, check_finite=False)
        if check_finite:
            self._pending_checks.append((value.detach(), name, where))
        return value

    def read_floats(self, values: dict[str, Tensor | float]) -> StepInfo:
        """``values`` as floats, the tensors read from the device in one transfer, together
        with the finiteness of every loss evaluated since the last read.

        Raises:
            ValueError: a pending loss is not finite (the first one is named).
        """
        pending, self._pending_checks = self._pending_checks, []
        tensors = [(k, v) for k, v in values.items() if isinstance(v, Tensor)]
        stacked = [v.detach().reshape(()).to(torch.float64) for _, v in tensors]
        stacked += [v for v, _, _ in pending]
        numbers: list[float] = []
        if stacked:
            device = stacked[0].device
            with host_read():
                numbers = torch.stack([t.to(device, torch.float64) for t in stacked]).tolist()
        if pending and not all(math.isfinite(x) for x in numbers[len(tensors) :]):
            check_finite_losses(pending)  # raises, naming the first non-finite loss
        read = dict(zip((k for k, _ in tensors), numbers, strict=False))
        return {k: read[k] if isinstance(v, Tensor) else float(v) for k, v in values.items()}

    def where(self, at: str = "") -> str:
        """The solver, its step and ``at`` within it (``"inner step 3"``), as errors about a
        loss name the place: ``"BOME step 5 inner step 3"``."""
        step = f"{self.name} step {self.steps_taken}"
        return f"{step} {at}" if at else step

    def leader_loss(
        self,
        w: Sequence[Tensor],
        theta: Sequence[Tensor],
        batch: Any,
        *,
        at: str = "",
        requires_grad: bool = True,
        check_finite: bool = True,
    ) -> Tensor:
        """``l(w, θ)`` on ``batch``, checked to be a scalar at once and to be finite at the
        step's next read from the device (``apply_updates``, ``read_floats``); with
        ``check_finite=False`` finiteness is left to the caller. An error names the step and
        ``at``, the place within it (see ``where``)."""
        return self._loss("leader_loss", w, theta, batch, at, requires_grad, check_finite)

    def follower_loss(
        self,
        w: Sequence[Tensor],
        theta: Sequence[Tensor],
        batch: Any,
        *,
        at: str = "",
        requires_grad: bool = True,
        check_finite: bool = True,
    ) -> Tensor:
        """``h(w, θ)`` on ``batch``, checked like ``leader_loss``."""
        return self._loss("follower_loss", w, theta, batch, at, requires_grad, check_finite)

    def implicit_terms(self, batch: Any) -> ImplicitTerms:
        """The first-order terms of the implicit-function hypergradient at the current point:
        ``l`` with ``∇_w l`` and ``∇_θ l``, and ``h`` with ``∇_θ h`` kept differentiable, so
        Hessian-vector products ``∇²_θθ h·v`` and ``∇²_wθ h·v`` follow from one more backward
        pass of ``⟨∇_θ h, v⟩``."""
        w, theta = self.leader_params(), self.follower_params()
        leader_loss = self.leader_loss(w, theta, batch)
        grad_l = gradients(leader_loss, w + theta)
        follower_loss = self.follower_loss(w, theta, batch)
        return ImplicitTerms(
            w,
            theta,
            leader_loss,
            grad_l[: len(w)],
            grad_l[len(w) :],
            follower_loss,
            gradients(follower_loss, theta, create_graph=True),
        )

    def prepared_follower_batch(self, w: Sequence[Tensor], batch: Any) -> Any:
        """The game's ``follower_batch`` at leader parameters ``w`` on the follower's part of
        ``batch`` (see ``BilevelBatch``), differentiable in ``w``."""
        view = functional_view(self.game.leader, w)
        return self.game.follower_batch(view, batch_for("follower_loss", batch))

    def fixed_leader_batch(self, w: Sequence[Tensor], batch: Any) -> Any:
        """``prepared_follower_batch`` computed without grad (the leader is a constant for
        the follower's steps)."""
        with torch.no_grad():
            return self.prepared_follower_batch(w, batch)

    def _follower_steps(self, batch: Any, steps: int) -> dict[str, Tensor | float]:
        """Take ``steps`` follower-optimizer steps on ``∇_θ h`` at the leader's current point;
        the follower's loss and gradient norm at the last one (before its update) are returned
        left on the device, for the step to read once with its own."""
        w = tuple(p.detach() for p in self.leader_params())
        batch = self.fixed_leader_batch(w, batch)
        last: dict[str, Tensor | float] = {}
        for i in range(steps):
            theta = self.follower_params()
            loss = self.follower_loss(w, theta, batch, at=f"follower step {i}")
            grad = self.reduce(gradients(loss, theta))
            self.apply_updates((self.follower_optimizer, theta, grad), synchronized=True)
            last = {"follower_loss": loss.detach(), "follower_grad_norm": tree_norm(grad)}
        return last

    # -- updates -------------------------------------------------------------------------

    def apply_updates(
        self,
        *updates: tuple[torch.optim.Optimizer, Sequence[Tensor], Sequence[Tensor]],
        synchronized: bool = False,
        states: Mapping[str, Sequence[Tensor]] | None = None,
    ) -> None:
        """Apply ``(optimizer, params, direction)`` updates: write each direction into its
        parameters' ``.grad``, step the optimizer, then project the game.

        Under data parallelism the directions are first averaged over ranks, unless the
        solver built them from averaged gradients already (``synchronized``).

        This is every solver's one finiteness check: every loss evaluated since the last read,
        every direction, and the updates of the solver's own state that the step applies
        itself afterwards (``states``, by name: SOBA's ``v``) are checked before any is
        applied, with one read from the device, so a failure changes nothing.

        Raises:
            ValueError: a loss, a state update or a direction is not finite (named in that
                order).
        """
        if not synchronized and self.gradient_reducer is not None:
            updates = tuple((o, p, self.reduce(d)) for o, p, d in updates)
        states = dict(states or {})
        pending, self._pending_checks = self._pending_checks, []
        flags = [torch.isfinite(v).all() for v, _, _ in pending]
        # The solver's own state first: a non-finite one (SOBA's v) usually spoils the
        # players' directions too, and is the cause to name.
        directions = list(states.values()) + [u[2] for u in updates]
        flags += [torch.stack([torch.isfinite(d).all() for d in ds]).all() for ds in directions]
        device = flags[0].device if flags else None
        with host_read():
            finite = torch.stack([f.to(device) for f in flags]).tolist() if flags else []
        if not all(finite):
            check_finite_losses(pending)  # names the first non-finite loss, if one is
            roles = list(states) + [
                "the leader" if optimizer is self.leader_optimizer else "the follower"
                for optimizer, _, _ in updates
            ]
            for role, ok in zip(roles, finite[len(pending) :], strict=True):
                if not ok:
                    raise ValueError(
                        f"{self.name} computed a non-finite update for {role} at step "
                        f"{self.steps_taken}; no parameter was changed. {self.divergence_hint}"
                    )
        for optimizer, params, direction in updates:
            optimizer.zero_grad(set_to_none=True)
            for p, d in zip(params, direction, strict=True):
                p.grad = d.detach().to(dtype=p.dtype)
            optimizer.step()
            with torch.no_grad():
                self.game.project()

    @property
    def divergence_hint(self) -> str:
        """What to try when the update direction is not finite (shown in the error)."""
        return "Try smaller learning rates."

    def step(self, batch: Any = None) -> StepInfo:
        """One outer iteration on ``batch``; returns float diagnostics."""
        raise NotImplementedError

    # -- state ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The solver's own state, beyond the game's parameters and the two optimizers':
        the step count and whatever a subclass carries between steps (tensors, numbers and
        strings only, so ``torch.load(weights_only=True)`` reads it back). With the game's
        and the optimizers' state dicts it continues a run exactly."""
        return {
            "solver": self.name,
            "game": self._game_name,
            "steps_taken": self.steps_taken,
            "evaluations": dict(self.evaluations),
        }

    @property
    def _game_name(self) -> str:
        return type(self.game).__name__

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state_dict``'s output, saved by a solver of the same class on a game of
        the same class (its follower's parameters of the same shapes).

        Raises:
            TypeError: ``state`` is not a mapping.
            ValueError: it was saved by another solver or on another game (both named), or
                lacks the step count.
        """
        if not isinstance(state, Mapping):
            raise TypeError(
                f"{self.name}.load_state_dict takes what a solver's state_dict() returned (a "
                f"dict), got {type(state).__name__}"
            )
        solver, game = state.get("solver", self.name), state.get("game", self._game_name)
        if (solver, game) != (self.name, self._game_name):
            raise ValueError(
                f"the state was saved by {solver} on a {game}; this is {self.name} on a "
                f"{self._game_name}: a state loads only into the solver and game that saved it"
            )
        if "steps_taken" not in state:
            raise ValueError(
                f"the state lacks 'steps_taken' (keys: {sorted(state)}): pass what "
                f"{self.name}.state_dict() returned"
            )
        self.steps_taken = int(state["steps_taken"])
        counts = state.get("evaluations", {})  # absent from states saved before the count
        self.evaluations = {k: int(counts.get(k, 0)) for k in self.evaluations}

    def _matching(self, name: str, saved: Sequence[Tensor]) -> TensorTuple:
        """``saved`` tensors shaped like the follower's parameters, on their device/dtype."""
        params = self.follower_params()
        shapes = [tuple(p.shape) for p in params]
        if [tuple(t.shape) for t in saved] != shapes:
            raise ValueError(
                f"the state's {name} was saved for a follower of shapes "
                f"{[tuple(t.shape) for t in saved]}; this {self._game_name}'s follower has "
                f"{shapes}: the state comes from another model size"
            )
        return tuple(t.to(p.device, p.dtype).clone() for t, p in zip(saved, params, strict=True))


class HypergradientSolver(Solver):
    """A solver whose leader descends a hypergradient and whose follower then takes
    ``follower_steps`` gradient steps on ``h`` with its own optimizer.

    Subclasses implement ``_hypergradient``, returning the hypergradient (one tensor per
    leader parameter) and its diagnostics, tensors left on the device: ``step`` reads them
    with the follower's in one transfer. Their options are ``HypergradientOptions``, which
    declare ``follower_steps``.
    """

    Options: ClassVar[type[HypergradientOptions]] = HypergradientOptions
    options: HypergradientOptions

    @property
    def follower_steps(self) -> int:
        return self.options.follower_steps

    def _hypergradient(self, batch: Any) -> tuple[TensorTuple, dict[str, Tensor | float]]:
        raise NotImplementedError

    def hypergradient(self, batch: Any = None) -> TensorTuple:
        """The leader's hypergradient at the current point, one tensor per leader parameter
        in ``leader.parameters()`` order; changes no parameter, gradient, optimizer or buffer."""
        with preserved_buffers(self.game):
            hypergrad, _ = self._hypergradient(batch)
        self._handover = None
        self.read_floats({})  # raises if a loss it evaluated was not finite
        return hypergrad

    #: Set by ``_hypergradient`` to a follower point the follower then takes (the last inner
    #: iterate, ITD/AID style) before its own ``follower_steps``; ``None`` keeps it in place.
    _handover: TensorTuple | None = None

    @property
    def follower_first(self) -> bool:
        """Whether the follower's steps come before the hypergradient (AID's order); a
        solver with that option (TotalGradient) overrides this."""
        return False

    def step(self, batch: Any = None) -> StepInfo:
        self._handover = None
        if self.follower_first:
            follower = self._follower_steps(batch, self.follower_steps)
            hypergrad, values = self._hypergradient(batch)
            self.apply_updates((self.leader_optimizer, self.leader_params(), hypergrad))
            self.steps_taken += 1
            return self.read_floats({**follower, **values})
        hypergrad, values = self._hypergradient(batch)
        self.apply_updates((self.leader_optimizer, self.leader_params(), hypergrad))
        if self._handover is not None:
            with torch.no_grad():
                for p, t in zip(self.follower_params(), self._handover, strict=True):
                    p.copy_(t)
                self.game.project()
            self._handover = None
        if self.follower_steps:
            values.update(self._follower_steps(batch, self.follower_steps))
        self.steps_taken += 1
        return self.read_floats(values)
