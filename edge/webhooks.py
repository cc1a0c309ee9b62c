"""Twilio's webhooks: the call comes in, the caller spoke (or was silent), the call ended.

Each resource is checked by edge/guard.py before its responder runs (`twilio_webhook = True`;
the checked request is `req.context.twilio`); the turn logic is edge/turns.py.
"""

from __future__ import annotations

import falcon
import falcon.asgi

from edge.guard import TwilioRequest, parse_small_int
from edge.turns import CallTurns
from edge.twiml import Twiml
from shared.pb import voicebridge_pb2 as pb

TWIML_TYPE = "application/xml"
FINAL_CALL_STATUSES = frozenset({"completed", "busy", "failed", "no-answer", "canceled"})


def _query_int(req: falcon.asgi.Request, name: str) -> int:
    value = parse_small_int(req.get_param(name))
    if value is None:
        raise falcon.HTTPBadRequest(description=f"missing or bad {name!r} query parameter")
    return value


class VoiceWebhook:
    """POST /twilio/voice — "A call comes in": the one URL pasted into the Twilio console."""

    twilio_webhook = True

    def __init__(self, turns: CallTurns, twiml: Twiml, enabled: bool) -> None:
        self._turns, self._twiml, self._enabled = turns, twiml, enabled

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        tw: TwilioRequest = req.context.twilio
        resp.content_type = TWIML_TYPE
        if not self._enabled:
            resp.text = self._twiml.unavailable()
            return
        resp.text = await self._turns.take_turn(tw, pb.TurnRequest.CALL_START, seq=0)


class GatherWebhook:
    """POST /twilio/gather?turn=N&silent=K — the Gather action: the caller spoke, or was silent."""

    twilio_webhook = True

    def __init__(self, turns: CallTurns) -> None:
        self._turns = turns

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        tw: TwilioRequest = req.context.twilio
        seq = _query_int(req, "turn")
        silent = _query_int(req, "silent") if req.get_param("silent") is not None else 0
        if seq < 1:
            raise falcon.HTTPBadRequest(description="turn must be >= 1")
        resp.content_type = TWIML_TYPE
        speech = tw.params.get("SpeechResult").strip()
        if not speech:
            resp.text = await self._turns.silence(tw, seq, silent)
            return
        try:
            confidence = float(tw.params.get("Confidence") or 0.0)
        except ValueError:
            confidence = 0.0
        resp.text = await self._turns.take_turn(tw, pb.TurnRequest.SPEECH, seq, speech, confidence)


class StatusWebhook:
    """POST /twilio/status — the status callback: a final CallStatus ends the call."""

    twilio_webhook = True

    def __init__(self, turns: CallTurns) -> None:
        self._turns = turns

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        tw: TwilioRequest = req.context.twilio
        status = tw.params.get("CallStatus")
        resp.status = falcon.HTTP_204
        if status in FINAL_CALL_STATUSES:
            await self._turns.end_call(tw, status)
