"""The gRPC floor's server side: the edge's reply server (create_grpc_server) alone in its own
process, on uvloop like the edge. `python -m bench.grpc_peer TOKEN` prints `port N`, then serves
until SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys

import uvloop

from edge.replies import ReplyWaiters, create_grpc_server


async def serve(token: str) -> None:
    server, port = await create_grpc_server(ReplyWaiters(), "127.0.0.1", token)
    print(f"port {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=0.5)


if __name__ == "__main__":
    uvloop.run(serve(sys.argv[1] if len(sys.argv) > 1 else ""))
