"""Request limits checked before any parsing (pure ASGI middleware, cheap per request).

* a body larger than ``max_body_bytes`` -> 413: from Content-Length (the server hands on exactly that many
  bytes), or, for a chunked body without a length, while it streams in (read here, bounded, then handed
  on to the app as one message);
* a POST to a JSON endpoint without ``Content-Type: application/json`` -> 415 (this also refuses the
  "simple" cross-site posts a browser sends without a preflight: text/plain, forms).
"""

from __future__ import annotations

from typing import Any

import orjson

from gradeflow_shared.errors import GradeflowError


class PayloadTooLarge(GradeflowError):
    error_code = "PAYLOAD_TOO_LARGE"
    status_code = 413


class UnsupportedMediaType(GradeflowError):
    error_code = "UNSUPPORTED_MEDIA_TYPE"
    status_code = 415


_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def is_json(content_type: bytes) -> bool:
    """``application/json``, with or without parameters (``; charset=utf-8``)."""
    return content_type.split(b";", 1)[0].strip().lower() == b"application/json"


class RequestGuard:
    def __init__(self, app: Any, max_body_bytes: int, json_paths: frozenset[str]) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.json_paths = json_paths

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        length = ctype = b""
        chunked = False
        for k, v in scope["headers"]:
            if k == b"content-length":
                length = v
            elif k == b"content-type":
                ctype = v
            elif k == b"transfer-encoding":
                chunked = True
        limit = self.max_body_bytes
        if scope["path"] in self.json_paths and not is_json(ctype):
            shown = ctype[:64].decode("latin-1") or "none"
            await _refuse(send, UnsupportedMediaType(f"Content-Type must be application/json, got {shown}"))
            return
        if length.isdigit() and not chunked:
            # the server hands on exactly Content-Length bytes: the header alone decides (no copy, no wrap)
            if int(length) > limit:
                await _refuse(send, _too_large(limit))
                return
            await self.app(scope, receive, send)
            return
        # no length to trust (chunked): read the body here, counting, and hand it on as one message
        chunks: list[bytes] = []
        size = 0
        while True:
            msg = await receive()
            if msg["type"] != "http.request":  # the client went away
                await self.app(scope, _once(msg, receive), send)
                return
            chunks.append(msg.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                await _refuse(send, _too_large(limit))
                return
            if not msg.get("more_body", False):
                break
        replay = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _once(replay, receive), send)


def _once(message: dict[str, Any], receive: Any) -> Any:
    """A receive callable that answers ``message`` first, then defers to ``receive``."""
    pending = [message]

    async def _receive() -> dict[str, Any]:
        if pending:
            return pending.pop()
        return await receive()  # type: ignore[no-any-return]

    return _receive


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body larger than MAX_BODY_BYTES ({limit} bytes)")


async def _refuse(send: Any, exc: GradeflowError) -> None:
    body = orjson.dumps(exc.to_dict())
    await send(
        {
            "type": "http.response.start",
            "status": exc.status_code,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
