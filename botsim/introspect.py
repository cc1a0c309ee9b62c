"""botsim-only introspection, NOT part of the Chat API: `GET /{webhookId}/_botsim/turns`.

For the fault suite (faultsuite/): per conversation, how many user messages carry each
`metadata.voicebridge.turnId` (more than one = the bot saw that turn twice), and which turns the
bot never answered (a stall, or the conversation ended first). Read-only, no auth.
"""

from __future__ import annotations

from typing import Any

import falcon
import falcon.asgi

from .store import Conversation, Store, Workspace


def turn_id(metadata: dict[str, Any] | None) -> str | None:
    vb = (metadata or {}).get("voicebridge")
    value = vb.get("turnId") if isinstance(vb, dict) else None
    return value if isinstance(value, str) else None


def conversation_turns(ws: Workspace, conv: Conversation) -> dict[str, Any]:
    counts: dict[str, int] = {}
    unanswered: list[str] = []
    waiting: str | None = None  # the last user turn, until a bot message follows it
    for msg in conv.messages:
        if msg.user_id == ws.bot_user.id:
            waiting = None
            continue
        if waiting is not None:
            unanswered.append(waiting)
        tid = turn_id(msg.metadata) or f"?{msg.id}"
        counts[tid] = counts.get(tid, 0) + 1
        waiting = tid
    if waiting is not None:
        unanswered.append(waiting)
    return {"turnIds": counts, "unanswered": unanswered}


class BotsimTurns:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def on_get(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, **params: str
    ) -> None:
        ws = self._store.workspace(params["webhook_id"])
        resp.media = {
            "conversations": {
                conv.id: conversation_turns(ws, conv) for conv in ws.conversations.values()
            }
        }
