"""The repository's own tests (integration, end to end, docs); helpers in ``tests.support``."""
