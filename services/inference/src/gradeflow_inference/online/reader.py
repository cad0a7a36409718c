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


def _row(
    views: dict[str, tuple[float | None, dict[str, bytes | None]]], layout: Layout, now: float
) -> StudentRow:
    """One student's StudentRow from the raw values of each view (event time, feature -> bytes)."""
    row = StudentRow()
    for view_name, (ts, raw) in views.items():
        ttl = layout.view(view_name).ttl_seconds
        stale = ttl is not None and ts is not None and now - ts > ttl
        for feat, buf in raw.items():
            if stale:
                row.expired[feat] = ts  # type: ignore[assignment]
            else:
                row.values[feat] = decode_value(buf)
    return row


class SqliteOnline(_LayoutReader):
    """Feast's SQLite online store: one table per feature view, one row per (entity key, feature)."""

    def __init__(self, store_dir: Path) -> None:
        super().__init__(store_dir)
        self._local = threading.local()
        self._generation = 0

    def on_layout(self, layout: Layout | None) -> None:
        self._generation += 1  # connections of every thread reopen (the file may have moved)

    def _conn(self, layout: Layout) -> sqlite3.Connection | None:
        if getattr(self._local, "generation", None) == self._generation:
            return self._local.conn  # type: ignore[no-any-return]
        path = Path(layout.sqlite_path or "online_store.db")
        path = path if path.is_absolute() else self.store_dir / path
        if not path.exists():
            return None  # not materialized yet: nobody is known
        old = getattr(self._local, "conn", None)
        if old is not None:
            old.close()
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        self._local.conn, self._local.generation = conn, self._generation
        return conn

    def get(self, ids: Sequence[str]) -> list[StudentRow | None]:
        layout = self.layout()
        if layout is None:
            return [None] * len(ids)
        conn = self._conn(layout)
        if conn is None:
            return [None] * len(ids)
        keys = [entity_key(layout.join_key, i) for i in ids]
        pos: dict[bytes, list[int]] = {}
        for i, k in enumerate(keys):
            pos.setdefault(k, []).append(i)
        found: list[dict[str, tuple[float | None, dict[str, bytes | None]]]] = [{} for _ in ids]
        uniq = list(pos)
        for view in layout.views:
            table = f'"{layout.project}_{view.name}"'
            for start in range(0, len(uniq), SQLITE_MAX_PARAMS):
                chunk = uniq[start : start + SQLITE_MAX_PARAMS]
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
                self._collect(rows, view, pos, found)
        now = time.time()
        return [_row(v, layout, now) if v else None for v in found]

    @staticmethod
    def _collect(
        rows: list[Any],
        view: ViewLayout,
        pos: dict[bytes, list[int]],
        found: list[dict[str, tuple[float | None, dict[str, bytes | None]]]],
    ) -> None:
        wanted = set(view.features)
        for key, feat, value, ts in rows:
            if feat not in wanted:
                continue
            t = _local_epoch_to_utc(int(ts)) if ts is not None else None
            for i in pos[key]:
                entry = found[i].get(view.name)
                if entry is None:
                    entry = found[i][view.name] = (t, {})
                entry[1][feat] = value

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
            views: dict[str, tuple[float | None, dict[str, bytes | None]]] = {}
            for (view, feat), buf in zip(meaning, reply, strict=True):
                if feat == "":
                    if buf is not None:
                        views[view.name] = (decode_timestamp(buf), {})
                elif buf is not None and view.name in views:
                    views[view.name][1][feat] = buf
            out.append(_row(views, layout, now) if views else None)
        return out

    def close(self) -> None:
        self._client.close()


def open_online(store_dir: Path, redis_url: str = "") -> OnlineFeatures:
    """The online store reader for these settings (nothing is opened until the first lookup)."""
    if redis_url:
        return RedisOnline(store_dir, redis_url)
    return SqliteOnline(store_dir)
