"""HTTP client with timeouts and retries, used for every service-to-service call."""

from __future__ import annotations

import logging
import time
from typing import Any

import httpx

from .errors import GradeflowError, UpstreamError, error_from_body

logger = logging.getLogger(__name__)

RETRY_STATUSES = {502, 503, 504}


class ServiceClient:
    """A small JSON client: base URL, bearer token, timeouts, retries with backoff.

    Connection errors and 502/503/504 are retried ``retries`` times with exponential backoff;
    other error answers are rebuilt into the matching ``GradeflowError`` at once.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.5,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.backoff = backoff
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(base_url=self.base_url, timeout=timeout, headers=headers)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            try:
                resp = self._client.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                last = UpstreamError(f"{method} {self.base_url}{path}: {exc.__class__.__name__}: {exc}")
            else:
                if resp.status_code < 400:
                    if not resp.content:
                        return None
                    ctype = resp.headers.get("content-type", "")
                    return resp.json() if "json" in ctype else resp.text
                try:
                    body: Any = resp.json()
                except ValueError:
                    body = resp.text
                err: GradeflowError = error_from_body(resp.status_code, body)
                if resp.status_code not in RETRY_STATUSES:
                    raise err
                last = err
            if attempt < self.retries:
                delay = self.backoff * (2**attempt)
                logger.warning("%s %s failed (%s); retry %d in %.1fs", method, path, last, attempt + 1, delay)
                time.sleep(delay)
        assert last is not None
        raise last

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs)


def wait_until_healthy(url: str, timeout: float = 60.0, interval: float = 0.25) -> None:
    """Poll ``url`` until it answers 2xx (raises TimeoutError otherwise)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            r = httpx.get(url, timeout=2.0)
            if r.status_code < 300:
                return
            last = f"HTTP {r.status_code}"
        except httpx.TransportError as exc:
            last = str(exc)
        time.sleep(interval)
    raise TimeoutError(f"{url} not healthy after {timeout:.0f}s ({last})")
