"""The HTTP-in floor: the edge's server stack (gunicorn + uvicorn worker + Falcon ASGI) answering
one fixed TwiML document, with no Redis, no bot and no signature check; and the WebSocket floor:
the same stack echoing each text frame of a socket back (`/ws-echo`), as relay mode's socket
reads a frame and sends one.

`python -m bench.twiml_app` runs it exactly as `python -m edge` runs the edge (EdgeServer's
gunicorn settings, read from the same EDGE_* variables), only with this app loaded instead.
"""

from __future__ import annotations

import sys

import falcon
import falcon.asgi

from edge.__main__ import EdgeServer
from edge.settings import EdgeSettings
from shared.config import ConfigError

# The shape and size of the edge's usual answer: a reply inside a speech Gather.
FIXED_TWIML = (
    '<?xml version="1.0" encoding="UTF-8"?><Response><Gather action="/twilio/gather?turn=1'
    '&amp;silent=0" actionOnEmptyResult="true" input="speech" language="en-US" method="POST" '
    'speechTimeout="auto" timeout="5"><Say language="en-US" voice="Google.en-US-Standard-C">'
    "You said: hello</Say></Gather></Response>"
)


class FixedTwiml:
    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        await req.stream.read()  # the form body is read, as the edge reads it
        resp.content_type = "application/xml"
        resp.text = FIXED_TWIML


class EchoSocket:
    """Each text frame back as it came: one frame in and one frame out per round trip."""

    async def on_websocket(self, req: falcon.asgi.Request, ws: falcon.asgi.WebSocket) -> None:
        await ws.accept()
        try:
            while True:
                await ws.send_text(await ws.receive_text())
        except falcon.WebSocketDisconnected:
            pass


class Ready:
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.media = {"ready": True}


def create_app() -> falcon.asgi.App:
    app = falcon.asgi.App()
    twiml = FixedTwiml()
    app.add_route("/twilio/voice", twiml)
    app.add_route("/twilio/gather", twiml)
    app.add_route("/ws-echo", EchoSocket())
    app.add_route("/readyz", Ready())
    return app


class FixedTwimlServer(EdgeServer):
    def load(self):  # type: ignore[no-untyped-def]
        return create_app()


def main() -> int:
    try:
        settings = EdgeSettings.from_env()
    except ConfigError as exc:
        print(f"bench.twiml_app: configuration error: {exc}", file=sys.stderr)
        return 2
    FixedTwimlServer(settings).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
