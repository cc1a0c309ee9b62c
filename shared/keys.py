"""Every Redis key, stream and group voicebridge uses — the whole layout in one place.

  vb:turns                     stream   one entry per turn, field "t" = TurnRequest bytes;
                                        trimmed approximately to TURN_STREAM_MAXLEN on XADD
  vb:workers                   group    the workers' consumer group on vb:turns
  vb:turns:dead                stream   turns given up after too many deliveries (trimmed)
  vb:turn:{call_sid}:{seq}     string   the edge's idempotency mark for a turn (Twilio retries)
  vb:call:{call_sid}           hash     worker-side call state: conversation, user key, the last
                                        finished seq (turns run in order), late-reply flag
  vb:call:{call_sid}:late      list     TurnReply bytes that missed their edge's deadline,
                                        spoken at the call's next webhook
  vb:caller:{user_id}          string   shared-mode Botpress user key of a returning caller
  vb:worker:{name}:alive       string   worker liveness heartbeat (probe/`--check`)

Per-call keys expire CALL_TTL_S after their last write: a dead call leaves nothing behind.
"""

from __future__ import annotations

TURN_STREAM = "vb:turns"
WORKER_GROUP = "vb:workers"
DEAD_LETTER_STREAM = "vb:turns:dead"
TURN_FIELD = b"t"

TURN_STREAM_MAXLEN = 100_000
DEAD_LETTER_MAXLEN = 10_000
CALL_TTL_S = 4 * 3600
CALLER_KEY_TTL_S = 90 * 24 * 3600
WORKER_ALIVE_TTL_S = 30


def turn_mark(call_sid: str, seq: int) -> str:
    return f"vb:turn:{call_sid}:{seq}"


def call_state(call_sid: str) -> str:
    return f"vb:call:{call_sid}"


def late_replies(call_sid: str) -> str:
    return f"vb:call:{call_sid}:late"


def caller_key(user_id: str) -> str:
    return f"vb:caller:{user_id}"


def worker_alive(name: str) -> str:
    return f"vb:worker:{name}:alive"


# Fields of the call_state hash.
F_CONVERSATION = "conv"
F_USER_KEY = "ukey"
F_USER_ID = "uid"
F_DONE_SEQ = "done"
F_HAS_LATE = "late"
F_OPTIONS = "opts"
