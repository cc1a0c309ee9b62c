"""Every Redis key, stream and group voicebridge uses — the whole layout in one place.

Names only: `shared/callstore.py` owns every operation on a call's keys, the worker's stream
loop and recovery own the stream and group, the heartbeat owns the liveness keys.

  vb:turns                     stream   one entry per turn, field "t" = TurnRequest bytes;
                                        trimmed approximately to TURN_STREAM_MAXLEN on XADD
  vb:workers                   group    the workers' consumer group on vb:turns
  vb:turns:dead                stream   turns given up after too many deliveries (trimmed)
  vb:turn:{call_sid}:{seq}     string   the edge's idempotency mark for a turn (Twilio retries);
                                        value: the newest webhook attempt's id (a retry
                                        overwrites it: CallStore.is_current_attempt)
  vb:call:{call_sid}           hash     call state: conversation, user key, the last finished seq
                                        (turns run in order), late-reply flag, options; created
                                        by the call's first turn ("started"), so a later turn that
                                        finds none knows the state was lost ("lost"); "seq",
                                        the highest caller turn written, is where a relay
                                        session that takes over the call goes on
  vb:call:{call_sid}:late      list     TurnReply bytes that missed their edge's deadline,
                                        spoken at the call's next webhook
  vb:caller:{user_id}          string   shared-mode Botpress user key of a returning caller
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
CALLER_KEY_TTL_S = 90 * 24 * 3600
BOT_GAPS_TTL_S = 7 * 24 * 3600
# Short, so a killed worker's turns are taken over within seconds (worker/recovery.py).
WORKER_ALIVE_TTL_S = 4
WORKER_HEARTBEAT_S = 1.0


def turn_mark(call_sid: str, seq: int) -> str:
    return f"vb:turn:{call_sid}:{seq}"


def call_state(call_sid: str) -> str:
    return f"vb:call:{call_sid}"


def late_replies(call_sid: str) -> str:
    return f"vb:call:{call_sid}:late"


def caller_key(user_id: str) -> str:
    return f"vb:caller:{user_id}"


def bot_turn_gaps(bot: str) -> str:
    digest = hashlib.sha1(bot.encode(), usedforsecurity=False).hexdigest()[:16]
    return f"vb:bot:{digest}:gaps"


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
F_LAST_SEQ = "seq"
# The call's language since the bot switched it (<language code/>, a VOICES code); unset: LANGUAGE.
F_LANGUAGE = "lang"
# The stream entry of the call's latest caller turn: the next turn's snapshot carries its
# predecessor's, so a worker can take that turn from a backlog rather than wait for it.
F_LAST_ENTRY = "entry"
