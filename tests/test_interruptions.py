"""Interrupted and concurrent ``protect`` runs lose nothing.

Each test runs ``stackelberg protect`` in a real subprocess, stops it partway (SIGINT,
SIGTERM, SIGKILL) or races a second run against it, then checks that every file in the
output folder is accounted for by the manifest with the hash of its bytes, that no temporary
file is left, and that ``--resume`` completes the folder.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stackelberg.unlearnable.checkpoint import load_generator
from stackelberg.unlearnable.cli import main
from stackelberg.unlearnable.ledger import JOURNAL, MANIFEST
from stackelberg.unlearnable.protect import protect_folder
from stackelberg.utils.files import file_sha256
from tests.conftest import HANG_TIMEOUT
from tests.test_cli import saturated_generator

EPS = 8 / 255
#: Enough that a run outlasts the parent's reaction to its fifth output by a wide margin even on a
#: loaded machine (150 were all written before a SIGKILL arrived once in CI).
IMAGES = 400


@pytest.fixture(scope="module")
def generator(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gen") / "generator.pt"
    saturated_generator(path, channels=3)
    return path


@pytest.fixture(scope="module")
def many_photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Enough images that a run takes seconds, so it can be stopped partway."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(IMAGES):
        folder = root / f"day{i % 3}"
        folder.mkdir(exist_ok=True)
        pixels = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"p{i:03d}.png")
    return root


def protect_process(source: Path, out: Path, generator: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "stackelberg.unlearnable.cli", "protect", str(source)]
    command += [str(out), "--generator", str(generator), "--no-progress", *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def journaled_outputs(out: Path) -> int:
    journal = out / JOURNAL
    if not journal.is_file():
        return 0
    return journal.read_text().count('"protected"')


def wait_for_outputs(process: subprocess.Popen, out: Path, count: int) -> None:
    """Wait until the running process has journaled ``count`` outputs."""
    deadline = time.monotonic() + HANG_TIMEOUT
    while journaled_outputs(out) < count:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the run never got going"
        time.sleep(0.02)


def journal_events(out: Path) -> list[dict]:
    """The journal's events; a last line a kill cut short is dropped, as the ledger does."""
    if not (out / JOURNAL).is_file():
        return []
    lines = (out / JOURNAL).read_text().splitlines()
    events = []
    for number, line in enumerate(lines, 1):
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            assert number == len(lines), "only the last line may be cut short"
    return events


def recorded(out: Path) -> dict[str, set[str]]:
    """Every output the manifest (and a journal a killed run left) records, with hashes."""
    hashes: dict[str, set[str]] = {}
    if (out / MANIFEST).is_file():
        for batch in json.loads((out / MANIFEST).read_text())["batches"]:
            for entry in batch["protected"]:
                hashes.setdefault(entry["output"], set()).add(entry["sha256"])
    for event in journal_events(out):
        if "protected" in event:
            entry = event["protected"]
            hashes.setdefault(entry["output"], set()).add(entry["sha256"])
    return hashes


def assert_accounted_for(out: Path) -> list[str]:
    """Every image file in ``out`` is recorded with the hash of its bytes, and every
    temporary file is one a journal lists as pending; returns the image files."""
    hashes = recorded(out)
    files = sorted(
        str(p.relative_to(out))
        for p in out.rglob("*")
        if p.is_file() and p.name not in (MANIFEST, JOURNAL)
    )
    # a killed run's temporaries are listed in its journal before they exist
    pending = {event["pending"] for event in journal_events(out) if "pending" in event}
    temporaries = {f for f in files if f.endswith(".tmp")}
    assert temporaries <= pending, temporaries
    files = [f for f in files if f not in temporaries]
    for name in files:
        assert file_sha256(out / name) in hashes.get(name, set()), name
    return files


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_a_stopped_run_leaves_every_output_recorded_and_resume_completes_it(
    stop: signal.Signals, tmp_path: Path, generator: Path, many_photos: Path
) -> None:
    out = tmp_path / "out"
    process = protect_process(many_photos, out, generator)
    wait_for_outputs(process, out, 5)
    process.send_signal(stop)
    _, err = process.communicate(timeout=HANG_TIMEOUT)
    written = assert_accounted_for(out)
    # the stop may fall between journaling the fifth output and renaming it in: then its
    # temporary is removed and the manifest does not list it (asserted below)
    assert 4 <= len(written) < IMAGES
    if stop == signal.SIGKILL:
        assert process.returncode == -signal.SIGKILL
        assert (out / JOURNAL).is_file()  # nothing ran after the kill: the journal holds it
    else:
        assert process.returncode == 1
        assert "interrupted" in err and "--resume" in err and "(train)" not in err
        assert len(err.strip().splitlines()) == 1, err
        assert not (out / JOURNAL).exists()
        batch = json.loads((out / MANIFEST).read_text())["batches"][-1]
        assert not batch["finished"] and len(batch["protected"]) == len(written)
    before = {name: (out / name).read_bytes() for name in written}
    args = ["protect", str(many_photos), str(out), "--generator", str(generator), "--no-progress"]
    assert main(args) == 1  # without --resume, what is there is never silently redone
    assert main([*args, "--resume"]) == 0
    assert len(assert_accounted_for(out)) == IMAGES
    assert all((out / name).read_bytes() == data for name, data in before.items())
    assert not (out / JOURNAL).exists()
    batches = json.loads((out / MANIFEST).read_text())["batches"]
    assert [b["finished"] for b in batches] == [False, True]
    assert sum(len(b["protected"]) for b in batches) == IMAGES


def test_a_second_run_into_the_same_folder_is_refused_naming_the_first(
    tmp_path: Path, generator: Path, many_photos: Path, capsys
) -> None:
    out = tmp_path / "out"
    first = protect_process(many_photos, out, generator)
    wait_for_outputs(first, out, 1)
    args = ["protect", str(many_photos), str(out), "--generator", str(generator), "--no-progress"]
    assert main([*args, "--resume"]) == 1
    err = capsys.readouterr().err
    assert f"another protect run (process {first.pid}" in err
    assert len(err.strip().splitlines()) == 1
    assert first.wait(timeout=HANG_TIMEOUT) == 0
    assert main([*args, "--resume"]) == 0  # the lock died with its holder
    assert f"{IMAGES} image(s) already protected" in capsys.readouterr().out
    batches = json.loads((out / MANIFEST).read_text())["batches"]
    assert [len(b["protected"]) for b in batches] == [IMAGES, 0]
    assert len(assert_accounted_for(out)) == IMAGES


def test_a_failing_disk_stops_the_run_saying_what_was_written(
    tmp_path: Path, generator: Path, monkeypatch
) -> None:
    source = tmp_path / "in"
    source.mkdir()
    for i in range(5):
        Image.new("RGB", (16, 16), (i, 2 * i, 3 * i)).save(source / f"p{i}.png")
    module, _ = load_generator(generator)
    save, calls = Image.Image.save, []

    def full_disk(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        calls.append(fp)
        if len(calls) == 3:
            Path(fp).write_bytes(b"\x89PNG half")  # type: ignore[arg-type]
            raise OSError(errno.ENOSPC, "No space left on device")
        save(self, fp, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Image.Image, "save", full_disk)
    out = tmp_path / "out"
    with pytest.raises(OSError, match=r"stopped after protecting 2 image\(s\).*--resume"):
        protect_folder(module, source, out, epsilon=EPS, progress=False)
    assert assert_accounted_for(out) == ["p0.png", "p1.png"]  # the half file is gone
    monkeypatch.setattr(Image.Image, "save", save)
    report = protect_folder(module, source, out, epsilon=EPS, progress=False, resume=True)
    assert len(report.protected) == 3 and len(report.resumed) == 2
    assert len(assert_accounted_for(out)) == 5


def test_an_image_the_generator_fails_on_is_listed_and_the_rest_protected(
    tmp_path: Path, generator: Path
) -> None:
    source = tmp_path / "in"
    source.mkdir()
    Image.new("RGB", (16, 16)).save(source / "fine.png")
    Image.new("RGB", (24, 16)).save(source / "wide.png")
    module, _ = load_generator(generator)
    forward = module.forward

    def fails_on_wide(x):  # type: ignore[no-untyped-def]
        if x.shape[-1] == 24:
            raise RuntimeError("CUDA out of memory (simulated)")
        return forward(x)

    module.forward = fails_on_wide  # type: ignore[method-assign]
    report = protect_folder(module, source, tmp_path / "out", epsilon=EPS, progress=False)
    assert [p["input"] for p in report.protected] == ["fine.png"]
    assert report.skipped == [
        {
            "input": "wide.png",
            "reason": "the generator failed on it: CUDA out of memory (simulated)",
        }
    ]
    assert assert_accounted_for(tmp_path / "out") == ["fine.png"]


def test_an_input_beside_a_folder_of_its_output_name_is_listed(
    tmp_path: Path, generator: Path
) -> None:
    source = tmp_path / "in"
    (source / "x.png").mkdir(parents=True)
    Image.new("RGB", (16, 16)).save(source / "x.jpg")
    Image.new("RGB", (16, 16)).save(source / "x.png" / "inner.png")
    module, _ = load_generator(generator)
    report = protect_folder(module, source, tmp_path / "out", epsilon=EPS, progress=False)
    assert [p["input"] for p in report.protected] == ["x.png/inner.png"]
    assert report.skipped[0]["input"] == "x.jpg"
    assert "also the folder of other outputs" in report.skipped[0]["reason"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifos_and_devices_in_the_input_are_listed_never_opened(
    tmp_path: Path, generator: Path
) -> None:
    source = tmp_path / "in"
    source.mkdir()
    Image.new("RGB", (16, 16)).save(source / "photo.png")
    os.mkfifo(source / "pipe.png")
    (source / "zero.png").symlink_to("/dev/zero")
    module, _ = load_generator(generator)
    report = protect_folder(module, source, tmp_path / "out", epsilon=EPS, progress=False)
    assert [p["input"] for p in report.protected] == ["photo.png"]
    reasons = {s["input"]: s["reason"] for s in report.skipped}
    assert set(reasons) == {"pipe.png", "zero.png"}
    assert all("not a regular file" in reason for reason in reasons.values())
    batch = json.loads((tmp_path / "out" / MANIFEST).read_text())["batches"][0]
    assert {s["input"] for s in batch["skipped"]} == {"pipe.png", "zero.png"}


def test_a_journal_left_by_a_kill_is_folded_once_and_its_temporaries_removed(
    tmp_path: Path,
) -> None:
    """A kill between journaling an output and renaming it in leaves the temporary file and
    an entry for an output that does not exist: the next run removes the one and drops the
    other, and folds the batch only once."""
    from stackelberg.unlearnable.ledger import OutputLedger

    out = tmp_path / "out"
    out.mkdir()
    (out / "done.png").write_bytes(b"written")
    (out / ".late.png.abc.tmp").write_bytes(b"half")
    events = [
        {"batch": {"id": "b1", "pid": 1, "created": "then"}},
        {"pending": "done.png.tmp"},
        {"protected": {"output": "done.png", "sha256": file_sha256(out / "done.png")}},
        {"pending": ".late.png.abc.tmp"},
        {"protected": {"output": "late.png", "sha256": "0" * 64}},
    ]
    journal = "".join(json.dumps(event) + "\n" for event in events) + '{"skipped": {"inp'
    (out / JOURNAL).write_text(journal)
    with OutputLedger(out) as ledger:
        assert [len(b["protected"]) for b in ledger.batches] == [1]
        assert ledger.recorded_hashes() == {"done.png": {file_sha256(out / "done.png")}}
    assert sorted(p.name for p in out.iterdir()) == ["done.png", MANIFEST]
    (out / JOURNAL).write_text(journal)  # as if the kill came again before the journal's removal
    with OutputLedger(out) as ledger:
        assert len(ledger.batches) == 1  # the same batch id is not added twice
