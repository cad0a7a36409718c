"""The API docs pages load every file from the service itself (no CDN), on an app created normally."""

from __future__ import annotations

import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from gradeflow_shared.webdocs import install_docs


def _app(**kwargs: object) -> FastAPI:
    app = FastAPI(title="t", **kwargs)  # type: ignore[arg-type]

    @app.get("/ping")
    def ping() -> dict[str, str]:
        return {"ok": "yes"}

    install_docs(app)
    return app


def _asset_urls(html: str) -> list[str]:
    return re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", html)


@pytest.mark.parametrize("kwargs", [{}, {"docs_url": None, "redoc_url": None}])
@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_every_file_from_the_service(kwargs: dict[str, object], page: str) -> None:
    with TestClient(_app(**kwargs)) as c:
        r = c.get(page)
        assert r.status_code == 200
        assert "http://" not in r.text and "https://" not in r.text, r.text
        urls = _asset_urls(r.text)
        scripts = [u for u in urls if u.endswith(".js")]
        assert scripts, r.text
        for url in urls:
            got = c.get(url)
            assert got.status_code == 200, url
            if url.endswith((".js", ".css")):
                assert len(got.content) > 100_000, url  # the real Swagger UI / ReDoc bundles


def test_default_cdn_routes_are_replaced_not_shadowed() -> None:
    app = _app()
    paths = [getattr(r, "path", None) for r in app.router.routes]
    assert paths.count("/docs") == 1 and paths.count("/redoc") == 1
    assert paths.count("/docs/oauth2-redirect") == 1
    with TestClient(app) as c:
        assert "/docs" not in c.get("/openapi.json").json()["paths"]


def test_swagger_keeps_a_bearer_token_across_reloads() -> None:
    with TestClient(_app()) as c:
        html = c.get("/docs").text
    assert re.search(r'"persistAuthorization":\s*true', html), html


def test_an_app_without_openapi_is_refused() -> None:
    with pytest.raises(ValueError, match="openapi_url"):
        install_docs(FastAPI(openapi_url=None))
