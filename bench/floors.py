"""Each hop alone, with the same clients and options the pipeline uses.

- HTTP in: gunicorn + uvicorn worker + Falcon ASGI answering a fixed TwiML (bench.twiml_app),
  driven by the same callsim load as the pipeline (signed form POSTs, TwiML followed);
- Redis: a write (XADD of a turn-sized entry) and a read (XREADGROUP COUNT 1) with
  shared.redis_conn.connect's client, on uvloop like the edge and the worker;
- gRPC: EdgeReplies.Deliver from a grpc.aio stub (as worker/replies.py) to the edge's own reply
  server (edge.replies.create_grpc_server) in another process;
- bot: POST /messages to botsim on an existing conversation with the worker's own Botpress
  client (worker/botpress_client.py); also the listen (SSE) open, for reference;
- WebSocket frame (relay mode): the same gunicorn + uvicorn + Falcon stack echoing text frames
  (bench.twiml_app's `/ws-echo`), driven by callsim's client (aiohttp, as callsim.relay plays
  Twilio): one prompt-sized frame sent, the same frame read back. A relay turn crosses the
  socket twice (the prompt in, the first token out), and one round trip is exactly one frame in
  plus one frame out, so the floor sum counts it once for both. Like the HTTP floor, the figure
  the target uses is paced as the 1-caller pipeline is (a round trip per think time, every
  process idle in between); back to back is kept for reference.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any, Self

import aiohttp
import grpc
import uvloop

from bench import loadgen
from callsim.signing import SIGNATURE_HEADER
from devstack.processes import Launcher, Managed, free_port, http_ok, wait_until
from devstack.stack import DEMO_ACCOUNT_SID, DEMO_AUTH_TOKEN
from shared import keys
from shared.pb import voicebridge_pb2 as pb
from shared.pb import voicebridge_pb2_grpc as pb_grpc
from shared.redis_conn import connect
from shared.rpc import TOKEN_METADATA_KEY
from worker.botpress_client import BotpressClient

TURN_BYTES = 220  # about a serialized TurnRequest


def stats_ms(samples_s: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000.0 for s in samples_s)

    def pct(p: float) -> float:
        return round(ms[min(len(ms) - 1, int(p / 100.0 * len(ms)))], 4)

    return {
        "p50": pct(50),
        "p90": pct(90),
        "p99": pct(99),
        "max": round(ms[-1], 4),
        "mean": round(statistics.fmean(ms), 4),
        "count": len(ms),
    }


async def timed(op: Callable[[], Awaitable[Any]], n: int, warmup: int) -> dict[str, float]:
    for _ in range(warmup):
        await op()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        await op()
        samples.append(time.perf_counter() - t0)
    return stats_ms(samples)


# -- Redis --------------------------------------------------------------------------------------
async def _redis(url: str, n: int) -> dict[str, Any]:
    redis = connect(url)
    stream, group = "bench:floor", "bench"
    await redis.delete(stream)
    await redis.xgroup_create(stream, group, id="0", mkstream=True)
    payload = secrets.token_bytes(TURN_BYTES)
    try:
        write = await timed(
            lambda: redis.xadd(
                stream, {keys.TURN_FIELD: payload}, maxlen=100_000, approximate=True
            ),
            n,
            n // 10,
        )
        read = await timed(lambda: redis.xreadgroup(group, "bench-0", {stream: ">"}, count=1), n, 0)
        ping = await timed(redis.ping, n, 0)
    finally:
        await redis.delete(stream)
        await redis.aclose()
    return {"write_ms": write, "read_ms": read, "ping_ms": ping}


# -- gRPC ---------------------------------------------------------------------------------------
async def _grpc(address: str, token: str, n: int) -> dict[str, Any]:
    channel = grpc.aio.insecure_channel(address)
    stub = pb_grpc.EdgeRepliesStub(channel)
    metadata = ((TOKEN_METADATA_KEY, token),)
    reply = pb.TurnReply(
        turn_id="CA" + "0" * 32 + ":1", call_sid="CA" + "0" * 32, seq=1, say=["You said: hello"]
    )
    try:
        deliver = await timed(
            lambda: stub.Deliver(reply, timeout=2.0, metadata=metadata), n, n // 10
        )
    finally:
        await channel.close()
    return {"deliver_ms": deliver}


# -- bot HTTP -----------------------------------------------------------------------------------
async def _bot(base: str, n: int) -> dict[str, Any]:
    # The worker's own Botpress client, so the floor is this hop as the pipeline makes it.
    bot = BotpressClient(base)
    try:
        key = await bot.create_user("bench-floor-user")
        conv = "bench-floor-conv"
        await bot.get_or_create_conversation(key, conv)
        payload = {"type": "text", "text": "hello"}
        metadata = {"voicebridge": {"kind": "speech", "turnId": "bench:1"}}

        async def post() -> None:
            await bot.create_message(key, conv, payload, metadata)

        async def listen_open() -> None:
            async with bot.listen(key, conv):
                pass

        message = await timed(post, n, n // 10)
        listen = await timed(listen_open, max(n // 4, 10), 5)
    finally:
        await bot.aclose()
    return {"post_message_ms": message, "listen_open_ms": listen}


def measure_hops(launcher: Launcher, n: int) -> dict[str, Any]:
    """Redis, gRPC and bot floors, each against its own fresh server."""
    redis_proc, redis_url = launcher.redis()
    token = secrets.token_hex(16)
    peer = launcher.python_module("bench-grpc-peer", "bench.grpc_peer", {}, token)
    botsim = launcher.python_module(
        "bench-botsim-floor", "botsim", {}, "--host", "127.0.0.1", "--port", "0"
    )
    try:
        port_re = re.compile(r"^port (\d+)", re.M)
        wait_until(lambda: bool(port_re.search(peer.log_tail(20))), 30, "grpc peer", peer.proc)
        match = port_re.search(peer.log_tail(20))
        assert match is not None
        grpc_address = f"127.0.0.1:{match.group(1)}"
        url_re = re.compile(r"botsim listening on (http://\S+)")
        wait_until(lambda: bool(url_re.search(botsim.log_tail(50))), 30, "botsim", botsim.proc)
        found = url_re.search(botsim.log_tail(50))
        assert found is not None
        bot_base = found.group(1).replace("<any-webhook-id>", "bench").rstrip("/")
        wait_until(http_ok(f"{bot_base}/hello"), 30, "botsim /hello", botsim.proc)

        async def all_hops() -> dict[str, Any]:
            return {
                "redis": await _redis(redis_url, n),
                "grpc": await _grpc(grpc_address, token, n),
                "bot": await _bot(bot_base, n),
            }

        return uvloop.run(all_hops())
    finally:
        for managed in (botsim, peer, redis_proc):
            managed.stop()


# -- HTTP in ------------------------------------------------------------------------------------
class HttpFloor:
    """The fixed-TwiML server, running for as long as the `with` block."""

    def __init__(self, launcher: Launcher, edge_workers: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._launcher = launcher
        self._env = {
            "PUBLIC_URL": self.url,
            "TWILIO_ACCOUNT_SID": DEMO_ACCOUNT_SID,
            "TWILIO_AUTH_TOKEN": DEMO_AUTH_TOKEN,
            "EDGE_HOST": "127.0.0.1",
            "EDGE_PORT": str(self.port),
            "EDGE_WORKERS": str(edge_workers),
            "LOG_LEVEL": "WARNING",
        }
        self.managed: Managed | None = None

    def __enter__(self) -> Self:
        managed = self._launcher.python_module("bench-http-floor", "bench.twiml_app", self._env)
        self.managed = managed
        wait_until(http_ok(f"{self.url}/readyz"), 60, "fixed TwiML server", managed.proc)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.managed is not None:
            self.managed.stop()

    def load(
        self,
        calls: int,
        think_time_s: float,
        duration_s: float,
        shards: int = 1,
        warmup_s: float = 0.0,
    ) -> loadgen.LoadResult:
        return loadgen.run(
            loadgen.Load(
                url=f"{self.url}/twilio/voice",
                account_sid=DEMO_ACCOUNT_SID,
                auth_token=DEMO_AUTH_TOKEN,
                calls=calls,
                think_time_s=think_time_s,
                duration_s=duration_s,
                shards=shards,
                warmup_s=warmup_s,
            )
        )


# -- WebSocket frame in and out (relay mode) ----------------------------------------------------
# A caller's final prompt frame as Twilio sends it (callsim.relay._prompt): the frame relay
# mode's socket reads before each turn.
PROMPT_FRAME = '{"type": "prompt", "voicePrompt": "hello", "lang": "en-US", "last": true}'


async def _ws_round_trips(url: str, n: int, paced_n: int, think_s: float) -> dict[str, Any]:
    async with aiohttp.ClientSession(trust_env=False) as client:
        # The headers Twilio's upgrade carries (the echo app checks none of them).
        headers = {SIGNATURE_HEADER: "unchecked", "User-Agent": "Twilio.TmeWs/1.0"}
        async with client.ws_connect(url, headers=headers, max_msg_size=0) as ws:

            async def round_trip() -> None:
                await ws.send_str(PROMPT_FRAME)
                msg = await ws.receive()
                if msg.type != aiohttp.WSMsgType.TEXT:
                    raise RuntimeError(f"echo socket: {msg.type!r} instead of a text frame")

            back_to_back = await timed(round_trip, n, n // 10)

            async def paced() -> None:
                await asyncio.sleep(think_s)
                t0 = time.perf_counter()
                await round_trip()
                samples.append(time.perf_counter() - t0)

            samples: list[float] = []
            for _ in range(paced_n):
                await paced()
    return {
        "round_trip_ms": stats_ms(samples),
        "think_time_s": think_s,
        "back_to_back_ms": back_to_back,
        "frame_chars": len(PROMPT_FRAME),
    }


class WsFloor(HttpFloor):
    """The echo socket on the same server as the HTTP floor (bench.twiml_app)."""

    def round_trips(self, n: int, paced_s: float, think_s: float) -> dict[str, Any]:
        """n back to back, then a round trip every think_s for paced_s."""
        ws_url = self.url.replace("http://", "ws://", 1) + "/ws-echo"
        paced_n = max(10, round(paced_s / think_s))
        return asyncio.run(_ws_round_trips(ws_url, n, paced_n, think_s))
