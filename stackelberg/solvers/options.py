"""Option records: each solver's options as a frozen, typed record, validated once when
built (as Optimistix and Lineax check their solvers' fields)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, TypeVar

from stackelberg.checks import check_int, check_known

__all__ = ["HypergradientOptions", "SolverOptions"]

_Options = TypeVar("_Options", bound="SolverOptions")


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
        check_known(solver, names, cls.accepted(), hints=cls.aliases)

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


class HypergradientOptions(SolverOptions):
    """Options of a ``HypergradientSolver`` (BackGradient, TotalGradient): they declare
    ``follower_steps``, the follower-optimizer steps on ``h`` per outer step (``>= 0``), which
    the shared step reads and this ``validate`` checks.

    Not a dataclass itself: each subclass declares ``follower_steps`` as its own field, where
    its documentation and position belong, and calls ``super().validate()``.
    """

    follower_steps: int

    def validate(self) -> None:
        check_int("follower_steps", self.follower_steps, 0)
