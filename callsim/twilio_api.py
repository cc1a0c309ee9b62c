"""`python -m callsim twilio-api`: Twilio's REST endpoint for placing calls, played locally.

    POST /2010-04-01/Accounts/{AccountSid}/Calls.json         201, the Call resource (queued)
    GET  /2010-04-01/Accounts/{AccountSid}/Calls/{Sid}.json   200, the resource as it is now
    GET  /_callsim/calls[?sid=CA...]                           what callsim saw of each call

The first two are Twilio's, as twilio-python's REST client calls and parses them (point
`client.api.base_url` at this server): HTTP Basic auth with AccountSid:AuthToken (else 401,
code 20003), the form Twilio takes, its validation with its error codes and its error JSON
``{code, message, more_info, status}`` (codes 20003, 20404, 21201, 21205, 21210, 21211,
21212, 21213, 21218 as Twilio uses them; 21200, the Calls resource's general code, for the
checks whose own code is not published). Each accepted call is then played by callsim.callee:
status callbacks, and the callee (a person, a machine, a fax, busy, no answer, failed, by the
number called). The third is callsim's own: the campaign (callsim.campaign) reads outcomes and
the time to the bot's first words there.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import re
import socket
from dataclasses import dataclass
from typing import Any, TextIO
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from multidict import MultiDict

from callsim.call import new_call_sid
from callsim.callee import (
    API_VERSION,
    STATUS_EVENTS,
    Callee,
    CalleeSettings,
    OutboundCall,
)

E164 = re.compile(r"\+[1-9][0-9]{1,14}")
MACHINE_DETECTION = ("Enable", "DetectMessageEnd")
MAX_TWIML_CHARS = 4000


class TwilioError(Exception):
    """A refusal as Twilio words it; answered once, by the error middleware."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def body(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "message": self.message,
            "more_info": f"https://www.twilio.com/docs/errors/{self.code}",
            "status": self.status,
        }


@dataclass(frozen=True)
class StandInSettings:
    account_sid: str
    auth_token: str
    callee: CalleeSettings
    #: The account's numbers (Twilio's or verified caller IDs); empty: any E.164 From.
    owned_numbers: frozenset[str] = frozenset()
    #: How long a create request takes to reach Twilio (0: at once). A client that is gone by
    #: then placed nothing; one that waits is answered as usual.
    api_latency_s: float = 0.0


def _http_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _events(form: MultiDict[str]) -> frozenset[str]:
    # twilio-python repeats the field per event; Twilio takes space-separated ones too.
    named = {e for value in form.getall("StatusCallbackEvent", []) for e in value.split()}
    unknown = named - set(STATUS_EVENTS)
    if unknown:
        raise TwilioError(400, 21200, f"Invalid StatusCallbackEvent: {sorted(unknown)[0]}")
    return frozenset(named or {"completed"})


def _method(form: MultiDict[str], name: str) -> str:
    method = form.get(name, "POST").upper()
    if method not in ("GET", "POST"):
        raise TwilioError(400, 21200, f"{name} must be GET or POST, got {method!r}")
    return method


class TwilioApi:
    def __init__(self, settings: StandInSettings) -> None:
        self.settings = settings
        self.calls: dict[str, OutboundCall] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._client: aiohttp.ClientSession | None = None
        self._callee: Callee | None = None

    # -- wiring -----------------------------------------------------------------------------
    def create_app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors])
        calls = f"/{API_VERSION}/Accounts/{{account_sid}}/Calls"
        app.router.add_post(f"{calls}.json", self.create_call)
        app.router.add_get(f"{calls}/{{call_sid}}.json", self.fetch_call)
        app.router.add_get("/_callsim/calls", self.played_calls)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, app: web.Application) -> None:
        # No environment proxy: callbacks go to the URLs the requests named, as given.
        self._client = aiohttp.ClientSession(trust_env=False)
        self._callee = Callee(self._client, self.settings.auth_token, self.settings.callee)

    async def _stop(self, app: web.Application) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.close()

    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
            return response
        except TwilioError as err:
            headers = {"WWW-Authenticate": 'Basic realm="Twilio API"'} if err.status == 401 else {}
            return web.json_response(err.body(), status=err.status, headers=headers)

    # -- Twilio's endpoints -----------------------------------------------------------------
    def _authenticate(self, request: web.Request) -> None:
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            user = password = ""
        ok = scheme.lower() == "basic"
        ok &= hmac.compare_digest(user.encode(), self.settings.account_sid.encode())
        ok &= hmac.compare_digest(password.encode(), self.settings.auth_token.encode())
        ok &= request.match_info["account_sid"] == self.settings.account_sid
        if not ok:
            raise TwilioError(401, 20003, "Authenticate")

    async def create_call(self, request: web.Request) -> web.Response:
        if self.settings.api_latency_s > 0:
            await asyncio.sleep(self.settings.api_latency_s)
            if request.transport is None or request.transport.is_closing():
                return web.Response(status=499)  # the request never arrived: nothing placed
        self._authenticate(request)
        posted = await request.post()
        call = self._validated(MultiDict((k, v) for k, v in posted.items() if isinstance(v, str)))
        self.calls[call.sid] = call
        assert self._callee is not None
        task = asyncio.create_task(self._callee.play(call))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return web.json_response(call.resource(), status=201)

    async def fetch_call(self, request: web.Request) -> web.Response:
        self._authenticate(request)
        call = self.calls.get(request.match_info["call_sid"])
        if call is None:
            raise TwilioError(404, 20404, f"The requested resource {request.path} was not found")
        return web.json_response(call.resource())

    def _validated(self, form: MultiDict[str]) -> OutboundCall:
        """The checks Twilio makes before it queues a call, in its order, with its codes."""
        to, from_ = form.get("To", "").strip(), form.get("From", "").strip()
        url, inline = form.get("Url", "").strip(), form.get("Twiml", "")
        if not to:
            raise TwilioError(400, 21201, "No 'To' number is specified")
        if not from_:
            raise TwilioError(400, 21213, "No 'From' number is specified")
        if not url and not inline and not form.get("ApplicationSid"):
            raise TwilioError(
                400,
                21205,
                "Url parameter is required. For more information, see "
                "http://www.twilio.com/docs/api/twiml",
            )
        if form.get("ApplicationSid") and not url and not inline:
            raise TwilioError(400, 21218, "Invalid ApplicationSid: callsim knows no applications")
        if url and not _http_url(url):
            raise TwilioError(400, 21205, f"Url is not a valid URL: {url}")
        if not url and len(inline) > MAX_TWIML_CHARS:
            raise TwilioError(400, 21200, f"Twiml is longer than {MAX_TWIML_CHARS} characters")
        if not E164.fullmatch(to):
            raise TwilioError(400, 21211, f"Invalid 'To' Phone Number: {to}")
        if not E164.fullmatch(from_):
            raise TwilioError(400, 21212, f"Invalid 'From' Phone Number: {from_}")
        owned = self.settings.owned_numbers
        if owned and from_ not in owned:
            raise TwilioError(
                400,
                21210,
                f"The source phone number provided, {from_}, is not yet verified for your "
                "account. You may only make calls from phone numbers that you've verified or "
                "purchased from Twilio.",
            )
        callback = form.get("StatusCallback") or None
        if callback is not None and not _http_url(callback):
            raise TwilioError(400, 21205, f"StatusCallback is not a valid URL: {callback}")
        fallback = form.get("FallbackUrl") or None
        if fallback is not None and not _http_url(fallback):
            raise TwilioError(400, 21205, f"FallbackUrl is not a valid URL: {fallback}")
        detection = form.get("MachineDetection") or None
        if detection is not None and detection not in MACHINE_DETECTION:
            raise TwilioError(400, 21200, f"Invalid MachineDetection: {detection}")
        try:
            timeout_s = int(form.get("Timeout", "60"))
        except ValueError:
            raise TwilioError(400, 21200, "Timeout must be an integer") from None
        amd_callback = None
        if form.get("AsyncAmd", "").lower() == "true":
            amd_callback = form.get("AsyncAmdStatusCallback") or None
            if amd_callback is None or not _http_url(amd_callback):
                raise TwilioError(400, 21200, "AsyncAmd needs a valid AsyncAmdStatusCallback")
        return OutboundCall(
            sid=new_call_sid(),
            account_sid=self.settings.account_sid,
            to=to,
            from_=from_,
            url=url or None,
            method=_method(form, "Method"),
            fallback=(fallback, _method(form, "FallbackMethod")) if fallback else None,
            twiml=None if url else inline,
            status_callback=callback,
            status_callback_method=_method(form, "StatusCallbackMethod"),
            status_events=_events(form),
            timeout_s=max(1, min(timeout_s, 600)),  # Twilio clamps it the same way
            machine_detection=detection,
            async_amd_callback=amd_callback,
            async_amd_method=_method(form, "AsyncAmdStatusCallbackMethod"),
            kind=self.settings.callee.table.kind_for(to),
        )

    # -- callsim's own ----------------------------------------------------------------------
    async def played_calls(self, request: web.Request) -> web.Response:
        wanted = set(request.query.getall("sid", []))
        calls = [c.summary() for c in self.calls.values() if not wanted or c.sid in wanted]
        return web.json_response({"calls": calls})


def bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


async def serve(settings: StandInSettings, host: str, port: int, out: TextIO) -> None:
    """Serve until cancelled (Ctrl-C); prints the listening line devstack waits for."""
    api = TwilioApi(settings)
    runner = web.AppRunner(api.create_app(), access_log=None)
    await runner.setup()
    sock = bind(host, port)
    await web.SockSite(runner, sock).start()
    bound = sock.getsockname()[1]
    print(f"callsim twilio-api listening on http://{host}:{bound}", file=out, flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
