"""Apply a trained generator to a dataset and export the poisoned set losslessly.

Images leave as uint8, the format people publish. Each poisoned pixel is rounded to the
nearest level, not truncated, and its change from the clean uint8 pixel is clipped to
``⌊255·ε⌋`` levels, so the exported perturbation stays within the budget: for ε = 8/255 the
rounding alone already keeps it (``round(k + t) = k + round(t)`` for an integer ``k``).
Files are written atomically, with a JSON manifest (ε, the generator checkpoint's SHA-256, the
source dataset, counts, the measured ‖δ‖∞ in levels).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from tqdm.auto import tqdm

from stackelberg.unlearnable.budget import budget_levels, enforce_budget, measured_levels
from stackelberg.unlearnable.game import apply_perturbation
from stackelberg.utils.io import atomic_directory, atomic_path, write_json
from stackelberg.utils.ownership import OwnershipError, owned_json

__all__ = [
    "calibrate_batchnorm",
    "export_npz",
    "export_png_folder",
    "file_sha256",
    "poison_images",
    "quantize_poison",
]


@torch.no_grad()
def calibrate_batchnorm(
    generator: nn.Module,
    images: Tensor,
    labels: Tensor | None = None,
    *,
    batch_size: int = 500,
    seed: int = 0,
) -> bool:
    """Set the generator's BatchNorm running statistics to those of its current weights on
    ``images`` (uint8 or float in [0, 1]); returns whether it has any BatchNorm layer.

    The game runs the generator in training mode, where each BatchNorm layer normalizes with
    its batch's mean and variance; ``poison_images`` runs it in eval mode, where the layers
    read running averages. Those averages are updated once per forward pass with momentum 0.1,
    so while the generator's weights move they lag behind them: the poisons a saved generator
    makes are then not the perturbations the game optimized. Measured on the paper-game study's
    last snapshot (U-Net 16–64 after 10 062 BOME steps, batches of 128 training images): δ in
    eval mode and in training mode agreed in sign on 92.8 % of the pixels (mean cosine 0.93),
    and on 97.9 % (0.99) after this calibration.

    The statistics are recomputed from scratch over ``images``, in batches of ``batch_size``
    taken in a random order drawn from ``seed``, as the game draws its batches (a dataset is
    often sorted by class, and a batch of one class has a smaller variance than the whole).
    Each running mean becomes the mean of the per-batch means, each running variance the mean
    of the per-batch unbiased variances (``torch.optim.swa_utils.update_bn``'s rule). The
    weights, each layer's momentum and the training mode are left as they were. A
    label-conditioned generator needs ``labels``.
    """
    layers = [m for m in generator.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not layers:
        return False
    conditional = bool(getattr(generator, "conditional", False))
    if conditional and labels is None:
        raise ValueError("this generator is label-conditioned: pass the labels")
    momenta = [layer.momentum for layer in layers]
    was_training = generator.training
    weight = next(generator.parameters())
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average over the batches
    generator.train()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    try:
        for index in order.split(batch_size):
            chunk = images[index].to(weight.device)
            x = chunk.to(weight.dtype) / (255.0 if chunk.dtype == torch.uint8 else 1.0)
            if conditional:
                assert labels is not None
                generator(x, labels[index].to(weight.device))
            else:
                generator(x)
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
        generator.train(was_training)
    return True


@torch.no_grad()
def poison_images(
    generator: nn.Module,
    images: Tensor,
    labels: Tensor | None = None,
    *,
    batch_size: int = 500,
    progress: bool = False,
) -> Tensor:
    """``clamp(x + g(x), 0, 1)`` for uint8 (or float in [0, 1]) images ``(N, C, H, W)``, in
    batches, with the generator in eval mode and no grad; float32 on the images' device.
    A label-conditioned generator needs ``labels``."""
    conditional = bool(getattr(generator, "conditional", False))
    if conditional and labels is None:
        raise ValueError("this generator is label-conditioned: pass the labels")
    was_training = generator.training
    generator.eval()
    device = next(generator.parameters()).device
    out = []
    try:
        for i in tqdm(range(0, len(images), batch_size), desc="poison", disable=not progress):
            chunk = images[i : i + batch_size].to(device)
            x = chunk.float() / 255.0 if chunk.dtype == torch.uint8 else chunk.float()
            if conditional:
                assert labels is not None
                delta = generator(x, labels[i : i + batch_size].to(device))
            else:
                delta = generator(x)
            out.append(apply_perturbation(x, delta).to(images.device))
    finally:
        generator.train(was_training)
    return torch.cat(out) if out else images.float()


def quantize_poison(
    clean: Tensor, poisoned: Tensor, epsilon: float, *, source: str | None = None
) -> Tensor:
    """The poisoned images as uint8: ``round(255·x̃)``, with the change from the clean uint8
    images clipped to ``⌊255·ε⌋`` levels (a no-op when 255·ε is an integer), checked by
    ``enforce_budget`` (non-finite poisons and
    budget violations are errors naming ``source``)."""
    return enforce_budget(clean, poisoned, epsilon, source=source)


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _manifest(
    poisoned: Tensor,
    clean: Tensor,
    labels: Tensor,
    epsilon: float,
    source: Mapping[str, Any] | None,
    generator_checkpoint: str | Path | None,
    fmt: str,
) -> dict[str, Any]:
    poisoned, clean, labels = poisoned.cpu(), clean.cpu(), labels.cpu()
    linf = measured_levels(poisoned, clean)
    counts = Counter(labels.tolist())
    return {
        "format": fmt,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "epsilon": epsilon,
        "epsilon_levels": budget_levels(epsilon),
        "measured_linf_levels": linf,
        "images": len(labels),
        "per_class": {str(k): counts[k] for k in sorted(counts)},
        "shape": list(poisoned.shape[1:]),
        "source": dict(source or {}),
        "generator_checkpoint": None if generator_checkpoint is None else str(generator_checkpoint),
        "generator_sha256": None
        if generator_checkpoint is None
        else file_sha256(generator_checkpoint),
    }


def export_npz(
    path: str | Path,
    poisoned: Tensor,
    clean: Tensor,
    labels: Tensor,
    epsilon: float,
    *,
    indices: Tensor | None = None,
    source: Mapping[str, Any] | None = None,
    generator_checkpoint: str | Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write ``x`` (uint8 NHWC), ``y`` and ``indices`` (into the source dataset) to ``path``
    (``.npz``) and the manifest to ``path`` with suffix ``.json``; both atomically.

    ``poisoned`` is float in [0, 1] (quantized here) or uint8; ``clean`` is the uint8 source.
    Returns the manifest.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is off.
        OwnershipError: ``path`` or its ``.json`` exists but is not an export of this
            function (identified by the manifest): it is never replaced.
    """
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"the poisoned dataset's file name must end in .npz, got {path}")
    manifest_path = path.with_suffix(".json")
    ours = owned_json(
        manifest_path,
        lambda r: r.get("format") == "npz" and r.get("file") == path.name,
        f"the manifest of {path.name} written by `stackelberg poison`",
    )
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{path} exists: pass --overwrite to replace it")
        if not ours or not path.is_file():
            raise OwnershipError(
                f"{path} exists without the manifest {manifest_path.name} that `poison` "
                "writes beside its exports: it is not replaced, even with --overwrite"
            )
    quantized = quantize_poison(clean, poisoned, epsilon)
    indices = torch.arange(len(labels)) if indices is None else indices
    if not (len(quantized) == len(labels) == len(indices)):
        raise ValueError("poisoned images, labels and indices must have the same length")
    x = quantized.permute(0, 2, 3, 1).contiguous().cpu().numpy()
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(
            handle, x=x, y=labels.cpu().numpy().astype(np.int64), indices=indices.cpu().numpy()
        )
    manifest = _manifest(quantized, clean, labels, epsilon, source, generator_checkpoint, "npz")
    manifest["file"] = path.name
    manifest["sha256"] = file_sha256(path)
    write_json(manifest_path, manifest)
    return manifest


def export_png_folder(
    root: str | Path,
    poisoned: Tensor,
    clean: Tensor,
    labels: Tensor,
    classes: Sequence[str],
    epsilon: float,
    *,
    source: Mapping[str, Any] | None = None,
    generator_checkpoint: str | Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the poisoned images as lossless PNGs ``root/<class>/<i>.png`` (``i``: the image's
    position in ``poisoned``, zero-padded) plus ``root/manifest.json``; the folder appears
    atomically.

    Raises:
        FileExistsError: ``root`` exists and ``overwrite`` is off.
        OwnershipError: ``root`` holds anything but an earlier export's files (the ones its
            ``manifest.json`` lists): nothing is replaced or deleted, even with ``overwrite``.
    """
    root = Path(root)
    _check_replaceable_png_folder(root, overwrite)
    quantized = quantize_poison(clean, poisoned, epsilon)
    width = max(len(str(len(labels) - 1)), 1)
    files: list[str] = []
    with atomic_directory(root, overwrite=overwrite) as tmp:
        for class_name in classes:
            (tmp / class_name).mkdir()
        array = quantized.permute(0, 2, 3, 1).cpu().numpy()
        for i, (image, label) in enumerate(zip(array, labels.tolist(), strict=True)):
            picture = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
            buffer = io.BytesIO()
            picture.save(buffer, format="PNG")
            name = f"{classes[label]}/{i:0{width}d}.png"
            (tmp / name).write_bytes(buffer.getvalue())
            files.append(name)
        manifest = _manifest(quantized, clean, labels, epsilon, source, generator_checkpoint, "png")
        manifest["classes"] = list(classes)
        manifest["files"] = files
        write_json(tmp / "manifest.json", manifest)
    return manifest


def _check_replaceable_png_folder(root: Path, overwrite: bool) -> None:
    """``root`` may be (re)written: it does not exist, is empty, or holds exactly an earlier
    PNG export (its ``manifest.json`` lists every file in it) and ``overwrite`` is on."""
    if not root.exists() and not root.is_symlink():
        return
    if root.is_symlink() or not root.is_dir():
        raise OwnershipError(f"{root} exists and is not a folder: choose another output folder")
    present = sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())
    if not present:
        return
    if not overwrite:
        raise FileExistsError(f"{root} exists: pass --overwrite to replace an earlier export")
    if not owned_json(
        root / "manifest.json",
        lambda r: r.get("format") == "png" and isinstance(r.get("files"), list),
        "the manifest of a PNG export written by `stackelberg poison`",
    ):
        raise OwnershipError(
            f"{root} holds files that `poison` did not write (first: {present[0]}): the folder "
            "is not replaced, even with --overwrite; choose another output folder"
        )
    listed = set(json.loads((root / "manifest.json").read_text())["files"]) | {"manifest.json"}
    foreign = [name for name in present if name not in listed]
    if foreign:
        raise OwnershipError(
            f"{root} holds {len(foreign)} file(s) that `poison` did not write (first: "
            f"{foreign[0]}): the folder is not replaced, even with --overwrite; choose another "
            "output folder"
        )
