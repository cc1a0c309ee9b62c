"""create_app(settings): settings -> clients -> resources -> routes, in one visible function.

edge/asgi.py (what gunicorn loads) only calls it. The Redis client and the gRPC reply server are
created in the lifespan startup, i.e. after gunicorn forks, in every worker process.
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

from edge import metrics
from edge.replies import ReplyWaiters, create_grpc_server
from edge.settings import EdgeSettings
from edge.signature import TwilioAuth
from edge.turns import TurnSubmitter
from edge.twiml import Twiml
from edge.webhooks import (
    CallTurns,
    TwilioGatherResource,
    TwilioStatusResource,
    TwilioVoiceResource,
    WebhookGuard,
    parse_small_int,
)
from shared.metrics import render_multiprocess
from shared.redis_conn import connect

log = logging.getLogger("edge")


class Lifespan:
    """Starts Redis + gRPC per process, wires the webhook resources, and stops them in order."""

    def __init__(self, app: falcon.asgi.App, settings: EdgeSettings) -> None:
        self._app = app
        self._s = settings
        self.waiters = ReplyWaiters()
        self.grpc_server: grpc.aio.Server | None = None
        self.grpc_port = 0
        self.redis = connect(settings.redis_url)

    async def process_startup(self, scope: Mapping[str, Any], event: Mapping[str, Any]) -> None:
        s = self._s
        self.grpc_server, self.grpc_port = await create_grpc_server(
            self.waiters, s.grpc_bind_host, s.grpc_token.value, s.grpc_port
        )
        reply_to = f"{s.grpc_advertise_host}:{self.grpc_port}"
        twiml = Twiml(s)
        auth = TwilioAuth(s.public_url, s.auth_token.value, s.account_sid)
        guard = WebhookGuard(s, auth)
        submitter = TurnSubmitter(self.redis)
        turns = CallTurns(s, submitter, self.waiters, twiml, reply_to)
        self._app.add_route("/twilio/voice", TwilioVoiceResource(guard, turns, twiml, s.enabled))
        self._app.add_route("/twilio/gather", TwilioGatherResource(guard, turns))
        self._app.add_route("/twilio/status", TwilioStatusResource(guard, submitter))
        # Everything built so far lives as long as the process: keep it out of the garbage
        # collector's scans, which otherwise pause the loop (and every deadline timer) for ms.
        gc.freeze()
        log.info(
            "edge ready: paste %s into Twilio (status callback %s); replies on gRPC %s",
            s.voice_url,
            s.status_url,
            reply_to,
        )

    async def process_shutdown(self, scope: Mapping[str, Any], event: Mapping[str, Any]) -> None:
        # Order: wake every waiting webhook (each answers with hold TwiML and its reply is kept as
        # late), then stop the gRPC server so workers see UNAVAILABLE and store replies in Redis.
        self.waiters.release_all()
        if self.grpc_server is not None:
            await self.grpc_server.stop(grace=1.0)
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
            metrics.WEBHOOKS.labels(req.path[8:], resp.status_code).inc()


class MetricsResource:
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        # Reads every process's metric file: off the event loop.
        body, content_type = await asyncio.to_thread(render_multiprocess)
        resp.data = body
        resp.content_type = content_type


class HealthResource:
    def __init__(self, lifespan: Lifespan) -> None:
        self._lifespan = lifespan

    async def on_get_live(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.media = {"status": "ok"}

    async def on_get_ready(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        checks = {"grpc": self._lifespan.grpc_server is not None, "redis": False}
        try:
            checks["redis"] = bool(await self._lifespan.redis.ping())
        except Exception:  # noqa: BLE001 - any failure means not ready
            checks["redis"] = False
        resp.media = {"ready": all(checks.values()), **checks}
        resp.status = falcon.HTTP_200 if all(checks.values()) else falcon.HTTP_503


def _apology_handler(settings: EdgeSettings):  # type: ignore[no-untyped-def]
    """A bug must never make Twilio play its application error: speak an apology instead."""
    twiml = Twiml(settings)

    async def handle(
        req: falcon.asgi.Request, resp: falcon.asgi.Response, ex: Exception, params: dict
    ) -> None:
        log.error("unhandled error on %s", req.path, exc_info=ex)
        resp.status = falcon.HTTP_200
        resp.content_type = "application/xml"
        resp.text = (
            twiml.trouble_then_redirect(settings.trouble_phrase, settings.voice_url)
            if req.path == "/twilio/voice"
            else twiml.speak_and_gather(
                [settings.trouble_phrase], parse_small_int(req.get_param("turn")) or 1
            )
        )

    return handle


def create_app(settings: EdgeSettings) -> falcon.asgi.App:
    app = falcon.asgi.App()
    lifespan = Lifespan(app, settings)
    app.add_middleware(lifespan)
    app.add_middleware(WebhookCounter())
    app.add_error_handler(Exception, _apology_handler(settings))
    health = HealthResource(lifespan)
    app.add_route("/healthz", health, suffix="live")
    app.add_route("/readyz", health, suffix="ready")
    app.add_route("/metrics", MetricsResource())
    return app
