"""Where workers' replies land: the gRPC EdgeReplies service and the table of waiting webhooks.

Each gunicorn worker process runs its own grpc.aio server (created after the fork, in the ASGI
lifespan startup) on its own port, and advertises host:port in every turn it writes, so a reply
reaches exactly the process whose webhook waits for it.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from shared.pb import voicebridge_pb2 as pb
from shared.pb import voicebridge_pb2_grpc as pb_grpc
from shared.rpc import TOKEN_METADATA_KEY

log = logging.getLogger(__name__)


ReplySink = Callable[[pb.TurnReply], pb.DeliverAck]
"""A relay session's receiver for one streamed turn: takes every part as it comes (on the event
loop, without waiting) and says whether it was taken and whether to stop (the caller
interrupted). It removes itself with `forget` once the reply is whole."""


class Superseded(Exception):
    """A webhook attempt's wait ended by a retry of the same turn in this process."""


class ReplyWaiters:
    """turn_id -> who waits for its reply: the future a gather webhook awaits (one reply), or a
    relay session's sink (every part of a streamed reply). Lives on the event loop; no locks."""

    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Future[pb.TurnReply]] = {}
        self._sinks: dict[str, ReplySink] = {}

    def __len__(self) -> int:
        return len(self._waiting) + len(self._sinks)

    def expect(self, turn_id: str) -> asyncio.Future[pb.TurnReply]:
        """The future of `turn_id`'s reply for a new webhook attempt. An earlier attempt of the
        same turn still waiting here (Twilio retried: it no longer listens to that one) is
        superseded: its future fails with Superseded and the reply goes to the newest."""
        fut: asyncio.Future[pb.TurnReply] = asyncio.get_running_loop().create_future()
        earlier = self._waiting.get(turn_id)
        if earlier is not None and not earlier.done():
            earlier.set_exception(Superseded(turn_id))
        self._waiting[turn_id] = fut
        return fut

    def stream_to(self, turn_id: str, sink: ReplySink) -> None:
        """Every part of `turn_id`'s reply goes to `sink` until `forget(turn_id)`."""
        self._sinks[turn_id] = sink

    def forget(self, turn_id: str, fut: asyncio.Future[pb.TurnReply] | None = None) -> None:
        """Stop waiting for `turn_id`; with `fut`, only if that attempt is still the one
        waiting (a superseded attempt must not remove its retry's future)."""
        if fut is None or self._waiting.get(turn_id) is fut:
            self._waiting.pop(turn_id, None)
        if fut is None:
            self._sinks.pop(turn_id, None)

    def deliver(self, reply: pb.TurnReply) -> bool:
        """True when a webhook took the reply; False tells the worker to keep it as late."""
        return self.ack(reply).accepted

    def ack(self, reply: pb.TurnReply) -> pb.DeliverAck:
        """What the worker is told: taken or not (keep it as late), and whether to stop."""
        sink = self._sinks.get(reply.turn_id)
        if sink is not None:
            return sink(reply)
        fut = self._waiting.pop(reply.turn_id, None)
        if fut is None or fut.done():
            return NOT_TAKEN
        fut.set_result(reply)
        return TAKEN

    def release_all(self) -> None:
        """Shutdown: wake every waiter now so each answers with its late-turn TwiML (a relay
        session's later parts are then kept as late, for the call's next session)."""
        for fut in self._waiting.values():
            if not fut.done():
                fut.cancel()
        self._waiting.clear()
        self._sinks.clear()


TAKEN = pb.DeliverAck(accepted=True)
NOT_TAKEN = pb.DeliverAck(accepted=False)
STOP = pb.DeliverAck(accepted=True, stop=True)


class EdgeRepliesService(pb_grpc.EdgeRepliesServicer):
    def __init__(self, waiters: ReplyWaiters, token: str) -> None:
        self._waiters = waiters
        self._token = token.encode()

    async def Deliver(  # noqa: N802 - gRPC method name
        self, request: pb.TurnReply, context: grpc.aio.ServicerContext
    ) -> pb.DeliverAck:
        if self._token:
            sent = dict(context.invocation_metadata() or ()).get(TOKEN_METADATA_KEY, "")
            sent_bytes = sent.encode() if isinstance(sent, str) else bytes(sent)
            if not hmac.compare_digest(sent_bytes, self._token):
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad or missing token")
        return self._waiters.ack(request)


GRPC_PORT_RANGE = 64  # with a fixed GRPC_PORT, process i of the edge takes the first free port


def _bind(server: grpc.aio.Server, host: str, port: int) -> int:
    if port == 0:
        return server.add_insecure_port(f"{host}:0")
    for candidate in range(port, port + GRPC_PORT_RANGE):
        try:
            return server.add_insecure_port(f"{host}:{candidate}")
        except RuntimeError:
            continue  # taken by a sibling gunicorn process (no SO_REUSEPORT: each its own port)
    raise RuntimeError(f"no free gRPC port in {port}..{port + GRPC_PORT_RANGE - 1}")


async def create_grpc_server(
    waiters: ReplyWaiters, bind_host: str, token: str, port: int = 0
) -> tuple[grpc.aio.Server, int]:
    """Start the reply server on bind_host:port (0 = any free port); returns (server, port)."""
    # so_reuseport off: two processes must never share a port, or a reply could reach the wrong one.
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_EdgeRepliesServicer_to_server(EdgeRepliesService(waiters, token), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    host = f"[{bind_host}]" if ":" in bind_host else bind_host
    bound = _bind(server, host, port)
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set("voicebridge.v1.EdgeReplies", health_pb2.HealthCheckResponse.SERVING)
    return server, bound
