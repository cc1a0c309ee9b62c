"""Which waiting turn runs next when every slot is busy: the overload rule.

First in, first out collapses past capacity: once the queue is longer than the reply deadline,
every turn comes too late. So a worker whose slots are all busy keeps reading into this backlog
and, when a slot frees, starts:

1. the call whose newest turn can still make its deadline, newest deadline first (those have
   the most time left; a call's turns still start in order, so its oldest waiting turn runs);
2. only when no such call waits, the oldest call whose turns all missed their deadline: they
   are finished as late replies (the call's next webhook speaks them), never dropped.

The backlog holds WORKER_READ_AHEAD × WORKER_CONCURRENCY turns at most; past that, turns wait in
the stream, where `voicebridge_stream_lag` shows them to an autoscaler. Its entries are pending
under this worker, so a crash hands them to another worker like in-flight ones, and they are
in its held set, so a worker with free slots takes them rather than idle (worker/sharing.py).
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict, deque
from dataclasses import dataclass

from shared.pb import voicebridge_pb2 as pb

# A turn without a deadline (a call's end) is as urgent as one that just arrived.
NO_DEADLINE_MS = 10**15


@dataclass
class Waiting:
    entry_id: bytes
    fields: dict[bytes, bytes] | None
    turn: pb.TurnRequest


def deadline_ms(turn: pb.TurnRequest) -> int:
    return int(turn.deadline_unix_ms) or NO_DEADLINE_MS


class Backlog:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._calls: dict[str, deque[Waiting]] = {}
        self._version: dict[str, int] = {}
        # Calls by their newest turn's deadline, latest first (entries of old versions skipped).
        self._fresh: list[tuple[int, int, str]] = []
        self._expired: OrderedDict[str, None] = OrderedDict()  # oldest first
        self._count = 0
        self._versions = itertools.count()

    def __len__(self) -> int:
        return self._count

    @property
    def room(self) -> int:
        return max(self.limit - self._count, 0)

    def add(self, waiting: Waiting) -> None:
        sid = waiting.turn.call_sid
        self._calls.setdefault(sid, deque()).append(waiting)
        self._count += 1
        self._expired.pop(sid, None)
        self._push(sid)

    def _push(self, sid: str) -> None:
        version = next(self._versions)  # never reused, so an old heap entry never matches
        self._version[sid] = version
        newest = deadline_ms(self._calls[sid][-1].turn)
        heapq.heappush(self._fresh, (-newest, version, sid))

    def next(self, now_ms: int) -> Waiting | None:
        """The turn to start now, or None when nothing waits."""
        while self._fresh:
            neg_deadline, version, sid = heapq.heappop(self._fresh)
            if self._version.get(sid) != version:
                continue  # an older entry of a call that got newer turns, or was emptied
            if -neg_deadline < now_ms:
                self._expired[sid] = None  # every turn of this call missed its deadline
                continue
            return self._take(sid)
        if self._expired:
            sid = next(iter(self._expired))
            return self._take(sid)
        return None

    def _take(self, sid: str) -> Waiting:
        queue = self._calls[sid]
        waiting = queue.popleft()
        self._count -= 1
        if queue:
            if sid not in self._expired:
                self._push(sid)
        else:
            del self._calls[sid]
            self._version.pop(sid, None)
            self._expired.pop(sid, None)
        return waiting

    def discard(self, entry_ids: set[bytes]) -> int:
        """Forget turns another worker took (worker/sharing.py); returns how many were here."""
        removed = 0
        for sid in list(self._calls):
            queue = self._calls[sid]
            kept = deque(w for w in queue if w.entry_id not in entry_ids)
            if len(kept) == len(queue):
                continue
            removed += len(queue) - len(kept)
            if kept:
                self._calls[sid] = kept
                if sid not in self._expired:
                    self._push(sid)
            else:
                del self._calls[sid]
                self._version.pop(sid, None)
                self._expired.pop(sid, None)
        self._count -= removed
        return removed

    def ids(self) -> list[bytes]:
        return [w.entry_id for queue in self._calls.values() for w in queue]
