"""API docs pages that work offline: Swagger UI at ``/docs`` and ReDoc at ``/redoc``.

FastAPI's own pages load Swagger UI and ReDoc from a CDN, so without internet they are blank.
``install_docs(app)`` replaces them with pages whose JavaScript and CSS the service serves itself,
from the pinned ``fastapi-offline`` package (Swagger UI, Apache-2.0; ReDoc, MIT). One line per
service, on an app created normally::

    app = FastAPI(title=...)
    install_docs(app)
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from importlib.resources import files
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.routing import BaseRoute, Route

ASSETS_URL = "/docs-assets"
SWAGGER_JS = "swagger-ui-bundle.js"
SWAGGER_CSS = "swagger-ui.css"
REDOC_JS = "redoc.standalone.js"
FAVICON = "favicon.png"
# a bearer token typed into "Authorize" survives a page reload
SWAGGER_PARAMETERS: dict[str, Any] = {"persistAuthorization": True}


def assets_dir() -> str:
    """The folder of the Swagger UI and ReDoc files shipped by the fastapi-offline package."""
    return str(files("fastapi_offline") / "static")


def _is_default_docs_route(route: BaseRoute, paths: set[str]) -> bool:
    return isinstance(route, Route) and route.path in paths


def install_docs(app: FastAPI, docs_url: str = "/docs", redoc_url: str = "/redoc") -> None:
    """Serve ``docs_url`` (Swagger UI) and ``redoc_url`` (ReDoc) with no request leaving the service.

    FastAPI's CDN-backed pages (added when the app was created) are removed first, so this works
    on ``FastAPI(...)`` as well as on ``FastAPI(docs_url=None, redoc_url=None)``.
    """
    openapi_url = app.openapi_url
    if openapi_url is None:
        raise ValueError("install_docs needs the app's OpenAPI schema (openapi_url is None)")
    redirect_url = app.swagger_ui_oauth2_redirect_url or f"{docs_url}/oauth2-redirect"
    replaced = {p for p in (app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url) if p}
    app.router.routes[:] = [r for r in app.router.routes if not _is_default_docs_route(r, replaced)]
    app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url = docs_url, redoc_url, redirect_url
    app.mount(ASSETS_URL, StaticFiles(directory=assets_dir()), name="docs-assets")
    swagger = partial(
        get_swagger_ui_html,
        title=f"{app.title} - Swagger UI",
        init_oauth=app.swagger_ui_init_oauth,
        swagger_ui_parameters={**SWAGGER_PARAMETERS, **(app.swagger_ui_parameters or {})},
    )
    redoc = partial(get_redoc_html, title=f"{app.title} - ReDoc", with_google_fonts=False)

    def page(path: str, render: Callable[..., HTMLResponse], **urls: str) -> None:
        """GET ``path`` answers ``render(**urls)``, each URL under the request's root path (proxies)."""

        async def endpoint(request: Request) -> HTMLResponse:
            base = str(request.scope.get("root_path", ""))
            return render(**{name: f"{base}{url}" for name, url in urls.items()})

        app.add_api_route(path, endpoint, methods=["GET"], include_in_schema=False)

    page(
        docs_url,
        swagger,
        openapi_url=openapi_url,
        oauth2_redirect_url=redirect_url,
        swagger_js_url=f"{ASSETS_URL}/{SWAGGER_JS}",
        swagger_css_url=f"{ASSETS_URL}/{SWAGGER_CSS}",
        swagger_favicon_url=f"{ASSETS_URL}/{FAVICON}",
    )
    page(redirect_url, get_swagger_ui_oauth2_redirect_html)
    page(
        redoc_url,
        redoc,
        openapi_url=openapi_url,
        redoc_js_url=f"{ASSETS_URL}/{REDOC_JS}",
        redoc_favicon_url=f"{ASSETS_URL}/{FAVICON}",
    )
