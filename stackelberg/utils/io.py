"""Atomic file writes: write to a temporary file in the target's folder, then rename it into
place, so an interruption leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

__all__ = ["atomic_directory", "atomic_path", "write_json", "write_text", "write_torch"]


def _default_mode(base: int) -> int:
    """``base`` masked by the process umask: the mode ``open()`` would have given."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path next to ``path``; renamed to ``path`` if the block succeeds, removed
    otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _default_mode(0o666))  # mkstemp makes it owner-only
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_directory(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """A temporary folder next to ``path``, renamed to ``path`` if the block succeeds.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is off.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; choose another output or allow overwriting")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, _default_mode(0o777))  # mkdtemp makes it owner-only
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON to ``path`` atomically."""
    write_text(path, json.dumps(payload, indent=2) + "\n")


def write_torch(path: str | Path, state: Any) -> None:
    """``torch.save`` ``state`` to ``path`` atomically (load it with ``weights_only=True``)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
