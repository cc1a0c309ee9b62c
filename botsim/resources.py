"""HTTP resources, one per route of the Chat API (see @botpress/chat dist/gen/client).

Rules (owner/participant checks, foreign-id validation, signals emitted) follow the platform's
integrations/chat `api/operations/*.ts`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, ClassVar

import falcon
import falcon.asgi
from falcon.asgi import SSEvent

from . import signals
from .auth import KeyVerifier, authenticated, request_user_id
from .config import BotsimConfig
from .errors import (
    AlreadyExistsError,
    ForbiddenError,
    InvalidPayloadError,
    ResourceNotFoundError,
)
from .payloads import validate_payload
from .runtime import BotRunner
from .store import (
    Conversation,
    Store,
    User,
    Workspace,
    paginate,
    paginate_newest_first,
    validate_fid,
)

HELLO_TEXT = "Hello, Botpress User \U0001f916"
DISCONNECT_HOOKS = "botsim.on_disconnect"


@dataclass
class Services:
    config: BotsimConfig
    store: Store
    keys: KeyVerifier
    runner: BotRunner
    keepalive: signals.KeepAlive
    rng: random.Random


class _Base:
    # True on @authenticated resources (auth.py): a valid x-user-key before every responder.
    auth_required: ClassVar[bool] = False

    def __init__(self, svc: Services) -> None:
        self.svc = svc

    @property
    def keys(self) -> KeyVerifier:
        return self.svc.keys

    def user_of(self, req: falcon.asgi.Request, params: dict[str, Any]) -> tuple[Workspace, User]:
        """The workspace and the user whose key @authenticated verified."""
        user_id = request_user_id(req)
        ws = self.svc.store.workspace(params["webhook_id"])
        user = ws.users.get(user_id)
        if user is None:
            raise ResourceNotFoundError(f"User {user_id} does not exist")
        return ws, user

    @staticmethod
    def conversation(ws: Workspace, conv_id: Any) -> Conversation:
        conv = ws.conversations.get(conv_id) if isinstance(conv_id, str) else None
        if conv is None:
            raise ResourceNotFoundError(f"Conversation {conv_id} does not exist")
        return conv

    @staticmethod
    def as_participant(conv: Conversation, user: User, what: str = "conversation") -> None:
        if user.id not in conv.participants:
            raise ForbiddenError(f"You are not a participant in this {what}")

    @staticmethod
    def as_owner(conv: Conversation, user: User) -> None:
        if conv.owner != user.id:
            raise ForbiddenError("You are not the owner of this conversation")


async def body(req: falcon.asgi.Request) -> dict[str, Any]:
    media = await req.get_media(default_when_empty={})
    if not isinstance(media, dict):
        raise InvalidPayloadError("The request body must be a JSON object")
    return media


def _optional_str(b: dict[str, Any], key: str) -> None:
    if key in b and b[key] is not None and not isinstance(b[key], str):
        raise InvalidPayloadError(f"{key} must be a string")


class Hello(_Base):  # open: the client's first call, before it has a user
    async def on_get(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, **params: str
    ) -> None:
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = HELLO_TEXT


class Users(_Base):  # open: creating a user is how a client gets its key
    async def on_post(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, **params: str
    ) -> None:
        b = await body(req)
        ws = self.svc.store.workspace(params["webhook_id"])
        user_id = b.get("id")
        if user_id is not None:
            validate_fid(user_id)
            if user_id in ws.users:
                raise AlreadyExistsError(f"User {user_id} already exists")
        for key in ("name", "pictureUrl", "profile"):
            _optional_str(b, key)
        user = ws.add_user(user_id)
        user.update(b, user.updated_at)
        resp.media = {"user": user.to_json(), "key": self.svc.keys.issue(ws.webhook_id, user.id)}


@authenticated
class UsersGetOrCreate(_Base):
    async def on_post(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, **params: str
    ) -> None:
        user_id = request_user_id(req)
        b = await body(req)
        ws = self.svc.store.workspace(params["webhook_id"])
        user = ws.users.get(user_id)
        if user is None:
            validate_fid(user_id)
            user = ws.add_user(user_id)
        user.update(b, ws.clock.now())
        resp.media = {"user": user.to_json()}


@authenticated
class UsersMe(_Base):
    async def on_get(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, **params: str
    ) -> None:
        _, user = self.user_of(req, params)
        resp.media = {"user": user.to_json()}

    async def on_put(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, **params: str
    ) -> None:
        ws, user = self.user_of(req, params)
        user.update(await body(req), ws.clock.now())
        resp.media = {"user": user.to_json()}

    async def on_delete(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, **params: str
    ) -> None:
        ws, user = self.user_of(req, params)
        del ws.users[user.id]
        resp.media = {}


@authenticated
class Conversations(_Base):
    async def on_post(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, **params: str
    ) -> None:
        ws, user = self.user_of(req, params)
        conv_id = (await body(req)).get("id")
        if conv_id is not None:
            validate_fid(conv_id)
            if conv_id in ws.conversations:
                raise AlreadyExistsError(f"Conversation {conv_id} already exists")
        conv = ws.add_conversation(user.id, conv_id)
        resp.media = {"conversation": conv.to_json()}

    async def on_get(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, **params: str
    ) -> None:
        ws, user = self.user_of(req, params)
        owned = [c for c in ws.conversations.values() if c.owner == user.id]
        page, token = paginate(owned, req.get_param("nextToken"), self.svc.config.page_size)
        resp.media = {"conversations": [c.to_json() for c in page], "meta": _meta(token)}


@authenticated
class ConversationsGetOrCreate(_Base):
    async def on_post(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, **params: str
    ) -> None:
        ws, user = self.user_of(req, params)
        conv_id = (await body(req)).get("id")
        if not isinstance(conv_id, str):
            raise InvalidPayloadError("id is required")
        conv = ws.conversations.get(conv_id)
        if conv is None:
            validate_fid(conv_id)
            conv = ws.add_conversation(user.id, conv_id)
        else:
            self.as_owner(conv, user)
        resp.media = {"conversation": conv.to_json()}


@authenticated
class ConversationItem(_Base):
    async def on_get(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, **params: str
    ) -> None:
        ws, user = self.user_of(req, params)
        conv = self.conversation(ws, params["id"])
        self.as_participant(conv, user, "message's conversation")
        resp.media = {"conversation": conv.to_json()}

    async def on_delete(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, **params: str
    ) -> None:
        ws, user = self.user_of(req, params)
        conv = self.conversation(ws, params["id"])
        self.as_owner(conv, user)
        ws.delete_conversation(conv)
        for listener in list(conv.listeners):
            listener.close()
        resp.media = {}


@authenticated
class ConversationMessages(_Base):
    async def on_get(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, **params: str
    ) -> None:
        ws, user = self.user_of(req, params)
        conv = self.conversation(ws, params["id"])
        self.as_participant(conv, user)
        page, token = paginate_newest_first(
            conv.messages, req.get_param("nextToken"), self.svc.config.page_size
        )
        resp.media = {"messages": [m.to_json() for m in page], "meta": _meta(token)}


class _RawFrame(SSEvent):
    """Already-encoded SSE bytes: encoded once in signals.publish, shared by all listeners."""

    def __init__(self, frame: bytes) -> None:
        super().__init__()
        self.frame = frame

    def serialize(self, handler: Any = None) -> bytes:
        return self.frame


@authenticated
class ConversationListen(_Base):
    async def on_get(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, **params: str
    ) -> None:
        ws, user = self.user_of(req, params)
        conv = self.conversation(ws, params["id"])
        self.as_participant(conv, user)
        listener = signals.Listener(user.id)
        conv.listeners.add(listener)
        hooks = req.scope.get(DISCONNECT_HOOKS)
        if hooks is not None:
            hooks.append(listener.close)
        self.svc.keepalive.ensure_started()
        resp.set_header("Cache-Control", "no-cache")
        resp.sse = _stream(conv, listener)


async def _stream(conv: Conversation, listener: signals.Listener) -> Any:
    try:
        async for frame in listener.frames():
            yield _RawFrame(frame)
    finally:
        conv.listeners.discard(listener)


@authenticated
class Participants(_Base):
    async def on_get(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, **params: str
    ) -> None:
        ws, user = self.user_of(req, params)
        conv = self.conversation(ws, params["id"])
        self.as_participant(conv, user, "message's conversation")
        users = [ws.users[u] for u in conv.participants if u in ws.users]
        page, token = paginate(users, req.get_param("nextToken"), self.svc.config.page_size)
        resp.media = {"participants": [u.to_json() for u in page], "meta": _meta(token)}

    async def on_post(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, **params: str
    ) -> None:
        ws, user = self.user_of(req, params)
        conv = self.conversation(ws, params["id"])
        self.as_owner(conv, user)
        other_id = (await body(req)).get("userId")
        other = ws.users.get(other_id) if isinstance(other_id, str) else None
        if other is None:
            raise ResourceNotFoundError(f"User {other_id} does not exist")
        conv.participants[other.id] = None
        signals.publish(
            conv.listeners,
            "participant_added",
            {"conversationId": conv.id, "participantId": other.id},
        )
        resp.media = {"participant": other.to_json()}


@authenticated
class Participant(_Base):
    async def on_get(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, **params: str
    ) -> None:
        ws, user = self.user_of(req, params)
        conv = self.conversation(ws, params["id"])
        self.as_owner(conv, user)
        other = ws.users.get(params["user_id"])
        if other is None or other.id not in conv.participants:
            raise ResourceNotFoundError(f"Participant {params['user_id']} does not exist")
        resp.media = {"participant": other.to_json()}

    async def on_delete(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, **params: str
    ) -> None:
        ws, user = self.user_of(req, params)
        conv = self.conversation(ws, params["id"])
        self.as_owner(conv, user)
        other_id = params["user_id"]
        if other_id == conv.owner:
            raise InvalidPayloadError(
                "You cannot remove yourself from the conversation because you are its owner"
            )
        conv.participants.pop(other_id, None)
        for listener in [x for x in conv.listeners if x.user_id == other_id]:
            listener.close()
        signals.publish(
            conv.listeners,
            "participant_removed",
            {"conversationId": conv.id, "participantId": other_id},
        )
        resp.media = {}


@authenticated
class Messages(_Base):
    async def on_post(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, **params: str
    ) -> None:
        ws, user = self.user_of(req, params)
        b = await body(req)
        conv = self.conversation(ws, b.get("conversationId"))
        self.as_participant(conv, user, "message's conversation")
        payload = validate_payload(b.get("payload"))
        metadata = b.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise InvalidPayloadError("metadata must be an object")
        msg = ws.add_message(conv, user.id, payload, metadata)
        data = msg.to_json()
        resp.media = {"message": data}
        signals.publish(conv.listeners, "message_created", {**data, "isBot": False})
        self.svc.runner.on_message(ws, conv, msg)


@authenticated
class MessageItem(_Base):
    async def on_get(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, **params: str
    ) -> None:
        ws, user = self.user_of(req, params)
        msg = ws.messages.get(params["id"])
        if msg is None:
            raise ResourceNotFoundError(f"Message {params['id']} does not exist")
        conv = self.conversation(ws, msg.conversation_id)
        self.as_participant(conv, user, "message's conversation")
        resp.media = {"message": msg.to_json()}

    async def on_delete(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, **params: str
    ) -> None:
        ws, user = self.user_of(req, params)
        msg = ws.messages.get(params["id"])
        if msg is None:
            raise ResourceNotFoundError(f"Message {params['id']} does not exist")
        if msg.user_id != user.id:
            raise ForbiddenError("You are not the sender of this message")
        ws.delete_message(msg)
        conv = ws.conversations.get(msg.conversation_id)
        if conv is not None:
            signals.publish(
                conv.listeners,
                "message_deleted",
                {
                    "id": msg.id,
                    "conversationId": msg.conversation_id,
                    "userId": msg.user_id,
                },
            )
        resp.media = {}


@authenticated
class Events(_Base):
    async def on_post(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, **params: str
    ) -> None:
        ws, user = self.user_of(req, params)
        b = await body(req)
        conv = self.conversation(ws, b.get("conversationId"))
        self.as_participant(conv, user, "event's conversation")
        payload = b.get("payload")
        if not isinstance(payload, dict):
            raise InvalidPayloadError("payload must be an object")
        event = ws.add_event(conv, user.id, payload)
        data = event.to_json()
        resp.media = {"event": data}
        signals.publish(conv.listeners, "event_created", {**data, "isBot": False})
        self.svc.runner.on_event(ws, conv, event)


@authenticated
class EventItem(_Base):
    async def on_get(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, **params: str
    ) -> None:
        ws, user = self.user_of(req, params)
        event = ws.events.get(params["id"])
        if event is None:
            raise ResourceNotFoundError(f"Event {params['id']} does not exist")
        conv = self.conversation(ws, event.conversation_id)
        self.as_participant(conv, user, "event's conversation")
        resp.media = {"event": event.to_json()}


def _meta(token: str | None) -> dict[str, Any]:
    return {"nextToken": token} if token else {}


def build_resources(svc: Services) -> dict[str, object]:
    return {
        "hello": Hello(svc),
        "users": Users(svc),
        "users/get-or-create": UsersGetOrCreate(svc),
        "users/me": UsersMe(svc),
        "conversations": Conversations(svc),
        "conversations/get-or-create": ConversationsGetOrCreate(svc),
        "conversations/{id}": ConversationItem(svc),
        "conversations/{id}/messages": ConversationMessages(svc),
        "conversations/{id}/listen": ConversationListen(svc),
        "conversations/{id}/participants": Participants(svc),
        "conversations/{id}/participants/{userId}": Participant(svc),
        "messages": Messages(svc),
        "messages/{id}": MessageItem(svc),
        "events": Events(svc),
        "events/{id}": EventItem(svc),
    }
