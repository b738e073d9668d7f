"""Atomic writes: all or nothing, no temporary files left behind, ordinary permissions."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from stackelberg.utils.io import atomic_directory, atomic_path, write_json, write_torch


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text().strip().startswith("{") and '"a": 1' in target.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_files_and_folders_get_the_umask_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "m.json", {})
        with atomic_directory(tmp_path / "pngs") as folder:
            (folder / "x.png").write_bytes(b"")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "pngs").stat().st_mode) == 0o755


def test_atomic_directory_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    with atomic_directory(tmp_path / "out") as folder:
        (folder / "a").write_text("1")
    with pytest.raises(FileExistsError), atomic_directory(tmp_path / "out"):
        pass
    with atomic_directory(tmp_path / "out", overwrite=True) as folder:
        (folder / "b").write_text("2")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_write_torch_loads_with_weights_only(tmp_path: Path) -> None:
    write_torch(tmp_path / "c.pt", {"w": torch.arange(3), "epoch": 2})
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    assert torch.equal(state["w"], torch.arange(3)) and state["epoch"] == 2
