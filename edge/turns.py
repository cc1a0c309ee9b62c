"""Writing a turn onto the stream: one Redis round trip per webhook.

A single Lua script marks the turn (so a Twilio retry of the same CallSid + turn is one turn),
appends it to the trimmed stream together with a snapshot of the call's state hash (which saves
the worker a round trip), and hands back the call's late replies (answers that missed an earlier
deadline), which the webhook speaks first, in order.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from shared import keys
from shared.pb import voicebridge_pb2 as pb

_SUBMIT_LUA = """
local late = redis.call('LRANGE', KEYS[3], 0, -1)
if #late > 0 then
  redis.call('DEL', KEYS[3])
  redis.call('HDEL', KEYS[4], ARGV[5])
end
local fresh = 0
if ARGV[2] ~= '' then
  if redis.call('SET', KEYS[1], ARGV[4], 'NX', 'EX', ARGV[1]) then
    -- The call's state rides along with the turn: the worker need not read it back.
    local state = redis.call('HGETALL', KEYS[4])
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 't', ARGV[2], unpack(state))
    fresh = 1
  end
end
return {fresh, late}
"""


@dataclass(frozen=True)
class Submitted:
    fresh: bool  # False: a retry of a turn already on the stream
    late: list[pb.TurnReply]


class TurnSubmitter:
    def __init__(self, redis: Redis) -> None:
        self._script = redis.register_script(_SUBMIT_LUA)

    async def submit(self, turn: pb.TurnRequest | None, call_sid: str) -> Submitted:
        """Write `turn` (None: only collect late replies, e.g. on silence)."""
        seq = turn.seq if turn is not None else 0
        result = await self._script(
            keys=[
                keys.turn_mark(call_sid, seq),
                keys.TURN_STREAM,
                keys.late_replies(call_sid),
                keys.call_state(call_sid),
            ],
            args=[
                keys.CALL_TTL_S,
                turn.SerializeToString() if turn is not None else b"",
                keys.TURN_STREAM_MAXLEN,
                turn.reply_to if turn is not None else "",
                keys.F_HAS_LATE,
            ],
        )
        fresh, raw_late = result
        return Submitted(bool(fresh), [pb.TurnReply.FromString(b) for b in raw_late])

    async def end_call(self, turn: pb.TurnRequest) -> None:
        """CALL_END goes through the same idempotent path (status callbacks are retried too)."""
        await self.submit(turn, turn.call_sid)
