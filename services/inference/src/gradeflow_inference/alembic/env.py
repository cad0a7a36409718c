"""Alembic environment of the prediction log (run programmatically by gradeflow_inference.db.upgrade)."""

from __future__ import annotations

from alembic import context

from gradeflow_inference.db import metadata

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # `alembic -x url=...` from a shell
    import sqlalchemy as sa

    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("pass the database: alembic -x url=sqlite:///path/predictions.db upgrade head")
    connectable = sa.create_engine(url)
    with connectable.begin() as conn:
        context.configure(connection=conn, target_metadata=metadata)
        with context.begin_transaction():
            context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=metadata)
    with context.begin_transaction():
        context.run_migrations()
