"""The CIFAR reader on tiny archives in the official python format, written by the tests."""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from stackelberg.data import cifar as cifar_module
from stackelberg.data import load_cifar, load_dataset, load_digits, subset


def _pickled(obj: object) -> bytes:
    return pickle.dumps(obj, protocol=2)


def write_cifar10(root: Path, per_batch: int = 4) -> tuple[Path, dict[str, np.ndarray]]:
    """A cifar-10-python.tar.gz with ``per_batch`` images in each of the six batches."""
    rng = np.random.default_rng(0)
    folder = "cifar-10-batches-py"
    members: dict[str, bytes] = {}
    arrays: dict[str, np.ndarray] = {}
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=per_batch).tolist()
        arrays[name] = data
        members[name] = _pickled(
            {
                b"batch_label": name.encode(),
                b"labels": labels,
                b"data": data,
                b"filenames": [b"x.png"] * per_batch,
            }
        )
    names = [
        b"airplane",
        b"automobile",
        b"bird",
        b"cat",
        b"deer",
        b"dog",
        b"frog",
        b"horse",
        b"ship",
        b"truck",
    ]
    members["batches.meta"] = _pickled({b"label_names": names, b"num_cases_per_batch": per_batch})
    archive = root / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return archive, arrays


def test_reads_the_official_layout_from_archive_folder_and_extracted_copy(tmp_path: Path) -> None:
    archive, arrays = write_cifar10(tmp_path)
    extracted = tmp_path / "extracted"
    with tarfile.open(archive) as tar:
        tar.extractall(extracted, filter="data")
    for location in (archive, tmp_path, extracted, extracted / "cifar-10-batches-py"):
        splits = load_cifar("cifar10", location)
        train, test = splits["train"], splits["test"]
        assert train.images.shape == (20, 3, 32, 32) and train.images.dtype == torch.uint8
        assert test.images.shape == (4, 3, 32, 32)
        assert train.classes[3] == "cat"
        # Channel-major rows: the first 1024 bytes are the red plane, row by row.
        first = arrays["data_batch_1"][0]
        assert torch.equal(train.images[0, 0].flatten(), torch.from_numpy(first[:1024].copy()))
        assert torch.equal(train.images[0, 2, 31], torch.from_numpy(first[-32:].copy()))
        assert torch.equal(test.images.flatten(1), torch.from_numpy(arrays["test_batch"]))


def test_cifar100_uses_the_fine_labels(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    data = np.zeros((3, 3072), dtype=np.uint8)
    for name in ("train", "test"):
        (folder / name).write_bytes(
            _pickled({b"data": data, b"fine_labels": [5, 99, 0], b"coarse_labels": [1, 2, 3]})
        )
    (folder / "meta").write_bytes(
        _pickled(
            {
                b"fine_label_names": [f"c{i}".encode() for i in range(100)],
                b"coarse_label_names": [b"x"] * 20,
            }
        )
    )
    splits = load_cifar("cifar100", tmp_path)
    assert splits["train"].labels.tolist() == [5, 99, 0]
    assert len(splits["train"].classes) == 100


def test_missing_copy_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"cifar-10-python\.tar\.gz.*md5"):
        load_cifar("cifar10", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="unknown CIFAR"):
        load_cifar("cifar11", tmp_path)


def test_a_pickle_that_would_run_code_is_refused(tmp_path: Path) -> None:
    archive, _ = write_cifar10(tmp_path)

    class Evil:
        def __reduce__(self):  # runs os.system on a naive pickle.load
            import os

            return (os.system, ("echo pwned",))

    folder = tmp_path / "x" / "cifar-10-batches-py"
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(ValueError, match="refusing to load"):
        load_cifar("cifar10", folder)


def test_incomplete_copy_names_the_missing_batches(tmp_path: Path) -> None:
    archive, _ = write_cifar10(tmp_path)
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    (tmp_path / "x" / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_4"):
        load_cifar("cifar10", tmp_path / "x")


def test_download_checks_the_md5_and_keeps_nothing_on_mismatch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "server").mkdir()
    archive, _ = write_cifar10(tmp_path / "server")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    source = cifar_module.CIFAR_SOURCES["cifar10"]
    fake = cifar_module.CifarSource(**{**source.__dict__, "url": archive.as_uri(), "md5": md5})
    monkeypatch.setitem(cifar_module.CIFAR_SOURCES, "cifar10", fake)
    cache = tmp_path / "cache"
    splits = load_cifar("cifar10", cache, download=True)
    assert len(splits["train"]) == 20
    assert (cache / "cifar-10-python.tar.gz").is_file()

    wrong = cifar_module.CifarSource(**{**fake.__dict__, "md5": "0" * 32})
    monkeypatch.setitem(cifar_module.CIFAR_SOURCES, "cifar10", wrong)
    other = tmp_path / "other"
    with pytest.raises(ValueError, match="md5"):
        load_cifar("cifar10", other, download=True)
    assert not any(other.iterdir())  # the partial download was removed

    offline = cifar_module.CifarSource(
        **{**fake.__dict__, "url": (tmp_path / "no.tar.gz").as_uri()}
    )
    monkeypatch.setitem(cifar_module.CIFAR_SOURCES, "cifar10", offline)
    with pytest.raises(ConnectionError, match="could not download"):
        load_cifar("cifar10", tmp_path / "third", download=True)


def test_digits_are_bundled_and_split_reproducibly() -> None:
    a, b = load_digits(seed=0), load_digits(seed=0)
    assert a["train"].images.shape[1:] == (1, 8, 8)
    assert len(a["train"]) + len(a["test"]) == 1797
    assert torch.equal(a["test"].labels, b["test"].labels)
    assert int(a["train"].images.max()) == 255
    assert load_dataset("digits")["test"].images.shape == a["test"].images.shape


def test_subset_is_class_balanced_and_sized() -> None:
    train = load_digits()["train"]
    part, indices = subset(train, 500, seed=3)
    assert len(part) == 500 and len(set(indices.tolist())) == 500
    assert torch.equal(part.labels, train.labels[indices])
    counts = torch.bincount(part.labels, minlength=10).float()
    expected = torch.bincount(train.labels, minlength=10).float() * 500 / len(train)
    assert (counts - expected).abs().max() <= 1.0
    whole, everything = subset(train, None, seed=0)
    assert whole is train and len(everything) == len(train)


def test_load_dataset_rejects_unknown_names_and_missing_folders() -> None:
    with pytest.raises(ValueError, match="dataset must be one of"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="needs a data directory"):
        load_dataset("folder")
