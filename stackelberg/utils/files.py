"""One loader for every file a user hands us: checkpoints, configs, manifests, arrays.

Each reader gives either what the file should hold or a ``FileFormatError``: one line that
names the file, says what it should have been and what is wrong with it. Nothing here runs
code from a file: tensors load with ``torch.load(weights_only=True)``, arrays with
``allow_pickle=False``, and a refusal never suggests loading a file unsafely (torch's own
message, which advises ``weights_only=False``, is never passed on).
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["FileFormatError", "file_sha256", "load_tensors", "read_json_object", "read_npz_arrays"]


class FileFormatError(ValueError):
    """A file exists but is not what it should be (empty, truncated, of another kind, or
    missing a field); the message names the file and what is wrong, in one line."""


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read a megabyte at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _require_file(path: Path, what: str) -> None:
    if path.is_dir():
        raise FileFormatError(f"{path} is a folder, not {what}")
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")


def read_json_object(
    path: str | Path,
    what: str,
    *,
    required: Collection[str] = (),
    is_valid: Callable[[dict[str, Any]], str | None] | None = None,
) -> dict[str, Any]:
    """The JSON object in ``path``, which should be ``what`` (``"a run's config.json"``).

    ``required`` keys must be present; ``is_valid`` returns ``None`` for a good record or a
    phrase saying what is wrong with it.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        FileFormatError: it is a folder, not UTF-8 JSON, not an object, lacks a required key,
            or ``is_valid`` says why it is wrong.
    """
    path = Path(path)
    _require_file(path, what)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise FileFormatError(f"{path} is not {what}: not valid JSON ({error})") from None
    if not isinstance(record, dict):
        raise FileFormatError(
            f"{path} is not {what}: it holds a JSON {type(record).__name__}, not an object"
        )
    missing = [key for key in required if key not in record]
    if missing:
        raise FileFormatError(f"{path} is not {what}: it lacks {', '.join(map(repr, missing))}")
    problem = None if is_valid is None else is_valid(record)
    if problem is not None:
        raise FileFormatError(f"{path} is not {what}: {problem}")
    return record


def load_tensors(path: str | Path, what: str, *, map_location: str | torch.device = "cpu") -> Any:
    """What ``torch.save`` wrote to ``path``, loaded with ``weights_only=True`` (tensors,
    numbers, strings and containers only).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        FileFormatError: it is a folder, empty, truncated, or holds anything else (a pickled
            object, random bytes); the message names the file and never suggests an unsafe
            load.
    """
    path = Path(path)
    _require_file(path, what)
    if path.stat().st_size == 0:
        raise FileFormatError(f"{path} is not {what}: the file is empty; it was not loaded")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many types here: EOF, unpickling, zip errors
        raise FileFormatError(
            f"{path} is not {what} (truncated, damaged or not written by stackelberg: "
            f"{type(error).__name__}); it was not loaded"
        ) from None


def read_npz_arrays(path: str | Path, what: str, names: Collection[str]) -> dict[str, np.ndarray]:
    """The arrays ``names`` of the ``.npz`` file ``path`` (``allow_pickle=False``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        FileFormatError: it is not a readable ``.npz``, lacks one of ``names``, or stores one
            as Python objects.
    """
    path = Path(path)
    _require_file(path, what)
    try:
        with np.load(path, allow_pickle=False) as stored:
            missing = [name for name in names if name not in stored.files]
            if missing:
                raise FileFormatError(
                    f"{path} is not {what}: it lacks the array(s) {', '.join(missing)}"
                )
            return {name: stored[name] for name in names}
    except FileFormatError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        if "allow_pickle" in reason:
            reason = "an array is stored as Python objects"
        raise FileFormatError(f"{path} is not {what}: {reason}") from None
