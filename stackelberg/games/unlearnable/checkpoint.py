"""The generator checkpoint format: ``NAME.pt`` holds the state dict (tensors only, loaded with
``weights_only=True``), ``NAME.json`` beside it the metadata that rebuilds the module
(``architecture``, ``epsilon``, ``in_channels``, ``label_conditioned``, ``num_classes``) plus
whatever the writer adds (solver, dataset, epoch, seed, metrics). Loading never executes code
from either file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stackelberg.utils.io import write_json, write_torch

__all__ = ["load_generator", "save_generator"]

_REQUIRED = ("architecture", "epsilon", "in_channels", "label_conditioned", "num_classes")


def _metadata_path(path: Path) -> Path:
    return path.with_suffix(".json")


def save_generator(path: str | Path, generator: nn.Module, metadata: dict[str, Any]) -> None:
    """Write ``generator``'s state dict to ``path`` and ``metadata`` to ``path`` with a
    ``.json`` suffix, both atomically. ``metadata`` must name the fields that rebuild it."""
    missing = [key for key in _REQUIRED if key not in metadata]
    if missing:
        raise ValueError(f"generator metadata lacks {', '.join(missing)}")
    path = Path(path)
    write_torch(path, {k: v.detach().cpu() for k, v in generator.state_dict().items()})
    write_json(_metadata_path(path), metadata)


def load_generator(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a generator saved by :func:`save_generator`; returns it (eval mode) and its
    metadata. Raises ``FileNotFoundError`` or ``ValueError`` naming what is missing or wrong."""
    from stackelberg.games.unlearnable.presets import build_generator

    path = Path(path)
    meta_path = _metadata_path(path)
    for needed in (path, meta_path):
        if not needed.is_file():
            raise FileNotFoundError(f"generator checkpoint file {needed} does not exist")
    try:
        metadata = json.loads(meta_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{meta_path} is not valid JSON: {error}") from error
    missing = [key for key in _REQUIRED if key not in metadata]
    if missing:
        raise ValueError(f"{meta_path} lacks {', '.join(missing)}")
    generator = build_generator(
        metadata["architecture"],
        float(metadata["epsilon"]),
        int(metadata["in_channels"]),
        num_classes=int(metadata["num_classes"]) if metadata["label_conditioned"] else None,
    )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
        generator.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as error:
        architecture = metadata["architecture"]
        raise ValueError(f"{path} does not hold a {architecture} generator: {error}") from error
    return generator.to(map_location).eval(), metadata
