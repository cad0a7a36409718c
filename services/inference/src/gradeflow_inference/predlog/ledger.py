"""Counting the log rows a crash lost: a small file per process with two counters (``CrashLedger``).

Without ``LOG_DURABLE_ACK`` a prediction is answered as soon as its row is queued; the writer thread commits
it within ``LOG_FLUSH_INTERVAL`` (0.2 s) or ``LOG_BATCH_SIZE`` records. A clean stop writes every queued row,
but a process killed hard (SIGKILL, OOM killer, power loss) loses the rows still queued or being written:
up to 0.2 s of acknowledged predictions (more while the database is slow or down, up to ``LOG_QUEUE_MAX``).

So that such a loss is never silent, each process keeps ``<pid>-<ns>.ledger`` in its folder with

* ``reserved``: an upper bound of the records accepted into the queue so far. The request path reserves
  in blocks of ``BLOCK`` records (one ``pwrite`` of 21 bytes per block, before the records of the block
  are acknowledged, so the bound is always on disk before an answer leaves);
* ``done``: the records committed (or dropped and counted) by the writer, written after each commit.

The file is ``flock``-ed for the life of the process (the kernel releases the lock when the process dies,
however it dies). On start, every ledger whose lock can be taken belongs to a dead process: ``reserved -
done`` records are counted as lost (``inference_log_lost_on_crash_total``, ``/health``, an ERROR line) and
the file is removed. A clean stop removes its own file (nothing is lost then). Writes without fsync: the
counters survive a crash of the process (the page cache outlives it), not of the machine.

Guarantee: lost >= the records acknowledged but missing from the log; the count may exceed them by the
records queued but not yet answered, the unused rest of the last block (< ``BLOCK``) and, if the kill fell
between a commit and the ledger write after it, the records of that one commit.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from pathlib import Path

logger = logging.getLogger(__name__)

BLOCK = 64  # records reserved per ledger write on the request path
_WIDTH = 21  # 20 digits + newline per counter
SUFFIX = ".ledger"


def _encode(n: int) -> bytes:
    return b"%020d\n" % n


class CrashLedger:
    """This process's ledger file plus the claim of dead processes' ledgers (see the module docstring)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path: Path | None = None
        self.reserved = 0
        self._fd: int | None = None

    def open(self, journalled: set[str] | None = None) -> int:
        """Count and remove the ledgers of dead processes, then create and lock this process's own.
        Returns the records lost by those processes (``journalled``: names of dead processes that ran
        with durable acknowledgement: their journal holds every row they answered, none is lost)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        lost = claim_dead(self.directory, journalled or set())
        tmp = self.directory / f".tmp-{os.getpid()}-{time.time_ns()}"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.pwrite(fd, _encode(0) + _encode(0), 0)
        self.path = self.directory / f"{os.getpid()}-{time.time_ns()}{SUFFIX}"
        os.rename(tmp, self.path)  # visible to claimers only once locked
        self._fd = fd
        return lost

    def reserve(self, accepted: int) -> None:
        """Make sure ``reserved`` >= ``accepted`` on disk (request path; a write once per BLOCK records)."""
        if accepted > self.reserved and self._fd is not None:
            self.reserved = accepted + BLOCK
            os.pwrite(self._fd, _encode(self.reserved), 0)

    def done(self, done: int) -> None:
        """Record that ``done`` records are committed or counted as dropped (writer thread)."""
        if self._fd is not None:
            os.pwrite(self._fd, _encode(done), _WIDTH)

    def close(self) -> None:
        """A clean stop: remove the file (nothing was lost) and release the lock."""
        if self._fd is None:
            return
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
        os.close(self._fd)
        self._fd = None


def read_counters(path: Path) -> tuple[int, int]:
    """(reserved, done) of a ledger file; (0, 0) for an empty or damaged one."""
    raw = path.read_bytes()
    try:
        return int(raw[:_WIDTH]), int(raw[_WIDTH : 2 * _WIDTH])
    except ValueError:
        return 0, 0


def claim_dead(directory: Path, journalled: set[str] | None = None) -> int:
    """Sum ``reserved - done`` over the ledgers of dead processes (lock free) and remove them; a process
    in ``journalled`` (ledger name without the suffix) lost nothing: its journal is replayed."""
    journalled = journalled or set()
    lost = 0
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        fd = lock_if_dead(path)
        if fd is None:
            continue
        try:
            reserved, done = read_counters(path)
            n = 0 if path.name[: -len(SUFFIX)] in journalled else max(0, reserved - done)
            if n:
                logger.error(
                    "prediction log: up to %d records acknowledged by a process that died (%s) were never "
                    "written (reserved %d, written %d)",
                    n,
                    path.name,
                    reserved,
                    done,
                )
            lost += n
            path.unlink()
        finally:
            os.close(fd)
    return lost


def lock_if_dead(path: Path, flags: int = os.O_RDWR) -> int | None:
    """An open descriptor of ``path``, locked by this process, if the process that owned it is dead (its
    ``flock`` is free); None while that process lives or when another process claimed the file first."""
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.stat(path).st_ino != os.fstat(fd).st_ino:  # claimed and removed before we got the lock
            raise FileNotFoundError(path)
    except (BlockingIOError, FileNotFoundError):
        os.close(fd)
        return None
    return fd
