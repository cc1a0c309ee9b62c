"""Twilio request authentication: X-Twilio-Signature against PUBLIC_URL, and the AccountSid.

The URL checked is PUBLIC_URL + the path and query the edge received, never the Host header
(the relay socket: its wss:// URL exactly as the TwiML gave it):
behind a TLS-terminating proxy the scheme/host/port the edge sees differ from what Twilio signed.
twilio's RequestValidator also tries the URL with and without the default port.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator, Sequence

from twilio.request_validator import RequestValidator


class FormParams:
    """Decoded form fields in arrival order; repeated names keep every value (Twilio signs all)."""

    __slots__ = ("_pairs", "_first")

    def __init__(self, pairs: Sequence[tuple[str, str]]) -> None:
        self._pairs = pairs
        self._first: dict[str, str] = {}
        for name, value in pairs:
            self._first.setdefault(name, value)

    def get(self, name: str, default: str = "") -> str:
        return self._first.get(name, default)

    def __len__(self) -> int:
        return len(self._first)

    def __contains__(self, name: object) -> bool:
        return name in self._first

    def __iter__(self) -> Iterator[str]:  # RequestValidator iterates the names
        return iter(self._first)

    def __getitem__(self, name: str) -> str:
        return self._first[name]

    def getall(self, name: str) -> list[str]:
        return [v for n, v in self._pairs if n == name]


class TwilioAuth:
    def __init__(self, public_url: str, auth_token: str, account_sid: str) -> None:
        self._public_url = public_url
        self._validator = RequestValidator(auth_token)
        self._account_sid = account_sid

    def signed_url(self, path: str, query_string: str) -> str:
        return f"{self._public_url}{path}" + (f"?{query_string}" if query_string else "")

    def is_valid(self, path: str, query_string: str, params: FormParams, signature: str) -> bool:
        return self.is_signed(self.signed_url(path, query_string), signature, params)

    def is_signed(self, url: str, signature: str, params: FormParams | None = None) -> bool:
        """`signature` is Twilio's for `url` (and the POST params; none for the relay socket's
        upgrade). The URL goes to RequestValidator as given: for `wss` its port variants add
        `:80`, not `:443`, so only the URL as the TwiML gave it (or without its port) matches."""
        if not signature:
            return False
        return bool(self._validator.validate(url, params or {}, signature))

    def is_our_account(self, account_sid: str) -> bool:
        return hmac.compare_digest(account_sid.encode(), self._account_sid.encode())
