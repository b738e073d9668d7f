"""The interface every solver shares, and helpers on tuples of tensors.

A solver is built as ``Solver(game, leader_optimizer, follower_optimizer, **options)`` and
advanced by ``Solver.step``. It computes update directions for the players, writes them
into the parameters' ``.grad`` and lets the given ``torch.optim`` optimizers apply them, so
momentum, Adam, weight decay and learning-rate schedulers behave as usual; the game's
``project`` hook runs after every update.

Parameters travel between the helpers as tuples of tensors in ``module.parameters()`` order
(trainable parameters only).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple, TypeVar

import torch
from torch import Tensor

from stackelberg.game import (
    BilevelBatch,
    Game,
    batch_for,
    check_finite_losses,
    checked_loss,
    functional_view,
    trainable_parameters,
)

__all__ = [
    "HypergradientSolver",
    "ImplicitTerms",
    "Solver",
    "SolverOptions",
    "StepInfo",
    "TensorTuple",
    "check_choice",
    "check_int",
    "check_positive",
    "detached",
    "gradients",
    "host_read",
    "preserved_buffers",
    "tree_add",
    "tree_dot",
    "tree_norm",
    "tree_scale",
]

TensorTuple = tuple[Tensor, ...]
StepInfo = dict[str, float]
_Options = TypeVar("_Options", bound="SolverOptions")


class ImplicitTerms(NamedTuple):
    """What ``Solver.implicit_terms`` returns."""

    w: TensorTuple
    theta: TensorTuple
    leader_loss: Tensor
    grad_w_l: TensorTuple
    grad_theta_l: TensorTuple
    follower_loss: Tensor
    grad_theta_h: TensorTuple  # differentiable in (w, θ)


def tree_dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    """``Σᵢ ⟨aᵢ, bᵢ⟩``: the inner product of two parameter tuples, as a 0-d tensor."""
    if not a:
        raise ValueError("cannot take the inner product of empty parameter tuples")
    return sum((torch.sum(x * y) for x, y in zip(a, b, strict=True)), start=a[0].new_zeros(()))


def tree_norm(a: Sequence[Tensor]) -> Tensor:
    """The Euclidean norm of a parameter tuple seen as one flat vector."""
    return torch.sqrt(tree_dot(a, a))


def tree_add(a: Sequence[Tensor], b: Sequence[Tensor], alpha: float | Tensor = 1.0) -> TensorTuple:
    """``a + alpha·b``, elementwise over the tuple."""
    return tuple(x + alpha * y for x, y in zip(a, b, strict=True))


def tree_scale(a: Sequence[Tensor], alpha: float | Tensor) -> TensorTuple:
    """``alpha·a``, elementwise over the tuple."""
    return tuple(alpha * x for x in a)


def gradients(
    output: Tensor | Sequence[Tensor],
    inputs: Sequence[Tensor],
    grad_outputs: Sequence[Tensor] | None = None,
    *,
    create_graph: bool = False,
    retain_graph: bool | None = None,
) -> TensorTuple:
    """``torch.autograd.grad`` where an input the output does not depend on gets zeros.

    Also accepts outputs that do not require grad at all (for example a gradient that is
    constant in the inputs, whose own derivative is then zero).
    """
    outputs = [output] if isinstance(output, Tensor) else list(output)
    if grad_outputs is not None:
        pairs = [(o, g) for o, g in zip(outputs, grad_outputs, strict=True) if o.requires_grad]
        outputs = [o for o, _ in pairs]
        grad_outputs = [g for _, g in pairs]
    else:
        outputs = [o for o in outputs if o.requires_grad]
    if not outputs:
        return tuple(torch.zeros_like(x) for x in inputs)
    grads = torch.autograd.grad(
        outputs,
        list(inputs),
        grad_outputs=grad_outputs,
        create_graph=create_graph,
        retain_graph=retain_graph,
        allow_unused=True,
    )
    return tuple(
        torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs, strict=True)
    )


def detached(batch: Any) -> Any:
    """``batch`` with every tensor detached from the graph: tensors, tuples, lists, dicts and
    objects with a ``detach()`` method (such as a game's cached batch) are handled; anything
    else is returned as is."""
    if isinstance(batch, BilevelBatch):
        return BilevelBatch(detached(batch.leader), detached(batch.follower))
    if isinstance(batch, Tensor) or callable(getattr(batch, "detach", None)):
        return batch.detach()
    if isinstance(batch, tuple | list):
        return type(batch)(detached(b) for b in batch)
    if isinstance(batch, dict):
        return {k: detached(v) for k, v in batch.items()}
    return batch


@contextlib.contextmanager
def preserved_buffers(game: Game) -> Iterator[None]:
    """Restore every buffer of ``game`` (e.g. BatchNorm statistics) on exit."""
    saved = [(b, b.detach().clone()) for b in game.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, copy in saved:
                buffer.copy_(copy)


@contextlib.contextmanager
def host_read() -> Iterator[None]:
    """Mark a deliberate read of device values by the host (a synchronization on a GPU).

    A solver step reads the device only inside this context: once to check every loss and
    update direction of the step before applying it, once for its diagnostics. Under
    ``torch.cuda.set_sync_debug_mode("error")`` any other synchronization raises, which is how
    the GPU check proves that no inner loop waits on the device."""
    if not torch.cuda.is_available():
        yield
        return
    mode = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(0)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(mode)


def check_int(name: str, value: Any, minimum: int) -> int:
    """``value`` if it is an integer ``>= minimum``; otherwise a clear error naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return value


def check_positive(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """``value`` as a float if it is positive (or zero where allowed) and finite."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} ({value!r})")
    value = float(value)
    ok = value >= 0 if allow_zero else value > 0
    if not ok or value != value or value == float("inf"):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value}")
    return value


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``; otherwise an error that lists them."""
    if value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {listed}; got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class SolverOptions:
    """Base of the solvers' option records: frozen, and validated once, when built
    (subclasses check their fields in ``validate``)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``TypeError`` / ``ValueError`` naming the first bad field."""

    @classmethod
    def accepted(cls) -> tuple[str, ...]:
        """The option names, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    #: Names other code uses for an option, with what to write here instead: shown when one
    #: of them is refused (``u1`` of the BOME authors' scripts is ``eta`` with ``phi="value"``).
    aliases: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def _check_names(cls, solver: str, names: Sequence[str]) -> None:
        unknown = [n for n in names if n not in cls.accepted()]
        if unknown:
            hints = "".join(f" ({n}: use {cls.aliases[n]})" for n in unknown if n in cls.aliases)
            raise TypeError(
                f"{solver} got unknown option{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(map(repr, unknown))}; it accepts {', '.join(cls.accepted())}{hints}"
            )

    @classmethod
    def resolve(
        cls: type[_Options],
        solver: str,
        options: SolverOptions | None,
        overrides: Mapping[str, Any],
    ) -> _Options:
        """``options`` (default: all defaults) with ``overrides`` applied, checked: unknown
        names and a record of another solver's options are refused with the accepted names."""
        if options is not None and not isinstance(options, cls):
            raise TypeError(f"{solver} takes {cls.__name__}, got {type(options).__name__}")
        cls._check_names(solver, list(overrides))
        if options is None:
            return cls(**overrides)
        return dataclasses.replace(options, **overrides) if overrides else options

    def replace(self: _Options, **changes: Any) -> _Options:
        """A copy with ``changes``, checked like a new record."""
        self._check_names(type(self).__name__, list(changes))
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The options as JSON-ready values (a strategy object as its ``to_dict()``)."""
        return {
            f.name: getattr(v, "to_dict", lambda v=v: v)()
            for f in dataclasses.fields(self)
            for v in (getattr(self, f.name),)
        }


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
        **overrides: options by name, applied on top of ``options``.
    """

    Options: ClassVar[type[SolverOptions]] = SolverOptions

    def __init__(
        self,
        game: Game,
        leader_optimizer: torch.optim.Optimizer,
        follower_optimizer: torch.optim.Optimizer,
        options: SolverOptions | None = None,
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
        #: Averages gradients over data-parallel ranks (``utils.distributed.all_reduce_mean``);
        #: ``None`` in a single process.
        self.gradient_reducer: Callable[[Sequence[Tensor]], TensorTuple] | None = None

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

    def follower_gradient_steps(self, batch: Any, steps: int) -> StepInfo:
        """Take ``steps`` follower-optimizer steps on ``∇_θ h`` at the leader's current point.

        Returns the follower's loss and gradient norm at the last step (before its update).
        """
        last = self._follower_steps(batch, steps)
        return self.read_floats(last) if last else {}

    def _follower_steps(self, batch: Any, steps: int) -> dict[str, Tensor | float]:
        """``follower_gradient_steps`` with its diagnostics left on the device, for a step that
        reads them once with its own."""
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
    ) -> None:
        """Apply ``(optimizer, params, direction)`` updates: write each direction into its
        parameters' ``.grad``, step the optimizer, then project the game.

        Under data parallelism the directions are first averaged over ranks, unless the
        solver built them from averaged gradients already (``synchronized``).

        Every loss evaluated since the last read and every direction is checked before any is
        applied, with one read from the device, so a failure changes nothing.

        Raises:
            ValueError: a loss or a direction is not finite (the loss is named first).
        """
        if not synchronized and self.gradient_reducer is not None:
            updates = tuple((o, p, self.reduce(d)) for o, p, d in updates)
        pending, self._pending_checks = self._pending_checks, []
        flags = [torch.isfinite(v).all() for v, _, _ in pending]
        flags += [torch.stack([torch.isfinite(d).all() for d in u[2]]).all() for u in updates]
        device = flags[0].device if flags else None
        with host_read():
            finite = torch.stack([f.to(device) for f in flags]).tolist() if flags else []
        if not all(finite):
            check_finite_losses(pending)  # names the first non-finite loss, if one is
            for (optimizer, _, _), ok in zip(updates, finite[len(pending) :], strict=True):
                if not ok:
                    role = "leader" if optimizer is self.leader_optimizer else "follower"
                    raise ValueError(
                        f"{self.name} computed a non-finite update for the {role} at step "
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
            "steps_taken": self.steps_taken,
            "evaluations": dict(self.evaluations),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state_dict``'s output (of a solver of the same class)."""
        saved = state.get("solver", self.name)
        if saved != self.name:
            raise ValueError(f"the state is {saved}'s; it cannot be loaded into {self.name}")
        self.steps_taken = int(state["steps_taken"])
        counts = state.get("evaluations", {})  # absent from states saved before the count
        self.evaluations = {k: int(counts.get(k, 0)) for k in self.evaluations}

    def _matching(self, name: str, saved: Sequence[Tensor]) -> TensorTuple:
        """``saved`` tensors shaped like the follower's parameters, on their device/dtype."""
        params = self.follower_params()
        shapes = [tuple(p.shape) for p in params]
        if [tuple(t.shape) for t in saved] != shapes:
            raise ValueError(
                f"saved {name} has shapes {[tuple(t.shape) for t in saved]}, the follower {shapes}"
            )
        return tuple(t.to(p.device, p.dtype).clone() for t, p in zip(saved, params, strict=True))


class HypergradientSolver(Solver):
    """A solver whose leader descends a hypergradient and whose follower then takes
    ``follower_steps`` gradient steps on ``h`` with its own optimizer.

    Subclasses implement ``_hypergradient``, returning the hypergradient (one tensor per
    leader parameter) and its diagnostics, tensors left on the device: ``step`` reads them
    with the follower's in one transfer. Their options carry ``follower_steps``.
    """

    @property
    def follower_steps(self) -> int:
        return int(self.options.follower_steps)  # type: ignore[attr-defined]

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
        """Whether the follower's steps come before the hypergradient (AID's order)."""
        return bool(getattr(self.options, "follower_first", False))

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
