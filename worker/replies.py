"""Sending a TurnReply to the edge process that waits for it (gRPC EdgeReplies.Deliver).

One channel per edge address, reused for every reply: channel setup is far dearer than a call.
"""

from __future__ import annotations

import logging

import grpc

from shared.pb import voicebridge_pb2 as pb
from shared.pb import voicebridge_pb2_grpc as pb_grpc
from shared.rpc import TOKEN_METADATA_KEY

log = logging.getLogger(__name__)

MAX_CHANNELS = 1024


class ReplySender:
    def __init__(self, token: str, timeout_s: float) -> None:
        self._stubs: dict[str, pb_grpc.EdgeRepliesStub] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._metadata = ((TOKEN_METADATA_KEY, token),) if token else ()
        self._timeout_s = timeout_s

    def _stub(self, address: str) -> pb_grpc.EdgeRepliesStub:
        stub = self._stubs.get(address)
        if stub is None:
            if len(self._channels) >= MAX_CHANNELS:
                # Edge processes come and go (restarts, scaling); don't keep dead channels forever.
                oldest = next(iter(self._channels))
                self._stubs.pop(oldest, None)
                self._channels.pop(oldest)
            channel = grpc.aio.insecure_channel(address)
            self._channels[address] = channel
            stub = self._stubs[address] = pb_grpc.EdgeRepliesStub(channel)
        return stub

    async def deliver(self, address: str, reply: pb.TurnReply) -> bool:
        """True when the waiting webhook took the reply; False: keep it as a late reply."""
        return (await self.send(address, reply)).accepted

    async def send(self, address: str, reply: pb.TurnReply) -> pb.DeliverAck:
        """The edge's answer to one Deliver; a failed call reads as not accepted (nobody
        waits). A relay edge sets `stop` when the caller cut the reply off."""
        if not address:
            return pb.DeliverAck(accepted=False)
        try:
            ack: pb.DeliverAck = await self._stub(address).Deliver(
                reply, timeout=self._timeout_s, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as exc:
            log.info(
                "reply not delivered to %s: %s",
                address,
                exc.code().name,
                extra={"call_sid": reply.call_sid, "turn_id": reply.turn_id},
            )
            return pb.DeliverAck(accepted=False)
        return ack

    async def aclose(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        self._stubs.clear()
