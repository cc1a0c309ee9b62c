"""Botpress ids we choose: at most 70 chars of [a-zA-Z0-9_\\-\\\\/] (a '+' is refused)."""

from __future__ import annotations

import re

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
