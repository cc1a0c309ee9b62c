"""Every Redis key, stream and group voicebridge uses — the whole layout in one place.

Names only: `shared/callstore.py` owns every operation on a call's keys, the worker's stream
loop and recovery own the stream and group, the heartbeat owns the liveness keys.

  vb:turns                     stream   one entry per turn, field "t" = TurnRequest bytes;
                                        trimmed approximately to TURN_STREAM_MAXLEN on XADD
  vb:workers                   group    the workers' consumer group on vb:turns
  vb:turns:dead                stream   turns given up after too many deliveries (trimmed)
  vb:turn:{call_sid}:{seq}     string   the edge's idempotency mark for a turn (Twilio retries);
                                        value: the newest webhook attempt's id (a retry
                                        overwrites it: CallStore.keep_answer)
  vb:turn:{call_sid}:{seq}:answer list  TurnReply bytes a webhook attempt answered the turn with:
                                        a retry Twilio sends after it gave up on that attempt
                                        gets the same answer (ANSWER_TTL_S)
  vb:call:{call_sid}           hash     call state: conversation, user key, the last finished seq
                                        (turns run in order), late-reply flag, options; created
                                        by the call's first turn ("started"), so a later turn that
                                        finds none knows the state was lost ("lost"); "seq",
                                        the highest caller turn written, is where a relay
                                        session that takes over the call goes on
  vb:call:{call_sid}:late      list     TurnReply bytes that missed their edge's deadline,
                                        spoken at the call's next webhook
  vb:caller:{user_id}          string   shared-mode Botpress user key of a returning caller, of
                                        the environment's bot (BOTPRESS_*: names as before
                                        ROUTES_FILE, so an upgrade keeps its callers)
  vb:caller:{bot}:{user_id}    string   the same for another bot of ROUTES_FILE: one caller is
                                        one Botpress user per bot; {bot} = a hash of its Chat
                                        API base URL, so two numbers on one bot share the user
  vb:bot:{bot}:gaps            list     recent turns' largest gap between bot messages (s), the
                                        learned quiet window's samples (worker/end_of_turn.py);
                                        {bot} = a hash of the Chat API base URL
  vb:worker:{name}:alive       string   worker liveness heartbeat: held by one live process (its
                                        token), refreshed every WORKER_HEARTBEAT_S; gone within
                                        WORKER_ALIVE_TTL_S of a crash, then its turns are taken
  vb:worker:{name}:held        zset     entry ids read ahead into that worker's backlog and not
                                        started, by deadline: whoever removes an id runs the
                                        turn, so a worker with free slots can take them
                                        (worker/sharing.py)
  vb:holders                   set      names of workers whose held set may be non-empty

Outbound calls (POST /v1/calls; shared/outbound_store.py owns every operation on these):

  vb:outbound:{id}             hash     one placed call under our id, written before Twilio is
                                        asked: status, to, from, context, sid, answeredBy,
                                        duration, Twilio's error; OUTBOUND_TTL_S
  vb:outbound:sid:{call_sid}   string   Twilio's CallSid -> our id (GET /v1/calls/{callSid},
                                        the webhooks of the call); OUTBOUND_TTL_S
  vb:outbound:idem:{digest}    string   an Idempotency-Key (sha256) -> the id it placed; so
                                        long, the same key places nothing new
  vb:outbound:cps              zset     ids placed in the last second, by ms: OUTBOUND_MAX_CPS
                                        holds across every edge process

Per-call keys expire CALL_TTL_S after their last write: a dead call leaves nothing behind.
"""

from __future__ import annotations

import hashlib

TURN_STREAM = "vb:turns"
WORKER_GROUP = "vb:workers"
DEAD_LETTER_STREAM = "vb:turns:dead"
TURN_FIELD = b"t"

TURN_STREAM_MAXLEN = 100_000
DEAD_LETTER_MAXLEN = 10_000
CALL_TTL_S = 4 * 3600
# An ended call's hash stays this long, marked ended: long enough for any of its turns still
# queued (a backlog, an order wait, a reclaim after the visibility timeout) to see it.
ENDED_TTL_S = 300
# Twilio retries a webhook within its 15 s timeout: an answer is kept this long for a retry.
ANSWER_TTL_S = 60
CALLER_KEY_TTL_S = 90 * 24 * 3600
BOT_GAPS_TTL_S = 7 * 24 * 3600
# Short, so a killed worker's turns are taken over within seconds (worker/recovery.py).
WORKER_ALIVE_TTL_S = 4
WORKER_HEARTBEAT_S = 1.0


def turn_mark(call_sid: str, seq: int) -> str:
    return f"vb:turn:{call_sid}:{seq}"


def turn_answer(call_sid: str, seq: int) -> str:
    return f"vb:turn:{call_sid}:{seq}:answer"


def call_state(call_sid: str) -> str:
    return f"vb:call:{call_sid}"


def late_replies(call_sid: str) -> str:
    return f"vb:call:{call_sid}:late"


def caller_key(user_id: str, bot: str = "") -> str:
    """`bot`: the Chat API base URL of a bot other than the environment's ("" for that one)."""
    if not bot:
        return f"vb:caller:{user_id}"
    return f"vb:caller:{bot_digest(bot)}:{user_id}"


def bot_digest(bot: str) -> str:
    """A short, stable name for a bot (its Chat API base URL) inside keys."""
    return hashlib.sha1(bot.encode(), usedforsecurity=False).hexdigest()[:16]


def bot_turn_gaps(bot: str) -> str:
    return f"vb:bot:{bot_digest(bot)}:gaps"


# An outbound call's record outlives the call by a day: GET /v1/calls and an Idempotency-Key
# replayed the next morning still find it (Stripe keeps its idempotency keys 24 h too).
OUTBOUND_TTL_S = 24 * 3600
OUTBOUND_CPS = "vb:outbound:cps"


def outbound_call(call_id: str) -> str:
    return f"vb:outbound:{call_id}"


def outbound_sid(call_sid: str) -> str:
    return f"vb:outbound:sid:{call_sid}"


def outbound_idempotency(key: str) -> str:
    digest = hashlib.sha256(key.encode()).hexdigest()
    return f"vb:outbound:idem:{digest}"


WORKER_KEY_PREFIX = "vb:worker:"
ALIVE_SUFFIX = ":alive"
HELD_SUFFIX = ":held"
HOLDERS = "vb:holders"


def worker_alive(name: str) -> str:
    return f"{WORKER_KEY_PREFIX}{name}{ALIVE_SUFFIX}"


def worker_held(name: str) -> str:
    return f"{WORKER_KEY_PREFIX}{name}{HELD_SUFFIX}"


# Fields of the call_state hash.
F_CONVERSATION = "conv"
F_USER_KEY = "ukey"
F_USER_ID = "uid"
F_DONE_SEQ = "done"
F_HAS_LATE = "late"
F_OPTIONS = "opts"
F_STARTED = "started"
F_LOST = "lost"
# The call ended (its final status came): turns of it still queued are not sent to the bot.
F_ENDED = "ended"
F_LAST_SEQ = "seq"
# The call's language since the bot switched it (<language code/>, a VOICES code); unset: LANGUAGE.
F_LANGUAGE = "lang"
# The stream entry of the call's latest caller turn: the next turn's snapshot carries its
# predecessor's, so a worker can take that turn from a backlog rather than wait for it.
F_LAST_ENTRY = "entry"
