"""Tests of the inference service (a package: the helpers in ``exports`` are imported, not loaded by path)."""
