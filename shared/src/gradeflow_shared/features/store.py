"""Open, fill and read the feature store (see the package docstring for the public functions).

feast is imported inside the functions, never at module import: inference imports this module and
its cold start must not pay for feast unless a request needs the store.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np
import pandas as pd

from ..datasets import ColumnSpec, DatasetSpec
from ..errors import ConfigError
from ..settings import FeatureStoreSettings
from .feast_env import quiet_feast_import

if TYPE_CHECKING:
    from feast import FeatureStore

logger = logging.getLogger(__name__)

ONLINE_DB = "online.db"
REGISTRY_DB = "registry.db"
EMPTY_PART = "part-00000-empty.parquet"  # a typed, empty history: readable right after apply
MAX_PARTS = 64  # parquet parts of a view before they are compacted into one


# ------------------------------------------------------------------ configuration
def store_dir(settings: FeatureStoreSettings) -> Path:
    """``settings.feature_store_path`` (FEATURE_STORE_DIR, default DATA_DIR/feature_store), created."""
    root = settings.feature_store_path
    root.mkdir(parents=True, exist_ok=True)
    return root


def _postgres_parts(url: str) -> dict[str, Any]:
    """host/port/database/user/password/sslmode of a ``postgresql://`` URL (ConfigError naming the variable)."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg2"):
        raise ConfigError(
            f"FEATURE_OFFLINE_STORE_URL must be a postgresql:// URL, got scheme '{parts.scheme}'"
        )
    database = parts.path.lstrip("/")
    if not parts.hostname or not database:
        raise ConfigError(
            "FEATURE_OFFLINE_STORE_URL needs a host and a database: postgresql://user@host:5432/db"
        )
    query = parse_qs(parts.query)
    return {
        "host": parts.hostname,
        "port": parts.port or 5432,
        "database": database,
        "user": unquote(parts.username or "postgres"),
        "password": unquote(parts.password or ""),
        "sslmode": query.get("sslmode", ["prefer"])[0],
    }


def _redis_connection_string(url: str) -> str:
    """Feast's ``host:port,db=N[,password=..][,ssl=true]`` form of a ``redis://`` URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ConfigError(f"FEATURE_ONLINE_STORE_URL must be a redis:// URL, got scheme '{parts.scheme}'")
    if not parts.hostname:
        raise ConfigError("FEATURE_ONLINE_STORE_URL needs a host: redis://host:6379/0")
    db = parts.path.lstrip("/") or "0"
    if not db.isdigit():
        raise ConfigError(f"FEATURE_ONLINE_STORE_URL: the database must be a number, got '{db}'")
    out = f"{parts.hostname}:{parts.port or 6379},db={db}"
    if parts.password:
        out += f",password={unquote(parts.password)}"
    if parts.scheme == "rediss":
        out += ",ssl=true"
    return out


def sqlalchemy_url(pg: dict[str, Any]) -> str:
    """SQLAlchemy URL (psycopg 3, which feast's postgres extra installs) for the offline store's database."""
    from sqlalchemy.engine import URL

    return URL.create(
        "postgresql+psycopg",
        username=pg["user"],
        password=pg["password"] or None,
        host=pg["host"],
        port=pg["port"],
        database=pg["database"],
        query={"sslmode": pg["sslmode"]},
    ).render_as_string(hide_password=False)


def feature_store(settings: FeatureStoreSettings) -> FeatureStore:
    """A FeatureStore configured from the settings (nothing is created in PostgreSQL/Redis until used).

    Offline store: parquet under FEATURE_STORE_DIR (feast's ``dask`` store), or PostgreSQL when
    FEATURE_OFFLINE_STORE_URL is set; then the registry is kept in the same database, so every
    container sees the same definitions. Online store: SQLite in FEATURE_STORE_DIR, or Redis when
    FEATURE_ONLINE_STORE_URL is set.
    """
    with quiet_feast_import():
        from feast import FeatureStore, RepoConfig
        from feast.infra.online_stores.redis import RedisOnlineStoreConfig
        from feast.infra.online_stores.sqlite import SqliteOnlineStoreConfig
        from feast.repo_config import RegistryConfig

    root = store_dir(settings)
    offline: Any
    registry: Any
    if settings.feature_offline_store_url:
        from feast.infra.offline_stores.contrib.postgres_offline_store.postgres import (
            PostgreSQLOfflineStoreConfig,
        )
        from feast.infra.registry.sql import SqlRegistryConfig

        pg = _postgres_parts(settings.feature_offline_store_url)
        offline = PostgreSQLOfflineStoreConfig(**pg)
        registry = SqlRegistryConfig(path=sqlalchemy_url(pg), cache_ttl_seconds=60)
    else:
        from feast.infra.offline_stores.dask import DaskOfflineStoreConfig

        offline = DaskOfflineStoreConfig()
        registry = RegistryConfig(path=str(root / REGISTRY_DB), cache_ttl_seconds=60)
    if settings.feature_online_store_url:
        online: Any = RedisOnlineStoreConfig(
            connection_string=_redis_connection_string(settings.feature_online_store_url)
        )
    else:
        online = SqliteOnlineStoreConfig(path=str(root / ONLINE_DB))
    config = RepoConfig(
        project=settings.feature_project,
        provider="local",
        registry=registry,
        offline_store=offline,
        online_store=online,
        repo_path=root,
        entity_key_serialization_version=3,
    )
    return FeatureStore(config=config)


def store_root(store: FeatureStore) -> Path:
    """The store's folder (FEATURE_STORE_DIR): registry, parquet history, SQLite online store."""
    return Path(str(store.config.repo_path))


def guard_online_order(store: FeatureStore) -> list[str]:
    """Make the SQLite online store keep each student's newest value, whatever order writes arrive in.

    Feast's SQLite writer upserts unconditionally: a reading dated t1 pushed after one dated t2 > t1
    (a late survey, a re-sent batch, a materialization of an older window) would replace the newer
    value. A trigger on each view's table refuses an update whose event time is older than the stored
    one (``RAISE(IGNORE)`` skips that row only; an equal time still replaces, so a corrected reading
    for the same moment wins). It lives in the database, so every writer obeys it: pushes, scheduled and
    on-demand materialization, any process. The late reading still goes to the history (point-in-time
    training sees it). Feast's Redis writer already compares event times (it keeps the stored value when
    the new one is older or equal). Idempotent; returns the tables guarded. Called by ``apply``,
    ``push`` and ``materialize``.
    """
    import sqlite3

    if store.config.online_store.type != "sqlite":
        return []
    path = Path(str(store.config.online_store.path))
    if not path.is_absolute():
        path = store_root(store) / path
    if not path.exists():
        return []
    guarded = []
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as conn:
        present = {r[0] for r in conn.execute("select name from sqlite_master where type = 'table'")}
        for fv in store.list_feature_views():
            table = f"{store.project}_{fv.name}"
            if table not in present:
                continue
            with conn:
                conn.execute(
                    f'create trigger if not exists "{table}_keep_newest" before update on "{table}" '
                    "for each row when new.event_ts < old.event_ts begin select raise(ignore); end"
                )
            guarded.append(table)
    return guarded


def _layout(store: FeatureStore):  # -> repo.Layout
    from .repo import Layout

    postgres = store.config.offline_store.type == "postgres"
    offline_dir = None if postgres else store_root(store) / "offline"
    return Layout(project=store.project, offline_dir=offline_dir, postgres=postgres)


@contextlib.contextmanager
def postgres(store: FeatureStore) -> Iterator[Any]:
    """A transaction on the offline store's PostgreSQL database (committed on success, engine disposed)."""
    from sqlalchemy import create_engine

    cfg = store.config.offline_store
    pg = {k: getattr(cfg, k) for k in ("host", "port", "database", "user", "password", "sslmode")}
    engine = create_engine(sqlalchemy_url(pg))
    try:
        with engine.begin() as conn:
            yield conn
    finally:
        engine.dispose()


# ------------------------------------------------------------------ definitions
def default_spec() -> DatasetSpec:
    """The dataset whose columns the repository defines when none is given: the synthetic term."""
    from ..synth import timeline_spec

    return timeline_spec()


def apply(store: FeatureStore, spec: DatasetSpec | None = None) -> list[str]:
    """Register the repository's definitions for ``spec``'s columns (idempotent); returns the view names.

    Creates the empty history tables/directories too, so a store is readable right after apply.
    A store whose views already hold other features is refused (ConfigError): its history tables
    have those columns; another dataset needs another FEATURE_PROJECT (or FEATURE_STORE_DIR).
    """
    from .repo import definitions, split_columns, view_version

    spec = spec or default_spec()
    columns, activity = _spec_columns(spec)
    split = split_columns(columns, activity)
    wanted = {v: [c.name for c in cols] for v, cols in split.items()}
    registered = {fv.name: fv for fv in store.list_feature_views()}
    held = {name: [f.name for f in fv.features] for name, fv in registered.items()}
    clash = [v for v in wanted if v in held and held[v] != wanted[v]] + [v for v in held if v not in wanted]
    if clash:
        raise ConfigError(
            f"feature project '{store.project}' already defines {', '.join(sorted(set(clash)))} with other "
            f"features than dataset '{spec.name}': set FEATURE_PROJECT (or FEATURE_STORE_DIR) to a new value "
            "for this dataset"
        )
    same = set(registered) == set(split) and all(
        registered[v].tags.get("gradeflow_version") == view_version(v, cols) for v, cols in split.items()
    )
    if not same:  # the registry is rewritten only when a definition changed (readers may be reading it)
        store.apply(definitions(columns, activity, _layout(store)))
    for view, cols in split.items():
        _ensure_history(store, view, cols)
    guard_online_order(store)
    return list(wanted)


def _spec_columns(spec: DatasetSpec) -> tuple[list[ColumnSpec], list[str]]:
    if not spec.columns:
        raise ValueError(f"dataset '{spec.name}' declares no columns: the feature store needs typed columns")
    return list(spec.columns), list(spec.activity_columns)


def view_columns(store: FeatureStore) -> dict[str, list[str]]:
    """Feature names of each registered view ({view: [feature, ...]}), from the registry (cached by feast)."""
    return {fv.name: [f.name for f in fv.features] for fv in store.list_feature_views()}


def feature_refs(store: FeatureStore, features: Iterable[str] | None = None) -> list[str]:
    """``view:feature`` references for ``features`` (all registered features when None).

    Raises KeyError naming the features no view provides.
    """
    owner = {f: v for v, fs in view_columns(store).items() for f in fs}
    wanted = list(features) if features is not None else list(owner)
    missing = [f for f in wanted if f not in owner]
    if missing:
        raise KeyError(f"no feature view provides: {', '.join(missing)}")
    return [f"{owner[f]}:{f}" for f in wanted]


# ------------------------------------------------------------------ writing
def _arrow_dtype(c: ColumnSpec) -> str:
    return {"int": "Int64", "float": "float64", "str": "object", "bool": "boolean"}[c.dtype]


def _view_dtypes(store: FeatureStore, view: str) -> dict[str, str]:
    """pandas dtype of each feature of a registered view (what its history columns hold)."""
    kinds = {
        "Int64": "Int64",
        "Int32": "Int64",
        "Float64": "float64",
        "Float32": "float64",
        "Bool": "boolean",
    }
    fv = store.get_feature_view(view)
    return {f.name: kinds.get(str(f.dtype), "object") for f in fv.features}


def _history_frame(
    rows: pd.DataFrame, cols: list[str], now: datetime, dtypes: dict[str, str] | None = None
) -> pd.DataFrame:
    """The rows as history columns (ids as text, UTC timestamps, typed features even when all empty)."""
    from .repo import CREATED, JOIN_KEY, TIMESTAMP

    out = rows[[JOIN_KEY, TIMESTAMP, *cols]].copy()
    for c, dtype in (dtypes or {}).items():
        if c in out.columns:
            col = out[c]
            out[c] = col.astype(object).where(col.notna(), None) if dtype == "object" else col.astype(dtype)  # type: ignore[call-overload]
    out[JOIN_KEY] = out[JOIN_KEY].astype(str)
    out[TIMESTAMP] = pd.to_datetime(out[TIMESTAMP], utc=True)
    out[CREATED] = pd.Timestamp(now)
    return out


def _ensure_history(store: FeatureStore, view: str, cols: list[ColumnSpec]) -> None:
    """Create a view's empty history (one typed empty parquet part / the PostgreSQL table) if missing."""
    from .repo import CREATED, JOIN_KEY, TIMESTAMP, history_table

    empty = pd.DataFrame(
        {
            JOIN_KEY: pd.Series([], dtype=object),
            TIMESTAMP: pd.Series([], dtype="datetime64[us, UTC]"),
            **{c.name: pd.Series([], dtype=_arrow_dtype(c)) for c in cols},
            CREATED: pd.Series([], dtype="datetime64[us, UTC]"),
        }
    )
    layout = _layout(store)
    if layout.postgres:
        from sqlalchemy import inspect

        table = history_table(view, layout.project)
        with postgres(store) as conn:
            if not inspect(conn).has_table(table):
                empty.to_sql(table, conn, if_exists="append", index=False)
        return
    folder = layout.offline_dir / view
    if not folder.exists() or not any(folder.glob("*.parquet")):
        folder.mkdir(parents=True, exist_ok=True)
        empty.to_parquet(folder / EMPTY_PART, index=False)


def write_history(store: FeatureStore, view: str, rows: pd.DataFrame) -> int:
    """Append dated rows (student_id, event_timestamp, the view's features) to a view's history.

    Parquet: one new part file per call (nothing is rewritten); PostgreSQL: an INSERT. Returns the
    number of rows written.
    """
    from .repo import history_table

    if rows.empty:
        return 0
    cols = view_columns(store)[view]
    frame = _history_frame(rows, cols, datetime.now(UTC), _view_dtypes(store, view))
    layout = _layout(store)
    if layout.postgres:
        with postgres(store) as conn:
            frame.to_sql(history_table(view, layout.project), conn, if_exists="append", index=False)
    else:
        _append_parquet(layout.offline_dir / view, frame)
    return len(frame)


def _append_parquet(folder: Path, frame: pd.DataFrame) -> None:
    """A new part file; the empty placeholder goes once real rows exist (feast's dask store cannot
    sort a partition without rows), and many small parts are compacted into one."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"part-{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}.parquet"
    frame.to_parquet(folder / name, index=False)
    (folder / EMPTY_PART).unlink(missing_ok=True)
    parts = sorted(folder.glob("part-*.parquet"))
    if len(parts) > MAX_PARTS:
        whole = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
        whole.to_parquet(folder / f"part-{datetime.now(UTC):%Y%m%dT%H%M%S%f}-compacted.parquet", index=False)
        for p in parts:
            p.unlink(missing_ok=True)


def push(store: FeatureStore, rows: pd.DataFrame) -> dict[str, int]:
    """New readings: written to the history and to the online store at once ({view: rows written}).

    ``rows`` has ``student_id``, ``event_timestamp`` and any subset of the features. A view is
    touched when the rows carry at least one of its features; its other features are carried
    forward from the student's latest online values (a weekly attendance reading does not erase
    the last study-hours survey), so the history holds complete rows and a point-in-time join sees
    exactly what was known at each moment.
    """
    from feast.data_source import PushMode

    from .repo import JOIN_KEY, TIMESTAMP, push_source_name

    missing = [c for c in (JOIN_KEY, TIMESTAMP) if c not in rows.columns]
    if missing:
        raise ValueError(f"push rows need the columns: {', '.join(missing)}")
    written: dict[str, int] = {}
    rows = rows.reset_index(drop=True)
    for view, cols in view_columns(store).items():
        given = [c for c in cols if c in rows.columns]
        if not given:
            continue
        frame = rows[[JOIN_KEY, TIMESTAMP, *given]].copy()
        frame[JOIN_KEY] = frame[JOIN_KEY].astype(str)
        absent = [c for c in cols if c not in given]
        if absent:
            _carry_forward(store, view, frame, absent)
        frame = frame[[JOIN_KEY, TIMESTAMP, *cols]]
        write_history(store, view, frame)
        online = _history_frame(frame, cols, datetime.now(UTC))
        guard_online_order(store)
        same = _same_time_on_redis(store, cols[0], online)
        if same.any():  # first: a newer row of the batch must still win over them
            with _redis_overwrite(store):
                store.push(push_source_name(view), online[same], to=PushMode.ONLINE)
        store.push(push_source_name(view), online[~same], to=PushMode.ONLINE)
        written[view] = len(frame)
    return written


def _carry_forward(store: FeatureStore, view: str, frame: pd.DataFrame, absent: list[str]) -> None:
    """Fill a partial reading's ``absent`` features (in place) with what was known at its event time.

    A reading newer than the student's online value of the view takes the online values (the latest,
    a cheap read). A late reading (older than the online value: it arrived after a newer one) takes the
    values of the history as of its own time, point-in-time: carrying the newer online values back
    into an older history row would let training see them before they were known.
    """
    from .repo import JOIN_KEY, TIMESTAMP

    ids = frame[JOIN_KEY].tolist()
    refs = feature_refs(store, absent)
    resp = store.get_online_features(features=refs, entity_rows=[{JOIN_KEY: i} for i in ids])
    latest = pd.DataFrame(resp.to_dict())
    stamps = dict(zip(resp.proto.metadata.feature_names.val, resp.proto.results, strict=True))[absent[0]]
    # the view's event time online per student (seconds; NaN: nothing stored) against each reading's
    online_s = np.array([t.seconds or np.nan for t in stamps.event_timestamps], dtype=float)
    times = pd.to_datetime(frame[TIMESTAMP], utc=True)
    late = ~np.isnan(online_s) & (
        (times - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy() < online_s
    )
    for c in absent:
        frame[c] = latest[c].to_numpy()
    if late.any():
        keys = pd.DataFrame(
            {JOIN_KEY: frame.loc[late, JOIN_KEY].to_numpy(), TIMESTAMP: times[late].to_numpy()}
        )
        known = historical_features(store, keys, absent)
        for c in absent:
            col = frame[c].astype(object)
            col[late] = known[c].astype(object).where(known[c].notna(), None).to_numpy()
            frame[c] = col
        logger.info(
            "feature store: %d late reading(s) of %s carried forward point-in-time", int(late.sum()), view
        )


def _same_time_on_redis(store: FeatureStore, feature: str, rows: pd.DataFrame) -> np.ndarray:
    """Which rows have exactly the event time Redis holds for their student (a second reading of the same
    moment, e.g. attendance and a survey sent apart). Feast's Redis writer keeps the stored value when
    the new one is not newer, so these would never reach the online store (SQLite's guard lets an equal
    time replace). All False for SQLite."""
    from .repo import JOIN_KEY, TIMESTAMP

    if store.config.online_store.type != "redis" or rows.empty:
        return np.zeros(len(rows), dtype=bool)
    ref = feature_refs(store, [feature])
    resp = store.get_online_features(features=ref, entity_rows=[{JOIN_KEY: i} for i in rows[JOIN_KEY]])
    stamps = resp.proto.results[list(resp.proto.metadata.feature_names.val).index(feature)].event_timestamps
    stored = np.array([t.seconds * 1_000_000 + t.nanos // 1000 if t.seconds else -1 for t in stamps])
    given = pd.to_datetime(rows[TIMESTAMP], utc=True).dt.as_unit("us").astype("int64").to_numpy()
    return np.asarray(stored == given)


@contextlib.contextmanager
def _redis_overwrite(store: FeatureStore) -> Iterator[None]:
    """Feast's Redis writer without its event-time check, for rows known to be of the stored time (the
    check was made just before, under the ingestion lock that keeps other pushers out)."""
    cfg = store.config.online_store
    before = cfg.skip_dedup
    cfg.skip_dedup = True
    try:
        yield
    finally:
        cfg.skip_dedup = before


def _plain(text: str) -> str:
    """Feast's console text on one line, without its colour codes."""
    return " ".join(re.sub(r"\x1b\[[0-9;]*m", "", text).split())


def materialize(store: FeatureStore, end: datetime | None = None) -> None:
    """Copy the history up to ``end`` (default now) into the online store, from where the last run stopped.

    Feast prints its progress to stdout; it is logged instead (services keep stdout for their logs).
    """
    guard_online_order(store)
    with contextlib.redirect_stdout(io.StringIO()) as said:
        store.materialize_incremental(end_date=end or datetime.now(UTC))
    logger.info("feature store: materialized up to %s (%s)", end or "now", _plain(said.getvalue())[:300])


# ------------------------------------------------------------------ reading
PRESENT, MISSING, EXPIRED = "present", "missing", "expired"
_FEAST_NOT_FOUND = 3  # feast.protos FieldStatus.NOT_FOUND


@dataclass(frozen=True)
class OnlineRead:
    """The latest values of some students, and what each value is worth.

    ``values``: ``student_id`` + the features, one row per id in the order asked (missing: None/NaN).
    ``status``: the same shape; each feature is ``present``, ``missing`` (never written, or written
    empty) or ``expired`` (older than its view's TTL: the online store keeps it, it is not current).
    ``unknown``: the ids the store has no value at all for.
    """

    values: pd.DataFrame
    status: pd.DataFrame
    unknown: list[str]

    def problems(self, row: int) -> dict[str, str]:
        """{feature: 'missing' | 'expired'} of one row (empty when every feature is present)."""
        st = self.status.iloc[row].drop(labels=["student_id"])
        return {str(k): str(v) for k, v in st.items() if v != PRESENT}


def online_read(
    store: FeatureStore,
    ids: Sequence[str],
    features: Iterable[str] | None = None,
    now: datetime | None = None,
) -> OnlineRead:
    """Latest online values for ``ids`` with their status (present / missing / expired) and the unknown ids.

    Feast's online read returns a stored value whatever its age: expiry is decided here from each
    value's event timestamp and its view's TTL, as the point-in-time join does for training.
    """
    from .repo import JOIN_KEY

    refs = feature_refs(store, features)
    names = [r.split(":", 1)[1] for r in refs]
    ids = [str(i) for i in ids]
    if not ids:
        empty = pd.DataFrame(columns=[JOIN_KEY, *names])
        return OnlineRead(values=empty, status=empty.copy(), unknown=[])
    resp = store.get_online_features(features=refs, entity_rows=[{JOIN_KEY: i} for i in ids])
    values = pd.DataFrame(resp.to_dict())[[JOIN_KEY, *names]]
    ttl = {fv.name: fv.ttl.total_seconds() if fv.ttl else None for fv in store.list_feature_views()}
    now_s = (now or datetime.now(UTC)).timestamp()
    vectors = dict(zip(resp.proto.metadata.feature_names.val, resp.proto.results, strict=True))
    status = pd.DataFrame({JOIN_KEY: ids})
    found = [False] * len(ids)
    for ref, name in zip(refs, names, strict=True):
        vec, blank = vectors[name], values[name].isna().to_numpy()
        limit = ttl.get(ref.split(":", 1)[0])
        col = []
        for i, (st, ts) in enumerate(zip(vec.statuses, vec.event_timestamps, strict=True)):
            # SQLite says NOT_FOUND for a key it lacks, Redis says PRESENT with no timestamp: check both
            stored = st != _FEAST_NOT_FOUND and ts.seconds > 0
            found[i] |= stored
            if not stored or blank[i]:
                col.append(MISSING)
            elif limit is not None and now_s - ts.seconds > limit:
                col.append(EXPIRED)
            else:
                col.append(PRESENT)
        status[name] = col
    return OnlineRead(
        values=values, status=status, unknown=[i for i, f in zip(ids, found, strict=True) if not f]
    )


def online_features(
    store: FeatureStore, ids: Sequence[str], features: Iterable[str] | None = None
) -> pd.DataFrame:
    """Latest online values for ``ids``: one row per id in the given order, ``student_id`` + the features.

    A student the store has never seen, or a feature with no value, comes back as None/NaN; whether a
    value is expired or missing, and which ids are unknown, says ``online_read``.
    """
    return online_read(store, ids, features).values


def historical_features(
    store: FeatureStore, entity_rows: pd.DataFrame, features: Iterable[str] | None = None
) -> pd.DataFrame:
    """Point-in-time correct features for (student_id, event_timestamp) rows; other columns are kept.

    For each row feast takes, per view, the latest value dated at or before the row's timestamp and
    no older than the view's TTL: a reading dated after a label time never reaches that row.
    Rows come back in the order of ``entity_rows``.
    """
    from .repo import JOIN_KEY, TIMESTAMP

    missing = [c for c in (JOIN_KEY, TIMESTAMP) if c not in entity_rows.columns]
    if missing:
        raise ValueError(f"entity rows need the columns: {', '.join(missing)}")
    entity = entity_rows.copy()
    entity[JOIN_KEY] = entity[JOIN_KEY].astype(str)
    entity[TIMESTAMP] = pd.to_datetime(entity[TIMESTAMP], utc=True)
    refs = feature_refs(store, features)
    names = [r.split(":", 1)[1] for r in refs]
    # Feast's file (dask) store collapses entity rows sharing (id, timestamp) (feast issue 6787) and
    # drops a row when one view has no value for it, losing the other views' values too. So: one
    # query per view, once per distinct key, each joined back onto every row.
    keys = entity[[JOIN_KEY, TIMESTAMP]].drop_duplicates().reset_index(drop=True)
    out = entity.drop(columns=[n for n in names if n in entity.columns])
    by_view: dict[str, list[str]] = {}
    for ref in refs:
        view, name = ref.split(":", 1)
        by_view.setdefault(view, []).append(name)
    for view, cols in by_view.items():
        found = store.get_historical_features(entity_df=keys, features=[f"{view}:{c}" for c in cols]).to_df()
        found[TIMESTAMP] = pd.to_datetime(found[TIMESTAMP], utc=True)
        found = found[[JOIN_KEY, TIMESTAMP, *cols]].drop_duplicates([JOIN_KEY, TIMESTAMP])
        out = out.merge(found, on=[JOIN_KEY, TIMESTAMP], how="left", validate="many_to_one")
    return out[[*[c for c in out.columns if c not in names], *names]]


def lineage(store: FeatureStore) -> dict[str, Any]:
    """What a model trained from the store used: project, store types, and per view its version
    (hash of the definition), features, TTL and entity. Logged with the training run."""
    views = {
        fv.name: {
            "version": fv.tags.get("gradeflow_version", ""),
            "features": [f.name for f in fv.features],
            "ttl_seconds": int(fv.ttl.total_seconds()) if fv.ttl else 0,
            "entities": list(fv.entities),
        }
        for fv in sorted(store.list_feature_views(), key=lambda v: v.name)
    }
    return {
        "project": store.project,
        "offline_store": store.config.offline_store.type,
        "online_store": store.config.online_store.type,
        "views": views,
    }
