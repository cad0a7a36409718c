"""Dependencies shared by the routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gradeflow_shared.errors import Unauthorized
from gradeflow_shared.settings import bearer_matches

from ..state import ServiceState


def get_state(request: Request) -> ServiceState:
    return request.app.state.svc  # type: ignore[no-any-return]


StateDep = Annotated[ServiceState, Depends(get_state)]


_admin_bearer = HTTPBearer(auto_error=False, description="ADMIN_TOKEN", scheme_name="AdminBearer")


def require_admin(
    request: Request,
    state: StateDep,
    _: Annotated[HTTPAuthorizationCredentials | None, Security(_admin_bearer)],
) -> None:
    """401 unless ``Authorization: Bearer <ADMIN_TOKEN>`` (constant-time comparison)."""
    if not bearer_matches(request.headers.get("authorization"), state.settings.admin_token):
        raise Unauthorized(f"{request.method} {request.url.path} needs Authorization: Bearer <ADMIN_TOKEN>")
