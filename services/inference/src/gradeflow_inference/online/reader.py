"""Latest feature values of students, read from the online store Feast writes (SQLite or Redis).

``OnlineFeatures`` is the one interface the predict path uses; ``open_online(...)`` picks the store:
Redis when FEATURE_ONLINE_STORE_URL is set, else the SQLite file named in the layout. Both read Feast's
own tables/hashes through ``wire`` (no Feast import: inference starts in well under 2 s and a lookup of
one student costs tens of microseconds instead of Feast's several milliseconds per call).

A student is *unknown* when no feature view holds a row for them. A stored value is *expired* when its
event time is older than its view's time to live (Feast's TTL; 0 or none never expires).

The predict path calls ``lookup(ids, features)``; a batch of 1000 ids must cost less than the 1000 full
records it replaces, so nothing is done per stored value in Python: one query per view (SQLite pivots
the rows) or one round trip for all keys (Redis), values decoded through a memo keyed by their bytes
(exact: a value is a pure function of its encoding), and each student's values picked in the model's
feature order by one ``itemgetter`` call (the caller zips them into the record). ``get(ids)`` gives the
same as ``StudentRow`` dicts (tests, and the 422 path that names what is missing or expired).
"""

from __future__ import annotations

import calendar
import functools
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from .layout import LAYOUT_FILE, Layout, read_layout
from .wire import decode_timestamp, decode_value, entity_key

logger = logging.getLogger(__name__)

SQLITE_MAX_PARAMS = 900  # ids per SELECT (SQLite's default limit of bound parameters is 999)
LAYOUT_CHECK_SECONDS = 1.0
CACHE_MAX = 200_000  # students a thread keeps decoded (dropped at any write to the store, or when full)


@dataclass
class StudentRow:
    """What the online store knows about one student."""

    values: dict[str, Any] = field(default_factory=dict)  # feature -> value (None: stored as null)
    expired: dict[str, float] = field(default_factory=dict)  # feature -> event time of the expired value


class _Absent:
    """Marks a feature the store has no usable value of (not stored, or its view expired)."""

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()

# What a store holds for one student, decoded: (per feature view of the layout, in its order: the event
# time, None when it has none, ABSENT when the view holds nothing for the student; the values of every
# view's features in layout order, ABSENT where not stored, and one more ABSENT at the end).
_Views = tuple[tuple[Any, ...], tuple[Any, ...]]

# One student as ``lookup`` answers: None (unknown), a tuple of the requested features' values (all
# stored and fresh), or a StudentRow (some requested feature is missing or expired: the caller explains).
Found = tuple[Any, ...] | StudentRow | None


class OnlineFeatures(Protocol):
    """The online store as the predict path sees it."""

    def get(self, ids: Sequence[str]) -> list[StudentRow | None]:
        """One entry per id, in order: None for a student the store does not know."""
        ...

    def lookup(self, ids: Sequence[str], features: tuple[str, ...]) -> list[Found]:
        """One entry per id, in order (see ``Found``): the fast form of ``get`` for the predict path."""
        ...

    def layout(self) -> Layout | None:
        """The applied repository's layout (None before the first apply)."""
        ...

    def warm(self) -> None:
        """Import and set up what the first lookup needs (called in the background after start-up)."""
        ...

    def close(self) -> None: ...


MEMO_MAX = 1 << 16  # distinct encoded values (or event times) kept decoded


class _Memo(dict[Any, Any]):
    """Encoded bytes -> decoded value, for a pure decoder (a hit is exact, never stale: the key is the
    stored bytes themselves). Tabular features take few distinct values, so after the first requests a
    value costs a dict lookup in C (``map(memo.__getitem__, ...)``) instead of a protobuf parse in Python.
    None (no stored value) -> ABSENT. Emptied when full (bounded memory)."""

    def __init__(self, decode: Callable[[bytes], Any]) -> None:
        super().__init__()
        self._decode = decode

        self[None] = ABSENT

    def __missing__(self, buf: bytes) -> Any:
        v = self._decode(buf)
        if len(self) >= MEMO_MAX:
            self.clear()
            self[None] = ABSENT
        self[buf] = v
        return v


_VALUES = _Memo(decode_value)
_TIMES = _Memo(decode_timestamp)


@functools.lru_cache(maxsize=4096)
def _local_epoch_to_utc(v: int) -> float:
    """Feast's SQLite store writes a naive UTC time as ``int(naive.timestamp())`` (the machine's local
    time zone); this undoes it exactly (identity on a machine in UTC)."""
    return float(calendar.timegm(time.localtime(v)))


@dataclass(frozen=True)
class _Plan:
    """How to pick the values of ``features`` out of a student's ``_Views`` (one per layout and list)."""

    needed: tuple[tuple[int, float | None], ...]  # (view index, time to live) of views holding a feature
    pick: Callable[[tuple[Any, ...]], tuple[Any, ...]]  # all views' values -> the features' values

    @staticmethod
    def of(layout: Layout, features: tuple[str, ...]) -> _Plan:
        where: dict[str, tuple[int, int]] = {}  # feature -> (its view, its place in the flat values)
        pos = 0
        for vi, v in enumerate(layout.views):
            for f in v.features:
                where.setdefault(f, (vi, pos))  # in two views: the first one's (as layout.feature_view)
                pos += 1
        idx = [where[f][1] if f in where else pos for f in features]  # pos: the trailing ABSENT
        if len(idx) == 1:
            i = idx[0]
            pick: Callable[[tuple[Any, ...]], tuple[Any, ...]] = lambda vals: (vals[i],)  # noqa: E731
        else:
            pick = itemgetter(*idx)
        views = sorted({where[f][0] for f in features if f in where})
        return _Plan(needed=tuple((vi, layout.views[vi].ttl_seconds) for vi in views), pick=pick)


def _row(student: _Views, layout: Layout, now: float) -> StudentRow:
    """One student's StudentRow (the values of expired views set apart)."""
    row = StudentRow()
    times, vals = student
    pos = 0
    for view, ts in zip(layout.views, times, strict=True):
        n = len(view.features)
        if ts is not ABSENT:
            present = {
                f: v for f, v in zip(view.features, vals[pos : pos + n], strict=True) if v is not ABSENT
            }
            ttl = view.ttl_seconds
            if ttl is not None and ts is not None and now - ts > ttl:
                row.expired.update(dict.fromkeys(present, ts))
            else:
                row.values.update(present)
        pos += n
    return row


class _LayoutReader:
    """The layout file, re-read when it changes (checked at most once a second); ``lookup`` and ``get``
    on top of the store's ``_views`` (what it holds for each id, decoded)."""

    def __init__(self, store_dir: Path) -> None:
        self.store_dir = store_dir
        self._layout: Layout | None = None
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        self._plans: tuple[Layout | None, dict[tuple[str, ...], _Plan]] = (None, {})

    def layout(self) -> Layout | None:
        now = time.monotonic()
        if now - self._checked < LAYOUT_CHECK_SECONDS:
            return self._layout
        with self._lock:
            self._checked = now
            try:
                st = (self.store_dir / LAYOUT_FILE).stat()
                stamp = (st.st_mtime_ns, st.st_size)
            except FileNotFoundError:
                stamp = None
            if stamp != self._stamp:
                self._layout = read_layout(self.store_dir) if stamp else None
                self._stamp = stamp
                self.on_layout(self._layout)
        return self._layout

    def on_layout(self, layout: Layout | None) -> None:
        """Called when the layout changed (subclasses drop what they derived from the old one)."""

    def warm(self) -> None:
        """Nothing to prepare (a store that imports a client library at its first use overrides this)."""

    def _views(self, layout: Layout, ids: Sequence[str]) -> list[_Views | None]:
        """Per id: what each view holds for it, or None when no view holds anything (unknown)."""
        raise NotImplementedError

    def get(self, ids: Sequence[str]) -> list[StudentRow | None]:
        layout = self.layout()
        if layout is None:
            return [None] * len(ids)
        now = time.time()
        return [None if v is None else _row(v, layout, now) for v in self._views(layout, ids)]

    def _plan(self, layout: Layout, features: tuple[str, ...]) -> _Plan:
        of, plans = self._plans
        if of is not layout:
            plans = {}
            self._plans = (layout, plans)
        plan = plans.get(features)
        if plan is None:
            plan = plans[features] = _Plan.of(layout, features)
        return plan

    def lookup(self, ids: Sequence[str], features: tuple[str, ...]) -> list[Found]:
        layout = self.layout()
        if layout is None:
            return [None] * len(ids)
        plan = self._plan(layout, features)
        needed, pick = plan.needed, plan.pick
        now = time.time()
        out: list[Found] = []
        append = out.append
        for student in self._views(layout, ids):
            if student is None:
                append(None)
                continue
            times = student[0]
            for vi, ttl in needed:
                ts = times[vi]
                if ts is ABSENT or (ttl is not None and ts is not None and now - ts > ttl):
                    append(_row(student, layout, now))  # a needed view is empty or expired
                    break
            else:
                picked = pick(student[1])
                append(_row(student, layout, now) if ABSENT in picked else picked)
        return out


class SqliteOnline(_LayoutReader):
    """Feast's SQLite online store: one table per feature view, one row per (entity key, feature).

    Each thread keeps its connection and a cache of the students it read (decoded). The cache is dropped
    whenever the database changed (``PRAGMA data_version`` moves when another connection commits: a push,
    a materialization), so a hit is never staler than the last write; time to live is judged at each read.
    """

    def __init__(self, store_dir: Path, cache_max: int = CACHE_MAX) -> None:
        super().__init__(store_dir)
        self._local = threading.local()
        self._generation = 0
        self.cache_max = cache_max

    def on_layout(self, layout: Layout | None) -> None:
        self._generation += 1  # connections (and caches) of every thread reopen (the file may have moved)

    def _conn(self, layout: Layout) -> sqlite3.Connection | None:
        local = self._local
        if getattr(local, "generation", None) == self._generation:
            return local.conn  # type: ignore[no-any-return]
        path = Path(layout.sqlite_path or "online.db")
        path = path if path.is_absolute() else self.store_dir / path
        if not path.exists():
            return None  # not materialized yet: nobody is known
        old = getattr(local, "conn", None)
        if old is not None:
            old.close()
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        local.conn, local.generation, local.cache, local.version = conn, self._generation, {}, None
        return conn

    def _views(self, layout: Layout, ids: Sequence[str]) -> list[_Views | None]:
        conn = self._conn(layout)
        if conn is None:
            return [None] * len(ids)
        keys = [entity_key(layout.join_key, i) for i in ids]
        if not self.cache_max:
            found = self._read(conn, layout, list(dict.fromkeys(keys)))
            return [found.get(k) for k in keys]
        local = self._local
        version = conn.execute("pragma data_version").fetchone()[0]
        cache: dict[bytes, _Views | None] = local.cache
        if version != local.version or len(cache) > self.cache_max:
            cache.clear()
            local.version = version
        todo = [k for k in dict.fromkeys(keys) if k not in cache]
        if todo:
            fresh = self._read(conn, layout, todo)
            for k in todo:
                cache[k] = fresh.get(k)
        return [cache[k] for k in keys]

    @staticmethod
    def _read(conn: sqlite3.Connection, layout: Layout, keys: list[bytes]) -> dict[bytes, _Views]:
        """The views of ``keys``: one SELECT per view and chunk of keys, pivoted by SQLite (one row per
        student: the latest event time of its rows, as Feast writes one per view and write, and each
        feature's encoded value, NULL when not stored)."""
        views = layout.views
        found: dict[bytes, list[Any]] = {}
        memo = _VALUES.__getitem__
        for vi, view in enumerate(views):
            table = f'"{layout.project}_{view.name}"'
            feats = list(view.features)
            # a stored SQL NULL reads as an empty message (null), an absent row as NULL (ABSENT)
            cols = ", ".join("max(CASE feature_name WHEN ? THEN coalesce(value, x'') END)" for _ in feats)
            per_chunk = max(1, SQLITE_MAX_PARAMS - len(feats))
            for start in range(0, len(keys), per_chunk):
                chunk = keys[start : start + per_chunk]
                sql = (
                    f"SELECT entity_key, max(event_ts), {cols} FROM {table} "
                    f"WHERE entity_key IN ({','.join('?' * len(chunk))}) GROUP BY entity_key"
                )
                try:
                    rows = conn.execute(sql, [*feats, *chunk]).fetchall()
                except sqlite3.OperationalError as exc:
                    if "no such table" in str(exc):
                        break  # the view was never materialized
                    raise
                for row in rows:
                    parts = found.get(row[0])
                    if parts is None:
                        parts = found[row[0]] = [None] * len(views)
                    ts = row[1]
                    parts[vi] = (_local_epoch_to_utc(int(ts)) if ts is not None else None, row[2:])
        empty = [(ABSENT, (None,) * len(v.features)) for v in views]  # None: decoded as ABSENT
        out: dict[bytes, _Views] = {}
        for key, parts in found.items():
            got = [e if p is None else p for p, e in zip(parts, empty, strict=True)]
            out[key] = (
                tuple(p[0] for p in got),
                (*map(memo, [x for p in got for x in p[1]]), ABSENT),
            )
        return out

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()


class RedisOnline(_LayoutReader):
    """Feast's Redis online store: one hash per entity (key = entity key + project), a field per feature
    (murmur3 of ``view:feature``) and one event time per view (``_ts:view``). A batch is one round trip:
    an HMGET of exactly the needed fields per key, the commands encoded here at once (RESP) and sent
    together (redis-py's pipeline spends ~15 us of Python per command: 15 ms for 1000 ids)."""

    def __init__(self, store_dir: Path, url: str) -> None:
        super().__init__(store_dir)
        scheme = urlsplit(url).scheme
        if scheme not in ("redis", "rediss", "unix"):  # what redis.from_url accepts (checked at start)
            raise ValueError(
                f"FEATURE_ONLINE_STORE_URL: redis://, rediss:// or unix:// expected, got {scheme!r}"
            )
        self.url = url
        self._client_lock = threading.Lock()
        self._client: Any = None  # redis.Redis, made at the first use (the import is off the start path)
        self._fields: tuple[int, bytes] | None = None

    def _redis(self) -> Any:
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    import redis

                    self._client = redis.Redis.from_url(self.url, socket_timeout=5, socket_connect_timeout=3)
        return self._client

    def warm(self) -> None:
        import mmh3  # noqa: F401

        self._redis()

    def on_layout(self, layout: Layout | None) -> None:
        self._fields = None

    def _hash_fields(self, layout: Layout) -> tuple[int, bytes]:
        """The hash fields to read (each view's event time, then every view's features, layout order):
        their number and their RESP encoding (the tail of every HMGET)."""
        fields = self._fields
        if fields is None:
            import mmh3

            names = [f"_ts:{v.name}".encode() for v in layout.views]
            for v in layout.views:
                names.extend(
                    mmh3.hash(f"{v.name}:{f}", signed=False).to_bytes(4, "little") for f in v.features
                )
            fields = self._fields = (len(names), b"".join(b"$%d\r\n%s\r\n" % (len(n), n) for n in names))
        return fields

    def _fetch(self, keys: list[bytes], n_fields: int, fields: bytes) -> list[list[bytes | None]]:
        """HMGET of the fields on every key, one round trip (retried once on a broken connection)."""
        import redis

        head = b"*%d\r\n$5\r\nHMGET\r\n" % (n_fields + 2)
        parts: list[bytes] = []
        for k in keys:
            parts += (head, b"$%d\r\n" % len(k), k, b"\r\n", fields)
        payload = b"".join(parts)
        pool = self._redis().connection_pool
        for attempt in (1, 2):
            conn = pool.get_connection()
            try:
                conn.send_packed_command([payload])  # a list of byte strings, sent in order
                return [conn.read_response() for _ in keys]
            except (redis.ConnectionError, redis.TimeoutError):
                conn.disconnect()
                if attempt == 2:
                    raise
            except BaseException:
                conn.disconnect()  # replies may be left unread: never reuse this connection
                raise
            finally:
                pool.release(conn)
        raise AssertionError("unreachable")

    def _views(self, layout: Layout, ids: Sequence[str]) -> list[_Views | None]:
        n_fields, fields = self._hash_fields(layout)
        nv = len(layout.views)
        project = layout.project.encode()
        replies = self._fetch([entity_key(layout.join_key, i) + project for i in ids], n_fields, fields)
        memo, times = _VALUES.__getitem__, _TIMES.__getitem__
        absent = (ABSENT,) * nv
        out: list[_Views | None] = []
        append = out.append
        for reply in replies:
            ts = tuple(map(times, reply[:nv]))  # a view without its event time holds nothing
            if ts == absent:
                append(None)
            else:
                append((ts, (*map(memo, reply[nv:]), ABSENT)))
        return out

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def open_online(store_dir: Path, redis_url: str = "", cache_max: int = CACHE_MAX) -> OnlineFeatures:
    """The online store reader for these settings (nothing is opened until the first lookup)."""
    if redis_url:
        return RedisOnline(store_dir, redis_url)
    return SqliteOnline(store_dir, cache_max)
