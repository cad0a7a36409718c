"""Developer scripts, run as ``python scripts/<name>.py`` or ``python -m scripts.<name>``; the tests import them."""
