"""Reports are safe to open: request values never reach a page as markup or script, and every page
carries a Content-Security-Policy and nosniff. Hostile inputs to the API give documented 4xx, never 5xx."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from gradeflow_monitor.app import create_app
from gradeflow_monitor.drift import UNSEEN, DriftPolicy, evaluate_drift
from gradeflow_monitor.service import Monitor
from gradeflow_monitor.storage import Store
from gradeflow_shared import synth
from gradeflow_testkit.monitor_peers import FakeInference, monitor_settings, simple_export
from gradeflow_testkit.servers import ThreadServer

SCRIPT_PAYLOAD = "</script><script>alert(1)</script>"
ATTR_PAYLOAD = '"><img src=x onerror=alert(1)>'
NUM = [c.name for c in synth.COLUMNS if c.kind == "numeric"]
CAT = [c.name for c in synth.COLUMNS if c.kind == "categorical"]


class Page(HTMLParser):
    """Every element with its attributes, and the text inside each <script> element."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self._in_script = True
            self.scripts.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts[-1] += data


def parse(html: str) -> Page:
    page = Page()
    page.feed(html)
    page.close()
    return page


def assert_no_injection(html: str) -> None:
    page = parse(html)
    handlers = [(t, a) for t, a in page.tags for k in a if k.lower().startswith("on")]
    assert not handlers, f"event-handler attributes in the page: {handlers[:3]}"
    assert not [a for t, a in page.tags if t == "img" and a.get("src") == "x"], "an injected <img> element"
    assert all(not a.get("src") for t, a in page.tags if t == "script"), "a script loaded from elsewhere"
    for text in page.scripts:  # (Evidently's own bundle has 'onerror' handlers: only the payload counts)
        assert "alert(1)" not in text and "src=x" not in text
    assert "alert(1)" not in html


def hostile_window(n: int = 600) -> pd.DataFrame:
    df = synth.generate(n, seed=5).drop(columns=[synth.TARGET])
    df.loc[: n // 4, "school_type"] = SCRIPT_PAYLOAD
    df.loc[n // 4 : n // 2, "motivation"] = ATTR_PAYLOAD
    df.loc[n // 2 : n // 2 + 10, "internet_access"] = "x" * 10_000
    return df


def test_unseen_categories_become_one_placeholder_before_the_report() -> None:
    ref = synth.generate(1000, seed=1)
    cur = hostile_window()
    categories = {c.name: c.categories for c in synth.COLUMNS if c.kind == "categorical" and c.categories}
    result = evaluate_drift(cur, ref, NUM, CAT, DriftPolicy(), categories=categories)
    html = result.snapshot.get_html_str(as_iframe=False)
    assert_no_injection(html)
    assert "x" * 65 not in html  # strings are length-bounded
    assert UNSEEN in html
    # the unseen mass is still drift evidence: a quarter of school_type and motivation is new
    assert {"school_type", "motivation"} <= set(result.drifted_columns)


def test_mapping_keeps_the_verdicts_for_seen_values() -> None:
    """A window of seen values only: the same scores with or without the manifest's categories."""
    ref = synth.generate(1000, seed=1)
    cur = synth.generate(800, seed=2, scenario="covariate_attendance")
    categories = {c.name: c.categories for c in synth.COLUMNS if c.kind == "categorical" and c.categories}
    a = {
        c.column: c for c in evaluate_drift(cur, ref, NUM, CAT, DriftPolicy(), categories=categories).columns
    }
    b = {c.column: c for c in evaluate_drift(cur, ref, NUM, CAT, DriftPolicy()).columns}
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k].score, a[k].threshold, a[k].drifted) == pytest.approx(
            (b[k].score, b[k].threshold, b[k].drifted)
        )


def test_hostile_categories_through_a_check_leave_a_safe_report(tmp_path: Path) -> None:
    simple_export(tmp_path / "models")
    s = monitor_settings(
        tmp_path, tmp_path / "models", "http://127.0.0.1:9", "http://127.0.0.1:9", auto_retrain=False
    )

    class Window:
        def fetch(self, model_version: int) -> pd.DataFrame:
            return hostile_window()

    class NoTrainer:
        def retrain(self, request: Any) -> Any:
            raise AssertionError("not expected")

        job = retrain

    store = Store(s.db_url())
    mon = Monitor(s, store, window=Window(), trainer=NoTrainer())
    try:
        run = mon.run_check("test")
    finally:
        mon.close()
        store.close()
    assert run.status == "ok" and "school_type" in run.drifted_columns
    html = Path(run.report_html or "").read_text()
    assert_no_injection(html)
    assert UNSEEN in html
    assert "alert(1)" not in Path(run.report_json or "").read_text()


@pytest.fixture
def monitor_over_http(tmp_path: Path, fake_inference: Any, fake_trainer: Any) -> Any:
    (inf, inf_srv), (_, tr_srv) = fake_inference, fake_trainer
    model_dir = tmp_path / "models"
    simple_export(model_dir)
    df = hostile_window()
    df[synth.TARGET] = 10.0
    FakeInference.log(inf, df, version=1)
    s = monitor_settings(tmp_path, model_dir, inf_srv.url, tr_srv.url, auto_retrain=False)
    with ThreadServer(create_app(s)) as srv:
        yield srv.url


def test_report_pages_over_http_are_safe_and_carry_a_policy(monitor_over_http: str) -> None:
    url = monitor_over_http
    with httpx.Client(base_url=url, timeout=120) as c:
        verdict = c.post("/checks").json()
        assert verdict["dataset_drift"] and "school_type" in verdict["drifted_columns"]
        report = c.get(f"/reports/{verdict['run_id']}")
        assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
        csp = report.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "connect-src" not in csp
        assert report.headers["x-content-type-options"] == "nosniff"
        assert_no_injection(report.text)

        index = c.get("/reports")
        csp = index.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src" not in csp and "unsafe-inline" not in csp
        assert index.headers["x-content-type-options"] == "nosniff"
        assert_no_injection(index.text)
        assert not parse(index.text).scripts

        js = c.get(f"/reports/{verdict['run_id']}.json")
        assert js.headers["x-content-type-options"] == "nosniff" and "alert(1)" not in js.text


HOSTILE = [
    ("GET", "/reports/{run_id}", f"/reports/{2**63}"),
    ("GET", "/reports/{run_id}", f"/reports/{2**64 + 5}"),
    ("GET", "/reports/{run_id}", "/reports/-1"),
    ("GET", "/reports/{run_id}", "/reports/0"),
    ("GET", "/reports/{run_id}", "/reports/1e3"),
    ("GET", "/reports/{run_id}", "/reports/%00"),
    ("GET", "/reports/{run_id}", "/reports/1"),
    ("GET", "/reports/{run_id}", f"/reports/{2**63 - 1}"),
    ("GET", "/reports/{run_id}.json", f"/reports/{2**63}.json"),
    ("GET", "/reports/{run_id}.json", "/reports/-9.json"),
    ("GET", "/reports/{run_id}.json", "/reports/abc.json"),
    ("GET", "/reports/{run_id}.json", "/reports/7.json"),
    ("GET", "/reports", "/reports?limit=-1"),
    ("GET", "/reports", f"/reports?limit={10**30}"),
    ("GET", "/reports", "/reports?limit=abc"),
    ("GET", "/reports", "/reports?limit=2000"),
    ("POST", "/checks", "/checks?wait=maybe"),
    ("POST", "/checks", f"/checks?wait={'x' * 5000}"),
    ("GET", "/metrics", "/metrics"),
    ("GET", "/drift", "/drift"),
]


def test_hostile_inputs_get_documented_4xx_never_5xx(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    s = monitor_settings(tmp_path, tmp_path / "models", "http://127.0.0.1:9", "http://127.0.0.1:9")
    with TestClient(create_app(s), raise_server_exceptions=False) as c:
        spec = c.get("/openapi.json").json()
        for method, template, url in HOSTILE:
            r = c.request(method, url)
            assert r.status_code < 500, (url, r.status_code, r.text[:300])
            documented = spec["paths"][template][method.lower()]["responses"]
            assert str(r.status_code) in documented, (url, r.status_code, sorted(documented))
            media = r.headers["content-type"].split(";")[0]
            assert media in documented[str(r.status_code)].get("content", {}), (url, media)
            if r.status_code >= 400:
                assert r.json()["error_code"] in ("INVALID_INPUT", "NOT_FOUND"), url
