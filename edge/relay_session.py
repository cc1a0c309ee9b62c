"""The ConversationRelay socket (relay voice mode): `/twilio/relay`, one WebSocket per call.

Twilio connects here from the `<Connect><ConversationRelay>` of `/twilio/voice` (edge/twiml.py).
`RelaySocket` refuses an unsigned upgrade (403) and hands the accepted socket to a
`RelaySession`, which turns Twilio's frames into turns on the same stream the gather webhooks
use (`CallTurns.submit_streamed`) and speaks each part of the bot's reply as text tokens the
moment it reaches this process over gRPC (`ReplyWaiters.stream_to`).

- setup: its accountSid must be ours (else the socket is closed, nothing written). A call not
  started yet gets the call-start turn (seq 0): the bot's greeting. A call that was started (a
  session whose edge process died; Twilio posted `failed` to the action and we connected a new
  one) goes on at the call's next seq, with its late replies spoken and no second greeting.
- prompt (last=true) -> SPEECH turn; dtmf -> DTMF turn (keys until FINISH_ON_KEY, which is not
  part of them, or DTMF_PAUSE_MS without a key, or MAX_DIGITS keys);
  interrupt -> no more token of that reply, later parts are acked with stop, and the next turn
  tells the bot what the caller heard of it.
- A reply late past REPLY_DEADLINE_MS: the hold phrase, then the reply when it comes, in the same
  session. Silence after a reply: the reprompt, and after MAX_SILENT_TURNS the goodbye and end.
- Frames we send: only `text`, `language` and `end`. Bot text only ever travels as a text token;
  a bot's <language code/> becomes a `language` frame before the text after it, and only for a
  language VOICES lists (the TwiML declares those, with their voices, as <Language>s).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Coroutine, Iterable
from typing import Any

import falcon
import falcon.asgi
from falcon.errors import PayloadTypeError, WebSocketDisconnected
from redis.exceptions import RedisError

from edge import metrics
from edge.guard import DTMF_KEYS, MAX_DIGITS, is_call_sid
from edge.outbound import OUTBOUND_DIRECTION, OutboundCalls
from edge.replies import STOP, TAKEN
from edge.routing import CallRoutes, EdgeRoute
from edge.settings import EdgeSettings
from edge.signature import TwilioAuth
from edge.turns import CallTurns
from edge.twiml import TRANSFER_FAILED_PARAMETER
from shared.logs import ROUTE
from shared.pb import voicebridge_pb2 as pb

log = logging.getLogger(__name__)

#: How fast Twilio's text-to-speech speaks, for "the caller has heard the reply" (silence is
#: counted from then). An estimate from the text: Twilio's speaker events are optional.
WORDS_PER_S = 2.5
#: A relay turn is waited for up to REPLY_DEADLINE_MS + BOT_TIMEOUT_MS + this: by then the
#: worker has sent the bot's reply or its fallback phrase.
REPLY_WAIT_MARGIN_S = 2.0
#: Close code for a session that is not ours (wrong account, no usable CallSid).
CLOSE_POLICY = 1008
MAX_UINT32 = 0xFFFFFFFF


def speaking_s(text: str) -> float:
    return len(text.split()) / WORDS_PER_S


def speech_of(reply: pb.TurnReply) -> str:
    """What a reply says: a streamed part's `text` exactly; a whole reply's sentences (part 0,
    from a worker that does not stream) joined by spaces."""
    if reply.part > 0 or reply.text:
        return reply.text
    return " ".join(s for s in reply.say if s)


def _ms(value: object) -> int:
    """durationUntilInterruptMs: a number or a string of one (Twilio sends both)."""
    try:
        ms = int(float(str(value)))
    except ValueError:
        return 0
    return min(max(ms, 0), MAX_UINT32)


class RelaySocket:
    """`/twilio/relay` (WebSocket): the socket Twilio's ConversationRelay opens for a call."""

    def __init__(
        self,
        settings: EdgeSettings,
        auth: TwilioAuth,
        routes: CallRoutes,
        outbound: OutboundCalls | None = None,
    ) -> None:
        self._settings = settings
        self._auth = auth
        self._routes = routes
        self._outbound = outbound

    async def on_websocket(self, req: falcon.asgi.Request, ws: falcon.asgi.WebSocket) -> None:
        # Twilio signs the socket's URL exactly as the TwiML gave it, with no parameters.
        signature = req.get_header("X-Twilio-Signature") or ""
        if not self._auth.is_signed(self._settings.relay_url, signature):
            raise falcon.HTTPForbidden(description="invalid X-Twilio-Signature")
        await ws.accept()
        metrics.RELAY_SESSIONS.inc()
        try:
            await RelaySession(ws, self._settings, self._auth, self._routes, self._outbound).run()
        finally:
            metrics.RELAY_SESSIONS.dec()


class ReplyParts:
    """The parts of one turn's reply as they come: one waiter, no locks. An asyncio.Queue
    (with its Event and two deques) costs about 3 KB, and a session keeps its latest turn."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[pb.TurnReply] = []
        self._waiter: asyncio.Future[None] | None = None

    def put(self, reply: pb.TurnReply) -> None:
        self._items.append(reply)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self) -> pb.TurnReply:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0)


class RelayTurn:
    """One turn of a session and the parts of its reply as they come (its ReplyWaiters sink)."""

    __slots__ = ("turn_id", "parts", "interrupted", "whole", "held", "task")

    def __init__(self, turn_id: str) -> None:
        self.turn_id = turn_id
        self.parts = ReplyParts()
        self.interrupted = False
        self.whole = False  # its last part came (or it was given up)
        self.held = False  # the hold phrase was said for it
        self.task: asyncio.Task[None] | None = None

    def sink(self, reply: pb.TurnReply) -> pb.DeliverAck:
        if self.interrupted:
            return STOP
        self.parts.put(reply)
        return TAKEN


class RelaySession:
    # One per held call: slots keep its ~30 fields out of a per-instance dict (about 1 KB).
    __slots__ = (
        "_auth",
        "_call_sid",
        "_current",
        "_cycle",
        "_digits",
        "_dtmf_timer",
        "_ended",
        "_from",
        "_heard",
        "_language",
        "_open",
        "_outbound",
        "_partial",
        "_routes",
        "_said_reply",
        "_seq",
        "_settings",
        "_silence",
        "_silence_timer",
        "_silent",
        "_speaking",
        "_speaking_until",
        "_stopped",
        "_tasks",
        "_to",
        "_turns",
        "_wait_s",
        "_ws",
    )

    def __init__(
        self,
        ws: falcon.asgi.WebSocket,
        settings: EdgeSettings,
        auth: TwilioAuth,
        routes: CallRoutes,
        outbound: OutboundCalls | None = None,
    ) -> None:
        self._ws = ws
        self._outbound = outbound
        # The process's settings until the setup frame names the call's route (_use_route).
        self._settings = settings
        self._auth = auth
        self._routes = routes
        # The route's turn logic: set by the setup frame (no frame before it reaches a turn).
        self._turns: CallTurns
        self._wait_s = settings.reply_deadline_s + settings.bot_timeout_s + REPLY_WAIT_MARGIN_S
        self._call_sid = ""
        self._from = ""
        self._to = ""
        self._seq = 0  # the call's next caller turn
        self._current: RelayTurn | None = None  # the latest turn taken
        self._speaking: RelayTurn | None = None  # the latest turn whose reply began
        self._said_reply = False  # the latest words sent were a reply's, not a phrase of ours
        self._open: list[RelayTurn] = []  # taken, reply not whole yet (oldest first)
        self._stopped: list[RelayTurn] = []  # interrupted, still acking their parts with stop
        self._heard: tuple[str, int] | None = None
        self._partial: list[str] = []
        self._digits: list[str] = []
        self._dtmf_timer: asyncio.TimerHandle | None = None
        self._silence_timer: asyncio.TimerHandle | None = None
        self._silence: asyncio.Task[None] | None = None
        self._silent = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._cycle = ""  # text sent since the last last:true
        self._speaking_until = 0.0  # loop time the caller has heard everything sent
        self._ended = False
        self._language = ""  # the call's language since the bot switched it ("" = LANGUAGE)

    @property
    def _log_extra(self) -> dict[str, str]:
        return {"call_sid": self._call_sid}

    # -- frames in ----------------------------------------------------------------------------
    async def run(self) -> None:
        try:
            while True:
                try:
                    # No local keeps the frame: a held session is idle between frames, and
                    # the last one (the setup, ~1 KB) would live on for the call's length.
                    await self._on_text(await self._ws.receive_text())
                except WebSocketDisconnected:
                    break
                except PayloadTypeError:
                    log.info("relay: a binary frame, ignored", extra=self._log_extra)
        finally:
            self._close()

    async def _on_text(self, raw: str) -> None:
        try:
            frame = json.loads(raw)
        except ValueError:
            log.info("relay: malformed JSON frame, ignored", extra=self._log_extra)
            return
        if not isinstance(frame, dict):
            log.info("relay: a frame that is not an object, ignored", extra=self._log_extra)
            return
        try:
            await self._on_frame(frame)
        except WebSocketDisconnected:
            raise
        except Exception:  # noqa: BLE001 - one bad frame never ends the call
            log.exception("relay: frame %r failed", frame.get("type"), extra=self._log_extra)

    async def _on_frame(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "setup":
            await self._setup(frame)
        elif kind in ("error", "info"):
            # Twilio's own reports (e.g. 64107 for a frame it dropped); never fatal.
            level = logging.WARNING if kind == "error" else logging.DEBUG
            log.log(level, "relay: twilio %s %s", kind, frame, extra=self._log_extra)
        elif not self._call_sid or self._ended:
            log.info("relay: %r frame before setup or after the end, ignored", kind)
        elif kind == "prompt":
            await self._prompt(frame)
        elif kind == "dtmf":
            await self._dtmf(str(frame.get("digit", "")))
        elif kind == "interrupt":
            self._interrupt(frame)
        else:
            log.info("relay: unknown frame type %r, ignored", kind, extra=self._log_extra)

    async def _setup(self, frame: dict[str, Any]) -> None:
        if self._call_sid:
            log.info("relay: a second setup frame, ignored", extra=self._log_extra)
            return
        call_sid = str(frame.get("callSid", ""))
        if not self._auth.is_our_account(str(frame.get("accountSid", ""))) or not is_call_sid(
            call_sid
        ):
            log.warning("relay: setup from another account or without a CallSid, closing")
            await self._ws.close(CLOSE_POLICY)
            return
        custom = frame.get("customParameters")
        custom = custom if isinstance(custom, dict) else {}
        self._call_sid = call_sid
        self._from = str(frame.get("from") or custom.get("from") or "")
        self._to = str(frame.get("to") or custom.get("to") or "")
        direction = str(frame.get("direction") or custom.get("direction") or "")
        route = self._routes.for_numbers(self._to, self._from, direction)
        if route is None:
            # /twilio/voice refused it already; a socket opened anyway gets the same answer.
            log.warning("relay: no route for this call's number", extra=self._log_extra)
            await self._say_and_end(self._settings.unavailable_phrase, "hangup")
            return
        self._use_route(route)
        try:
            self._seq = await self._turns.next_seq(call_sid)
        except RedisError:
            # Nothing started: apologise; the action connects a fresh session to try again.
            await self._say_and_end(self._settings.trouble_phrase, "retry")
            return
        if self._seq == 0:
            opening: dict[str, str | bool] = {}
            if direction == OUTBOUND_DIRECTION and self._outbound is not None:
                # A call POST /v1/calls placed, answered by a person: the bot is told so.
                answered_by = str(custom.get("answeredBy") or "")
                opening = (await self._outbound.opening(call_sid, answered_by)).fields()
            await self._take_turn(pb.TurnRequest.CALL_START, **opening)
            return
        # A call that goes on keeps the language an earlier session switched it to.
        self._language = await self._turns.current_language(call_sid)
        if self._language:
            await self._send_language(self._language)
        back = str(custom.get(TRANSFER_FAILED_PARAMETER) or "")
        if back:
            # Back from a transfer nobody took (DialStatusWebhook): the bot is told, and its
            # reply (after the call's late replies) is this session's first words.
            status, _, name = back.partition(":")
            await self._take_turn(pb.TurnRequest.TRANSFER_FAILED, text=name, call_status=status)
            return
        # The call was started by an earlier session (its edge process died): go on with it.
        log.info("relay: session takes the call over at turn %d", self._seq, extra=self._log_extra)
        self._spawn(self._take_over())

    def _use_route(self, route: EdgeRoute) -> None:
        """The call's route, once: its settings and turns from here on (ROUTES_FILE)."""
        ROUTE.set(route.name)
        settings = self._settings = route.settings
        self._turns = route.turns
        self._wait_s = settings.reply_deadline_s + settings.bot_timeout_s + REPLY_WAIT_MARGIN_S

    async def _prompt(self, frame: dict[str, Any]) -> None:
        self._cancel_silence()
        text = str(frame.get("voicePrompt", ""))
        if frame.get("last") is False:
            self._partial.append(text)
            return
        so_far = "".join(self._partial)
        self._partial.clear()
        if so_far and not text.startswith(so_far):  # partials that are pieces, not a running total
            text = f"{so_far}{text}"
        text = text.strip()
        if not text:
            return
        self._silent = 0
        await self._take_turn(pb.TurnRequest.SPEECH, text=text)

    async def _dtmf(self, digit: str) -> None:
        if len(digit) != 1 or digit not in DTMF_KEYS:
            log.info("relay: unknown dtmf digit %r, ignored", digit, extra=self._log_extra)
            return
        self._cancel_silence()
        self._silent = 0
        if self._dtmf_timer is not None:
            self._dtmf_timer.cancel()
            self._dtmf_timer = None
        if digit != self._settings.finish_on_key:  # "" (none): only the pause ends the keys
            self._digits.append(digit)
            if len(self._digits) < MAX_DIGITS:
                loop = asyncio.get_running_loop()
                self._dtmf_timer = loop.call_later(
                    self._settings.dtmf_pause_s, lambda: self._spawn(self._flush_digits())
                )
                return
        await self._flush_digits()

    async def _flush_digits(self) -> None:
        self._dtmf_timer = None
        digits, self._digits = "".join(self._digits), []
        if digits:
            await self._take_turn(pb.TurnRequest.DTMF, digits=digits)

    def _interrupt(self, frame: dict[str, Any]) -> None:
        self._cancel_silence()
        # Twilio stopped speaking; what we sent of this cycle is gone with it.
        self._cycle = ""
        self._speaking_until = 0.0
        if not self._said_reply:
            # The caller spoke over a phrase of ours (the hold phrase, a reprompt): no reply was
            # cut off, and one still on its way is spoken when it comes, as in gather mode.
            log.info("relay: interrupt over a phrase; nothing to stop", extra=self._log_extra)
            return
        heard = str(frame.get("utteranceUntilInterrupt", ""))
        self._heard = (heard, _ms(frame.get("durationUntilInterruptMs", 0)))
        turn = self._speaking
        if turn is not None and not turn.whole:
            turn.interrupted = True
            self._stopped.append(turn)
            if turn.task is not None:
                turn.task.cancel()

    # -- turns --------------------------------------------------------------------------------
    async def _take_turn(self, kind: pb.TurnRequest.Kind, **fields: str | bool) -> None:
        self._cancel_silence()
        # The caller answered: what we sent before, they have heard (or talked over). The
        # silence after this turn's reply counts from that reply alone, not from the estimate
        # of everything sent before it.
        self._speaking_until = 0.0
        seq, self._seq = self._seq, self._seq + 1
        heard, heard_ms = self._heard or ("", 0)
        self._heard = None
        turn = self._turns.new_turn(
            self._call_sid,
            kind,
            seq,
            from_number=self._from,
            to_number=self._to,
            wait_s=self._wait_s,
            stream=True,
            heard=heard,
            heard_ms=heard_ms,
            **fields,
        )
        relay_turn = RelayTurn(turn.turn_id)
        previous, self._current = self._current, relay_turn
        try:
            late = await self._turns.submit_streamed(turn, relay_turn.sink)
        except RedisError:
            # Not written: the caller's repeat is this same turn.
            self._seq, self._current = seq, previous
            self._heard = (heard, heard_ms) if heard else None
            if seq == 0:
                await self._say_and_end(self._settings.trouble_phrase, "retry")
            else:
                await self._say_cycle([self._settings.trouble_phrase])
                self._expect_caller()
            return
        self._open = [*self._open_turns(), relay_turn]
        relay_turn.task = self._spawn(self._speak_turn(relay_turn, late, previous))

    async def _speak_turn(
        self, turn: RelayTurn, late: list[pb.TurnReply], previous: RelayTurn | None
    ) -> None:
        loop = asyncio.get_running_loop()
        hold_at = loop.time() + self._settings.reply_deadline_s
        give_up_at = loop.time() + self._wait_s
        try:
            if previous is not None and previous.task is not None and not previous.task.done():
                # Replies are spoken in the order the caller took the turns.
                await asyncio.wait([previous.task])
            if late:
                # Late replies lead this turn's cycle: from their first token on, an interrupt
                # cuts this turn off (its own parts too), not the one before it.
                self._speaking = turn
            await self._send_replies(late)
            hangup = any(r.hangup for r in late)
            transfer_to = next((r.transfer_to for r in late if r.transfer_to), "")
            got_part = False
            tail = ""  # the final part's text: sent with last:true, one frame
            while True:
                until = give_up_at if got_part or turn.held else hold_at
                try:
                    # Not wait_for: that wraps the get in a task (3.11), a loop pass per part.
                    async with asyncio.timeout(max(until - loop.time(), 0)):
                        part = await turn.parts.get()
                except TimeoutError:
                    if not got_part and not turn.held and loop.time() < give_up_at:
                        turn.held = True
                        await self._send_pieces([self._settings.hold_phrase], reply=False)
                        await self._end_cycle()
                        continue
                    log.warning("relay: no reply in time", extra=self._log_extra)
                    break
                await self._switch_language(part.language)
                text = speech_of(part)
                if not got_part:
                    got_part = True
                    self._speaking = turn
                    self._release_stopped()
                    # Its first words after late replies: one space between (as whole texts).
                    text = self._spaced(text)
                hangup = hangup or part.hangup
                transfer_to = transfer_to or part.transfer_to
                if not part.more:
                    tail = text
                    break
                await self._send_token(text)
        finally:
            turn.whole = True
            if not turn.interrupted:
                self._turns.forget(turn.turn_id)
        await self._close_cycle(hangup, transfer_to, tail)

    async def _close_cycle(self, hangup: bool, transfer_to: str, tail: str = "") -> None:
        """The reply is complete: end its talk cycle (`tail`, the reply's last text, in the
        same frame as last:true), then what its markers asked. A transfer to a listed target:
        `end` once the text before the marker is heard, and the action dials it. Anything else
        dials nothing: the refusal phrase in the same cycle, and the call goes on."""
        if transfer_to and not hangup:
            if self._turns.transfer_target(self._call_sid, transfer_to) is None:
                await self._send_token(tail)
                tail = ""
                await self._send_pieces([self._settings.transfer_refused_phrase], reply=False)
                transfer_to = ""
        await self._end_cycle(tail)
        if hangup:
            await self._end_after_speaking("hangup")
        elif transfer_to:
            await self._end_after_speaking("transfer", target=transfer_to.strip().lower())
        else:
            self._expect_caller()

    def _release_stopped(self) -> None:
        """A later turn's reply came: the worker is done with every interrupted one before it."""
        for turn in self._stopped:
            self._turns.forget(turn.turn_id)
        self._stopped.clear()

    def _open_turns(self) -> list[RelayTurn]:
        return [t for t in self._open if not t.whole]

    async def _take_over(self) -> None:
        """The call's replies kept late, spoken now: also one for a turn a worker was still
        answering when the old process died (kept late when its Deliver failed), unless the
        caller speaks first (that turn's reply then leads with them)."""
        seq = self._seq
        late = await self._turns.late_of_takeover(
            self._call_sid, seq, self._wait_s, lambda: self._seq == seq and not self._ended
        )
        if self._seq == seq and not self._ended:
            await self._speak_late(late)

    async def _speak_late(self, late: list[pb.TurnReply]) -> None:
        """A new session of a call that went on: its late replies, then the caller's turn."""
        if late:
            await self._send_replies(late)
            transfer_to = next((r.transfer_to for r in late if r.transfer_to), "")
            await self._close_cycle(any(r.hangup for r in late), transfer_to)
            return
        self._expect_caller()

    # -- silence ------------------------------------------------------------------------------
    def _expect_caller(self) -> None:
        """The reply is out: once the caller has heard it, wait TIMEOUT seconds for them (a
        timer, not a sleeping task: every held session waits so, and a task costs ~2 KB)."""
        self._cancel_silence()
        if not self._ended:
            loop = asyncio.get_running_loop()
            heard_at = max(self._speaking_until, loop.time())
            self._silence_timer = loop.call_later(
                heard_at - loop.time() + self._settings.timeout_s, self._silence_due
            )

    def _silence_due(self) -> None:
        self._silence_timer = None
        self._silence = self._spawn(self._on_silence())

    def _cancel_silence(self) -> None:
        if self._silence_timer is not None:
            self._silence_timer.cancel()
            self._silence_timer = None
        if self._silence is not None and self._silence is not asyncio.current_task():
            self._silence.cancel()
        self._silence = None

    async def _on_silence(self) -> None:
        # As in gather mode: a late reply that waits is spoken instead, and resets the count.
        late = await self._turns.take_late(self._call_sid)
        if late:
            self._silent = 0
            await self._speak_late(late)
            return
        self._silent += 1
        metrics.REPROMPT_SILENCE.inc()
        if self._silent >= self._settings.max_silent_turns:
            await self._say_and_end(self._settings.goodbye_phrase, "silence")
            return
        await self._say_cycle([self._settings.reprompt_phrase])
        self._expect_caller()

    # -- frames out ---------------------------------------------------------------------------
    async def _send_pieces(self, pieces: Iterable[str], reply: bool = True) -> None:
        """Whole texts (replies, or a phrase of ours) as tokens of the open cycle, a space
        between them."""
        for piece in pieces:
            await self._send_token(self._spaced(piece), reply)

    def _spaced(self, piece: str) -> str:
        """A whole text after what the open cycle holds: one space between them."""
        if piece and self._cycle and not self._cycle[-1].isspace() and not piece[0].isspace():
            return f" {piece}"
        return piece

    async def _send_replies(self, replies: Iterable[pb.TurnReply]) -> None:
        """Whole replies (late ones), each after the language switch it carries."""
        for reply in replies:
            await self._switch_language(reply.language)
            await self._send_pieces([speech_of(reply)])

    async def _switch_language(self, requested: str) -> None:
        """A bot's <language code/>: a `language` frame before the text after it, when the edge
        takes it (CallTurns.switch_language: VOICES lists it)."""
        if not requested:
            return
        language = await self._turns.switch_language(self._call_sid, self._language, requested)
        if language != self._language:
            self._language = language
            await self._send_language(language)

    async def _send_language(self, language: str) -> None:
        await self._send(
            {"type": "language", "ttsLanguage": language, "transcriptionLanguage": language}
        )

    async def _send_token(self, token: str, reply: bool = True) -> None:
        if not token:
            return
        self._said_reply = reply
        self._cycle += token
        await self._send({"type": "text", "token": token, "last": False})

    async def _end_cycle(self, tail: str = "") -> None:
        """last:true ends the talk cycle, with `tail` (a reply's last text) as its token; the
        caller has heard it about speaking_s later."""
        if tail:
            self._said_reply = True
            self._cycle += tail
        if not self._cycle:
            return
        loop = asyncio.get_running_loop()
        self._speaking_until = max(self._speaking_until, loop.time()) + speaking_s(self._cycle)
        self._cycle = ""
        await self._send({"type": "text", "token": tail, "last": True})

    async def _say_cycle(self, texts: list[str]) -> None:
        """A phrase of ours as a cycle of its own."""
        await self._send_pieces(texts, reply=False)
        await self._end_cycle()

    async def _say_and_end(self, text: str, reason: str) -> None:
        await self._say_cycle([text])
        await self._end_after_speaking(reason)

    async def _end_after_speaking(self, reason: str, **handoff: str) -> None:
        """`end` once the caller has heard what was sent; the action answers per the reason."""
        self._ended = True
        self._cancel_silence()
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(self._speaking_until - loop.time(), 0))
        data = json.dumps({"reason": reason, **handoff})
        await self._send({"type": "end", "handoffData": data})

    async def _send(self, frame: dict[str, Any]) -> None:
        await self._ws.send_text(json.dumps(frame))

    # -- lifetime -----------------------------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        # The coroutine is the task itself (no wrapper): a task cancelled before it started
        # (the socket closed right after) closes it, where a wrapper would leave it unawaited.
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not isinstance(exc, WebSocketDisconnected):
            # Logged; the session goes on.
            log.error("relay: session task failed", exc_info=exc, extra=self._log_extra)

    def _close(self) -> None:
        """The socket is gone: no timer fires, nobody waits. A part that comes later is kept as
        a late reply (the worker is told it was not taken) for the call's next session."""
        if self._dtmf_timer is not None:
            self._dtmf_timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        for turn in [*self._stopped, *self._open_turns()]:
            self._turns.forget(turn.turn_id)
        self._stopped.clear()
