"""CIFAR-10 and CIFAR-100 from the official python archives (Krizhevsky 2009).

``cifar-10-python.tar.gz`` holds ``cifar-10-batches-py/{data_batch_1..5, test_batch,
batches.meta}``; ``cifar-100-python.tar.gz`` holds ``cifar-100-python/{train, test, meta}``.
Each batch is a pickled dict with ``data`` (uint8, ``(N, 3072)``, channel-major 32×32 images)
and ``labels`` (CIFAR-10) or ``fine_labels`` (CIFAR-100). The pickles are read with an
unpickler that only accepts plain containers and numpy arrays, so a tampered file cannot run
code. Downloads are checked against the published md5 and written atomically.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stackelberg.data.folders import ImageDataset
from stackelberg.utils.files import FileFormatError

__all__ = ["CIFAR_SOURCES", "CifarSource", "download_cifar", "load_cifar"]


@dataclass(frozen=True)
class CifarSource:
    """Where an official CIFAR archive lives and what it holds."""

    url: str
    md5: str
    archive: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str


CIFAR_SOURCES = {
    "cifar10": CifarSource(
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        archive="cifar-10-python.tar.gz",
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        meta_file="batches.meta",
        label_key="labels",
        names_key="label_names",
    ),
    "cifar100": CifarSource(
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        archive="cifar-100-python.tar.gz",
        folder="cifar-100-python",
        train_files=("train",),
        test_files=("test",),
        meta_file="meta",
        label_key="fine_labels",
        names_key="fine_label_names",
    ),
}

_SAFE_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
    """Resolves only numpy's array-rebuilding functions; anything else is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: a CIFAR batch holds only arrays and lists"
        )


def _unpickle(payload: bytes, name: str) -> dict[str, Any]:
    try:
        raw = _SafeUnpickler(io.BytesIO(payload), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as error:
        raise ValueError(f"{name} is not a valid CIFAR python batch: {error}") from error
    if not isinstance(raw, dict):
        raise ValueError(f"{name} is not a valid CIFAR python batch: not a dict")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_cifar(name: str, root: str | Path) -> Path:
    """Download the official archive of ``name`` into ``root``, check its md5 and return its
    path; an archive already there with the right checksum is reused.

    Raises:
        ConnectionError: the download failed (offline?).
        ValueError: the checksum does not match.
    """
    source = _source(name)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    target = root / source.archive
    if target.is_file() and _md5(target) == source.md5:
        return target
    fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{source.archive}.", suffix=".part")
    os.close(fd)
    try:
        try:
            urllib.request.urlretrieve(source.url, tmp)
        except (urllib.error.URLError, OSError) as error:
            raise ConnectionError(
                f"could not download {source.url} ({error}). Without internet, download "
                f"{source.archive} elsewhere and pass its path (or its folder) as the data "
                "directory."
            ) from error
        got = _md5(Path(tmp))
        if got != source.md5:
            raise ValueError(
                f"{source.url} downloaded with md5 {got}, expected {source.md5}: the file is "
                "corrupt or not the official archive; nothing was kept"
            )
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


def _source(name: str) -> CifarSource:
    if name not in CIFAR_SOURCES:
        raise ValueError(f"unknown CIFAR dataset {name!r}; choose one of {sorted(CIFAR_SOURCES)}")
    return CIFAR_SOURCES[name]


def _locate(source: CifarSource, root: Path) -> Path | None:
    """The archive or extracted folder under ``root`` (or ``root`` itself), if any."""
    candidates = [root, root / source.folder, root / source.archive]
    for candidate in candidates:
        if candidate.is_file() and tarfile.is_tarfile(candidate):
            return candidate
        if candidate.is_dir() and (candidate / source.meta_file).is_file():
            return candidate
    return None


def _read_members(location: Path, source: CifarSource) -> dict[str, bytes]:
    wanted = {*source.train_files, *source.test_files, source.meta_file}
    found: dict[str, bytes] = {}
    if location.is_dir():
        for name in wanted:
            if (location / name).is_file():
                found[name] = (location / name).read_bytes()
    else:
        try:
            with tarfile.open(location, "r:*") as archive:
                for member in archive:
                    base = member.name.rsplit("/", 1)[-1]
                    if member.isfile() and base in wanted:
                        handle = archive.extractfile(member)
                        if handle is not None:
                            found[base] = handle.read()
        except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
            raise FileFormatError(
                f"{location} is not a readable {source.folder} archive (truncated or damaged: "
                f"{str(error) or type(error).__name__}); download it again"
            ) from None
    missing = sorted(wanted - found.keys())
    if missing:
        raise FileNotFoundError(
            f"{location} is not a complete {source.folder} copy: missing {', '.join(missing)}"
        )
    return found


def _split(
    members: dict[str, bytes], files: tuple[str, ...], source: CifarSource, classes: tuple[str, ...]
) -> ImageDataset:
    images, labels = [], []
    for name in files:
        batch = _unpickle(members[name], name)
        if "data" not in batch or source.label_key not in batch:
            raise ValueError(f"{name} lacks 'data' or '{source.label_key}'")
        data = np.asarray(batch["data"])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise FileFormatError(
                f"{name}: data must be (N, 3072) uint8 pixels (0 to 255), got {data.dtype} "
                f"{data.shape}; convert other arrays first (floats in [0, 1]: round(255·x))"
            )
        label = np.asarray(batch[source.label_key])
        if not np.issubdtype(label.dtype, np.integer):
            raise FileFormatError(
                f"{name}: '{source.label_key}' must be whole numbers, got {label.dtype}"
            )
        label = label.astype(np.int64)
        if label.shape != (data.shape[0],):
            raise ValueError(f"{name}: {data.shape[0]} images but {label.shape[0]} labels")
        if label.size and (label.min() < 0 or label.max() >= len(classes)):
            raise ValueError(f"{name}: labels outside [0, {len(classes) - 1}]")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(label)
    return ImageDataset(
        torch.from_numpy(np.concatenate(images)),
        torch.from_numpy(np.concatenate(labels)),
        classes,
    )


def load_cifar(
    name: str, root: str | Path | None = None, *, download: bool = False
) -> dict[str, ImageDataset]:
    """CIFAR-10 (``"cifar10"``) or CIFAR-100 (``"cifar100"``, fine labels) as
    ``{"train": ..., "test": ...}`` uint8 ``(N, 3, 32, 32)`` datasets.

    Args:
        name: ``"cifar10"`` or ``"cifar100"``.
        root: the official archive, an extracted copy (the ``cifar-10-batches-py`` folder), or
            a folder holding either. ``None`` means ``~/.cache/stackelberg``.
        download: fetch the official archive into ``root`` when it holds no copy (md5-checked).

    Raises:
        FileNotFoundError: no copy under ``root`` and ``download`` is off; the message says
            where to get the archive.
        ValueError: a batch is malformed or holds something other than arrays and lists.
    """
    source = _source(name)
    root = Path(root) if root is not None else Path.home() / ".cache" / "stackelberg"
    location = _locate(source, root) if root.exists() else None
    if location is None:
        if not download:
            raise FileNotFoundError(
                f"no {name} copy at {root}: expected {source.archive} or the extracted "
                f"{source.folder}/ folder. Download {source.url} (md5 {source.md5}) and pass "
                "its path, or allow downloading (download=True / --download)."
            )
        location = download_cifar(name, root if not root.is_file() else root.parent)
    members = _read_members(location, source)
    meta = _unpickle(members[source.meta_file], source.meta_file)
    names = meta.get(source.names_key)
    if not isinstance(names, list) or not names:
        raise ValueError(f"{source.meta_file} lacks the class names '{source.names_key}'")
    classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    return {
        "train": _split(members, source.train_files, source, classes),
        "test": _split(members, source.test_files, source, classes),
    }
