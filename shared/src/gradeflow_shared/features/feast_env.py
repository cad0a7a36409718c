"""Import feast without letting it switch the process's prometheus metrics to multi-process files.

``import feast`` imports ``feast.metrics``, which points PROMETHEUS_MULTIPROC_DIR and
PROMETHEUS_MULTIPROCESS_DIR at a temporary folder (for feast's own gunicorn feature server). Left in
place, prometheus_client imported after that, and every child process, would keep its metrics in
mmap files there instead of in memory. Every feast import of GradeFlow goes through
``quiet_feast_import``: prometheus_client is loaded first (in-memory values) and the two variables
are restored afterwards.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

PROMETHEUS_ENV = ("PROMETHEUS_MULTIPROCESS_DIR", "PROMETHEUS_MULTIPROC_DIR")


@contextlib.contextmanager
def quiet_feast_import() -> Iterator[None]:
    """Run feast imports inside this block: the environment's prometheus variables are left as they were."""
    import prometheus_client  # noqa: F401 - loaded before the variables exist: in-memory values

    saved = {k: os.environ.get(k) for k in PROMETHEUS_ENV}
    try:
        import feast  # noqa: F401 - the first import is the one that sets the variables
        import feast.metrics  # noqa: F401

        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
