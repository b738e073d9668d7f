"""The generator checkpoint format: ``NAME.pt`` holds the state dict (tensors only, loaded with
``weights_only=True``), ``NAME.json`` beside it the metadata that rebuilds the module
(``architecture``, ``epsilon``, ``in_channels``, ``label_conditioned``, ``num_classes``, and
``achromatic``, false when absent, as in files written before it existed) plus whatever the
writer adds (solver, dataset, epoch, seed, metrics). Loading never executes code
from either file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stackelberg.checks import check_epsilon
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
    """Rebuild a generator saved by ``save_generator``; returns it (eval mode) and its
    metadata. Raises ``FileNotFoundError`` or ``ValueError`` naming what is missing or wrong."""
    from stackelberg.unlearnable.architectures import build_generator

    path = Path(path)
    meta_path = _metadata_path(path)
    for needed in (path, meta_path):
        if not needed.is_file():
            raise FileNotFoundError(f"generator checkpoint file {needed} does not exist")
    try:
        metadata = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{meta_path} is not valid JSON: {error}") from error
    if not isinstance(metadata, dict):
        raise ValueError(f"{meta_path} must hold a JSON object, got {type(metadata).__name__}")
    missing = [key for key in _REQUIRED if key not in metadata]
    if missing:
        raise ValueError(f"{meta_path} lacks {', '.join(missing)}")
    _check_metadata(metadata, meta_path)
    generator = build_generator(
        metadata["architecture"],
        metadata["epsilon"],
        metadata["in_channels"],
        num_classes=metadata["num_classes"] if metadata["label_conditioned"] else None,
        achromatic=metadata.get("achromatic", False),
    )
    state = _load_state(path)
    try:
        generator.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as error:
        architecture = metadata["architecture"]
        raise ValueError(f"{path} does not hold a {architecture} generator: {error}") from error
    broken = [name for name, t in state.items() if t.is_floating_point() and not t.isfinite().all()]
    if broken:
        raise ValueError(
            f"{path} holds non-finite weights (NaN or infinity in {', '.join(broken[:3])}): "
            "the generator is broken and would not respect the budget; retrain or restore it"
        )
    return generator.to(map_location).eval(), metadata


def _check_metadata(metadata: dict[str, Any], meta_path: Path) -> None:
    """Each field that rebuilds the generator has the right type; errors name file and field."""
    try:
        check_epsilon(
            metadata["epsilon"],
            name="the field 'epsilon'",
            source=str(meta_path),
            whole_level=True,
        )
    except TypeError as error:  # a wrong type in a file is bad data, not a programming error
        raise ValueError(str(error)) from None
    for key in ("in_channels", "num_classes"):
        value = metadata[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f"{meta_path}: the field {key!r} must be a positive integer, got {value!r}"
            )
    for key in ("label_conditioned", "achromatic"):
        value = metadata.get(key, False)
        if not isinstance(value, bool):
            raise ValueError(f"{meta_path}: the field {key!r} must be true or false, got {value!r}")
    if not isinstance(metadata["architecture"], str):
        value = metadata["architecture"]
        raise ValueError(f"{meta_path}: the field 'architecture' must be a string, got {value!r}")


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in ``path``, loaded with ``weights_only=True``; a file that is not one
    is an error naming the file (never a hint to load it unsafely)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types here: EOF, unpickling, zip errors
        raise ValueError(
            f"{path} is not a readable generator state dict (empty, truncated or not written "
            f"by stackelberg: {type(error).__name__}); it was not loaded"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return state
