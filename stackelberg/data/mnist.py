"""MNIST from an image folder (``../shared/data/mnist-png.tar.gz``), in MNIST's own order.

The PNG copy names each digit by its index in the original files (``train/5/0.png`` is the
first training image, ``test/7/60000.png`` the first test image), so sorting by that number
restores the order ``torchvision.datasets.MNIST`` has. Code that splits MNIST with a seeded
permutation (the BOME authors' hyper-cleaning script, for example) then takes exactly the same
images here.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from stackelberg.data.folders import ImageDataset, _archive_members, _directory_members

__all__ = ["load_mnist"]

_SPLITS = ("train", "test")


def _index(name: str) -> int:
    stem = Path(name).stem
    if not stem.isdigit():
        raise ValueError(
            f"{name}: MNIST images must be named by their index (<index>.png), as in "
            "mnist-png.tar.gz; load other folders with load_image_splits"
        )
    return int(stem)


def load_mnist(path: str | Path) -> dict[str, ImageDataset]:
    """``{"train": 60 000 images, "test": 10 000}`` as uint8 ``(N, 1, 28, 28)`` in MNIST order.

    Args:
        path: ``mnist-png.tar.gz`` or the folder it extracts to (``split/<digit>/<index>.png``).

    Raises:
        FileNotFoundError: nothing at ``path``, or a split is missing.
        ValueError: a file is not named by its index, cannot be decoded, or is not 28×28.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"no MNIST copy at {path}: expected mnist-png.tar.gz or its folder "
            "(train/<digit>/<index>.png, test/<digit>/<index>.png)"
        )
    read = _archive_members if path.is_file() else _directory_members
    found: dict[str, list[tuple[int, int, np.ndarray]]] = {split: [] for split in _SPLITS}
    for split, digit, name, payload in read(path, _SPLITS):
        if not digit.isdigit():
            raise ValueError(f"{name}: MNIST class folders are the digits 0–9, got {digit!r}")
        try:
            with Image.open(io.BytesIO(payload)) as image:
                array = np.asarray(image.convert("L"))
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(f"cannot decode image {name}: {error}") from error
        if array.shape != (28, 28):
            raise ValueError(f"{name} is {array.shape[1]}×{array.shape[0]}, MNIST is 28×28")
        found[split].append((_index(name), int(digit), array))
    datasets = {}
    for split, items in found.items():
        if not items:
            raise FileNotFoundError(f"no images under {path} for split '{split}'")
        items.sort(key=lambda item: item[0])
        images = np.stack([array for _, _, array in items])[:, None]
        labels = torch.tensor([digit for _, digit, _ in items], dtype=torch.int64)
        datasets[split] = ImageDataset(
            torch.from_numpy(images), labels, tuple(str(d) for d in range(10))
        )
    return datasets
