"""Helpers for the tests (and ``make fuzz``), imported as ``tests.support.<module>``."""
