"""Read-ahead without hoarding: the turns in a worker's backlog can be taken by another worker.

A worker whose slots are all busy reads ahead into its backlog (worker/backlog.py) so that it
can start the turns that can still make their deadline first. Those entries are pending under
its name, out of every other worker's reach: with a fixed number of callers each waiting for an
answer, one worker could sit on the whole backlog while another had free slots (measured: 2
workers x 8 slots gave 9.8 turns/s instead of 16). So each backlogged entry id is also in the
worker's held set in Redis, and whoever removes it from that set runs the turn:

- the owner, before it starts a backlogged turn: ZREM, and 0 means another worker took it;
- a worker with free slots and nothing to read: one script pops up to N ids, latest deadline
  first, from the held sets of live workers, then XCLAIMs those entries (the owner's ZREM
  answers 0 from then on).

The removal is the one atomic step, so a turn is never started by two workers. It also serves
a call's order: a turn whose predecessor still waits in a backlog (the call's previous turn
missed its deadline, and the caller spoke again) takes that turn and runs it first, instead of
holding a slot while a busy worker gets round to it (worker/stream_loop.py). A dead owner's
held set is dropped by the worker that takes over its pending turns (worker/recovery.py).
"""

from __future__ import annotations

from typing import Any, cast

from redis.asyncio import Redis

from shared import keys

StreamFields = dict[bytes, bytes]

# Pops up to ARGV[2] ids, latest deadline first, from the held sets of live workers other than
# ARGV[1]; forgets holders whose set is empty. Returns a flat list: owner, id, owner, id, ...
# then the number of holders left.
_TAKE_HELD = """
local me, want = ARGV[1], tonumber(ARGV[2])
local prefix, held_sfx, alive_sfx = ARGV[3], ARGV[4], ARGV[5]
local out = {}
local left = 0
for _, name in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if name ~= me then
    local held = prefix .. name .. held_sfx
    if want > 0 and redis.call('EXISTS', prefix .. name .. alive_sfx) == 1 then
      -- The turns with the most time left first, as the owner itself would start them.
      local popped = redis.call('ZPOPMAX', held, want)
      for i = 1, #popped, 2 do
        out[#out + 1] = name
        out[#out + 1] = popped[i]
      end
      want = want - #popped / 2
    end
    if redis.call('ZCARD', held) == 0 then
      redis.call('SREM', KEYS[1], name)
    else
      left = left + 1
    end
  end
end
out[#out + 1] = left
return out
"""


# Removes entry ARGV[1] from whichever held set has it; returns its holder's name, or false.
_TAKE_ONE = """
for _, name in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('ZREM', ARGV[2] .. name .. ARGV[3], ARGV[1]) == 1 then
    return name
  end
end
return false
"""

_KEY_PARTS = (keys.WORKER_KEY_PREFIX, keys.HELD_SUFFIX, keys.ALIVE_SUFFIX)


class SharedBacklog:
    """The Redis side of one worker's backlog: hold, claim before start, take from others."""

    def __init__(self, redis: Redis, name: str) -> None:
        self._redis = redis
        self.name = name
        self._held_key = keys.worker_held(name)
        self._take_held = redis.register_script(_TAKE_HELD)
        self._take_one = redis.register_script(_TAKE_ONE)
        # Whether other workers held turns at the last look: poll for them often while they do.
        self.others_hold = False

    async def hold(self, deadlines_ms: dict[bytes, int]) -> None:
        """Entries (with their turn's deadline) about to wait in our backlog: from now on
        another worker may take them."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.zadd(self._held_key, cast(Any, deadlines_ms))
        pipe.expire(self._held_key, keys.CALL_TTL_S)
        pipe.sadd(keys.HOLDERS, self.name)
        await pipe.execute()

    async def claim(self, entry_id: bytes) -> bool:
        """True: still ours, start it. False: another worker took it."""
        return bool(await self._redis.zrem(self._held_key, entry_id))

    async def still_held(self, entry_ids: list[bytes]) -> list[bool]:
        scores = await self._redis.zmscore(self._held_key, cast(Any, entry_ids))
        return [x is not None for x in scores]

    async def take(self, count: int, stream: str, group: str) -> list[tuple[bytes, StreamFields]]:
        """Up to `count` turns waiting in other live workers' backlogs, now pending under us."""
        flat = cast(
            list[Any],
            await self._take_held(
                keys=[keys.HOLDERS],
                args=[self.name, count, *_KEY_PARTS],
            ),
        )
        self.others_hold = int(flat[-1]) > 0
        ids: list[Any] = flat[1:-1:2]
        if not ids:
            return []
        claimed = await self._redis.xclaim(  # type: ignore[misc]
            stream, group, self.name, min_idle_time=0, message_ids=ids
        )
        return [
            (entry_id, fields)
            for entry_id, fields in cast(list[tuple[bytes, StreamFields | None]], claimed)
            if fields is not None  # finished meanwhile (acked and trimmed): nothing to run
        ]

    async def take_one(self, entry_id: bytes, stream: str, group: str) -> StreamFields | None:
        """The entry's fields, now pending under us, if it waited in some worker's backlog
        (ours included); None when nobody held it (it runs, or ran, somewhere)."""
        holder = await self._take_one(
            keys=[keys.HOLDERS], args=[entry_id, keys.WORKER_KEY_PREFIX, keys.HELD_SUFFIX]
        )
        if not holder:
            return None
        claimed = cast(
            list[tuple[bytes, StreamFields | None]],
            await self._redis.xclaim(  # type: ignore[misc]
                stream, group, self.name, min_idle_time=0, message_ids=[entry_id]
            ),
        )
        return claimed[0][1] if claimed else None

    async def drop_dead(self, name: str) -> None:
        """A dead worker's held set: its pending turns are being taken over whole."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(keys.worker_held(name))
        pipe.srem(keys.HOLDERS, name)
        await pipe.execute()
