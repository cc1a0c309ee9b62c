"""User keys: HS256 JWTs whose payload is `{"id": userId}` (integrations/chat auth-key.ts).

A resource whose routes need a user is decorated with `@authenticated`: before each of its
responders, the `x-user-key` header is verified (401 Unauthorized when missing or invalid) and
the key's user id is put on `req.context.user_id`. Undecorated resources (`/hello`,
`POST /users`) are open. Methods a resource has no responder for are not checked, so they keep
answering 405 (and CORS preflights 200) without a key.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, TypeVar

import falcon
import falcon.asgi
import jwt

from .errors import UnauthorizedError

_ALGO = "HS256"
# Verified keys are cached: the same key arrives on every request of a call, and an HS256
# verify costs more than the rest of a request's work here.
_CACHE_MAX = 100_000


class KeyVerifier:
    """Each webhook id (each bot) gets its own signing secret, derived from the server's, so a
    key from one bot is rejected by another, as on the platform."""

    def __init__(self, server_secret: str, encryption_key: str | None) -> None:
        self._server_secret = server_secret.encode()
        self._encryption_key = encryption_key
        self._cache: dict[tuple[str, str], str] = {}

    def _secret(self, webhook_id: str) -> str:
        return hmac.new(self._server_secret, webhook_id.encode(), hashlib.sha256).hexdigest()

    def issue(self, webhook_id: str, user_id: str) -> str:
        return jwt.encode({"id": user_id}, self._secret(webhook_id), algorithm=_ALGO)

    def user_id(self, webhook_id: str, key: str | None) -> str:
        if not key:
            raise UnauthorizedError("Missing x-user-key header")
        cached = self._cache.get((webhook_id, key))
        if cached is not None:
            return cached
        secrets = [self._secret(webhook_id)]
        if self._encryption_key:
            secrets.append(self._encryption_key)
        claims: dict[str, Any] | None = None
        for secret in secrets:
            try:
                claims = jwt.decode(key, secret, algorithms=[_ALGO])
                break
            except jwt.PyJWTError:
                continue
        if claims is None or not isinstance(claims.get("id"), str):
            raise UnauthorizedError("Invalid user key")
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[(webhook_id, key)] = claims["id"]
        return claims["id"]


async def verify_user_key(
    req: falcon.asgi.Request,
    resp: falcon.asgi.Response,
    resource: object,
    params: dict[str, Any],
) -> None:
    """falcon.before hook: the request's x-user-key must be a key of this webhook id's bot; its
    user id goes on req.context.user_id."""
    keys = _keys_of(resource)
    req.context.user_id = keys.user_id(params["webhook_id"], req.get_header("x-user-key"))


def _keys_of(resource: object) -> KeyVerifier:
    keys = getattr(resource, "keys", None)
    if not isinstance(keys, KeyVerifier):
        raise TypeError(f"{type(resource).__name__} has no KeyVerifier `keys` to authenticate")
    return keys


_R = TypeVar("_R", bound=type)


def authenticated(cls: _R) -> _R:
    """Class decorator: every responder of this resource needs a valid x-user-key first (see
    verify_user_key); `auth_required` says so to anyone listing the routes."""
    setattr(cls, "auth_required", True)  # noqa: B010 - any class, typed as such
    return falcon.before(verify_user_key)(cls)


def request_user_id(req: falcon.asgi.Request) -> str:
    """The user id verify_user_key put on the request (only on @authenticated resources)."""
    user_id = getattr(req.context, "user_id", None)
    if not isinstance(user_id, str):
        raise TypeError("request_user_id outside an @authenticated resource")
    return user_id
