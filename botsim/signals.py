"""Server-Sent Events fan-out for `GET /conversations/{id}/listen`.

Frames are byte-identical to the platform's (Pushpin `http-stream` content):
`event: message\\ndata: <json>\\n\\n`, and `event: message\\ndata: ping\\n\\n` as keep-alive.
A signal is encoded once and the same bytes go to every listener's queue.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

PING_FRAME = b"event: message\ndata: ping\n\n"
# Put in a queue to end that listener's stream (client gone, conversation deleted, ...).
CLOSE = b""


def encode(signal_type: str, data: dict[str, Any]) -> bytes:
    body = json.dumps(
        {"type": signal_type, "data": data}, separators=(",", ":"), ensure_ascii=False
    )
    return b"event: message\ndata: " + body.encode() + b"\n\n"


class Listener:
    __slots__ = ("queue", "user_id")

    def __init__(self, user_id: str) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.user_id = user_id

    def close(self) -> None:
        self.queue.put_nowait(CLOSE)

    async def frames(self) -> AsyncIterator[bytes]:
        while True:
            frame = await self.queue.get()
            if frame is CLOSE:
                return
            yield frame


def publish(listeners: Iterable[Listener], signal_type: str, data: dict[str, Any]) -> None:
    frame = encode(signal_type, data)
    for listener in listeners:
        listener.queue.put_nowait(frame)


class KeepAlive:
    """One task pings every open listener each `interval_s`, instead of a timer per stream."""

    def __init__(self, interval_s: float, all_listeners: Callable[[], Iterable[Listener]]) -> None:
        self._interval_s = interval_s
        self._all = all_listeners
        self._task: asyncio.Task[None] | None = None

    def ensure_started(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            for listener in self._all():
                listener.queue.put_nowait(PING_FRAME)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
