"""Twilio's request signature (X-Twilio-Signature), computed the way Twilio computes it.

HMAC-SHA1, keyed by the account's auth token, over the exact URL Twilio requested followed by
every POST parameter as name+value with no separators, names sorted. A repeated parameter
contributes each of its values, sorted. Values are deduplicated like twilio-python's
``RequestValidator`` does, so what we sign is exactly what the edge will check (Twilio itself
never sends a duplicate name=value pair in a webhook).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence

SIGNATURE_HEADER = "X-Twilio-Signature"

Params = Mapping[str, str | Sequence[str]] | Iterable[tuple[str, str]]


def _grouped(params: Params) -> dict[str, set[str]]:
    """Values per name, from a mapping (value or list of values) or from (name, value) pairs."""
    grouped: dict[str, set[str]] = {}
    items: Iterable[tuple[str, str | Sequence[str]]]
    items = params.items() if isinstance(params, Mapping) else params
    for name, value in items:
        values = [value] if isinstance(value, str) else list(value)
        grouped.setdefault(name, set()).update(values)
    return grouped


def signing_string(url: str, params: Params) -> str:
    """The string Twilio feeds to the HMAC (exposed because it is what to print when debugging)."""
    parts = [url]
    grouped = _grouped(params)
    for name in sorted(grouped):
        for value in sorted(grouped[name]):
            parts.append(name + value)
    return "".join(parts)


def sign(url: str, params: Params, auth_token: str) -> str:
    """The X-Twilio-Signature value Twilio would send for a POST of ``params`` to ``url``.

    For a GET, Twilio puts the parameters in the URL's query string and signs the URL alone:
    pass ``params={}``.
    """
    mac = hmac.new(auth_token.encode(), signing_string(url, params).encode(), hashlib.sha1)
    return base64.b64encode(mac.digest()).decode()
