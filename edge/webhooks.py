"""Twilio's webhooks: the call comes in, the caller spoke (or was silent), the call ended.

Each resource is checked by edge/guard.py before its responder runs (`twilio_webhook = True`;
the checked request is `req.context.twilio`), and edge/routing.py puts the call's route on
`req.context.route`: its settings, TwiML and turns (edge/turns.py) answer the request.
"""

from __future__ import annotations

import json
import logging
from urllib.parse import parse_qs, urlsplit

import falcon
import falcon.asgi

from edge.guard import TwilioRequest, parse_small_int
from edge.outbound import OutboundCalls, call_id_of, is_outbound
from edge.routing import EdgeRoute
from shared.pb import voicebridge_pb2 as pb

log = logging.getLogger(__name__)

TWIML_TYPE = "application/xml"
FINAL_CALL_STATUSES = frozenset({"completed", "busy", "failed", "no-answer", "canceled"})
#: DialCallStatus of a transfer the person took: when their leg ends, so does the call.
DIAL_TAKEN = frozenset({"completed", "answered"})


def _query_int(req: falcon.asgi.Request, name: str) -> int:
    value = parse_small_int(req.get_param(name))
    if value is None:
        raise falcon.HTTPBadRequest(description=f"missing or bad {name!r} query parameter")
    return value


class VoiceWebhook:
    """POST /twilio/voice — "A call comes in": the one URL pasted into the Twilio console."""

    twilio_webhook = True

    def __init__(self, outbound: OutboundCalls) -> None:
        self._outbound = outbound

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        tw: TwilioRequest = req.context.twilio
        route: EdgeRoute = req.context.route
        resp.content_type = TWIML_TYPE
        if not route.settings.enabled:
            resp.text = route.twiml.unavailable()
            return
        if is_outbound(tw):
            # A call POST /v1/calls placed was answered: by a person, a machine (after its
            # beep) or a fax. A machine hears one message and the call ends, in either mode.
            opening = await self._outbound.answered(tw, call_id_of(req))
            if opening.fax:
                resp.text = route.twiml.hang_up()
                return
            if opening.machine or not route.settings.relay:
                kind = pb.TurnRequest.CALL_START
                resp.text = await route.turns.take_turn(tw, kind, seq=0, opening=opening)
                return
        if route.settings.relay:
            # The call-start turn is the socket's (edge/relay_session.py), once Twilio connects.
            resp.text = route.twiml.connect_relay(tw.params)
            return
        resp.text = await route.turns.take_turn(tw, pb.TurnRequest.CALL_START, seq=0)


class FallbackWebhook:
    """POST /twilio/fallback — Twilio's FallbackUrl ("Primary handler fails" in the console;
    outbound calls carry it): a webhook of the call failed, most often because the edge
    process holding it died. Twilio posts the call's parameters with `ErrorCode` and
    `ErrorUrl`. A failed voice webhook is taken again: its turn 0 is idempotent, so this
    answers with its real reply (a machine's voicemail, the greeting). Any later webhook gets
    the trouble phrase and listens for that turn again; the words it carried, if written, are
    answered as a late reply."""

    twilio_webhook = True

    def __init__(self, voice: VoiceWebhook) -> None:
        self._voice = voice

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        tw: TwilioRequest = req.context.twilio
        route: EdgeRoute = req.context.route
        failed = urlsplit(tw.params.get("ErrorUrl", ""))
        log.warning(
            "twilio fallback: %s failed (%s)",
            failed.path or "?",
            tw.params.get("ErrorCode", "?"),
            extra={"call_sid": tw.call_sid},
        )
        if failed.path.endswith("/twilio/voice") or not failed.path:
            await self._voice.on_post(req, resp)
            return
        turn = parse_small_int(parse_qs(failed.query).get("turn", [""])[0]) or 1
        resp.content_type = TWIML_TYPE
        resp.text = route.twiml.speak_and_gather([route.settings.trouble_phrase], turn)


class GatherWebhook:
    """POST /twilio/gather?turn=N&silent=K — the Gather action: the caller spoke, pressed keys
    (`Digits`, checked by the guard), or was silent. Keys at a Gather that does not listen for
    them (GATHER_INPUT=speech) count as no input."""

    twilio_webhook = True

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        tw: TwilioRequest = req.context.twilio
        route: EdgeRoute = req.context.route
        turns = route.turns
        seq = _query_int(req, "turn")
        silent = _query_int(req, "silent") if req.get_param("silent") is not None else 0
        if seq < 1:
            raise falcon.HTTPBadRequest(description="turn must be >= 1")
        resp.content_type = TWIML_TYPE
        digits = tw.params.get("Digits")
        if digits and not route.settings.keypad:
            log.info("keys at a speech-only gather, ignored", extra={"call_sid": tw.call_sid})
            digits = ""
        if digits:
            resp.text = await turns.take_turn(tw, pb.TurnRequest.DTMF, seq, digits=digits)
            return
        speech = tw.params.get("SpeechResult").strip()
        if not speech:
            resp.text = await turns.silence(tw, seq, silent)
            return
        try:
            confidence = float(tw.params.get("Confidence") or 0.0)
        except ValueError:
            confidence = 0.0
        resp.text = await turns.take_turn(tw, pb.TurnRequest.SPEECH, seq, speech, confidence)


class WaitWebhook:
    """POST /twilio/wait?turn=N&loop=L — the <Redirect> after a late turn's hold phrase (and
    after each short listen that follows): speaks the call's late reply as soon as it is kept,
    so a silent caller does not sit out the Gather's whole TIMEOUT. `turn` is the next caller
    turn (the Gather's), `loop` counts the waits (1..hold_max_loops, signed by Twilio); wait
    loops never count as silent turns."""

    twilio_webhook = True

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        tw: TwilioRequest = req.context.twilio
        route: EdgeRoute = req.context.route
        max_loops = route.settings.hold_max_loops
        seq = _query_int(req, "turn")
        loop = _query_int(req, "loop")
        if seq < 1:
            raise falcon.HTTPBadRequest(description="turn must be >= 1")
        if not 1 <= loop <= max_loops:
            raise falcon.HTTPBadRequest(description=f"loop must be 1..{max_loops}")
        resp.content_type = TWIML_TYPE
        resp.text = await route.turns.hold(tw, seq, loop)


class StatusWebhook:
    """POST /twilio/status — the status callback: a final CallStatus ends the call. An
    outbound call's (`?outbound=ID`, every event) also keeps its state for GET /v1/calls."""

    twilio_webhook = True

    def __init__(self, outbound: OutboundCalls) -> None:
        self._outbound = outbound

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        tw: TwilioRequest = req.context.twilio
        route: EdgeRoute = req.context.route
        status = tw.params.get("CallStatus")
        resp.status = falcon.HTTP_204
        await self._outbound.status(tw, call_id_of(req))
        if status in FINAL_CALL_STATUSES:
            await route.turns.end_call(tw, status)


class RelayActionWebhook:
    """POST /twilio/relay-action — the <Connect action>: a ConversationRelay session ended.

    `completed`: the caller hung up. `ended`: we sent `end` (its handoffData says why). `failed`:
    the socket was lost (say the edge process holding it died): a fresh <ConversationRelay> goes
    on with the same call, and its setup continues where the call was (no second greeting)."""

    twilio_webhook = True

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        tw: TwilioRequest = req.context.twilio
        route: EdgeRoute = req.context.route
        twiml = route.twiml
        resp.content_type = TWIML_TYPE
        status = tw.params.get("SessionStatus")
        if status == "failed":
            log.warning(
                "relay session failed, connecting a new one",
                extra={
                    "call_sid": tw.call_sid,
                    "error": f"{tw.params.get('ErrorCode')} {tw.params.get('ErrorMessage')}",
                },
            )
            resp.text = twiml.connect_relay(tw.params)
        elif status == "ended":
            # Our `end` frame's handoffData: "retry" (Redis failed at the call's start) connects
            # a fresh session; "transfer" dials its target (the session checked it; so do we:
            # only a listed target is ever dialled); "hangup" (the bot's), "silence" and anything
            # else end the call.
            handoff = handoff_data(tw.params.get("HandoffData"))
            reason = handoff.get("reason")
            if reason == "retry":
                resp.text = twiml.connect_relay(tw.params)
            elif reason == "transfer":
                name = str(handoff.get("target", ""))
                target = route.turns.transfer_target(tw.call_sid, name)
                resp.text = (
                    twiml.speak_and_dial([], target, {"to": name.lower()})
                    if target is not None
                    else twiml.connect_relay(tw.params)
                )
            else:
                resp.text = twiml.hang_up()
        else:  # completed (the caller hung up), or anything newer: nothing more to do
            resp.text = twiml.empty()


def handoff_data(raw: str) -> dict[str, object]:
    """The JSON object the session sent in `end` (empty when it is not ours)."""
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


class DialStatusWebhook:
    """POST /twilio/dial-status?to=NAME[&turn=N] — the <Dial action> of a bot's transfer: the
    dialled leg ended (DialCallStatus).

    `completed`/`answered`: the person took the call and it is over: hang up. Anything else
    (busy, no-answer, failed, canceled): the call comes back to the bot, which gets a
    `transfer_failed` event; gather mode speaks its reply at once (a TRANSFER_FAILED turn at
    `turn`), relay mode connects a new session whose first turn it is."""

    twilio_webhook = True

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        tw: TwilioRequest = req.context.twilio
        route: EdgeRoute = req.context.route
        status = tw.params.get("DialCallStatus") or "failed"
        name = (req.get_param("to") or "")[:64]
        resp.content_type = TWIML_TYPE
        if status in DIAL_TAKEN:
            resp.text = route.twiml.hang_up()
            return
        log.info(
            "transfer to %s not taken: %s",
            name,
            status,
            extra={"call_sid": tw.call_sid, "call_status": status},
        )
        if route.settings.relay:
            resp.text = route.twiml.connect_relay(tw.params, transfer_failed=(name, status))
            return
        seq = _query_int(req, "turn")
        if seq < 1:
            raise falcon.HTTPBadRequest(description="turn must be >= 1")
        kind = pb.TurnRequest.TRANSFER_FAILED
        resp.text = await route.turns.take_turn(tw, kind, seq, text=name, call_status=status)
