"""Import paths of 0.1 that moved, kept working for one release with a ``DeprecationWarning``.

The unlearnable-example application moved from ``stackelberg.games.unlearnable`` to its own
wing, ``stackelberg.unlearnable``, and its command line from ``stackelberg.cli`` to
``stackelberg.unlearnable.cli``. A finder on ``sys.meta_path`` answers the old names with the
new modules themselves (the same objects, so ``isinstance`` and monkeypatching agree), and
``python -m stackelberg.cli`` still runs the command.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from collections.abc import Sequence
from types import CodeType, FrameType, ModuleType

__all__ = ["MOVED", "install"]

#: Old name prefix → new one.
MOVED = {
    "stackelberg.games.unlearnable": "stackelberg.unlearnable",
    "stackelberg.cli": "stackelberg.unlearnable.cli",
}


def new_name(fullname: str) -> str | None:
    """Where the module ``fullname`` lives now, or ``None`` if it did not move."""
    for old, new in MOVED.items():
        if fullname == old or fullname.startswith(old + "."):
            return new + fullname[len(old) :]
    return None


class _AliasLoader(importlib.abc.Loader):
    """Loads an old name as the module at its new one."""

    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(self.target)

    def exec_module(self, module: ModuleType) -> None:
        """Nothing: the module was executed under its new name."""

    def get_code(self, fullname: str) -> CodeType | None:
        """The new module's code, for ``python -m`` under the old name."""
        spec = importlib.util.find_spec(self.target)
        loader = None if spec is None else spec.loader
        get_code = getattr(loader, "get_code", None)
        return None if get_code is None else get_code(self.target)


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        new = new_name(fullname)
        if new is None:
            return None
        warnings.warn(
            f"{fullname} moved to {new} (the unlearnable-example application has its own "
            f"package); the old path works until the next release",
            DeprecationWarning,
            stacklevel=_importer_level(),
        )
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(new))


def _importer_level() -> int:
    """The ``stacklevel`` of the code whose import statement named the old path (past this
    module and importlib's own frames), so that the warning is attributed to it."""
    frame: FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and (
        frame.f_code.co_filename == __file__ or frame.f_code.co_filename.startswith("<frozen")
    ):
        frame, level = frame.f_back, level + 1
    return level


def install() -> None:
    """Put the finder first on ``sys.meta_path``, once: before the path finder, which would
    otherwise load a second copy of a moved submodule under its old name."""
    if not any(isinstance(finder, _MovedFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _MovedFinder())
