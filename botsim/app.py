"""create_app(config): config -> services -> resources -> routes, in one visible place."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, cast

import falcon
import falcon.asgi

from . import errors, signals
from .auth import KeyVerifier
from .bots import Bot, EchoBot
from .config import BotsimConfig
from .faults import FaultMiddleware
from .introspect import BotsimTurns
from .resources import DISCONNECT_HOOKS, Services, build_resources
from .routing import BotsimRouter
from .runtime import BotRunner
from .store import Store

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class BotsimApp(falcon.asgi.App):
    """Falcon only notices a gone SSE client on its next send; with a 30 s keep-alive that
    leaves dead listeners collecting frames. Wrapping `receive` for listen requests lets the
    stream end the moment the client disconnects."""

    services: Services

    async def __call__(  # type: ignore[override]
        self, scope: dict[str, Any], receive: Receive, send: Send
    ) -> None:
        if scope["type"] != "http" or not scope["path"].endswith("/listen"):
            await super().__call__(scope, receive, send)
            return
        hooks: list[Callable[[], None]] = []
        scope[DISCONNECT_HOOKS] = hooks

        async def watched_receive() -> dict[str, Any]:
            event = await receive()
            if event["type"] == "http.disconnect":
                for hook in hooks:
                    hook()
            return event

        await super().__call__(scope, watched_receive, send)

    def all_listeners(self) -> Iterator[signals.Listener]:
        for ws in self.services.store:
            for conv in ws.conversations.values():
                yield from conv.listeners

    def close_all_listeners(self) -> None:
        for listener in list(self.all_listeners()):
            listener.close()


class _Lifecycle:
    def __init__(self, app: BotsimApp) -> None:
        self._app = app

    async def process_shutdown(self, scope: Mapping[str, Any], event: Mapping[str, Any]) -> None:
        self._app.close_all_listeners()
        await self._app.services.keepalive.stop()
        await self._app.services.runner.stop()


def default_bot(config: BotsimConfig) -> Bot:
    if config.scenario_path:
        from .scenario import load_scenario

        return load_scenario(config.scenario_path, slow_ms=config.slow_ms)
    return EchoBot(slow_ms=config.slow_ms, stream=config.stream)


def create_app(config: BotsimConfig, bot: Bot | None = None) -> BotsimApp:
    rng = random.Random(config.seed)
    store = Store()
    app_holder: list[BotsimApp] = []
    keepalive = signals.KeepAlive(config.keepalive_s, lambda: app_holder[0].all_listeners())
    svc = Services(
        config=config,
        store=store,
        keys=KeyVerifier(config.server_secret, config.encryption_key),
        runner=BotRunner(bot or default_bot(config), config, rng),
        keepalive=keepalive,
        rng=rng,
    )
    resources = build_resources(svc)
    resources["_botsim/turns"] = BotsimTurns(store)  # botsim-only, not the Chat API
    router = BotsimRouter(resources)
    app = BotsimApp(router=cast(Any, router), cors_enable=True)
    app.services = svc
    app_holder.append(app)
    app.add_middleware(_Lifecycle(app))
    if config.error_rate or config.rate_limit_rate:
        app.add_middleware(FaultMiddleware(config.error_rate, config.rate_limit_rate, rng))
    app.add_error_handler(Exception, errors.handle_unexpected)
    app.add_error_handler(falcon.HTTPError, errors.handle_http_error)
    app.add_error_handler(errors.ApiError, errors.handle_api_error)
    return app
