"""Latest feature values of students, read from the online store Feast writes (SQLite or Redis).

``OnlineFeatures`` is the one interface the predict path uses; ``open_online(...)`` picks the store:
Redis when FEATURE_ONLINE_STORE_URL is set, else the SQLite file named in the layout. Both read Feast's
own tables/hashes through ``wire`` (no Feast import: inference starts in well under 2 s and a lookup of
one student costs tens of microseconds instead of Feast's several milliseconds per call).

A student is *unknown* when no feature view holds a row for them. A stored value is *expired* when its
event time is older than its view's time to live (Feast's TTL; 0 or none never expires).
"""

from __future__ import annotations

import calendar
import functools
import logging
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .layout import LAYOUT_FILE, Layout, ViewLayout, read_layout
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


class OnlineFeatures(Protocol):
    """The online store as the predict path sees it."""

    def get(self, ids: Sequence[str]) -> list[StudentRow | None]:
        """One entry per id, in order: None for a student the store does not know."""
        ...

    def layout(self) -> Layout | None:
        """The applied repository's layout (None before the first apply)."""
        ...

    def close(self) -> None: ...


@functools.lru_cache(maxsize=4096)
def _local_epoch_to_utc(v: int) -> float:
    """Feast's SQLite store writes a naive UTC time as ``int(naive.timestamp())`` (the machine's local
    time zone); this undoes it exactly (identity on a machine in UTC)."""
    return float(calendar.timegm(time.localtime(v)))


class _LayoutReader:
    """The layout file, re-read when it changes (checked at most once a second)."""

    def __init__(self, store_dir: Path) -> None:
        self.store_dir = store_dir
        self._layout: Layout | None = None
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self._lock = threading.Lock()

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


_Views = dict[str, tuple[float | None, dict[str, Any]]]  # view -> (event time, feature -> decoded value)


def _row(views: _Views, layout: Layout, now: float) -> StudentRow:
    """One student's StudentRow from the decoded values of each view (expired ones set apart)."""
    row = StudentRow()
    for view_name, (ts, values) in views.items():
        ttl = layout.view(view_name).ttl_seconds
        if ttl is not None and ts is not None and now - ts > ttl:
            row.expired.update(dict.fromkeys(values, ts))
        else:
            row.values.update(values)
    return row


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

    def get(self, ids: Sequence[str]) -> list[StudentRow | None]:
        layout = self.layout()
        if layout is None:
            return [None] * len(ids)
        conn = self._conn(layout)
        if conn is None:
            return [None] * len(ids)
        local = self._local
        version = conn.execute("pragma data_version").fetchone()[0]
        cache: dict[bytes, _Views] = local.cache
        if version != local.version or len(cache) > self.cache_max or not self.cache_max:
            cache.clear()
            local.version = version
        keys = [entity_key(layout.join_key, i) for i in ids]
        todo = [k for k in dict.fromkeys(keys) if k not in cache]
        if todo:
            fresh = self._read(conn, layout, todo)
            for k in todo:
                cache[k] = fresh.get(k, {})
        now = time.time()
        return [_row(v, layout, now) if (v := cache[k]) else None for k in keys]

    @staticmethod
    def _read(conn: sqlite3.Connection, layout: Layout, keys: list[bytes]) -> dict[bytes, _Views]:
        found: dict[bytes, _Views] = {}
        for view in layout.views:
            table = f'"{layout.project}_{view.name}"'
            wanted = frozenset(view.features)
            name = view.name
            for start in range(0, len(keys), SQLITE_MAX_PARAMS):
                chunk = keys[start : start + SQLITE_MAX_PARAMS]
                sql = (
                    f"SELECT entity_key, feature_name, value, event_ts FROM {table} "
                    f"WHERE entity_key IN ({','.join('?' * len(chunk))})"
                )
                try:
                    rows = conn.execute(sql, chunk).fetchall()
                except sqlite3.OperationalError as exc:
                    if "no such table" in str(exc):
                        break  # the view was never materialized
                    raise
                for key, feat, value, ts in rows:
                    if feat in wanted:
                        views = found.get(key)
                        if views is None:
                            views = found[key] = {}
                        entry = views.get(name)
                        if entry is None:
                            t = _local_epoch_to_utc(int(ts)) if ts is not None else None
                            entry = views[name] = (t, {})
                        entry[1][feat] = decode_value(value)
        return found

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()


class RedisOnline(_LayoutReader):
    """Feast's Redis online store: one hash per entity (key = entity key + project), a field per feature
    (murmur3 of ``view:feature``) and one event time per view (``_ts:view``). One pipelined round trip of
    HMGETs answers a whole batch."""

    def __init__(self, store_dir: Path, url: str) -> None:
        super().__init__(store_dir)
        import redis

        self._client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=3)
        self._fields: tuple[list[bytes | str], list[tuple[ViewLayout, str]]] | None = None

    def on_layout(self, layout: Layout | None) -> None:
        self._fields = None

    def _hash_fields(self, layout: Layout) -> tuple[list[bytes | str], list[tuple[ViewLayout, str]]]:
        if self._fields is None:
            import mmh3

            fields: list[bytes | str] = []
            meaning: list[tuple[ViewLayout, str]] = []  # (view, feature or "" for its event time)
            for v in layout.views:
                fields.append(f"_ts:{v.name}")
                meaning.append((v, ""))
                for f in v.features:
                    fields.append(mmh3.hash(f"{v.name}:{f}", signed=False).to_bytes(4, "little"))
                    meaning.append((v, f))
            self._fields = (fields, meaning)
        return self._fields

    def get(self, ids: Sequence[str]) -> list[StudentRow | None]:
        layout = self.layout()
        if layout is None:
            return [None] * len(ids)
        fields, meaning = self._hash_fields(layout)
        project = layout.project.encode()
        with self._client.pipeline(transaction=False) as pipe:
            for i in ids:
                pipe.hmget(entity_key(layout.join_key, i) + project, fields)  # type: ignore[arg-type]
            replies = pipe.execute()
        now = time.time()
        out: list[StudentRow | None] = []
        for reply in replies:
            views: _Views = {}
            for (view, feat), buf in zip(meaning, reply, strict=True):
                if feat == "":
                    if buf is not None:
                        views[view.name] = (decode_timestamp(buf), {})
                elif buf is not None and view.name in views:
                    views[view.name][1][feat] = decode_value(buf)
            out.append(_row(views, layout, now) if views else None)
        return out

    def close(self) -> None:
        self._client.close()


def open_online(store_dir: Path, redis_url: str = "", cache_max: int = CACHE_MAX) -> OnlineFeatures:
    """The online store reader for these settings (nothing is opened until the first lookup)."""
    if redis_url:
        return RedisOnline(store_dir, redis_url)
    return SqliteOnline(store_dir, cache_max)
