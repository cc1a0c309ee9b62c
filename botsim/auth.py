"""User keys: HS256 JWTs whose payload is `{"id": userId}` (integrations/chat auth-key.ts)."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

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
