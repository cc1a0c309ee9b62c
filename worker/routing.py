"""Which bot answers a turn (ROUTES_FILE): TurnRequest.route -> that route's TurnHandler.

The edge resolves each call's route once (edge/routing.py) and names it in every turn; this
worker built one TurnHandler per route of its own copy of the file (the same file is given to
both processes), once, at start. Routes on the same bot share one Botpress client and one
learned quiet window; each bot other than the environment's keeps its callers' users under
keys of its own (shared/keys.py caller_key). A route this worker does not know (the edge was
given another file) never crashes a turn: the caller hears FALLBACK_PHRASE, and the error log
names the route.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Protocol

from redis.asyncio import Redis

from shared.callstore import CallStore
from shared.logs import ROUTE
from shared.pb import voicebridge_pb2 as pb
from shared.routes import DEFAULT_ROUTE
from worker import metrics
from worker.botpress_client import BotpressClient
from worker.end_of_turn import QuietWindow
from worker.replies import ReplySender
from worker.settings import WorkerSettings
from worker.turn_handler import TurnHandler

log = logging.getLogger(__name__)

#: The metrics label of a turn whose route this worker does not know (the stream's value is
#: not a label: its cardinality is the file's).
UNKNOWN_ROUTE = "unknown"


class TurnRunner(Protocol):
    """What the stream loop and recovery call: a TurnHandler, or RoutedTurns in front of some."""

    async def run(
        self,
        entry_id: bytes | None,
        turn: pb.TurnRequest,
        redelivered: bool = False,
        snapshot: dict[bytes, bytes] | None = None,
    ) -> object: ...

    async def give_up(self, entry_id: bytes | None, turn: pb.TurnRequest) -> None: ...


class RoutedTurns:
    """One TurnHandler per route; `run` and `give_up` hand each turn to its route's."""

    def __init__(
        self, settings: WorkerSettings, redis: Redis, store: CallStore, sender: ReplySender
    ) -> None:
        self._clients: dict[tuple[str, str, float], BotpressClient] = {}
        self._windows: dict[tuple[str, float | None], QuietWindow] = {}
        self._handlers: dict[str, TurnHandler] = {}
        for name, rs in settings.by_route().items():
            client_key = (rs.chat_url, rs.encryption_key.value, rs.listen_keep_s)
            if client_key not in self._clients:
                self._clients[client_key] = BotpressClient(
                    rs.chat_url, rs.encryption_key.value, listen_keep_s=rs.listen_keep_s
                )
            window_key = (rs.chat_url, rs.bot_quiet_s)
            if window_key not in self._windows:
                self._windows[window_key] = QuietWindow(redis, rs.chat_url, rs.bot_quiet_s)
            # The environment's bot keeps the key names it had before routes.
            scope = "" if rs.chat_url == settings.chat_url else rs.chat_url
            self._handlers[name] = TurnHandler(
                rs,
                store,
                self._clients[client_key],
                sender,
                self._windows[window_key],
                route=name,
                bot_scope=scope,
            )
        # Gives up turns of routes this worker does not know: the environment's fallback phrase.
        # (give_up speaks to no bot: any client and window will do.)
        self._unrouted = TurnHandler(
            settings,
            store,
            next(iter(self._clients.values())),
            sender,
            next(iter(self._windows.values())),
            route=UNKNOWN_ROUTE,
        )
        self._unknown = metrics.TURNS.labels("any", "unknown_route", UNKNOWN_ROUTE)

    @property
    def windows(self) -> Iterable[QuietWindow]:
        """The learned quiet windows (one per bot): each runs its sync loop beside the worker."""
        return self._windows.values()

    @property
    def bots(self) -> list[str]:
        """The Chat API base URLs this worker talks to, for the start-up log."""
        return sorted({url for url, _, _ in self._clients})

    def _handler(self, turn: pb.TurnRequest) -> TurnHandler | None:
        handler = self._handlers.get(turn.route or DEFAULT_ROUTE)  # "": an edge without routes
        if handler is None:
            self._unknown.inc()
            log.error(
                "turn for route %r, which this worker's ROUTES_FILE does not have: fallback "
                "phrase (give the edge and the workers the same file)",
                turn.route[:32],
                extra={"call_sid": turn.call_sid, "turn_id": turn.turn_id},
            )
        return handler

    async def run(
        self,
        entry_id: bytes | None,
        turn: pb.TurnRequest,
        redelivered: bool = False,
        snapshot: dict[bytes, bytes] | None = None,
    ) -> object:
        # Each turn runs in a task of its own: the route is on every log line of this turn.
        ROUTE.set((turn.route or DEFAULT_ROUTE)[:32])
        handler = self._handler(turn)
        if handler is None:
            await self._unrouted.give_up(entry_id, turn)
            return None
        return await handler.run(entry_id, turn, redelivered, snapshot)

    async def give_up(self, entry_id: bytes | None, turn: pb.TurnRequest) -> None:
        await (self._handler(turn) or self._unrouted).give_up(entry_id, turn)

    async def aclose(self) -> None:
        """Stop watching for trailing messages (shutdown), on every route."""
        for handler in self._handlers.values():
            await handler.aclose()

    async def close_clients(self) -> None:
        for client in self._clients.values():
            await client.aclose()
