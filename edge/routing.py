"""Which route a call is on (ROUTES_FILE): our number -> that route's settings, TwiML and turns.

create_app builds one EdgeRoute per route, once; `RouteResolver` (middleware, after the guard)
finds the request's route with one dict lookup and puts it on `req.context.route`, so every
responder and everything downstream of it speaks with that route's settings. A number with no
route (and no [default]) hears UNAVAILABLE_PHRASE and the call hangs up; no responder runs.
A relay socket resolves its route once, from the setup frame (`CallRoutes.for_numbers`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import falcon
import falcon.asgi

from edge import metrics
from edge.guard import TwilioRequest
from edge.settings import EdgeSettings
from edge.turns import CallTurns
from edge.twiml import Twiml
from shared.logs import ROUTE
from shared.routes import DEFAULT_ROUTE

log = logging.getLogger(__name__)

#: The route label of a webhook for a number no route serves.
NO_ROUTE = "none"


@dataclass(frozen=True)
class EdgeRoute:
    """One route's per-call parts, built once in create_app."""

    name: str
    settings: EdgeSettings
    twiml: Twiml
    turns: CallTurns


def our_number(to: str, from_: str, direction: str) -> str:
    """Our Twilio number on a call: `To` when it calls us, `From` when we called out (Twilio's
    Direction `outbound-api`, `outbound-dial`)."""
    return from_ if direction.startswith("outbound") else to


class CallRoutes:
    """The route table: our number -> EdgeRoute, else [default], else None."""

    def __init__(self, routes: Mapping[str, EdgeRoute]) -> None:
        self._routes = dict(routes)
        self._default = self._routes.get(DEFAULT_ROUTE)

    def __iter__(self) -> Iterator[EdgeRoute]:
        return iter(self._routes.values())

    def for_numbers(self, to: str, from_: str, direction: str) -> EdgeRoute | None:
        return self._routes.get(our_number(to, from_, direction), self._default)


class RouteResolver:
    """Middleware for the Twilio webhooks (after WebhookGuard): the call's route, once."""

    def __init__(self, routes: CallRoutes, unavailable_twiml: str) -> None:
        self._routes = routes
        self._unavailable = unavailable_twiml
        # Label children bound once: the webhook path does no label lookups.
        self._counted = {r.name: metrics.ROUTE_WEBHOOKS.labels(r.name) for r in routes}
        self._unrouted = metrics.ROUTE_WEBHOOKS.labels(NO_ROUTE)

    async def process_resource(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        resource: object,
        params: dict[str, object],
    ) -> None:
        if not getattr(resource, "twilio_webhook", False):
            return
        tw: TwilioRequest = req.context.twilio
        p = tw.params
        route = self._routes.for_numbers(p.get("To"), p.get("From"), p.get("Direction"))
        if route is None:
            self._unrouted.inc()
            log.warning(
                "no route for %s and no [default] in ROUTES_FILE: unavailable",
                our_number(p.get("To"), p.get("From"), p.get("Direction"))[:32],
                extra={"call_sid": tw.call_sid, "route": NO_ROUTE},
            )
            resp.content_type = "application/xml"
            resp.text = self._unavailable
            resp.complete = True
            return
        self._counted[route.name].inc()
        ROUTE.set(route.name)
        req.context.route = route
