"""One error model for every service.

Services raise ``GradeflowError`` subclasses; ``install_error_handlers(app)`` maps them to
``{"error_code": ..., "message": ..., "details": ...}`` with the right HTTP status. The HTTP
client rebuilds the same exception from the JSON body on the caller's side.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    """The one error body of every service (what ``install_error_handlers`` answers), for OpenAPI."""

    error_code: str = Field(description="Machine-readable code, e.g. UNAUTHORIZED, NOT_FOUND, INVALID_INPUT.")
    message: str = Field(description="What went wrong, naming the field when an input is refused.")
    details: Any = Field(default=None, description="Structured details (e.g. one entry per invalid field).")


class GradeflowError(Exception):
    """Base error: an error code, an HTTP status and a message for humans."""

    error_code: ClassVar[str] = "INTERNAL_ERROR"
    status_code: ClassVar[int] = 500

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error_code": self.error_code, "message": self.message}
        if self.details is not None:
            body["details"] = self.details
        return body


class InvalidInput(GradeflowError):
    error_code = "INVALID_INPUT"
    status_code = 422


class DatasetError(InvalidInput):
    """A data file does not match its dataset spec (the message names the column)."""

    error_code = "INVALID_DATASET"


class NotFound(GradeflowError):
    error_code = "NOT_FOUND"
    status_code = 404


class Unauthorized(GradeflowError):
    error_code = "UNAUTHORIZED"
    status_code = 401


class Conflict(GradeflowError):
    error_code = "CONFLICT"
    status_code = 409


class ConfigError(GradeflowError):
    """A setting that makes the service unsafe or unable to run (raised at start-up, names the variable)."""

    error_code = "CONFIG_ERROR"
    status_code = 500


class ModelNotLoaded(GradeflowError):
    error_code = "MODEL_NOT_LOADED"
    status_code = 503


class ExportError(GradeflowError):
    """An export is missing, incomplete, corrupt or fails verification."""

    error_code = "EXPORT_INVALID"
    status_code = 500


class UpstreamError(GradeflowError):
    """Another service could not be reached or answered an error."""

    error_code = "UPSTREAM_ERROR"
    status_code = 502


class ServiceUnavailable(UpstreamError):
    """A service this one needs is down right now, so the request is refused instead of started
    (the message names the service and its URL; retry later)."""

    error_code = "UPSTREAM_UNAVAILABLE"
    status_code = 503


_BY_CODE: dict[str, type[GradeflowError]] = {}


def _register(cls: type[GradeflowError]) -> None:
    _BY_CODE.setdefault(cls.error_code, cls)
    for sub in cls.__subclasses__():
        _register(sub)


def error_from_body(status: int, body: Any) -> GradeflowError:
    """Rebuild an error from a JSON error body (used by the HTTP client)."""
    if not _BY_CODE:
        _register(GradeflowError)
    if isinstance(body, dict) and "error_code" in body:
        cls = _BY_CODE.get(str(body["error_code"]), GradeflowError)
        err = cls(str(body.get("message", "")), body.get("details"))
    else:
        err = UpstreamError(f"HTTP {status}: {str(body)[:500]}")
    err.http_status = status  # type: ignore[attr-defined]
    return err


MAX_FIELD_ECHO = 64  # characters of a client-chosen key echoed back in an error
MAX_PROBLEMS = 50  # problems listed in one error body


def field_path(loc: Any) -> str:
    """A validation error's location as a field path: ``("body", "items", 3, "actual")`` -> ``items[3].actual``.

    Keys are echoed at most MAX_FIELD_ECHO characters long (an unknown key may be huge)."""
    out = ""
    for part in loc:
        if part == "body" and not out:
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = str(part)
            name = name if len(name) <= MAX_FIELD_ECHO else name[:MAX_FIELD_ECHO] + "..."
            out += f".{name}" if out else name
    return out


def install_error_handlers(app: Any) -> None:
    """Map GradeflowError and request validation errors to the one JSON error body."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(GradeflowError)
    async def _gradeflow_error(_: Request, exc: GradeflowError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        # FastAPI answers a body it cannot decode (bad UTF-8, ...) with a bare 400: a 422 naming the body;
        # unknown paths and methods keep their status but get the one error body
        if exc.status_code == 400:
            body = {"error_code": "INVALID_INPUT", "message": f"body: {exc.detail}", "details": []}
            return JSONResponse(body, status_code=422)
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "HTTP_ERROR")
        return JSONResponse(
            {"error_code": code, "message": str(exc.detail)},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for e in exc.errors():
            problems.append(
                {"field": field_path(e.get("loc", ())), "rule": e.get("type"), "message": e.get("msg")}
            )
        summary = "; ".join(f"{p['field'] or '<body>'}: {p['message']}" for p in problems[:5])
        if len(problems) > 5:
            summary += f"; ... ({len(problems)} problems)"
        problems = problems[:MAX_PROBLEMS]
        return JSONResponse(
            {"error_code": "INVALID_INPUT", "message": summary, "details": problems}, status_code=422
        )
