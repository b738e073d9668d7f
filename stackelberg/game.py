"""The game API: a leader and a follower, each minimizing its own loss.

A Stackelberg game (bilevel problem) with leader parameters ``w`` and follower parameters
``θ`` reads

    min_w  l(w, θ*(w))   subject to   θ*(w) ∈ argmin_θ h(w, θ),

where ``l`` is ``Game.leader_loss`` and ``h`` is ``Game.follower_loss``. The players
are ordinary ``torch.nn.Module`` objects; a solver may evaluate the losses at parameter
values other than the modules' own by handing the losses *functional views* of the modules
(``functional_view``, built on ``torch.func.functional_call``), so the losses must be
pure functions of the callables and the batch they are given.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "BilevelBatch",
    "FunctionalView",
    "Game",
    "Indexed",
    "Variable",
    "batch_for",
    "check_finite_losses",
    "checked_loss",
    "functional_view",
    "trainable_parameters",
]


class Variable(nn.Module):
    """A player whose strategy is a plain tensor.

    ``Variable(t)`` holds one parameter, ``value``, initialised with a copy of ``t``; calling the
    module returns it. Use it for games whose players are vectors rather than networks:

    ```python
    leader = sg.Variable(torch.zeros(2))
    leader.value      # the parameter
    leader()          # the same tensor, as the losses see it
    ```
    """

    def __init__(self, value: Tensor | Sequence[float] | float) -> None:
        super().__init__()
        try:
            tensor = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(
                f"Variable needs a number, a sequence of numbers or a tensor, got "
                f"{type(value).__name__} {value!r:.60}"
            ) from None
        if tensor.is_complex() or tensor.dtype == torch.bool:
            raise TypeError(f"Variable needs real numbers, got a {tensor.dtype} tensor")
        if not tensor.is_floating_point():
            tensor = tensor.to(torch.get_default_dtype())
        self.value = nn.Parameter(tensor.detach().clone())

    def forward(self) -> Tensor:
        return self.value

    def extra_repr(self) -> str:
        return f"shape={tuple(self.value.shape)}, dtype={self.value.dtype}"


@dataclass(frozen=True)
class BilevelBatch:
    """One outer step's data when the two players' losses read different data sets.

    A real bilevel problem judges the leader on one data set (clean validation data) and
    trains the follower on another (noisy training data). ``sg.solve(game, solver,
    leader_data=..., follower_data=...)`` draws a batch from each stream, independently, and
    hands the solver ``BilevelBatch(leader=..., follower=...)``; every solver then gives
    ``leader_loss`` the ``leader`` part and ``follower_loss`` (and ``Game.follower_batch``)
    the ``follower`` part. A game therefore never sees this class: each loss receives its own
    batch, as if the other data set did not exist.
    """

    leader: Any
    follower: Any

    def part(self, loss: str) -> Any:
        """The batch ``loss`` (``"leader_loss"`` or ``"follower_loss"``) reads."""
        return self.leader if loss == "leader_loss" else self.follower


@dataclass(frozen=True)
class Indexed:
    """Block ``index`` of a fixed partition of a finite data set, and its ``batch``.

    What a variance-reduced solver (``SABA``) keeps one memory entry per; every loss receives
    ``batch`` itself (``batch_for`` unwraps it), so games and the other solvers never see this
    class. ``TensorBatches(..., fixed_blocks=True)`` yields them.
    """

    index: int
    batch: Any


def batch_for(loss: str, batch: Any) -> Any:
    """What ``loss`` is given from an outer step's ``batch``: its own part of a
    ``BilevelBatch``, or the batch itself (both losses share one data set); an ``Indexed``
    block gives its batch."""
    part = batch.part(loss) if isinstance(batch, BilevelBatch) else batch
    return part.batch if isinstance(part, Indexed) else part


class Game(nn.Module):
    """Base class of a two-player leader/follower game.

    Subclasses define ``leader_loss`` ``l(w, θ)`` and ``follower_loss`` ``h(w, θ)``;
    each player minimizes its own. ``leader`` and ``follower`` are registered as submodules, so
    ``game.to(device, dtype)`` moves both players and any constants the game registers as
    buffers (``self.register_buffer("A", A)``).

    An optional ``project`` hook runs after every parameter update (for example to clamp a
    strategy to a box); it is a no-op by default.

    Raises:
        TypeError: a player is not an ``nn.Module``.
        ValueError: a player has no parameter that requires grad, the two players share a
            parameter, or their parameters sit on different devices.
    """

    leader: nn.Module
    follower: nn.Module

    def __init__(self, leader: nn.Module, follower: nn.Module) -> None:
        super().__init__()
        for role, module in (("leader", leader), ("follower", follower)):
            if not isinstance(module, nn.Module):
                raise TypeError(
                    f"the {role} must be a torch.nn.Module (wrap a tensor in "
                    f"stackelberg.Variable), got {type(module).__name__}"
                )
        self.leader = leader
        self.follower = follower
        self.check_players()

    def leader_loss(
        self, leader: Callable[..., Any], follower: Callable[..., Any], batch: Any
    ) -> Tensor:
        """The leader's loss ``l(w, θ)`` on ``batch``: a scalar tensor the leader minimizes."""
        raise NotImplementedError(f"{type(self).__name__} must define leader_loss")

    def follower_loss(
        self, leader: Callable[..., Any], follower: Callable[..., Any], batch: Any
    ) -> Tensor:
        """The follower's loss ``h(w, θ)`` on ``batch``: a scalar tensor the follower minimizes."""
        raise NotImplementedError(f"{type(self).__name__} must define follower_loss")

    def follower_batch(self, leader: Callable[..., Any], batch: Any) -> Any:
        """The batch the follower's loss is given, with the leader's work on it done once.

        A game whose follower loss runs the leader on the data (a perturbation generator)
        returns the leader's output here, and ``follower_loss`` must then accept both
        forms. Solvers use it in two ways:

        - under ``torch.no_grad()``, for steps at a fixed leader (BOME's inner loop,
          follower-only steps): the leader then runs once per outer step instead of once per
          follower step;
        - with grad, when several follower losses at one leader point must still be
          differentiated in the leader (BOME's ``h(w, θ)`` and ``h(w, θ^T)``): they share one
          leader forward and backward pass, by the chain rule.

        So the result must stay differentiable in the leader's parameters (do not detach it).
        The default returns ``batch`` unchanged.
        """
        return batch

    def project(self) -> None:
        """Map the players back onto their feasible sets; called without grad after each update."""

    def check_players(self) -> None:
        """Check that both players have trainable parameters, share none, and sit on one device.

        Solvers call this when they are built, so a game moved with ``.to()`` after construction
        is checked again.
        """
        leader_params = [p for p in self.leader.parameters() if p.requires_grad]
        follower_params = [p for p in self.follower.parameters() if p.requires_grad]
        for role, params in (("leader", leader_params), ("follower", follower_params)):
            if not params:
                raise ValueError(f"the {role} has no parameters that require grad")
            for p in params:
                if not p.is_floating_point():
                    raise TypeError(
                        f"the {role}'s parameters must be floating point, got {p.dtype}"
                    )
        if {id(p) for p in leader_params} & {id(p) for p in follower_params}:
            raise ValueError("the leader and the follower share a parameter; give each its own")
        devices = {("leader", p.device) for p in leader_params}
        devices |= {("follower", p.device) for p in follower_params}
        if len({device for _, device in devices}) > 1:
            found = ", ".join(sorted(f"{role} on {device}" for role, device in devices))
            raise ValueError(
                f"the players' parameters are on different devices ({found}); "
                "move the game with game.to(device)"
            )


class FunctionalView:
    """A module called with other parameter values: ``view(*args)`` runs ``module``'s forward
    with ``params`` in place of its trainable parameters (``torch.func.functional_call``).

    ``view.parameters()`` returns those tensors, so a loss can regularize the parameters it is
    evaluated at (``sum(p.pow(2).sum() for p in follower.parameters())``) whether it receives
    the module itself or a view. Attributes read through the view are the view's too: a
    trainable parameter ``view.weight`` is the substituted tensor, a submodule ``view.encoder``
    is a view of it with its share of ``params``, and anything else (buffers, frozen
    parameters, plain attributes) is the module's own. So a loss may read ``leader.labels`` or
    call ``leader.encoder(x)`` on the argument it is given, never on ``self``.
    """

    def __init__(self, module: nn.Module, params: Sequence[Tensor]) -> None:
        names = [name for name, p in module.named_parameters() if p.requires_grad]
        if len(names) != len(params):
            raise ValueError(
                f"{type(module).__name__} has {len(names)} trainable parameters, got {len(params)}"
            )
        self.module = module
        self._params = tuple(params)
        self._mapping = dict(zip(names, self._params, strict=True))
        # At the module's own tensors the view is the module: call it without the
        # reparametrization (same result, less per-call overhead).
        own = dict(module.named_parameters())
        self._is_module = all(own[n] is t for n, t in self._mapping.items())

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._is_module:
            return self.module(*args, **kwargs)
        return torch.func.functional_call(self.module, self._mapping, args, kwargs)

    def parameters(self) -> Iterator[Tensor]:
        """The tensors used as the module's trainable parameters, in its order."""
        return iter(self._params)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name == "module":
            raise AttributeError(name)
        mapping = self.__dict__["_mapping"]
        if name in mapping:
            return mapping[name]
        value = getattr(self.__dict__["module"], name)
        if isinstance(value, nn.Module):
            prefix = f"{name}."
            shared = [t for key, t in mapping.items() if key.startswith(prefix)]
            if shared:
                return FunctionalView(value, shared)
        return value


def functional_view(module: nn.Module, params: Sequence[Tensor]) -> FunctionalView:
    """A callable with ``module``'s forward signature that uses ``params`` as its parameters.

    ``params`` are in ``module.parameters()`` order (trainable ones only, see
    ``trainable_parameters``); buffers and frozen parameters are the module's own. The view
    is differentiable with respect to ``params``.
    """
    return FunctionalView(module, params)


def trainable_parameters(module: nn.Module) -> tuple[Tensor, ...]:
    """The parameters of ``module`` that require grad, in ``module.parameters()`` order."""
    return tuple(p for p in module.parameters() if p.requires_grad)


def checked_loss(
    value: Any, name: str, where: str, *, requires_grad: bool = True, check_finite: bool = True
) -> Tensor:
    """Return ``value`` as a 0-d tensor, or raise an error that names the loss and the step.

    Args:
        value: what a game's loss method returned.
        name: ``"leader_loss"`` or ``"follower_loss"``.
        where: the solver and step it was evaluated at, e.g. ``"BOME inner step 3"``.
        requires_grad: whether the loss must depend on a parameter (it was evaluated under
            autograd with respect to the players).
        check_finite: whether to check here that the value is finite. That reads the value
            back to the host (a device synchronization); a solver that evaluates many losses
            in a loop passes ``False`` and checks them all at once with
            ``check_finite_losses``.
    """
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must return a tensor, got {type(value).__name__} ({where})")
    if value.numel() != 1:
        raise ValueError(
            f"{name} must return a scalar tensor, got shape {tuple(value.shape)} ({where}); "
            "reduce it, e.g. with .mean()"
        )
    if not value.is_floating_point():
        raise TypeError(f"{name} must return a floating-point tensor, got {value.dtype} ({where})")
    if check_finite:
        check_finite_losses([(value, name, where)])
    if requires_grad and not value.requires_grad:
        raise ValueError(
            f"{name} does not depend on any parameter ({where}); did it call .detach() or .item()?"
        )
    return value.reshape(())


def check_finite_losses(losses: Sequence[tuple[Tensor, str, str]]) -> None:
    """Check that every ``(value, name, where)`` holds a finite value, with one read-back.

    The values are stacked on their device and copied to the host once, so a loop of ``n``
    losses costs one synchronization instead of ``n``. The error names the first non-finite
    loss, as ``checked_loss`` does.

    Raises:
        ValueError: a value is NaN or infinite.
    """
    if not losses:
        return
    values = torch.stack([v.detach().reshape(()).to(torch.float64) for v, _, _ in losses])
    if bool(torch.isfinite(values).all()):
        return
    numbers = values.tolist()
    for number, (_, name, where) in zip(numbers, losses, strict=True):
        if not math.isfinite(number):
            raise ValueError(f"{name} is not finite ({number}) at {where}")
