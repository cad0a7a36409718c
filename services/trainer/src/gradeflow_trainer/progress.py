"""The progress callback shared by the ML core, the training flow and the job runner.

A neutral module: ``pipeline`` (the ML core) and ``jobs`` (the runner) both use it, and
neither imports the other.
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str, float], None]  # (stage, fraction 0..1)


def no_progress(stage: str, fraction: float) -> None:
    """A Progress that reports nothing."""
    return None
