"""What ``protect`` wrote into an output folder, kept so that no output is ever unaccounted
for and no other file is ever replaced.

Two files live in the output folder:

- ``protect_manifest.json``: every batch written into the folder (``batches``, appended, never
  replaced): its settings and, per output, the measured ‖δ‖∞, the size and the SHA-256 of the
  bytes written. A file counts as protect's only while its bytes hash to a recorded value, so
  a file the user changed after protect wrote it is never replaced.
- ``protect_manifest.journal``: the running batch, one JSON line per event, each flushed to
  disk (``fsync``) before the next image starts: the batch's header, every temporary file
  before it is created (``pending``), every output once checked and hashed, before it is
  renamed into place (``protected``), every skipped input. A run stopped at any point (Ctrl-C,
  SIGTERM, SIGKILL, a full disk) leaves a journal that accounts for each byte it wrote; the
  next run folds it into the manifest as an interrupted batch (``finished: false``) and removes
  the temporary files it lists, so ``--resume`` continues where the run stopped.

Entries of manifests written before hashes were kept carry no ``sha256``; their files count
as protect's by name, as they did then.

The journal is also the folder's lock: a run holds an exclusive ``flock`` on it for as long
as it works, so a second run into the same folder is refused, naming the first run's process
and start time (the lock dies with its process, so a killed run never blocks the next).
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from stackelberg.utils.files import FileFormatError, file_sha256, read_json_object
from stackelberg.utils.io import write_json
from stackelberg.utils.ownership import OwnershipError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, concurrent runs are not detected
    fcntl = None  # type: ignore[assignment]

__all__ = ["JOURNAL", "MANIFEST", "ConcurrentRunError", "OutputLedger"]

MANIFEST = "protect_manifest.json"
JOURNAL = "protect_manifest.journal"


class ConcurrentRunError(FileExistsError):
    """Another run is writing into the same output folder."""


def _manifest_problem(record: dict[str, Any]) -> str | None:
    """Why ``record`` is not a manifest protect wrote (``None`` if it is one): every batch an
    object whose ``protected`` entries name their ``output``."""
    batches = record.get("batches", [record])  # the first format held one batch, unwrapped
    if not isinstance(batches, list):
        return "'batches' is not a list"
    for number, batch in enumerate(batches, 1):
        entries = batch.get("protected") if isinstance(batch, dict) else None
        if not isinstance(entries, list):
            return f"batch {number} has no list of protected files"
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("output"), str):
                return f"an entry of batch {number} names no output file"
            if not isinstance(entry.get("sha256", ""), str):
                return f"the entry of {entry['output']} has a sha256 that is not text"
    return None


def _read_manifest(path: Path) -> list[dict[str, Any]]:
    """The batches the manifest at ``path`` records; ``[]`` if there is none. A file of that
    name that protect did not write is refused: it is never replaced."""
    if not path.exists() and not path.is_symlink():
        return []
    if path.is_symlink():
        raise OwnershipError(
            f"{path} is a link, not a manifest protect wrote; it is never replaced"
        )
    try:
        record = read_json_object(
            path, "a manifest written by `stackelberg protect`", is_valid=_manifest_problem
        )
    except FileFormatError as error:
        raise OwnershipError(
            f"{error}; it is never replaced (not even with --overwrite): choose another output "
            "folder"
        ) from None
    return list(record["batches"]) if "batches" in record else [record]


class OutputLedger:
    """The manifest and journal of one output folder, held under the folder's lock.

    Use it as a context manager: ``OutputLedger(out_dir)`` takes the lock (creating the folder
    if needed) and folds an interrupted run's journal into the manifest; ``begin`` starts this
    run's batch; ``pending``/``protected``/``skipped`` journal each event; leaving the block
    folds the batch into the manifest (``finished`` unless an exception left it) and releases
    the lock. A block left before ``begin`` removes the journal, and the folder if it made it
    and it is empty, so a refused run leaves nothing behind.
    """

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)
        self.manifest_path = self.out_dir / MANIFEST
        self.journal_path = self.out_dir / JOURNAL
        self.batches: list[dict[str, Any]] = []
        self.summary: dict[str, Any] = {}
        self._journal: IO[str] | None = None
        self._created_folder = False
        self._begun = False

    # -- the lock ------------------------------------------------------------------------

    def __enter__(self) -> OutputLedger:
        self._created_folder = not self.out_dir.exists()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.journal_path.is_symlink() or (
            self.journal_path.exists() and not self.journal_path.is_file()
        ):
            raise OwnershipError(
                f"{self.journal_path} exists and is not a journal protect wrote; it is never "
                "replaced: choose another output folder"
            )
        self._journal = self._locked_journal()
        try:
            self.batches = _read_manifest(self.manifest_path)
            self._fold_stale_journal()
        except BaseException:
            self._leave_unbegun()
            raise
        return self

    def _locked_journal(self) -> IO[str]:
        """The journal opened for appending, under an exclusive lock on the file the path
        names (retried if another run removed it between our open and our lock)."""
        while True:
            handle = open(self.journal_path, "a+", encoding="utf-8")  # noqa: SIM115
            if fcntl is None:
                return handle
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                raise ConcurrentRunError(
                    f"another protect run ({self._holder()}) is writing into {self.out_dir}: "
                    "wait for it to finish, or choose another output folder"
                ) from None
            try:
                same = os.path.samestat(os.fstat(handle.fileno()), os.stat(self.journal_path))
            except FileNotFoundError:
                same = False
            if same:
                return handle
            handle.close()

    def _holder(self) -> str:
        """The running batch's process and start, read from its journal's first line."""
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            with open(self.journal_path, encoding="utf-8") as handle:
                header = json.loads(handle.readline())["batch"]
            return f"process {header['pid']}, started {header['created']}"
        return "its process is still starting"

    def _release(self, *, remove_journal: bool) -> None:
        if self._journal is None:
            return
        if remove_journal:
            self.journal_path.unlink(missing_ok=True)
        self._journal.close()  # releases the lock
        self._journal = None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._journal is None:
            return
        if self._begun:
            self._fold(finished=kind is None)
            self._release(remove_journal=True)
        else:
            self._leave_unbegun()

    def _leave_unbegun(self) -> None:
        """Leave as found: the journal removed unless it holds an interrupted run's events
        (which failed to fold), and the folder too if this run made it."""
        assert self._journal is not None
        self._release(remove_journal=os.fstat(self._journal.fileno()).st_size == 0)
        if self._created_folder:
            with contextlib.suppress(OSError):
                self.out_dir.rmdir()  # only if still empty

    # -- what was written ----------------------------------------------------------------

    def recorded_hashes(self) -> dict[str, set[str | None]]:
        """Each output any batch recorded, with the SHA-256 values it was written with
        (``None`` for an entry of a manifest from before hashes were kept)."""
        recorded: dict[str, set[str | None]] = {}
        for batch in self.batches:
            for entry in batch.get("protected", []):
                recorded.setdefault(entry["output"], set()).add(entry.get("sha256"))
        return recorded

    def owner_problem(self, target: Path, recorded: dict[str, set[str | None]]) -> str | None:
        """``None`` if ``target`` (an existing path in the folder) holds bytes protect wrote;
        else why it is not protect's to replace."""
        relative = str(target.relative_to(self.out_dir))
        hashes = recorded.get(relative)
        if hashes is None:
            return "not written by protect"
        if target.is_symlink() or not target.is_file():
            return "not a plain file protect wrote"
        if None in hashes or file_sha256(target) in hashes:
            return None
        return "changed since protect wrote it"

    # -- the journal ---------------------------------------------------------------------

    def _append(self, event: dict[str, Any]) -> None:
        assert self._journal is not None
        self._journal.write(json.dumps(event) + "\n")
        self._journal.flush()
        os.fsync(self._journal.fileno())

    def begin(self, header: dict[str, Any]) -> None:
        """Start this run's batch (``header``: its settings)."""
        self._append({"batch": {**header, "id": uuid.uuid4().hex, "pid": os.getpid()}})
        self._begun = True

    def pending(self, temporary: Path) -> None:
        """Record a temporary file before it is created, so a kill never orphans it."""
        self._append({"pending": str(temporary.relative_to(self.out_dir))})

    def protected(self, entry: dict[str, Any]) -> None:
        """Record an output (with its ``sha256`` and ``bytes``) before it is renamed in."""
        self._append({"protected": entry})

    def skipped(self, entry: dict[str, str]) -> None:
        self._append({"skipped": entry})

    def _journal_events(self) -> list[dict[str, Any]]:
        """The journal's events; a last line cut short by a kill is dropped."""
        assert self._journal is not None
        self._journal.seek(0)
        lines = self._journal.read().splitlines()
        events = []
        for number, line in enumerate(lines, 1):
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines):
                    break  # the write the kill interrupted
                raise FileFormatError(
                    f"{self.journal_path}: line {number} is not a journal event; the folder's "
                    "record is damaged: choose another output folder"
                ) from None
            if not isinstance(event, dict):
                raise FileFormatError(f"{self.journal_path}: line {number} is not an event")
            events.append(event)
        return events

    def _fold_stale_journal(self) -> None:
        """Fold a journal an interrupted run left into the manifest."""
        events = self._journal_events()
        if events:
            self._write_folded(events, finished=False)
        assert self._journal is not None
        self._journal.truncate(0)
        os.fsync(self._journal.fileno())

    def _fold(self, *, finished: bool) -> None:
        self._write_folded(self._journal_events(), finished=finished)

    def _write_folded(self, events: list[dict[str, Any]], *, finished: bool) -> None:
        """Append the batch the journal ``events`` describe to the manifest (once: a batch
        already there, by its id, is not added again) and remove its leftover temporaries."""
        batch: dict[str, Any] | None = None
        for event in events:
            if "batch" in event:
                batch = {**event["batch"], "protected": [], "skipped": []}
            elif batch is None:
                continue
            elif "protected" in event:  # journaled before its rename, which a stop can skip
                if (self.out_dir / event["protected"]["output"]).exists():
                    batch["protected"].append(event["protected"])
            elif "skipped" in event:
                batch["skipped"].append(event["skipped"])
            elif "pending" in event:
                leftover = self.out_dir / event["pending"]
                if leftover.is_file() and not leftover.is_symlink():
                    leftover.unlink()  # never renamed in: the run stopped while writing it
        if batch is None:
            return
        batch.pop("pid", None)
        batch.update(self.summary, finished=finished)
        if any(earlier.get("id") == batch["id"] for earlier in self.batches):
            return
        self.batches.append(batch)
        write_json(self.manifest_path, {"format": "stackelberg-protect", "batches": self.batches})
