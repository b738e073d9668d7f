"""The image-folder loader on folders and archives that the tests write themselves."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stackelberg.data import load_image_folder, load_image_splits


def write_folder(root: Path, split: str = "train", size: int = 6, mode: str = "L") -> dict:
    """Two classes, three images each, with known pixel values."""
    expected = {}
    for label, name in enumerate(("cat", "dog")):
        (root / split / name).mkdir(parents=True)
        for i in range(3):
            value = 40 * label + 10 * i
            shape = (size, size) if mode == "L" else (size, size, 3)
            array = np.full(shape, value, dtype=np.uint8)
            Image.fromarray(array, mode=mode).save(root / split / name / f"{i}.png")
            expected[(name, i)] = value
    return expected


def test_folder_and_archive_give_the_same_images(tmp_path: Path) -> None:
    write_folder(tmp_path / "toy")
    archive = tmp_path / "toy.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "toy", arcname="toy")
    from_folder = load_image_folder(tmp_path / "toy", "train")
    from_prefix = load_image_folder(tmp_path, "train")  # the split one level below
    from_archive = load_image_folder(archive, "train")
    for data in (from_folder, from_prefix, from_archive):
        assert data.classes == ("cat", "dog")
        assert data.images.shape == (6, 1, 6, 6) and data.images.dtype == torch.uint8
        assert data.labels.tolist() == [0, 0, 0, 1, 1, 1]
        assert sorted(int(v) for v in data.images[:, 0, 0, 0]) == [0, 10, 20, 40, 50, 60]
    assert torch.equal(from_folder.images, from_archive.images)
    assert torch.allclose(from_folder.float_images().max(), torch.tensor(60 / 255))


def test_class_selection_and_colour(tmp_path: Path) -> None:
    write_folder(tmp_path, mode="RGB")
    data = load_image_folder(tmp_path, "train", classes=["dog"])
    assert data.images.shape == (3, 3, 6, 6)
    assert data.labels.tolist() == [0, 0, 0] and data.classes == ("dog",)
    gray = load_image_folder(tmp_path, "train", mode="L")
    assert gray.images.shape[1] == 1


def test_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no image folder or archive at"):
        load_image_folder(tmp_path / "missing", "train")
    write_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="no 'test' folder"):
        load_image_folder(tmp_path, "test")
    with pytest.raises(ValueError, match=r"no images for classes \['bird'\]"):
        load_image_folder(tmp_path, "train", classes=["cat", "bird"])
    (tmp_path / "train" / "cat" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"cannot decode image .*broken\.png"):
        load_image_folder(tmp_path, "train")


def test_images_of_different_sizes_are_refused(tmp_path: Path) -> None:
    write_folder(tmp_path)
    Image.fromarray(np.zeros((7, 7), dtype=np.uint8)).save(tmp_path / "train" / "dog" / "z.png")
    with pytest.raises(ValueError, match="resize the images to one size"):
        load_image_folder(tmp_path, "train")


def test_several_splits_in_one_pass_share_their_labels(tmp_path: Path) -> None:
    write_folder(tmp_path / "toy", "train")
    write_folder(tmp_path / "toy", "test")
    archive = tmp_path / "toy.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "toy", arcname="toy")
    for root in (tmp_path / "toy", archive):
        both = load_image_splits(root, ("train", "test"))
        for split in ("train", "test"):
            alone = load_image_folder(root, split)
            assert torch.equal(both[split].images, alone.images)
            assert torch.equal(both[split].labels, alone.labels)
            assert both[split].classes == ("cat", "dog")


def test_fixed_blocks_keep_their_partition_and_plain_streams_draw_as_before() -> None:
    from stackelberg.data import TensorBatches

    x = torch.arange(10.0)
    # A plain stream's first pass is the seed's first permutation (runs recorded before
    # fixed blocks existed draw the same minibatches).
    first = [b[0] for b in TensorBatches(x, batch_size=5, seed=0)]
    expected = x[torch.randperm(10, generator=torch.Generator().manual_seed(0))]
    assert torch.equal(torch.cat(first), expected)
    stream = TensorBatches(x, batch_size=4, seed=3, fixed_blocks=True)
    passes = [{b.index: b.batch[0].tolist() for b in stream} for _ in range(3)]
    assert passes[0] == passes[1] == passes[2]  # the same blocks, visited in new orders
    assert sorted(v for block in passes[0].values() for v in block) == x.tolist()
    assert sorted(passes[0]) == [0, 1, 2]
