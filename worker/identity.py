"""Who the caller is to Botpress: the ids we choose (at most 70 chars of [a-zA-Z0-9_\\-\\\\/],
a '+' is refused) and the user and conversation found again or created for a call."""

from __future__ import annotations

import logging
import re
import secrets

from shared.callstore import CallState, CallStore
from shared.pb import voicebridge_pb2 as pb
from worker.botpress_client import BotpressClient, BotpressError

log = logging.getLogger(__name__)

# How long a call waits for a concurrent call from the same number to store the caller's key.
CONCURRENT_CALLER_WAIT_S = 3.0

_NOT_ALLOWED = re.compile(r"[^a-zA-Z0-9_\-]")
MAX_ID = 70


def caller_user_id(number: str) -> str:
    """One stable Botpress user per caller number: '+14155550100' -> 'tel-14155550100'."""
    number = number.strip()
    if re.fullmatch(r"\+\d{1,20}", number):
        return f"tel-{number[1:]}"
    if not number:
        return "tel-anonymous"
    # Anything else (client:alice, sip:..., "Anonymous"): escape, so distinct numbers stay distinct.
    escaped = _NOT_ALLOWED.sub(lambda m: f"_{ord(m.group()):02x}", number)
    return f"id-{escaped}"[:MAX_ID]


def conversation_id(call_sid: str) -> str:
    """One conversation per call; a CallSid (CA + 32 hex) is already a valid id."""
    return _NOT_ALLOWED.sub("_", call_sid)[:MAX_ID]


class CallerIdentity:
    """The Botpress user and conversation behind a call, found again or created.

    Encryption-key mode signs the user key locally (same id, same key, always). Shared mode
    creates the user once per caller number and keeps its key in Redis across calls; when that
    key is gone (Redis flushed) the user cannot be reached again, so the call gets a fresh user
    and, since a conversation belongs to its user, a fresh conversation.
    """

    def __init__(self, bot: BotpressClient, store: CallStore, bot_scope: str = "") -> None:
        self._bot = bot
        self._store = store
        # Whose caller keys these are in Redis: "" the environment's bot, else another bot's
        # Chat API URL (ROUTES_FILE): one caller is one Botpress user per bot.
        self._scope = bot_scope

    async def ensure(
        self, turn: pb.TurnRequest, state: CallState, deadline: float, fresh_key: bool = False
    ) -> None:
        if state.user_key and state.conversation and not fresh_key:
            return
        # The person on the line: the caller, or whom we called (POST /v1/calls).
        person = turn.to_number if turn.outbound else turn.from_number
        state.user_id = state.user_id or caller_user_id(person)
        conversation = conversation_id(turn.call_sid)
        if self._bot.signs_user_keys:
            state.user_key = self._bot.sign_user_key(state.user_id)
            await self._bot.get_or_create_user(state.user_key, deadline=deadline)
        else:
            stale = state.user_key if fresh_key else None
            stored = None if fresh_key else await self._store.caller_key(state.user_id, self._scope)
            if stored:
                state.user_key = stored
            else:
                base_id = state.user_id
                state.user_key = await self._create_shared_user(state, deadline, stale)
                if state.user_id != base_id:
                    conversation = conversation_id(f"{turn.call_sid}-{state.user_id[-10:]}")
        state.conversation = conversation
        await self._bot.get_or_create_conversation(
            state.user_key, state.conversation, deadline=deadline
        )

    async def _create_shared_user(
        self, state: CallState, deadline: float, stale: str | None = None
    ) -> str:
        try:
            key = await self._bot.create_user(state.user_id, deadline=deadline)
        except BotpressError as exc:
            if exc.status != 409:
                raise
            # Most often a concurrent call from the same number created the user a moment ago
            # and is about to store its key. A call whose state was lost has no such sibling
            # to wait for.
            wait_s = 0.0 if stale or state.lost else CONCURRENT_CALLER_WAIT_S
            stored = await self._store.wait_for_caller_key(
                state.user_id, stale, wait_s, self._scope
            )
            if stored:
                return stored
            # The user exists but its key was lost (Redis flushed): a fresh user for this call.
            log.warning(
                "caller's Botpress key lost; creating a new user", extra={"error": exc.type}
            )
            # Random, not a timestamp: calls from one number at once must not collide.
            state.user_id = f"{state.user_id[: MAX_ID - 9]}-{secrets.token_hex(4)}"
            key = await self._bot.create_user(state.user_id, deadline=deadline)
        await self._store.save_caller_key(state.user_id, key, self._scope)
        return key
