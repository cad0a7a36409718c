"""Reading Prometheus text exposition in tests (one parser for every service's /metrics)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample called ``name`` (the full sample name, e.g. ``x_total`` or ``x_bucket``)."""
    return [
        (dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]


def value(text: str, name: str, **labels: str) -> float | None:
    """The value of the one sample ``name`` whose labels include ``labels`` (None: no such sample;
    AssertionError: several)."""
    found = [v for lab, v in samples(text, name) if all(lab.get(k) == want for k, want in labels.items())]
    assert len(found) <= 1, f"{len(found)} samples of {name} match {labels}"
    return found[0] if found else None


def total(text: str, name: str, **labels: str) -> float:
    """The sum of every sample of ``name`` whose labels include ``labels`` (0 when there is none)."""
    return sum(v for lab, v in samples(text, name) if all(lab.get(k) == want for k, want in labels.items()))
