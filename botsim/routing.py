"""Routes `/{webhookId}/...` by the raw (still percent-encoded) path.

The official client percent-encodes ids in most routes (`encodeURIComponent`), and ids may
contain `/`; routing on the decoded path would split such an id. The listen route is the
exception: the client puts the id in unencoded, so its id is everything between
`conversations/` and `/listen`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

import falcon
import falcon.asgi
from falcon.routing import map_http_methods, set_default_responders

Route = tuple[object, dict[str, Any], dict[str, str], str]


class BotsimRouter:
    def __init__(self, resources: dict[str, object]) -> None:
        self._routes: dict[str, tuple[object, dict[str, Any]]] = {}
        for name, resource in resources.items():
            method_map = map_http_methods(resource)
            set_default_responders(method_map, asgi=True)
            self._routes[name] = (resource, method_map)

    def find(self, uri: str, req: falcon.asgi.Request | None = None) -> Route | None:
        raw = uri
        if req is not None:
            raw_path = req.scope.get("raw_path")
            if raw_path:
                raw = raw_path.decode("latin-1").split("?", 1)[0]
        parts = raw.split("/")
        # ['', webhookId, *rest]
        if len(parts) < 3 or not parts[1]:
            return None
        params = {"webhook_id": unquote(parts[1])}
        rest = parts[2:]
        if rest and rest[-1] == "" and len(rest) > 1:
            rest = rest[:-1]  # the client fetches `/hello/` (axios baseURL + "/")
        name = self._match(rest, params)
        if name is None:
            return None
        resource, method_map = self._routes[name]
        return resource, method_map, params, name

    @staticmethod
    def _match(rest: list[str], params: dict[str, str]) -> str | None:
        head, n = rest[0], len(rest)
        if head == "hello" and n == 1:
            return "hello"
        if head == "_botsim" and n == 2 and rest[1] == "turns":
            return "_botsim/turns"  # botsim-only introspection (introspect.py)
        if head == "users":
            if n == 1:
                return "users"
            if n == 2 and rest[1] in ("me", "get-or-create"):
                return "users/" + rest[1]
            return None
        if head == "messages" or head == "events":
            if n == 1:
                return head
            if n == 2:
                params["id"] = unquote(rest[1])
                return head + "/{id}"
            return None
        if head != "conversations":
            return None
        if n == 1:
            return "conversations"
        if n == 2 and rest[1] == "get-or-create":
            return "conversations/get-or-create"
        tail = rest[-1]
        if n >= 3 and tail in ("listen", "messages", "participants"):
            params["id"] = unquote("/".join(rest[1:-1]))
            return "conversations/{id}/" + tail
        if n >= 4 and rest[-2] == "participants":
            params["id"] = unquote("/".join(rest[1:-2]))
            params["user_id"] = unquote(tail)
            return "conversations/{id}/participants/{userId}"
        params["id"] = unquote("/".join(rest[1:]))
        return "conversations/{id}"
