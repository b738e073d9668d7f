"""One entry point for the datasets the examples and the CLI accept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from stackelberg.data.cifar import load_cifar
from stackelberg.data.folders import ImageDataset, load_image_splits

__all__ = ["DATASETS", "load_dataset", "load_digits", "subset"]

DATASETS = ("cifar10", "cifar100", "folder", "digits")


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> dict[str, ImageDataset]:
    """scikit-learn's bundled handwritten digits (1 797 images, 8×8 grayscale, 10 classes; no
    download), as uint8 ``(N, 1, 8, 8)`` (values 0–16 scaled to 0–255), split at random into
    train and test with ``seed``."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the digits dataset needs scikit-learn: pip install 'stackelberg[sklearn]'"
        ) from error
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    bunch = sklearn_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(labels))
    n_test = round(test_fraction * len(labels))
    classes = tuple(str(c) for c in range(10))

    def part(index: np.ndarray) -> ImageDataset:
        return ImageDataset(
            torch.from_numpy(images[index]), torch.from_numpy(labels[index]), classes
        )

    return {"train": part(order[n_test:]), "test": part(order[:n_test])}


def load_dataset(
    name: str, data_dir: str | Path | None = None, *, download: bool = False
) -> dict[str, ImageDataset]:
    """``{"train": ..., "test": ...}`` for ``name``:

    - ``"cifar10"`` / ``"cifar100"``: the official python archive or an extracted copy at
      ``data_dir`` (see ``load_cifar``);
    - ``"folder"``: an image folder or ``.tar.gz`` laid out ``split/class/image`` at
      ``data_dir`` (for example ``../shared/data/cifar10-jpeg.tar.gz``);
    - ``"digits"``: scikit-learn's bundled digits (``data_dir`` is ignored).
    """
    if name in ("cifar10", "cifar100"):
        return load_cifar(name, data_dir, download=download)
    if name == "folder":
        if data_dir is None:
            raise ValueError("the folder dataset needs a data directory (--data-dir)")
        return load_image_splits(data_dir, ("train", "test"))
    if name == "digits":
        return load_digits()
    raise ValueError(f"dataset must be one of {', '.join(DATASETS)}; got {name!r}")


def subset(dataset: ImageDataset, size: int | None, seed: int) -> tuple[ImageDataset, torch.Tensor]:
    """A class-balanced random subset of ``size`` images (all of them if ``None`` or larger),
    and the indices it took from ``dataset`` (sorted)."""
    n = len(dataset)
    if size is None or size >= n:
        return dataset, torch.arange(n)
    if size < 1:
        raise ValueError(f"subset size must be >= 1, got {size}")
    generator = torch.Generator().manual_seed(seed)
    classes = torch.unique(dataset.labels)
    per_class = [torch.nonzero(dataset.labels == c).squeeze(1) for c in classes.tolist()]
    shuffled = [idx[torch.randperm(len(idx), generator=generator)] for idx in per_class]
    # Each class gets its share of size; the leftover goes to randomly chosen classes.
    quota = [size * len(idx) // n for idx in per_class]
    remainder = size - sum(quota)
    order = torch.randperm(len(per_class), generator=generator).tolist()
    for k in order[:remainder]:
        quota[k] += 1
    taken = torch.cat([idx[:q] for idx, q in zip(shuffled, quota, strict=True)])
    taken, _ = torch.sort(taken)
    return ImageDataset(dataset.images[taken], dataset.labels[taken], dataset.classes), taken
