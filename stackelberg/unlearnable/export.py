"""Export a poisoned set losslessly, and read it back (``apply`` makes the poisons).

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
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from stackelberg.unlearnable.apply import calibrate_batchnorm, poison_images
from stackelberg.unlearnable.budget import budget_levels, enforce_budget, measured_levels
from stackelberg.utils.files import (
    FileFormatError,
    file_sha256,
    read_npz_arrays,
)
from stackelberg.utils.io import atomic_directory, atomic_path, write_json
from stackelberg.utils.ownership import OwnershipError, owned_json

# calibrate_batchnorm and poison_images live in ``apply``; they stay importable from here.
__all__ = [
    "calibrate_batchnorm",
    "check_png_folder_replaceable",
    "export_npz",
    "export_png_folder",
    "file_sha256",
    "poison_images",
    "quantize_poison",
    "read_npz",
]


def quantize_poison(
    clean: Tensor, poisoned: Tensor, epsilon: float, *, source: str | None = None
) -> Tensor:
    """The poisoned images as uint8: ``round(255·x̃)``, with the change from the clean uint8
    images clipped to ``⌊255·ε⌋`` levels (a no-op when 255·ε is an integer), checked by
    ``enforce_budget`` (non-finite poisons and
    budget violations are errors naming ``source``)."""
    return enforce_budget(clean, poisoned, epsilon, source=source)


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
    earlier = owned_json(
        manifest_path,
        lambda r: r.get("format") == "npz" and r.get("file") == path.name,
        f"the manifest of {path.name} written by `stackelberg poison`",
    )
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{path} exists: pass --overwrite to replace it")
        if earlier is None or not path.is_file() or path.is_symlink():
            raise OwnershipError(
                f"{path} exists without the manifest {manifest_path.name} that `poison` "
                "writes beside its exports: it is not replaced, even with --overwrite"
            )
        recorded = earlier.get("sha256")
        if recorded is not None and file_sha256(path) != recorded:
            raise OwnershipError(
                f"{path} changed since `poison` wrote it (its SHA-256 is not the one "
                f"{manifest_path.name} records): it is not replaced, even with --overwrite"
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


def read_npz(path: str | Path) -> tuple[Tensor, Tensor]:
    """The images (uint8 ``(N, C, H, W)``) and labels of a dataset ``export_npz`` wrote.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        FileFormatError: it is not such a dataset (not an ``.npz``, no ``x`` or ``y``, images
            that are not uint8, labels that are not whole numbers, the wrong shapes); the
            message names the file.
    """
    path = Path(path)
    what = "a dataset written by `stackelberg poison`"
    arrays = read_npz_arrays(path, what, ("x", "y"))
    x, y = arrays["x"], arrays["y"]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise FileFormatError(
            f"{path} is not {what}: x must be uint8 images (N, H, W, 1 or 3), got {x.dtype} "
            f"{x.shape}"
        )
    if not np.issubdtype(y.dtype, np.integer) or y.shape != (x.shape[0],):
        raise FileFormatError(
            f"{path} is not {what}: y must hold one whole-number label per image ({x.shape[0]}),"
            f" got {y.dtype} {y.shape}"
        )
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y).long()


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
    root = Path(root).resolve()
    check_png_folder_replaceable(root, overwrite)
    quantized = quantize_poison(clean, poisoned, epsilon)
    width = max(len(str(len(labels) - 1)), 1)
    files: list[str] = []
    hashes: dict[str, str] = {}
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
            hashes[name] = hashlib.sha256(buffer.getvalue()).hexdigest()
        manifest = _manifest(quantized, clean, labels, epsilon, source, generator_checkpoint, "png")
        manifest["classes"] = list(classes)
        manifest["files"] = files
        manifest["sha256"] = hashes  # a file is the export's only while its bytes match
        write_json(tmp / "manifest.json", manifest)
    return manifest


def check_png_folder_replaceable(root: Path, overwrite: bool) -> None:
    """``root`` (resolved) may be (re)written: it does not exist, is empty, or holds exactly
    an earlier PNG export (its class folders, and files whose bytes hash as its
    ``manifest.json`` recorded) and ``overwrite`` is on; it never holds the working folder."""
    here = Path.cwd().resolve()
    if here == root or root in here.parents:
        raise ValueError(
            f"the output folder {root} holds the folder this command runs in ({here}): "
            "replacing it would delete the ground under it; run from outside it"
        )
    if not root.exists() and not root.is_symlink():
        return
    if root.is_symlink() or not root.is_dir():
        raise OwnershipError(f"{root} exists and is not a folder: choose another output folder")
    entries = sorted(root.rglob("*"))
    if not entries:
        return
    if not overwrite:
        raise FileExistsError(f"{root} exists: pass --overwrite to replace an earlier export")
    manifest = _png_manifest(root)
    listed = set(manifest["files"]) | {"manifest.json"}
    hashes = manifest.get("sha256", {})
    foreign = []
    for entry in entries:
        name = str(entry.relative_to(root))
        if entry.is_dir() and not entry.is_symlink():
            if name not in manifest["classes"]:
                foreign.append(f"{name}/, a folder the export did not make")
        elif name not in listed or entry.is_symlink():
            foreign.append(f"{name}, not written by poison")
        elif name in hashes and file_sha256(entry) != hashes[name]:
            foreign.append(f"{name}, changed since poison wrote it")
    if foreign:
        raise OwnershipError(
            f"{root} holds {len(foreign)} thing(s) that are not poison's to replace (first: "
            f"{foreign[0]}): the folder is not replaced, even with --overwrite; choose another "
            "output folder"
        )


def _png_manifest(root: Path) -> dict[str, Any]:
    """The ``manifest.json`` of an earlier PNG export in ``root``; anything else is refused."""
    manifest = owned_json(
        root / "manifest.json",
        lambda r: (
            r.get("format") == "png"
            and isinstance(r.get("files"), list)
            and isinstance(r.get("classes"), list)
            and isinstance(r.get("sha256", {}), dict)
        ),
        "the manifest of a PNG export written by `stackelberg poison`",
    )
    if manifest is None:
        raise OwnershipError(
            f"{root} holds files that `poison` did not write (no manifest.json of an export): "
            "the folder is not replaced, even with --overwrite; choose another output folder"
        )
    return manifest
