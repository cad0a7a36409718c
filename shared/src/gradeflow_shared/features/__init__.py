"""The feature store: student facts over time, served by id and joined point-in-time for training.

Built on Feast. The repository (entity ``student`` keyed by ``student_id``, the views
``student_profile`` and ``student_activity``, one push source per view) is code in ``repo.py``;
the configuration comes from ``FeatureStoreSettings`` (``gradeflow_shared.settings``).

Public functions (``gradeflow_shared.features.store``; signatures kept stable):

* ``feature_store(settings) -> FeatureStore``: the store for the settings (parquet + SQLite under
  FEATURE_STORE_DIR by default; PostgreSQL / Redis when their URLs are set).
* ``apply(store, spec=None) -> list[str]``: register the definitions for a dataset's columns
  (default: the synthetic term) and create empty histories; idempotent.
* ``online_features(store, ids, features=None) -> DataFrame``: latest values, one row per id in
  order (``student_id`` + features); unknown ids / missing values come back as None/NaN.
* ``online_read(store, ids, features=None) -> OnlineRead``: the same values plus a status per
  value (``present`` / ``missing`` / ``expired`` = older than the view's TTL) and the unknown ids:
  what a by-id prediction needs to answer 404 (unknown) or 422 (missing/expired, named).
* ``push(store, rows) -> {view: n}``: new readings (``student_id``, ``event_timestamp``, any
  features) into history and online store; absent features of a touched view are carried forward.
* ``materialize(store, end=None)``: history up to ``end`` into the online store (incremental).
* ``historical_features(store, entity_rows, features=None) -> DataFrame``: point-in-time join for
  (``student_id``, ``event_timestamp``) rows (training).
* ``write_history(store, view, rows)``: bulk load of dated rows into a view's history.
* ``feature_refs(store, features)`` / ``view_columns(store)``: which view holds which feature.

Monitoring contract: a prediction that read features from the store logs the values it actually
used (stored values, overridden by any sent in the request) in ``LoggedPrediction.features``, as
for a request with full records; the monitor's drift checks run on those logged values.

Nothing here imports feast at package import: only calling these functions does, so a service
that may use the store (inference) keeps its cold start.
"""
