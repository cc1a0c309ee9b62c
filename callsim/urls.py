"""Which URL Twilio signs versus which URL callsim actually connects to.

Behind a proxy Twilio signs the public URL (https://voice.example.com/...) while the edge listens
on another (http://127.0.0.1:8080/...). callsim keeps every URL in Twilio's public form (that is
what gets signed and what relative TwiML URLs resolve against) and swaps scheme, host and port
only when it connects. URLs on any other origin are refused: callsim only ever talks to the
target it was given.

On the wire the URL goes out as it was signed: aiohttp would otherwise re-quote it (``%41``
becomes ``A``, a stray ``%`` becomes ``%25``) and the edge would check another URL than the
one signed.
"""

from __future__ import annotations

import string
from urllib.parse import SplitResult, quote, urlsplit, urlunsplit

from yarl import URL

_DEFAULT_PORTS = {"http": 80, "https": 443}


class OffsiteUrl(ValueError):
    """TwiML pointed callsim at an origin other than the target's."""


def _origin(parts: SplitResult) -> tuple[str, str, int]:
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"not an absolute http(s) URL: {urlunsplit(parts)!r}")
    return scheme, parts.hostname.lower(), parts.port or _DEFAULT_PORTS[scheme]


class UrlMap:
    def __init__(self, target_url: str, signing_base: str | None = None) -> None:
        target = urlsplit(target_url)
        self._transport = (target.scheme, target.netloc)
        self._transport_origin = _origin(target)
        # A path on the public base (https://example.com/voicebridge) is a prefix a proxy
        # strips before the edge sees the request; the edge signs PUBLIC_URL + its own path.
        self._prefix = ""
        if signing_base:
            public = urlsplit(signing_base)
            _origin(public)  # validate early: a typo here would fail every signature
            self._public = (public.scheme, public.netloc)
            self._prefix = public.path.rstrip("/")
        else:
            self._public = self._transport
        self._public_origin = _origin(urlsplit(urlunsplit((*self._public, "/", "", ""))))

    def to_public(self, url: str) -> str:
        """The URL Twilio would use (and sign) for a URL on the target."""
        parts = urlsplit(url)
        if _origin(parts) == self._transport_origin:
            path = self._prefix + parts.path
            return urlunsplit((*self._public, path, parts.query, parts.fragment))
        return self.check(url)

    def to_transport(self, url: str) -> str:
        """The URL to connect to for a public URL. Raises OffsiteUrl for other origins."""
        parts = urlsplit(self.check(url))
        if _origin(parts) == self._public_origin:
            path = parts.path
            if self._prefix:
                if path != self._prefix and not path.startswith(self._prefix + "/"):
                    raise OffsiteUrl(f"refusing to follow {url!r}: outside {self._prefix!r}")
                path = path[len(self._prefix) :] or "/"
            return urlunsplit((*self._transport, path, parts.query, ""))
        return urlunsplit((parts.scheme, parts.netloc, parts.path, parts.query, ""))

    def check(self, url: str) -> str:
        origin = _origin(urlsplit(url))
        if origin not in (self._public_origin, self._transport_origin):
            raise OffsiteUrl(f"refusing to follow {url!r}: not the target's origin")
        return url


def wire_url(url: str) -> URL:
    """``url`` as sent, byte for byte what was signed (no re-quoting by aiohttp/yarl).

    Only what cannot appear in a request line at all (spaces, control and non-ASCII
    characters) is percent-encoded, as any HTTP client has to; printable ASCII, ``%`` escapes
    included, is left exactly as it is.
    """
    return URL(quote(url, safe=string.punctuation), encoded=True)
