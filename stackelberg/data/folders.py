"""Image folders laid out ``split/class/image``, extracted or inside a ``.tar.gz`` archive.

This is the layout of ``../shared/data`` (``mnist-png/train/7/123.png``,
``cifar10-jpeg/test/cat/0001.jpg``) and of most photo collections, so the same loader serves
both. An archive is read in place, without extracting it; a top-level folder in front of the
split (``mnist-png/``) is found automatically.
"""

from __future__ import annotations

import io
import re
import tarfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

__all__ = ["ImageDataset", "load_image_folder", "load_image_splits"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


@dataclass(frozen=True)
class ImageDataset:
    """Images in memory: ``images`` uint8 ``(N, C, H, W)``, ``labels`` int64 ``(N,)``."""

    images: Tensor
    labels: Tensor
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def float_images(self) -> Tensor:
        """The images as float32 in ``[0, 1]``."""
        return self.images.to(torch.float32) / 255.0


def _archive_members(path: Path, splits: Sequence[str]) -> Iterator[tuple[str, str, str, bytes]]:
    """``(split, class, name, bytes)`` for every image of ``splits``, in one pass over the file."""
    alternatives = "|".join(re.escape(split) for split in splits)
    pattern = re.compile(
        rf"^(?:.*/)?({alternatives})/([^/]+)/([^/]+)$"
    )  # [prefix/]split/class/file
    try:
        archive = tarfile.open(path, "r:*")  # noqa: SIM115 (closed by the with below)
    except (tarfile.TarError, EOFError, OSError) as error:
        reason = str(error).splitlines()[0]
        raise ValueError(f"{path} is not a readable .tar.gz archive ({reason})") from None
    with archive:
        for member in _checked_members(archive, path):
            if not member.isfile() or not member.name.lower().endswith(IMAGE_SUFFIXES):
                continue
            match = pattern.match(member.name)
            if match:
                handle = archive.extractfile(member)
                if handle is not None:
                    yield match.group(1), match.group(2), member.name, handle.read()


def _checked_members(archive: tarfile.TarFile, path: Path) -> Iterator[tarfile.TarInfo]:
    """The archive's members, with a damaged archive reported as one error naming the file."""
    try:
        yield from archive
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        reason = str(error).splitlines()[0]
        raise ValueError(f"{path} is a damaged archive ({reason})") from None


def _directory_members(path: Path, splits: Sequence[str]) -> Iterator[tuple[str, str, str, bytes]]:
    for split in splits:
        candidates = [
            path / split,
            *(child / split for child in sorted(path.iterdir()) if child.is_dir()),
        ]
        split_dir = next((c for c in candidates if c.is_dir()), None)
        if split_dir is None:
            found = sorted(child.name for child in path.iterdir() if child.is_dir())
            raise FileNotFoundError(
                f"no '{split}' folder in {path} (nor one level below); found folders {found}"
            )
        for class_dir in sorted(c for c in split_dir.iterdir() if c.is_dir()):
            for file in sorted(class_dir.iterdir()):
                if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES:
                    yield split, class_dir.name, str(file), file.read_bytes()


def load_image_folder(
    root: str | Path,
    split: str,
    *,
    classes: Sequence[str] | None = None,
    mode: str | None = None,
) -> ImageDataset:
    """Load every image of ``root/split/<class>/`` into memory.

    Args:
        root: an extracted folder, or a ``.tar``/``.tar.gz`` archive holding one.
        split: ``"train"``, ``"test"``, ….
        classes: keep only these class folders, labelled in the order given; by default all
            class folders, labelled in sorted order (``"0"``…``"9"`` for MNIST).
        mode: a Pillow mode to convert every image to (``"L"`` grayscale, ``"RGB"``); by default
            the first image's mode.

    Raises:
        FileNotFoundError: ``root`` does not exist, or holds no such split.
        ValueError: an image cannot be decoded (the file is named), images differ in size, or a
            requested class has no images.
    """
    return load_image_splits(root, (split,), classes=classes, mode=mode)[split]


def load_image_splits(
    root: str | Path,
    splits: Sequence[str],
    *,
    classes: Sequence[str] | None = None,
    mode: str | None = None,
) -> dict[str, ImageDataset]:
    """``load_image_folder`` for several splits, reading an archive only once.

    Labels are shared across the splits: by default the sorted class folders of all of them.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(
            f"no image folder or archive at {root}: expected {root}/<split>/<class>/<image> or "
            "a .tar.gz archive with that layout"
        )
    read = _archive_members if root.is_file() else _directory_members
    members = read(root, splits)
    wanted = None if classes is None else list(classes)
    arrays: dict[str, list[np.ndarray]] = {split: [] for split in splits}
    names: dict[str, list[str]] = {split: [] for split in splits}
    first_shape = None
    for split, class_name, name, payload in members:
        if wanted is not None and class_name not in wanted:
            continue
        try:
            with Image.open(io.BytesIO(payload)) as image:
                mode = mode or image.mode
                array = np.asarray(image.convert(mode))
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(f"cannot decode image {name}: {error}") from error
        first_shape = array.shape if first_shape is None else first_shape
        if array.shape != first_shape:
            raise ValueError(
                f"image {name} has shape {array.shape}, the first one {first_shape}; "
                "resize the images to one size first"
            )
        arrays[split].append(array)
        names[split].append(class_name)
    for split in splits:
        if not arrays[split]:
            raise FileNotFoundError(f"no images under {root} for split '{split}'")
    found = {name for split in splits for name in names[split]}
    class_names = tuple(wanted) if wanted is not None else tuple(sorted(found))
    index = {name: i for i, name in enumerate(class_names)}
    datasets = {}
    for split in splits:
        missing = set(class_names) - set(names[split])
        if missing:
            raise ValueError(
                f"no images for classes {sorted(missing)} in split '{split}' of {root}"
            )
        stacked = np.stack(arrays[split])
        # (N, H, W) grayscale or (N, H, W, C) colour → (N, C, H, W)
        stacked = stacked[:, None] if stacked.ndim == 3 else stacked.transpose(0, 3, 1, 2)
        datasets[split] = ImageDataset(
            images=torch.from_numpy(np.ascontiguousarray(stacked)),
            labels=torch.tensor([index[n] for n in names[split]], dtype=torch.int64),
            classes=class_names,
        )
    return datasets
