"""Writers replace only what they wrote, and never write into what they read.

Every command that writes (``poison``, ``evaluate``, ``protect``, ``train``) calls these
checks before its first byte:

- ``check_disjoint``: no output path equals, contains or lies inside an input path,
  with symbolic links resolved, so a command can never overwrite or delete its own data;
- ``owned_json``: an existing JSON file is replaced only if it is a record this tool
  wrote (a manifest or report whose fields say so); anything else is refused, even with
  ``--overwrite``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from stackelberg.utils.files import read_json_object

__all__ = ["OwnershipError", "check_disjoint", "owned_json"]


class OwnershipError(FileExistsError):
    """Writing would replace or delete something the command did not write."""


def _overlap(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def check_disjoint(inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` if an output path equals, contains or lies inside an input
    path (links resolved). ``inputs`` and ``outputs`` map a name (``"--data-dir"``) to a path
    or ``None`` (skipped)."""
    for out_name, out_path in outputs.items():
        if out_path is None:
            continue
        out_resolved = Path(out_path).expanduser().resolve()
        for in_name, in_path in inputs.items():
            if in_path is None:
                continue
            in_resolved = Path(in_path).expanduser().resolve()
            if _overlap(out_resolved, in_resolved):
                raise ValueError(
                    f"{out_name} {out_path} overlaps {in_name} {in_path} ({out_resolved} and "
                    f"{in_resolved}): outputs must lie outside every input; choose another "
                    f"{out_name}"
                )


def owned_json(
    path: Path, is_ours: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, Any] | None:
    """The record at ``path`` if it exists and is a JSON record this tool wrote (``is_ours``
    says so), read once through the one loader; ``None`` if nothing is there.

    Raises ``OwnershipError`` if something is there but is not ours (not a file, not JSON, or
    JSON of another kind): ``what`` names the command's record in the message.
    """
    if not path.exists() and not path.is_symlink():
        return None
    try:
        record = read_json_object(path, what)
    except (OSError, ValueError):  # a folder, a dangling link, not UTF-8 JSON, not an object
        record = None
    if record is None or path.is_symlink() or not is_ours(record):
        raise OwnershipError(
            f"{path} exists and is not {what}: it was not written by this command, so it is "
            "never replaced (not even with --overwrite); choose another output"
        )
    return record
