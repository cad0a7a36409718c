"""Durable acknowledgement's journal: an append-only file per process that holds every acknowledged row
until the database has it (``AckJournal``).

With ``LOG_DURABLE_ACK=true`` a prediction is answered only once its log row is on the data volume. Waiting
for a database commit per answer is what made that expensive: a SQLite commit costs 60-250 microseconds of
system calls here (WAL frames, locks, the shared-memory index), a PostgreSQL commit a network round trip,
and a lone client pays all of it on every request. Instead, the event loop appends the rows of one turn
(every request that finished in it) to this journal in ONE ``write`` (a few microseconds) and answers;
the writer thread inserts them into the database in its usual batches, and the journal drops them once
they are committed.

Files: ``<stem>-<n>.acked`` in the ledger folder (``stem`` is the process's ledger name), a line of JSON
per request. They are ``flock``-ed while their process lives; a new segment starts every
``SEGMENT_BYTES``, and a segment whose rows are all committed is removed. A clean stop removes them all
(or keeps them when the database never took the rows: the next start replays them). On start, the
segments of dead processes are claimed (their lock is free): their rows are copied into this process's
journal, queued for the database (a row the database already has is recognised by its batch key and not
counted twice), and the dead files removed.

Guarantee: an answered prediction is in the database or in a journal on the volume; it survives a crash
of the process (the page cache outlives it: no fsync), not a crash of the machine. The same holds for
SQLite's own WAL with ``synchronous=NORMAL``, which the log uses.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import orjson

from .ledger import lock_if_dead
from .store import LogBatch

logger = logging.getLogger(__name__)

SUFFIX = ".acked"
SEGMENT_BYTES = 4 << 20  # a new segment after this many bytes; committed segments are removed


def encode(batch: LogBatch) -> bytes:
    """One journal line for ``batch`` (numpy predictions become floats)."""
    return (
        orjson.dumps(
            [
                batch.batch_key,
                batch.ts,
                batch.model_version,
                batch.records,
                batch.predictions,
                batch.latency_ms,
                batch.n,
                batch.arms,
                batch.candidate_version,
            ],
            option=orjson.OPT_SERIALIZE_NUMPY,
        )
        + b"\n"
    )


def decode(line: bytes) -> LogBatch:
    """The batch of one journal line (ValueError for a damaged one)."""
    v = orjson.loads(line)
    if not isinstance(v, list) or len(v) != 9:
        raise ValueError("not a journal entry")
    key, ts, version, records, preds, latency, n, arms, cand = v
    if not isinstance(key, str) or not isinstance(records, list) or not isinstance(preds, list):
        raise ValueError("not a journal entry")
    if int(n) != len(records) or len(preds) != len(records):
        raise ValueError("record and prediction counts disagree")
    return LogBatch(key, float(ts), int(version), records, preds, float(latency), int(n), arms, cand, True)


class _Segment:
    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd
        self.size = 0
        self.last_seq = -1  # sequence of the last batch written to it


class AckJournal:
    """This process's journal segments (see the module docstring). Thread-safe: the event loop appends,
    the writer thread trims."""

    def __init__(self, directory: Path, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes
        self.stem = f"{os.getpid()}-{time.time_ns()}"
        self._segments: list[_Segment] = []  # oldest first; the last one takes the appends
        self._count = 0
        self._claimed: list[tuple[Path, int]] = []  # dead processes' segments, locked, until adopted
        self._lock = threading.Lock()
        self.appended = 0  # batches ever appended

    # ------------------------------------------------------------------ start
    def claim_dead(self) -> tuple[list[LogBatch], set[str]]:
        """Read and take over the segments of dead processes: their batches (oldest first) and the stems
        of those processes (they ran with durable acknowledgement). The caller queues the batches and
        then calls ``adopt`` with them."""
        batches: list[LogBatch] = []
        stems: set[str] = set()
        if not self.directory.is_dir():
            return batches, stems
        paths = sorted(self.directory.glob(f"*{SUFFIX}"), key=_segment_order)
        for path in paths:
            fd = lock_if_dead(path, os.O_RDONLY)
            if fd is None:
                continue
            stems.add(path.name[: -len(SUFFIX)].rsplit("-", 1)[0])
            raw = os.pread(fd, os.fstat(fd).st_size, 0)
            lines = raw.split(b"\n")
            if lines and lines[-1]:  # a torn last line: the write was cut by the crash, never acknowledged
                logger.warning("prediction log journal %s: an incomplete last entry skipped", path.name)
            bad = 0
            for line in lines[:-1]:
                try:
                    b = decode(line)
                except (ValueError, TypeError, orjson.JSONDecodeError):
                    bad += 1
                    continue
                batches.append(b)
            if bad:
                logger.error("prediction log journal %s: %d damaged entries skipped", path.name, bad)
            self._claimed.append((path, fd))
        return batches, stems

    def adopt(self, entries: list[tuple[int, LogBatch]]) -> None:
        """Copy the claimed batches (with their queue sequences) into this journal, then remove the dead
        processes' files: the rows stay on the volume until the database commits them."""
        if entries:
            self.append(entries)
        for path, fd in self._claimed:
            with contextlib.suppress(OSError):
                path.unlink()
            os.close(fd)
        self._claimed = []

    # ------------------------------------------------------------------ request path (event loop)
    def append(self, entries: Iterable[tuple[int, LogBatch]]) -> None:
        """Write the entries (queue sequence, batch) in one ``write``; OSError when the volume refuses."""
        data = bytearray()
        last = -1
        for seq, b in entries:
            data += encode(b)
            last = seq
        if not data:
            return
        with self._lock:
            seg = self._segments[-1] if self._segments else None
            if seg is None or seg.size >= self.segment_bytes:
                seg = self._new_segment()
            n = os.write(seg.fd, data)
            if n != len(data):  # a full disk can write part: the rest must not be acknowledged
                raise OSError(f"journal write cut short ({n} of {len(data)} bytes)")
            seg.size += n
            seg.last_seq = max(seg.last_seq, last)
            self.appended += 1

    def open_segment(self) -> None:
        """Create this process's first segment now (a durable process that dies before its first answer
        is then still known as one that loses nothing)."""
        with self._lock:
            if not self._segments:
                self._new_segment()

    def _new_segment(self) -> _Segment:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f".tmp-{self.stem}-{self._count}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        path = self.directory / f"{self.stem}-{self._count}{SUFFIX}"
        os.rename(tmp, path)  # visible to claimers only once locked
        self._count += 1
        seg = _Segment(path, fd)
        self._segments.append(seg)
        return seg

    # ------------------------------------------------------------------ writer thread
    def trim(self, batches_done: int) -> None:
        """Remove the full segments whose batches are all committed (sequence < ``batches_done``)."""
        with self._lock:
            while len(self._segments) > 1 and self._segments[0].last_seq < batches_done:
                seg = self._segments.pop(0)
                with contextlib.suppress(OSError):
                    seg.path.unlink()
                os.close(seg.fd)

    def close(self, remove: bool) -> None:
        """Stop: remove the segments (``remove``: every row is committed) or keep them for the next start."""
        with self._lock:
            for seg in self._segments:
                if remove:
                    with contextlib.suppress(OSError):
                        seg.path.unlink()
                os.close(seg.fd)
            self._segments = []

    def files(self) -> list[Path]:
        with self._lock:
            return [s.path for s in self._segments]


def _segment_order(path: Path) -> tuple[str, int]:
    stem, _, n = path.name[: -len(SUFFIX)].rpartition("-")
    try:
        return stem, int(n)
    except ValueError:
        return stem, 0
