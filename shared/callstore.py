"""CallStore: the one owner of a call's Redis state (docs/architecture.md, "Redis layout").

Every read and write of a call's keys goes through here: the turn's idempotency mark, the call
state hash (conversation, user key, the last finished turn, options), the late replies, and the
returning caller's user key. `shared/keys.py` holds the names; this module holds the rules:

- submit: one Lua round trip per webhook marks the turn, appends it to the stream with a snapshot
  of the call's state (the worker need not read it back), and hands back the late replies.
- order: a call's turns reach the bot one at a time; a turn waits for `done >= seq - 1`. A call
  whose state is gone (Redis restarted empty, a replica that lagged) has nothing to wait for:
  the edge records that at submit and the worker goes on at once.
- merge_replies: the one rule for speaking late replies together with a reply.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from shared import keys
from shared.pb import voicebridge_pb2 as pb

T = TypeVar("T")

# A waited-for condition usually holds within a Redis round trip: poll tightly, then back off.
POLL_STEPS_S = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1)

# KEYS: turn mark, stream, late list, call hash. ARGV: ttl, turn bytes ('' = none), maxlen,
# attempt (the webhook attempt's id: the mark's value), seq ('' = not a spoken turn: CALL_END or
# a silence), group; KEYS[5]: the turn's answer list. Returns {late replies, 1 if the turn was
# written before (a retry) else 0, the answer an earlier attempt gave (a retry; else empty)}.
TURN_FIELD = keys.TURN_FIELD.decode()
# The turns numbered 0, 1, 2, ... in the order the caller took them (CALL_END has its own mark).
CALLER_TURNS = (
    pb.TurnRequest.CALL_START,
    pb.TurnRequest.SPEECH,
    pb.TurnRequest.DTMF,
    pb.TurnRequest.TRANSFER_FAILED,
)
_SUBMIT_LUA = f"""
local retry = 0
local answer = {{}}
local late = redis.call('LRANGE', KEYS[3], 0, -1)
if #late > 0 then
  redis.call('DEL', KEYS[3])
  redis.call('HDEL', KEYS[4], '{keys.F_HAS_LATE}')
end
if ARGV[2] ~= '' and redis.call('SET', KEYS[1], ARGV[4], 'NX', 'EX', ARGV[1]) then
  if ARGV[5] ~= '' then
    if ARGV[5] == '0' then
      -- The call exists from its first turn on: a later turn that finds no hash knows the state
      -- was lost, not merely unfinished.
      redis.call('HSETNX', KEYS[4], '{keys.F_STARTED}', '1')
      redis.call('EXPIRE', KEYS[4], ARGV[1])
    elseif redis.call('EXISTS', KEYS[4]) == 0 then
      -- State lost (Redis restarted empty): nothing to wait for, the worker goes on at once.
      redis.call('HSET', KEYS[4], '{keys.F_DONE_SEQ}', tonumber(ARGV[5]) - 1, '{keys.F_LOST}', '1')
      redis.call('EXPIRE', KEYS[4], ARGV[1])
    end
    -- The highest caller turn written: a relay session that takes the call over goes on there.
    local last = tonumber(redis.call('HGET', KEYS[4], '{keys.F_LAST_SEQ}') or '-1')
    if tonumber(ARGV[5]) > last then
      redis.call('HSET', KEYS[4], '{keys.F_LAST_SEQ}', ARGV[5])
    end
  end
  local fresh_stream = redis.call('EXISTS', KEYS[2]) == 0
  -- The call's state rides along with the turn: the worker need not read it back.
  local state = redis.call('HGETALL', KEYS[4])
  local entry = redis.call(
    'XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', '{TURN_FIELD}', ARGV[2], unpack(state))
  if ARGV[5] ~= '' then
    redis.call('HSET', KEYS[4], '{keys.F_LAST_ENTRY}', entry)
  end
  if fresh_stream then
    -- A Redis that came back empty has no consumer group: whoever notices first recreates it.
    redis.pcall('XGROUP', 'CREATE', KEYS[2], ARGV[6], '0')
  end
elseif ARGV[2] ~= '' then
  -- Twilio retried the webhook: the newest attempt is the one it listens to (an older one
  -- that gets the reply hands it back as late, for this one; one that answered already left
  -- its answer, which Twilio gave up on: this attempt answers the same).
  redis.call('SET', KEYS[1], ARGV[4], 'XX', 'KEEPTTL')
  retry = 1
  answer = redis.call('LRANGE', KEYS[5], 0, -1)
end
return {{late, retry, answer}}
"""

# KEYS: turn mark, answer list. ARGV: attempt, ttl, then the answer's TurnReply bytes. The
# attempt is still the newest (no retry came): its answer is kept for a retry that may yet come
# after Twilio gave up on it; returns 1. Else 0: a retry took over.
_KEEP_ANSWER_LUA = """
local mark = redis.call('GET', KEYS[1])
if mark and mark ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
redis.call('RPUSH', KEYS[2], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
"""

# KEYS[1]: a call's hash, just written. Its TTL goes back to ARGV[1] s, unless the call ended:
# the ended mark keeps its short TTL (a turn that finishes after its call ended, a trailing
# message kept late, must not keep the hash for hours).
_TOUCH_LUA = f"""
if redis.call('HEXISTS', KEYS[1], '{keys.F_ENDED}') == 1 then return 0 end
return redis.call('EXPIRE', KEYS[1], ARGV[1])
"""


@dataclass
class CallState:
    """A call's hash, decoded. `lost`: the hash was gone when a later turn was written."""

    user_id: str = ""
    user_key: str = ""
    conversation: str = ""
    done_seq: int = -1
    has_late: bool = False
    lost: bool = False
    exists: bool = False
    ended: bool = False  # the call's final status came (CallStore.end)
    options: dict[str, str] | None = None
    last_entry: bytes = b""  # in a turn's snapshot: the stream entry of the turn before it

    @classmethod
    def from_hash(cls, raw: dict[bytes, bytes]) -> CallState:
        def text(field: str) -> str:
            return raw.get(field.encode(), b"").decode()

        done = text(keys.F_DONE_SEQ)
        opts = text(keys.F_OPTIONS)
        return cls(
            user_id=text(keys.F_USER_ID),
            user_key=text(keys.F_USER_KEY),
            conversation=text(keys.F_CONVERSATION),
            done_seq=int(done) if done.lstrip("-").isdigit() else -1,
            has_late=bool(raw.get(keys.F_HAS_LATE.encode())),
            lost=bool(raw.get(keys.F_LOST.encode())),
            exists=bool(raw),
            ended=bool(raw.get(keys.F_ENDED.encode())),
            options=json.loads(opts) if opts else None,
            last_entry=raw.get(keys.F_LAST_ENTRY.encode(), b""),
        )


@dataclass
class Submitted:
    """What submit found: the call's late replies (taken), and whether the turn was written by
    an earlier attempt of the same webhook (Twilio retried it)."""

    late: list[pb.TurnReply]
    retry: bool
    # A retry of a turn an earlier attempt answered already: that answer (Twilio gave up on it).
    answer: list[pb.TurnReply] = field(default_factory=list)


def merge_replies(late: Sequence[pb.TurnReply], reply: pb.TurnReply | None) -> pb.TurnReply:
    """Replies that missed an earlier deadline are spoken first, in order, then `reply`.

    The hangup of any part ends the call; options and the fallback flag are the current reply's;
    the first transfer asked for is kept (a hangup wins over it), and the last language.
    """
    merged = pb.TurnReply()
    if reply is not None:
        merged.turn_id, merged.call_sid, merged.seq = reply.turn_id, reply.call_sid, reply.seq
    for part in late:
        merged.say.extend(part.say)
        merged.hangup = merged.hangup or part.hangup
        merged.transfer_to = merged.transfer_to or part.transfer_to
        merged.language = part.language or merged.language
    if reply is not None:
        merged.say.extend(reply.say)
        merged.hangup = merged.hangup or reply.hangup
        merged.options.extend(reply.options)
        merged.fallback = reply.fallback
        merged.transfer_to = merged.transfer_to or reply.transfer_to
        merged.language = reply.language or merged.language
    if merged.hangup:
        merged.transfer_to = ""
    return merged


async def poll_until(
    fetch: Callable[[], Awaitable[T]], done: Callable[[T], bool], timeout_s: float
) -> T:
    """fetch() until done(result) or timeout_s passed; returns the last result."""
    give_up = time.monotonic() + timeout_s
    result = await fetch()
    polls = 0
    while not done(result) and time.monotonic() < give_up:
        await asyncio.sleep(POLL_STEPS_S[min(polls, len(POLL_STEPS_S) - 1)])
        polls += 1
        result = await fetch()
    return result


class CallStore:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._submit = redis.register_script(_SUBMIT_LUA)
        self._keep_answer = redis.register_script(_KEEP_ANSWER_LUA)

    # -- edge ---------------------------------------------------------------------------------
    async def submit(self, turn: pb.TurnRequest | None, call_sid: str) -> list[pb.TurnReply]:
        """Write `turn` once (a retry of the same turn writes nothing) and take the call's late
        replies. None: only take the late replies (a silent turn)."""
        return (await self.submit_attempt(turn, call_sid)).late

    async def submit_attempt(
        self, turn: pb.TurnRequest | None, call_sid: str, attempt: str = ""
    ) -> Submitted:
        """submit, for one webhook attempt: its id (default: the turn's reply_to) becomes the
        turn mark's value, also on a retry (`Submitted.retry`), so the newest attempt is the
        turn's (is_current_attempt)."""
        spoken = turn is not None and turn.kind in CALLER_TURNS
        seq = turn.seq if turn is not None else 0
        raw_late, retry, raw_answer = await self._submit(
            keys=[
                keys.turn_mark(call_sid, seq),
                keys.TURN_STREAM,
                keys.late_replies(call_sid),
                keys.call_state(call_sid),
                keys.turn_answer(call_sid, seq),
            ],
            args=[
                keys.CALL_TTL_S,
                turn.SerializeToString() if turn is not None else b"",
                keys.TURN_STREAM_MAXLEN,
                attempt or (turn.reply_to if turn is not None else ""),
                str(turn.seq) if spoken and turn is not None else "",
                keys.WORKER_GROUP,
            ],
        )
        late = [pb.TurnReply.FromString(b) for b in cast(list[bytes], raw_late)]
        answer = [pb.TurnReply.FromString(b) for b in cast(list[bytes], raw_answer)]
        return Submitted(late, bool(retry), answer)

    async def keep_answer(
        self, call_sid: str, seq: int, attempt: str, answer: Sequence[pb.TurnReply]
    ) -> bool:
        """True while `attempt` is the turn's newest (the mark names it): `answer` (non-empty)
        is kept for a retry Twilio may still send after giving up on it. False once a retry
        came after `attempt`: that one answers."""
        kept = await self._keep_answer(
            keys=[keys.turn_mark(call_sid, seq), keys.turn_answer(call_sid, seq)],
            args=[attempt, keys.ANSWER_TTL_S, *(r.SerializeToString() for r in answer)],
        )
        return bool(kept)

    async def has_late(self, call_sid: str) -> bool:
        return bool(await self._redis.exists(keys.late_replies(call_sid)))

    async def wait_late(self, call_sid: str, timeout_s: float) -> list[pb.TurnReply]:
        """The call's late replies, waiting up to timeout_s for one to be kept (taken: said
        once); [] when none came."""
        if await poll_until(lambda: self.has_late(call_sid), bool, timeout_s):
            return await self.submit(None, call_sid)
        return []

    async def give_back(self, call_sid: str, replies: Sequence[pb.TurnReply]) -> None:
        """Replies a superseded webhook attempt took, back at the head of the late list in
        their order: the attempt Twilio listens to speaks them."""
        if not replies:
            return
        pipe = self._redis.pipeline(transaction=True)
        late_key = keys.late_replies(call_sid)
        pipe.lpush(late_key, *[r.SerializeToString() for r in reversed(replies)])
        pipe.expire(late_key, keys.CALL_TTL_S)
        pipe.hset(keys.call_state(call_sid), keys.F_HAS_LATE, 1)
        await pipe.execute()

    async def next_seq(self, call_sid: str) -> int:
        """The number of the call's next caller turn: 0 for a call not started yet. A relay
        session that takes over a call (its edge process died) goes on from here."""
        raw = cast(
            bytes | None,
            await self._redis.hget(keys.call_state(call_sid), keys.F_LAST_SEQ),  # type: ignore[misc]
        )
        return int(raw) + 1 if raw is not None and raw.isdigit() else 0

    async def language(self, call_sid: str) -> str:
        """The call's language since the bot switched it; "" = never switched (LANGUAGE)."""
        raw = cast(
            bytes | None,
            await self._redis.hget(keys.call_state(call_sid), keys.F_LANGUAGE),  # type: ignore[misc]
        )
        return raw.decode() if raw else ""

    async def set_language(self, call_sid: str, language: str) -> None:
        """Every later turn of the call, on any edge process, speaks `language`."""
        key = keys.call_state(call_sid)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, keys.F_LANGUAGE, language)
            pipe.expire(key, keys.CALL_TTL_S)
            await pipe.execute()

    # -- worker -------------------------------------------------------------------------------
    async def load(self, call_sid: str) -> CallState:
        raw = await self._redis.hgetall(keys.call_state(call_sid))  # type: ignore[misc]
        return CallState.from_hash(cast(dict[bytes, bytes], raw))

    async def wait_for_turn(
        self, turn: pb.TurnRequest, snapshot: dict[bytes, bytes] | None, timeout_s: float
    ) -> CallState:
        """The call's state once the turn before `turn` is done (bounded by timeout_s).

        `snapshot` is the hash as the edge saw it when it wrote the turn: when it already shows
        the previous turn done, nothing can have changed it since, so no read is needed. A hash
        that vanished while we waited (Redis restarted empty) is not waited for either, nor is
        a call that ended meanwhile (its turns still queued are skipped: TurnHandler)."""
        if snapshot is not None:
            state = CallState.from_hash(snapshot)
            if turn.kind != pb.TurnRequest.SPEECH or state.done_seq >= turn.seq - 1:
                return state
        if turn.kind != pb.TurnRequest.SPEECH:
            return await self.load(turn.call_sid)
        return await poll_until(
            lambda: self.load(turn.call_sid),
            lambda s: s.done_seq >= turn.seq - 1 or not s.exists or s.ended,
            timeout_s,
        )

    async def finish(
        self,
        turn: pb.TurnRequest,
        reply: pb.TurnReply | None,
        state: CallState | None,
        *,
        delivered: bool,
        ack_entry: bytes | None,
    ) -> None:
        """One transaction: keep an undelivered reply as late, save the state (None: only mark
        the turn done), ack the stream entry."""
        pipe = self._redis.pipeline(transaction=True)
        key = keys.call_state(turn.call_sid)
        if reply is not None and not delivered:
            self._keep_late(pipe, reply)
        if turn.kind != pb.TurnRequest.CALL_END and reply is not None:
            mapping: dict[str, str | int] = {keys.F_DONE_SEQ: turn.seq}
            if state is not None:
                mapping.update(
                    {
                        keys.F_DONE_SEQ: max(turn.seq, state.done_seq),
                        keys.F_USER_ID: state.user_id,
                        keys.F_USER_KEY: state.user_key,
                        keys.F_CONVERSATION: state.conversation,
                    }
                )
                if state.options:
                    pipe.hset(key, keys.F_OPTIONS, json.dumps(state.options))
                else:
                    pipe.hdel(key, keys.F_OPTIONS)
            pipe.hset(key, mapping=cast(Any, mapping))  # redis-py's Mapping is invariant
        if reply is not None:  # the hash was written (state, or the late flag)
            self._touch_state(pipe, turn.call_sid)
        if ack_entry is not None:
            pipe.xack(keys.TURN_STREAM, keys.WORKER_GROUP, ack_entry)
        await pipe.execute()

    async def keep_late(self, reply: pb.TurnReply) -> None:
        """A reply nobody waits for: the call's next webhook speaks it, after earlier ones."""
        pipe = self._redis.pipeline(transaction=True)
        self._keep_late(pipe, reply)
        # A hash the late flag's HSET created (its state was lost) must not live for ever.
        self._touch_state(pipe, reply.call_sid)
        await pipe.execute()

    @staticmethod
    def _keep_late(pipe: Pipeline, reply: pb.TurnReply) -> None:
        late_key = keys.late_replies(reply.call_sid)
        pipe.rpush(late_key, reply.SerializeToString())
        pipe.expire(late_key, keys.CALL_TTL_S)
        pipe.hset(keys.call_state(reply.call_sid), keys.F_HAS_LATE, 1)

    @staticmethod
    def _touch_state(pipe: Pipeline, call_sid: str) -> None:
        # EVAL, not a registered script: a pipeline with scripts first asks Redis whether they
        # exist (SCRIPT EXISTS, one more round trip on every turn's finish); Redis caches an
        # EVAL'd script itself.
        pipe.eval(_TOUCH_LUA, 1, keys.call_state(call_sid), keys.CALL_TTL_S)

    async def take_late(self, reply: pb.TurnReply) -> pb.TurnReply:
        """`reply` with the call's late replies spoken first (they are taken: said once)."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.lrange(keys.late_replies(reply.call_sid), 0, -1)
        pipe.delete(keys.late_replies(reply.call_sid))
        pipe.hdel(keys.call_state(reply.call_sid), keys.F_HAS_LATE)
        raw_late, _, _ = await pipe.execute()
        if not raw_late:
            return reply
        return merge_replies([pb.TurnReply.FromString(b) for b in raw_late], reply)

    async def end(self, call_sid: str, known: bool = True) -> None:
        """The call is over: its late replies go now, its state soon (ENDED_TTL_S), marked
        ended. Deleting it at once let the call's turns still queued behind a busy worker run
        unordered (no state: nothing to wait for), two at a time against the bot, for nobody.
        `known` False (no state was ever written, or Redis lost it): nothing is left behind."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(keys.late_replies(call_sid))
        if known:
            pipe.hset(keys.call_state(call_sid), keys.F_ENDED, 1)
            pipe.expire(keys.call_state(call_sid), keys.ENDED_TTL_S)
        else:
            pipe.delete(keys.call_state(call_sid))
        await pipe.execute()

    # -- the caller (shared-mode Botpress user key, kept across calls) ------------------------
    # `bot`: "" for the environment's bot, else the Chat API base URL (keys.caller_key).
    async def caller_key(self, user_id: str, bot: str = "") -> str | None:
        raw = cast(bytes | None, await self._redis.get(keys.caller_key(user_id, bot)))
        return raw.decode() if raw else None

    async def save_caller_key(self, user_id: str, user_key: str, bot: str = "") -> None:
        await self._redis.set(keys.caller_key(user_id, bot), user_key, ex=keys.CALLER_KEY_TTL_S)

    async def wait_for_caller_key(
        self, user_id: str, stale: str | None, timeout_s: float, bot: str = ""
    ) -> str | None:
        """A caller key other than `stale`, waiting up to timeout_s for one to be stored."""
        stored = await poll_until(
            lambda: self.caller_key(user_id, bot), lambda k: bool(k) and k != stale, timeout_s
        )
        return stored if stored and stored != stale else None
