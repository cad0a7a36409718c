"""GradeFlow shared library: settings, contracts, manifest format, HTTP client, errors, logging, datasets."""

__version__ = "0.1.0"
