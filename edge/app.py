"""create_app(settings): settings -> clients -> resources -> routes, in one visible function.

edge/asgi.py (what gunicorn loads) only calls it, in every gunicorn process after the fork.
The lifespan middleware opens what needs the running event loop (the gRPC reply server) and
closes everything in order; it builds no routes.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Mapping
from typing import Any

import falcon
import falcon.asgi
import grpc
from redis.asyncio import Redis

from edge import metrics
from edge.guard import WebhookGuard, parse_small_int
from edge.outbound import CallsApi, OutboundCalls, TwilioCalls
from edge.relay_session import RelaySocket
from edge.replies import ReplyWaiters, create_grpc_server
from edge.routing import CallRoutes, EdgeRoute, RouteResolver
from edge.settings import EdgeSettings
from edge.signature import TwilioAuth
from edge.turns import CallTurns
from edge.twiml import Twiml
from edge.webhooks import (
    DialStatusWebhook,
    FallbackWebhook,
    GatherWebhook,
    RelayActionWebhook,
    StatusWebhook,
    VoiceWebhook,
    WaitWebhook,
)
from shared.callstore import CallStore
from shared.metrics import render_multiprocess
from shared.outbound_store import OutboundStore
from shared.redis_conn import connect

log = logging.getLogger(__name__)

# Workers see UNAVAILABLE after this and keep their replies as late ones.
GRPC_STOP_GRACE_S = 1.0
WS_INTERNAL_ERROR = 1011


class EdgeClients:
    """This process's clients: Redis, and the gRPC server workers reply to (bound at startup,
    after the fork, on its own port, which every turn carries as `reply_to`)."""

    def __init__(self, settings: EdgeSettings) -> None:
        self._settings = settings
        self.redis: Redis = connect(settings.redis_url)
        self.waiters = ReplyWaiters()
        self.grpc_server: grpc.aio.Server | None = None
        self.reply_to = ""

    async def process_startup(self, scope: Mapping[str, Any], event: Mapping[str, Any]) -> None:
        settings = self._settings
        self.grpc_server, port = await create_grpc_server(
            self.waiters, settings.grpc_bind_host, settings.grpc_token.value, settings.grpc_port
        )
        self.reply_to = f"{settings.grpc_advertise_host}:{port}"
        # Everything built so far lives as long as the process: keep it out of the garbage
        # collector's scans, which otherwise pause the loop (and every deadline timer) for ms.
        gc.freeze()
        log.info(
            "edge ready: paste %s into Twilio (status callback %s, primary handler fails %s);"
            " replies on gRPC %s",
            settings.voice_url,
            settings.status_url,
            settings.fallback_url,
            self.reply_to,
        )

    async def process_shutdown(self, scope: Mapping[str, Any], event: Mapping[str, Any]) -> None:
        # Order: wake every waiting webhook (each answers with hold TwiML and its reply is kept as
        # late), then stop the gRPC server so workers see UNAVAILABLE and store replies in Redis.
        self.waiters.release_all()
        if self.grpc_server is not None:
            await self.grpc_server.stop(grace=GRPC_STOP_GRACE_S)
        await self.redis.aclose()


class WebhookCounter:
    """Counts every Twilio webhook by route and status (refusals included)."""

    async def process_response(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        resource: object,
        req_succeeded: bool,
    ) -> None:
        if req.path.startswith("/twilio/"):
            metrics.WEBHOOKS.labels(req.path[len("/twilio/") :], resp.status_code).inc()


class MetricsResource:
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        # Reads every process's metric file: off the event loop.
        body, content_type = await asyncio.to_thread(render_multiprocess)
        resp.data = body
        resp.content_type = content_type


class HealthResource:
    def __init__(self, clients: EdgeClients) -> None:
        self._clients = clients

    async def on_get_live(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.media = {"status": "ok"}

    async def on_get_ready(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        checks = {"grpc": self._clients.grpc_server is not None, "redis": False}
        try:
            checks["redis"] = bool(await self._clients.redis.ping())
        except Exception:  # noqa: BLE001 - any failure means not ready
            checks["redis"] = False
        resp.media = {"ready": all(checks.values()), **checks}
        resp.status = falcon.HTTP_200 if all(checks.values()) else falcon.HTTP_503


def _apology_handler(settings: EdgeSettings, twiml: Twiml):  # type: ignore[no-untyped-def]
    """A bug must never make Twilio play its application error: speak an apology instead."""

    async def handle(
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response | None,
        ex: Exception,
        params: dict,
        ws: falcon.asgi.WebSocket | None = None,
    ) -> None:
        log.error("unhandled error on %s", req.path, exc_info=ex)
        if resp is None:
            if ws is not None:
                await ws.close(WS_INTERNAL_ERROR)
            return
        if req.path.startswith("/v1/"):
            # The outbound API answers JSON, never TwiML.
            resp.status = falcon.HTTP_500
            resp.media = {"error": {"message": "internal error"}}
            return
        # In the voice of the call's route when it was found.
        route: EdgeRoute | None = getattr(req.context, "route", None)
        said, phrase = (route.twiml, route.settings) if route else (twiml, settings)
        resp.status = falcon.HTTP_200
        resp.content_type = "application/xml"
        resp.text = (
            said.trouble_then_redirect(phrase.trouble_phrase, settings.voice_url)
            if req.path == "/twilio/voice"
            else said.speak_and_gather(
                [phrase.trouble_phrase], parse_small_int(req.get_param("turn")) or 1
            )
        )

    return handle


def create_app(settings: EdgeSettings) -> falcon.asgi.App:
    clients = EdgeClients(settings)
    twiml = Twiml(settings)
    auth = TwilioAuth(settings.public_url, settings.auth_token.value, settings.account_sid)
    store = CallStore(clients.redis)
    # One bundle per ROUTES_FILE route (one, "default", without a file), built once: a request
    # finds its route with one dict lookup and uses that route's settings all the way down.
    bundles: dict[str, EdgeRoute] = {}
    for name, route_settings in settings.by_route().items():
        route_twiml = Twiml(route_settings)
        route_turns = CallTurns(
            route_settings, store, clients.waiters, route_twiml, clients, route=name
        )
        bundles[name] = EdgeRoute(name, route_settings, route_twiml, route_turns)
    routes = CallRoutes(bundles)
    outbound_store = OutboundStore(clients.redis)
    outbound = OutboundCalls(outbound_store)
    twilio_calls = TwilioCalls(settings)

    app = falcon.asgi.App()
    app.add_middleware(clients)  # lifespan: opens and closes the clients
    app.add_middleware(twilio_calls)  # lifespan: Twilio's REST client (only with API_TOKEN)
    app.add_middleware(WebhookCounter())
    app.add_middleware(WebhookGuard(auth, settings.max_body_bytes))  # twilio_webhook resources
    # After the guard: req.context.route; a number with no route is refused here.
    app.add_middleware(RouteResolver(routes, twiml.unavailable()))
    app.add_error_handler(Exception, _apology_handler(settings, twiml))

    voice = VoiceWebhook(outbound)
    app.add_route("/twilio/voice", voice)
    # Twilio's FallbackUrl: a webhook of the call failed (its edge died): taken again here.
    app.add_route("/twilio/fallback", FallbackWebhook(voice))
    app.add_route("/twilio/gather", GatherWebhook())
    app.add_route("/twilio/status", StatusWebhook(outbound))
    # The hold loop after a late turn: speaks the late reply as soon as it is kept.
    app.add_route("/twilio/wait", WaitWebhook())
    # Relay mode: the ConversationRelay socket and its <Connect action>.
    app.add_route("/twilio/relay", RelaySocket(settings, auth, routes, outbound))
    app.add_route("/twilio/relay-action", RelayActionWebhook())
    # A bot's <transfer/>: the <Dial action> (both modes).
    app.add_route("/twilio/dial-status", DialStatusWebhook())
    health = HealthResource(clients)
    app.add_route("/healthz", health, suffix="live")
    app.add_route("/readyz", health, suffix="ready")
    app.add_route("/metrics", MetricsResource())
    if settings.outbound.enabled:
        # Outbound calls: no API_TOKEN, no routes (404).
        calls = CallsApi(settings, outbound_store, twilio_calls)
        app.add_route("/v1/calls", calls)
        app.add_route("/v1/calls/{call_sid}", calls, suffix="call")
    return app
