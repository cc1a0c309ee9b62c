"""In-memory state, one Workspace per webhook id. No I/O, no awaits: every operation is atomic
on the event loop, which is what keeps message order and timestamps consistent."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .errors import InvalidPayloadError

if TYPE_CHECKING:
    from .signals import Listener

# The platform's foreign-id rule (integrations/chat validate-fid.ts).
MAX_FID_LENGTH = 70
_FID_RE = re.compile(r"^[a-zA-Z0-9_\-\\/]+$")
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def validate_fid(fid: Any, what: str = "id") -> str:
    if not isinstance(fid, str):
        raise InvalidPayloadError(f"{what} must be a string")
    if len(fid) > MAX_FID_LENGTH:
        raise InvalidPayloadError(
            f"Fid length exceeds the maximum allowed length of {MAX_FID_LENGTH}"
        )
    if not _FID_RE.match(fid):
        raise InvalidPayloadError("Fid contains invalid characters")
    return fid


def new_id(prefix: str) -> str:
    """A ULID with a type prefix, like the platform's `conv_01J...` ids."""
    n = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[n & 31])
        n >>= 5
    return f"{prefix}_{''.join(reversed(chars))}"


class Clock:
    """ISO 8601 timestamps with ms and `Z`, strictly increasing, so that createdAt orders
    messages even when a bot answers within the same millisecond."""

    def __init__(self) -> None:
        self._last_ms = 0

    def now(self) -> str:
        ms = max(time.time_ns() // 1_000_000, self._last_ms + 1)
        self._last_ms = ms
        dt = datetime.fromtimestamp(ms / 1000, UTC)
        return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


@dataclass(slots=True)
class User:
    id: str
    created_at: str
    updated_at: str
    name: str | None = None
    picture_url: str | None = None
    profile: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id}
        if self.name is not None:
            out["name"] = self.name
        if self.picture_url is not None:
            out["pictureUrl"] = self.picture_url
        if self.profile is not None:
            out["profile"] = self.profile
        out["createdAt"] = self.created_at
        out["updatedAt"] = self.updated_at
        return out

    def update(self, body: dict[str, Any], now: str) -> None:
        for key, attr in (("name", "name"), ("pictureUrl", "picture_url"), ("profile", "profile")):
            if key in body:
                value = body[key]
                if value is not None and not isinstance(value, str):
                    raise InvalidPayloadError(f"{key} must be a string")
                setattr(self, attr, value)
        self.updated_at = now


@dataclass(slots=True)
class Message:
    id: str
    created_at: str
    payload: dict[str, Any]
    user_id: str
    conversation_id: str
    metadata: dict[str, Any] | None
    seq: int

    def to_json(self) -> dict[str, Any]:
        out = {
            "id": self.id,
            "createdAt": self.created_at,
            "payload": self.payload,
            "userId": self.user_id,
            "conversationId": self.conversation_id,
        }
        if self.metadata is not None:
            out["metadata"] = self.metadata
        return out


@dataclass(slots=True)
class Event:
    id: str
    created_at: str
    payload: dict[str, Any]
    conversation_id: str
    user_id: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "createdAt": self.created_at,
            "payload": self.payload,
            "conversationId": self.conversation_id,
            "userId": self.user_id,
        }


@dataclass(slots=True)
class Conversation:
    id: str
    owner: str
    created_at: str
    updated_at: str
    # Insertion-ordered set of participant user ids.
    participants: dict[str, None] = field(default_factory=dict)
    messages: list[Message] = field(default_factory=list)
    listeners: set[Listener] = field(default_factory=set)
    # Bot-side memory: has the bot greeted yet, and free-form state for scenarios.
    greeted: bool = False
    bot_state: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "createdAt": self.created_at, "updatedAt": self.updated_at}


class Workspace:
    """Everything one webhook id (one bot) knows."""

    def __init__(self, webhook_id: str, clock: Clock) -> None:
        self.webhook_id = webhook_id
        self.clock = clock
        self.users: dict[str, User] = {}
        self.conversations: dict[str, Conversation] = {}
        self.messages: dict[str, Message] = {}
        self.events: dict[str, Event] = {}
        self._seq = 0
        now = clock.now()
        # The bot speaks as its own user, never a participant the client manages.
        self.bot_user = User(id=new_id("user"), created_at=now, updated_at=now, name="Bot")

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def add_user(self, user_id: str | None = None) -> User:
        now = self.clock.now()
        user = User(id=user_id or new_id("user"), created_at=now, updated_at=now)
        self.users[user.id] = user
        return user

    def add_conversation(self, owner: str, conv_id: str | None = None) -> Conversation:
        now = self.clock.now()
        conv = Conversation(
            id=conv_id or new_id("conv"), owner=owner, created_at=now, updated_at=now
        )
        conv.participants[owner] = None
        self.conversations[conv.id] = conv
        return conv

    def add_message(
        self,
        conv: Conversation,
        user_id: str,
        payload: dict[str, Any],
        metadata: dict[str, Any] | None,
    ) -> Message:
        msg = Message(
            id=new_id("msg"),
            created_at=self.clock.now(),
            payload=payload,
            user_id=user_id,
            conversation_id=conv.id,
            metadata=metadata,
            seq=self.next_seq(),
        )
        conv.messages.append(msg)
        self.messages[msg.id] = msg
        return msg

    def add_event(self, conv: Conversation, user_id: str, payload: dict[str, Any]) -> Event:
        event = Event(
            id=new_id("evt"),
            created_at=self.clock.now(),
            payload=payload,
            conversation_id=conv.id,
            user_id=user_id,
        )
        self.events[event.id] = event
        return event

    def delete_conversation(self, conv: Conversation) -> None:
        for msg in conv.messages:
            self.messages.pop(msg.id, None)
        self.conversations.pop(conv.id, None)

    def delete_message(self, msg: Message) -> None:
        self.messages.pop(msg.id, None)
        conv = self.conversations.get(msg.conversation_id)
        if conv is not None:
            conv.messages = [m for m in conv.messages if m.id != msg.id]


class Store:
    def __init__(self) -> None:
        self.clock = Clock()
        self._workspaces: dict[str, Workspace] = {}

    def workspace(self, webhook_id: str) -> Workspace:
        ws = self._workspaces.get(webhook_id)
        if ws is None:
            ws = self._workspaces[webhook_id] = Workspace(webhook_id, self.clock)
        return ws

    def __iter__(self) -> Iterator[Workspace]:
        return iter(self._workspaces.values())


def paginate_newest_first(
    messages: list[Message], next_token: str | None, page_size: int
) -> tuple[list[Message], str | None]:
    """Newest first, like the platform. The token is the seq of the last item returned, so
    pages stay stable while new messages arrive."""
    before = _parse_token(next_token)
    out: list[Message] = []
    for msg in reversed(messages):
        if before is not None and msg.seq >= before:
            continue
        out.append(msg)
        if len(out) == page_size:
            break
    more = bool(out) and out[-1] is not messages[0] if messages else False
    return out, (str(out[-1].seq) if more else None)


def paginate(
    items: list[Any], next_token: str | None, page_size: int
) -> tuple[list[Any], str | None]:
    start = _parse_token(next_token) or 0
    page = items[start : start + page_size]
    end = start + len(page)
    return page, (str(end) if end < len(items) else None)


def _parse_token(token: str | None) -> int | None:
    if not token:
        return None
    try:
        return int(token)
    except ValueError:
        raise InvalidPayloadError("Invalid nextToken") from None
