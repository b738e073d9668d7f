"""The generator checkpoint format: ``NAME.pt`` holds the state dict (tensors only, loaded with
``weights_only=True``), ``NAME.json`` beside it the metadata that rebuilds the module
(``architecture``, ``epsilon``, ``in_channels``, ``label_conditioned``, ``num_classes``, and
``achromatic``, false when absent, as in files written before it existed) plus whatever the
writer adds (solver, dataset, epoch, seed, metrics). Loading never executes code
from either file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from stackelberg.checks import check_epsilon
from stackelberg.unlearnable.architectures import GENERATORS, build_generator
from stackelberg.utils.files import FileFormatError, load_tensors, read_json_object
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
    path = Path(path)
    meta_path = _metadata_path(path)
    for needed in (path, meta_path):
        if not needed.exists():
            raise FileNotFoundError(f"generator checkpoint file {needed} does not exist")
    metadata = read_json_object(meta_path, "a generator's metadata", required=_REQUIRED)
    _check_metadata(metadata, meta_path)
    state = _load_state(path)
    generator = build_generator(
        metadata["architecture"],
        metadata["epsilon"],
        metadata["in_channels"],
        num_classes=metadata["num_classes"] if metadata["label_conditioned"] else None,
        achromatic=metadata.get("achromatic", False),
    )
    try:
        generator.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError):
        raise FileFormatError(
            f"{path} does not fit {meta_path.name}: {_state_mismatch(generator, state)}"
        ) from None
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
        raise FileFormatError(str(error)) from None
    for key, largest in (("in_channels", 4), ("num_classes", 100_000)):
        value = metadata[key]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= largest:
            raise FileFormatError(
                f"{meta_path}: the field {key!r} must be a whole number from 1 to {largest}, "
                f"got {value!r}"
            )
    for key in ("label_conditioned", "achromatic"):
        value = metadata.get(key, False)
        if not isinstance(value, bool):
            raise FileFormatError(
                f"{meta_path}: the field {key!r} must be true or false, got {value!r}"
            )
    if metadata["architecture"] not in GENERATORS:
        raise FileFormatError(
            f"{meta_path}: the field 'architecture' must be one of {', '.join(GENERATORS)}, got "
            f"{metadata['architecture']!r}"
        )


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in ``path``, through the one loader (``weights_only=True``)."""
    state = load_tensors(path, "a generator's weights")
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise FileFormatError(f"{path} does not hold a state dict of tensors")
    return state


def _state_mismatch(generator: nn.Module, state: dict[str, torch.Tensor]) -> str:
    """Why ``state`` does not fit ``generator``, in one phrase: counts and the first
    differing tensor (torch's own message runs to dozens of lines)."""
    expected = generator.state_dict()
    missing = [name for name in expected if name not in state]
    unexpected = [name for name in state if name not in expected]
    reshaped = [
        f"{name} is {tuple(state[name].shape)} where the metadata's generator has "
        f"{tuple(tensor.shape)}"
        for name, tensor in expected.items()
        if name in state and state[name].shape != tensor.shape
    ]
    first = reshaped[0] if reshaped else (missing + unexpected + ["?"])[0]
    return (
        f"{len(missing)} tensor(s) missing, {len(unexpected)} unexpected, {len(reshaped)} of "
        f"another shape (first: {first}); the metadata (architecture, in_channels, "
        "num_classes, label_conditioned) must be the one saved with these weights"
    )
