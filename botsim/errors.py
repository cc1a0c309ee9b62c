"""The Chat API's error model: JSON `{id, code, type, message}`, as @botpress/chat parses it.

The client maps `type` back to its error class (errors.d.ts), so the type names and their
status codes below must match that file exactly.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

import falcon
import falcon.asgi


class ApiError(Exception):
    code: int = 500
    type: str = "Internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.id = new_error_id()

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "code": self.code, "type": self.type, "message": self.message}


class InternalError(ApiError):
    code, type = 500, "Internal"


class UnauthorizedError(ApiError):
    code, type = 401, "Unauthorized"


class ForbiddenError(ApiError):
    code, type = 403, "Forbidden"


class InvalidPayloadError(ApiError):
    code, type = 400, "InvalidPayload"


class ResourceNotFoundError(ApiError):
    code, type = 404, "ResourceNotFound"


class MethodNotFoundError(ApiError):
    code, type = 405, "MethodNotFound"


class AlreadyExistsError(ApiError):
    code, type = 409, "AlreadyExists"


class PayloadTooLargeError(ApiError):
    code, type = 413, "PayloadTooLarge"


class RateLimitedError(ApiError):
    code, type = 429, "RateLimited"


def new_error_id() -> str:
    # Same shape as the platform's ids: err_<YYYYMMDDHHMMSS>x<8 upper hex>.
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    return f"err_{stamp}x{secrets.token_hex(4).upper()}"


async def handle_api_error(
    req: falcon.asgi.Request, resp: falcon.asgi.Response, ex: ApiError, params: dict[str, Any]
) -> None:
    resp.status = ex.code
    resp.media = ex.to_json()


_HTTP_TYPES = {
    400: InvalidPayloadError,
    404: ResourceNotFoundError,
    405: MethodNotFoundError,
    413: PayloadTooLargeError,
}


async def handle_http_error(
    req: falcon.asgi.Request,
    resp: falcon.asgi.Response,
    ex: falcon.HTTPError,
    params: dict[str, Any],
) -> None:
    # Falcon's own errors (unknown route, bad JSON, wrong method) get the API's shape too.
    cls = _HTTP_TYPES.get(ex.status_code, InternalError)
    err = cls(ex.description or ex.title or "error")
    resp.status = err.code
    resp.media = err.to_json()


async def handle_unexpected(
    req: falcon.asgi.Request, resp: falcon.asgi.Response, ex: Exception, params: dict[str, Any]
) -> None:
    if isinstance(ex, falcon.HTTPError):
        await handle_http_error(req, resp, ex, params)
        return
    err = InternalError(f"An internal error occurred: {type(ex).__name__}")
    resp.status = 500
    resp.media = err.to_json()
