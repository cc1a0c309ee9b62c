"""OutboundStore: the one owner of the outbound calls' Redis state (POST /v1/calls).

Key names are in shared/keys.py. The rules kept here:

- begin: one Lua call takes the Idempotency-Key, a slot of OUTBOUND_MAX_CPS (a sliding second
  on Redis's clock, shared by every edge process) and writes the record, status `initiating`,
  before Twilio is asked. An edge that dies right after asking leaves a record the call's own
  webhooks find again: Twilio's Url and StatusCallback carry our id.
- take over: a request replaying an Idempotency-Key whose record was begun by an edge that died
  before Twilio answered it asks Twilio itself, once that edge's Twilio request must have ended
  (TWILIO_TIMEOUT_S); so a key never stays stuck "in progress".
- status: Twilio's callbacks may come out of order; a call's status only moves forward
  (initiating, queued, ringing, in-progress, then one final status that stays).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis

from shared import keys

#: A status's place in a call's life; a callback never moves a call back.
STATUS_RANK = {
    "initiating": 0,
    "queued": 1,
    "ringing": 2,
    "in-progress": 3,
    "completed": 4,
    "busy": 4,
    "no-answer": 4,
    "failed": 4,
    "canceled": 4,
}
#: Twilio's CallStatus as the API reports it (`initiated` is Twilio's word for queued).
TWILIO_STATUS = {"initiated": "queued", "answered": "in-progress"}
CPS_WINDOW_MS = 1000

# KEYS: record, idempotency key, cps zset. ARGV: id, ttl, max cps, has key ('1'/'0'), then the
# record's field/value pairs. Returns {outcome, id}: new, existing (the key placed `id`
# before) or busy (the second's calls are taken: nothing written).
_BEGIN_LUA = f"""
if ARGV[4] == '1' then
  local existing = redis.call('GET', KEYS[2])
  if existing then return {{'existing', existing}} end
end
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ms - {CPS_WINDOW_MS})
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[3]) then return {{'busy', ''}} end
redis.call('ZADD', KEYS[3], ms, ARGV[1])
redis.call('PEXPIRE', KEYS[3], {2 * CPS_WINDOW_MS})
redis.call('HSET', KEYS[1], 'asked_ms', ms, unpack(ARGV, 5))
redis.call('EXPIRE', KEYS[1], ARGV[2])
if ARGV[4] == '1' then redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2]) end
return {{'new', ARGV[1]}}
"""

# KEYS: record. ARGV: lease ms. A record still `initiating` with no CallSid and no error whose
# asker began more than `lease` ago (its edge died before or while asking Twilio; Twilio, had it
# taken the call, would have sent `initiated` with our id by now): the caller takes it over
# and asks Twilio itself. Returns 1 when taken.
_TAKE_OVER_LUA = """
local r = redis.call('HMGET', KEYS[1], 'status', 'sid', 'error_code', 'asked_ms')
if r[1] ~= 'initiating' or (r[2] and r[2] ~= '') or (r[3] and r[3] ~= '') then return 0 end
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if ms - (tonumber(r[4]) or 0) < tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'asked_ms', ms)
return 1
"""

# KEYS: record. ARGV: status ('' = keep), its rank, then field/value pairs set anyway (those
# with a value). Returns 1 when the record exists.
_ADVANCE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[1] ~= '' then
  local current = redis.call('HGET', KEYS[1], 'status') or 'initiating'
  local ranks = cjson.decode(ARGV[2])
  if (ranks[ARGV[1]] or -1) > (ranks[current] or -1) then
    redis.call('HSET', KEYS[1], 'status', ARGV[1])
  end
end
for i = 3, #ARGV, 2 do
  if ARGV[i + 1] ~= '' then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
return 1
"""


@dataclass(frozen=True)
class OutboundRecord:
    """One outbound call as kept in Redis."""

    call_id: str
    status: str
    to: str
    from_: str
    context_json: str = "{}"
    sid: str = ""
    answered_by: str = ""
    duration_s: int | None = None
    request_digest: str = ""  # the request body's sha256: a key reused for another body is refused
    error_code: int | None = None  # Twilio refused the call (or could not be reached: 0)
    error_message: str = ""

    @classmethod
    def from_hash(cls, call_id: str, raw: Mapping[bytes, bytes]) -> OutboundRecord:
        def text(name: str) -> str:
            return raw.get(name.encode(), b"").decode()

        duration, code = text("duration"), text("error_code")
        return cls(
            call_id=call_id,
            status=text("status") or "initiating",
            to=text("to"),
            from_=text("from"),
            context_json=text("context") or "{}",
            sid=text("sid"),
            answered_by=text("answeredBy"),
            duration_s=int(duration) if duration.isdigit() else None,
            request_digest=text("digest"),
            error_code=int(code) if code.lstrip("-").isdigit() else None,
            error_message=text("error_message"),
        )

    def as_api(self) -> dict[str, Any]:
        """GET /v1/calls/{callSid}."""
        return {
            "callSid": self.sid,
            "status": self.status,
            "to": self.to,
            "from": self.from_,
            "answeredBy": self.answered_by or None,
            "duration": self.duration_s,
        }


@dataclass(frozen=True)
class Begun:
    outcome: str  # "new", "existing" or "busy"
    call_id: str


class OutboundStore:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._begin = redis.register_script(_BEGIN_LUA)
        self._advance = redis.register_script(_ADVANCE_LUA)
        self._take_over = redis.register_script(_TAKE_OVER_LUA)
        self._ranks = json.dumps(STATUS_RANK)

    async def begin(
        self, record: OutboundRecord, idempotency_key: str | None, max_cps: int
    ) -> Begun:
        """Record the call (status initiating) unless the key placed one already or the
        second's calls are taken; nothing is written then."""
        fields = {
            "status": record.status,
            "to": record.to,
            "from": record.from_,
            "context": record.context_json,
            "digest": record.request_digest,
        }
        outcome, call_id = cast(
            list[bytes],
            await self._begin(
                keys=[
                    keys.outbound_call(record.call_id),
                    keys.outbound_idempotency(idempotency_key or ""),
                    keys.OUTBOUND_CPS,
                ],
                args=[
                    record.call_id,
                    keys.OUTBOUND_TTL_S,
                    max_cps,
                    "1" if idempotency_key else "0",
                    *(item for pair in fields.items() for item in pair),
                ],
            ),
        )
        return Begun(outcome.decode(), call_id.decode())

    async def take_over(self, call_id: str, lease_s: float) -> bool:
        """True: the record's asker is gone (see _TAKE_OVER_LUA); ask Twilio in its place."""
        lease_ms = int(lease_s * 1000)
        taken = await self._take_over(keys=[keys.outbound_call(call_id)], args=[lease_ms])
        return bool(taken)

    async def placed(self, call_id: str, sid: str, status: str) -> None:
        """Twilio took the call: its CallSid finds our record from now on."""
        await self._redis.set(keys.outbound_sid(sid), call_id, ex=keys.OUTBOUND_TTL_S)
        await self.advance(call_id, status, sid=sid)

    async def refused(self, call_id: str, code: int, message: str) -> None:
        """Twilio refused the call (code 0: it could not be reached; the call may exist)."""
        await self.advance(
            call_id, "failed" if code else "", error_code=str(code), error_message=message
        )

    async def advance(self, call_id: str, status: str, **fields: str) -> bool:
        """Move the record to `status` if that is forward, and set the non-empty `fields`
        (sid, answeredBy, duration, ...); False when there is no such record."""
        status = TWILIO_STATUS.get(status, status)
        if status and status not in STATUS_RANK:
            status = ""
        pairs = [item for pair in fields.items() for item in pair]
        found = await self._advance(
            keys=[keys.outbound_call(call_id)], args=[status, self._ranks, *pairs]
        )
        return bool(found)

    async def link(self, call_id: str, sid: str) -> None:
        """A webhook of the call names our id: keep its CallSid (the edge that asked Twilio may
        have died before it could)."""
        if await self.advance(call_id, "", sid=sid):
            await self._redis.set(keys.outbound_sid(sid), call_id, ex=keys.OUTBOUND_TTL_S)

    async def id_of(self, sid: str) -> str | None:
        raw = cast(bytes | None, await self._redis.get(keys.outbound_sid(sid)))
        return raw.decode() if raw is not None else None

    async def get(self, call_id: str) -> OutboundRecord | None:
        raw = cast(dict[bytes, bytes], await self._redis.hgetall(keys.outbound_call(call_id)))
        return OutboundRecord.from_hash(call_id, raw) if raw else None

    async def by_sid(self, sid: str) -> OutboundRecord | None:
        call_id = await self.id_of(sid)
        return await self.get(call_id) if call_id is not None else None
