"""The faults, each injected while turns are in flight, from the suite's event loop.

"In flight" is read from Redis: the consumer group's pending entries (XPENDING) are turns a
worker has read and not yet acked. A worker is killed only while it holds some; Redis and the
edge are restarted while any turn is pending. If nothing is in flight within MID_TURN_WAIT_S the
fault happens anyway, and the record says so. Process control blocks, so it runs in a thread.

Relay mode's edge fault is `kill -9` of one gunicorn worker process (the master forks a
replacement): the one holding the most ConversationRelay sockets, read from /proc (the edge
port's established connections, by socket inode, against each process's open descriptors),
struck while turns are pending. Its calls' sockets drop, callsim posts SessionStatus=failed
to the <Connect action>, and the answer's new session runs in a surviving process.

The outbound phase's edge fault (`kill_edge_serving`) strikes instead the process serving one of
the suite's own API requests (its client opens one connection per request, so an open one is a
request in flight): the client sees its request cut and must send it again with the same key.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from dataclasses import asdict, dataclass
from typing import Any, cast

import redis

from devstack.processes import Managed
from devstack.stack import Stack
from faultsuite.redis_server import PersistentRedis
from shared import keys

MID_TURN_WAIT_S = 15.0
POLL_S = 0.02
REDIS_OUTAGE_S = 3.0
TAKEOVER_WAIT_S = 60.0
EDGE_BOOT_WAIT_S = 60.0
TCP_ESTABLISHED = "01"


@dataclass
class FaultRecord:
    kind: str
    at_s: float  # since the phase started
    mid_turn: bool  # turns were pending when it struck
    pending: int  # pending turns seen (for a worker kill: that worker's)
    took_s: float = 0.0  # until the replacement was serving
    # kill -9 worker: from the kill until another worker had finished every turn the victim
    # held (taken over by its missing heartbeat); None when it held none.
    answered_s: float | None = None
    target: str = ""
    error: str | None = None
    # kill -9 edge process: calls whose socket it held (their session failed); answered_s is
    # then from the kill until the last of them heard an answer in its new session.
    calls_hit: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class FaultInjector:
    def __init__(self, stack: Stack, redis_server: PersistentRedis, started_at: float) -> None:
        self.stack = stack
        self.redis_server = redis_server
        self.started_at = started_at
        self.records: list[FaultRecord] = []

    def _pending_by_consumer(self) -> dict[str, int]:
        client = redis.Redis.from_url(self.stack.redis_url, socket_timeout=1.0)
        try:
            info = client.xpending(keys.TURN_STREAM, keys.WORKER_GROUP)
        except (redis.RedisError, OSError):
            return {}
        finally:
            client.close()
        consumers = info.get("consumers") or []
        return {_text(c["name"]): int(c["pending"]) for c in consumers}

    def _pending_ids(self, consumer: str) -> set[bytes]:
        client = redis.Redis.from_url(self.stack.redis_url, socket_timeout=1.0)
        try:
            entries = client.xpending_range(
                keys.TURN_STREAM, keys.WORKER_GROUP, "-", "+", 1000, consumername=consumer
            )
        except (redis.RedisError, OSError):
            return set()
        finally:
            client.close()
        return {cast(bytes, e["message_id"]) for e in entries}

    def _still_pending(self, ids: set[bytes]) -> set[bytes]:
        client = redis.Redis.from_url(self.stack.redis_url, socket_timeout=1.0)
        try:
            entries = client.xpending_range(keys.TURN_STREAM, keys.WORKER_GROUP, "-", "+", 10000)
        except (redis.RedisError, OSError):
            return ids
        finally:
            client.close()
        return ids & {e["message_id"] for e in entries}

    async def _until_finished(self, ids: set[bytes], since: float) -> float | None:
        """Seconds from `since` until none of `ids` is pending (another worker acked them)."""
        give_up = time.monotonic() + TAKEOVER_WAIT_S
        while ids and time.monotonic() < give_up:
            ids = await asyncio.to_thread(self._still_pending, ids)
            if not ids:
                return round(time.monotonic() - since, 2)
            await asyncio.sleep(POLL_S)
        return None

    async def _wait_in_flight(self, names: set[str] | None) -> tuple[str | None, int]:
        """A consumer (one of `names`, or any) holding pending turns, and how many."""
        give_up = time.monotonic() + MID_TURN_WAIT_S
        while time.monotonic() < give_up:
            pending = await asyncio.to_thread(self._pending_by_consumer)
            busy = {n: p for n, p in pending.items() if p > 0 and (names is None or n in names)}
            if busy:
                name = max(busy, key=lambda n: busy[n])
                return name, busy[name]
            await asyncio.sleep(POLL_S)
        return None, 0

    def _record(self, kind: str, name: str | None, pending: int) -> FaultRecord:
        record = FaultRecord(
            kind,
            round(time.monotonic() - self.started_at, 2),
            name is not None,
            pending,
            target=name or "",
        )
        self.records.append(record)
        return record

    async def kill_worker(self) -> FaultRecord:
        """kill -9 a worker holding turns, then start a replacement (a new consumer name)."""
        alive = {w.name: w for w in self.stack.workers if w.alive()}
        name, pending = await self._wait_in_flight(set(alive))
        victim: Managed = alive[name] if name else next(iter(alive.values()))
        held = await asyncio.to_thread(self._pending_ids, name) if name else set()
        victim.proc.send_signal(signal.SIGKILL)
        t0 = time.monotonic()
        record = self._record("kill -9 worker", name, pending)
        record.target = victim.name
        finished = asyncio.create_task(self._until_finished(held, t0))
        await asyncio.to_thread(victim.proc.wait)
        replacement = await asyncio.to_thread(self.stack.start_worker)
        record.target += f" -> {replacement.name}"
        record.took_s = round(time.monotonic() - t0, 2)
        record.answered_s = await finished if held else None
        return record

    async def restart_redis(self, down_s: float = 0.0) -> FaultRecord:
        """SIGTERM redis-server, keep it down for down_s, start it again on the same port and
        AOF directory."""
        name, pending = await self._wait_in_flight(None)
        record = self._record("restart redis" + (f" ({down_s:g} s down)" if down_s else ""),
                              name, pending)  # fmt: skip
        t0 = time.monotonic()
        await asyncio.to_thread(self.redis_server.stop)
        await asyncio.sleep(down_s)
        await asyncio.to_thread(self.redis_server.start)
        record.took_s = round(time.monotonic() - t0, 2)
        return record

    async def restart_redis_empty(self) -> FaultRecord:
        """Redis restarted with nothing: the stream, the group and every call's state gone.
        answered_s: from the restart until a turn written after it was finished."""
        name, pending = await self._wait_in_flight(None)
        record = self._record("restart redis empty", name, pending)
        t0 = time.monotonic()
        await asyncio.to_thread(self.redis_server.stop)
        await asyncio.to_thread(self.redis_server.wipe)
        await asyncio.to_thread(self.redis_server.start)
        record.took_s = round(time.monotonic() - t0, 2)
        record.answered_s = await self._until_a_turn_finished(t0)
        return record

    def _finished_turns(self) -> int:
        client = redis.Redis.from_url(self.stack.redis_url, socket_timeout=1.0)
        try:
            groups = client.xinfo_groups(keys.TURN_STREAM)
        except (redis.RedisError, OSError):
            return 0
        finally:
            client.close()
        for group in groups:
            if _text(group.get("name")) == keys.WORKER_GROUP:
                return int(group.get("entries-read") or 0) - int(group.get("pending") or 0)
        return 0

    async def _until_a_turn_finished(self, since: float) -> float | None:
        give_up = time.monotonic() + TAKEOVER_WAIT_S
        while time.monotonic() < give_up:
            if await asyncio.to_thread(self._finished_turns) > 0:
                return round(time.monotonic() - since, 2)
            await asyncio.sleep(POLL_S)
        return None

    async def restart_edge(self) -> FaultRecord:
        """SIGTERM the edge (gunicorn), wait for it to exit, start it on the same port."""
        name, pending = await self._wait_in_flight(None)
        record = self._record("restart edge", name, pending)
        t0 = time.monotonic()
        edge = self.stack.edge
        if edge is not None:
            await asyncio.to_thread(edge.stop)
        await asyncio.to_thread(self.stack.start_edge)
        record.took_s = round(time.monotonic() - t0, 2)
        return record

    async def kill_edge_worker(self) -> FaultRecord:
        """kill -9 the gunicorn worker process holding the most sockets, while turns are
        pending; took_s: until the master's replacement has started its application."""
        edge = self.stack.edge
        assert edge is not None and edge.log_path is not None, "no edge to kill"
        held = await self._wait_sockets_held(edge.proc.pid)
        if not held:
            raise RuntimeError("the edge has no gunicorn worker process")
        return await self._kill_busiest(edge.proc.pid, held, edge.log_path)

    async def kill_edge_serving(self, client_pid: int) -> FaultRecord:
        """kill -9 the gunicorn worker process holding the most connections from `client_pid`
        (requests in flight), once one holds some (or at MID_TURN_WAIT_S, whichever it is)."""
        edge = self.stack.edge
        assert edge is not None and edge.log_path is not None, "no edge to kill"
        master, port = edge.proc.pid, self.stack.edge_port
        give_up = time.monotonic() + MID_TURN_WAIT_S
        children = await asyncio.to_thread(child_pids, master)  # read once: the probe is hot
        while True:
            held = await asyncio.to_thread(connections_from, children, port, client_pid)
            if any(held.values()) or time.monotonic() >= give_up:
                break
            await asyncio.sleep(POLL_S / 4)  # a request is in flight for a few ms only
        if not held:
            raise RuntimeError("the edge has no gunicorn worker process")
        # mid_turn here: requests of the client in flight.
        return await self._kill_busiest(master, held, edge.log_path)

    async def _kill_busiest(self, master: int, held: dict[int, int], log_path: str) -> FaultRecord:
        """kill -9 the edge process of `held` (pid -> what it holds) holding most; took_s: until
        the master's replacement has started its application."""
        victim = max(held, key=lambda pid: held[pid])
        os.kill(victim, signal.SIGKILL)
        t0 = time.monotonic()
        record = self._record("kill -9 edge process", f"pid {victim}", held[victim])
        record.mid_turn = held[victim] > 0
        replacement = await self._edge_replacement(master, set(held), log_path)
        record.target += f" -> pid {replacement}"
        record.took_s = round(time.monotonic() - t0, 2)
        return record

    async def _wait_sockets_held(self, master: int) -> dict[int, int]:
        """Sockets per edge process, once one holds some while a turn is pending (or at
        MID_TURN_WAIT_S, whatever they hold)."""
        give_up = time.monotonic() + MID_TURN_WAIT_S
        while True:
            held = await asyncio.to_thread(sockets_by_process, master, self.stack.edge_port)
            if time.monotonic() >= give_up:
                return held
            if any(held.values()) and any(
                (await asyncio.to_thread(self._pending_by_consumer)).values()
            ):
                return held
            await asyncio.sleep(POLL_S)

    async def _edge_replacement(self, master: int, before: set[int], log_path: str) -> int:
        give_up = time.monotonic() + EDGE_BOOT_WAIT_S
        while time.monotonic() < give_up:
            for pid in set(await asyncio.to_thread(child_pids, master)) - before:
                if await asyncio.to_thread(_booted, log_path, pid):
                    return pid
            await asyncio.sleep(POLL_S)
        raise RuntimeError(f"no replacement edge process within {EDGE_BOOT_WAIT_S:g} s")


def child_pids(parent: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            found.append(int(entry))
    return found


def _established() -> list[tuple[int, int, str]]:
    """(local port, remote port, socket inode) of every established TCP connection."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if cols[3] == TCP_ESTABLISHED:
                local, remote = (int(c.rsplit(":", 1)[1], 16) for c in cols[1:3])
                found.append((local, remote, cols[9]))
    return found


def _established_inodes(port: int) -> set[str]:
    """Socket inodes of established TCP connections whose local port is `port`."""
    return {inode for local, _, inode in _established() if local == port}


def _socket_inodes(pid: int) -> set[str]:
    inodes: set[str] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def connections_from(processes: list[int], port: int, client_pid: int) -> dict[int, int]:
    """For each of `processes` (gunicorn's workers): its connections on `port` whose other
    end is a socket of `client_pid` (both on this machine: matched by the client's port)."""
    rows = _established()
    ours = _socket_inodes(client_pid)
    client_ports = {local for local, remote, inode in rows if remote == port and inode in ours}
    edge_side = {inode for local, remote, inode in rows if local == port and remote in client_ports}
    return {pid: len(_socket_inodes(pid) & edge_side) for pid in processes}


def sockets_by_process(master: int, port: int) -> dict[int, int]:
    """For each gunicorn worker process of `master`: the connections to `port` it holds (in
    relay mode, nearly all of them are ConversationRelay sockets)."""
    inodes = _established_inodes(port)
    held: dict[int, int] = {}
    for pid in child_pids(master):
        count = 0
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                count += 1
        held[pid] = count
    return held


def _booted(log_path: str, pid: int) -> bool:
    pattern = re.compile(rf"\[{pid}\] \[INFO\] Application startup complete")
    with open(log_path, encoding="utf-8", errors="replace") as f:
        return any(pattern.search(line) for line in f)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def redis_outage(injector: FaultInjector) -> FaultRecord:
    """Redis away long enough that webhooks meet it down (callers hear the trouble phrase)."""
    return await injector.restart_redis(down_s=REDIS_OUTAGE_S)
