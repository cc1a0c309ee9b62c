"""Serving: `run()` for the CLI, `BotsimServer` to run botsim inside a test's event loop."""

from __future__ import annotations

import asyncio
import socket
import sys
from types import FrameType, TracebackType

import uvicorn

from .app import BotsimApp, create_app
from .bots import Bot
from .config import BotsimConfig

DEFAULT_WEBHOOK_ID = "botsim"


def bind_socket(host: str, port: int) -> socket.socket:
    # Bound here, not by uvicorn, so that port 0 resolves before we print the URL.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class _Server(uvicorn.Server):
    """Ends open SSE streams first on SIGINT/SIGTERM: uvicorn waits for open responses to
    finish, and a listen stream never does by itself."""

    def __init__(self, config: uvicorn.Config, app: BotsimApp) -> None:
        super().__init__(config)
        self._app = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            loop.call_soon_threadsafe(self._app.close_all_listeners)
        super().handle_exit(sig, frame)
        # uvicorn re-raises captured signals once it has stopped; a requested stop is a clean
        # exit (status 0) for us.
        self._captured_signals.clear()

    def request_stop(self) -> None:
        self._app.close_all_listeners()
        self.should_exit = True


def _uvicorn_config(app: BotsimApp, loop: str = "uvloop") -> uvicorn.Config:
    return uvicorn.Config(
        app,
        loop=loop,
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=2,
    )


def run(config: BotsimConfig) -> None:
    app = create_app(config)
    sock = bind_socket(config.host, config.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"botsim listening on http://{shown}:{port}/<any-webhook-id>", flush=True)
    server = _Server(_uvicorn_config(app), app)
    server.run(sockets=[sock])
    sys.exit(0)


class BotsimServer:
    """botsim inside the current event loop, on a free port:

    async with BotsimServer(BotsimConfig(port=0)) as sim:
        url = sim.base_url          # http://127.0.0.1:PORT/botsim
    """

    def __init__(self, config: BotsimConfig | None = None, bot: Bot | None = None) -> None:
        self.config = config or BotsimConfig(port=0)
        self.app = create_app(self.config, bot)
        self._server = _Server(_uvicorn_config(self.app, loop="none"), self.app)
        self._task: asyncio.Task[None] | None = None
        self.port = 0

    @property
    def root_url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    def url_for(self, webhook_id: str = DEFAULT_WEBHOOK_ID) -> str:
        return f"{self.root_url}/{webhook_id}"

    @property
    def base_url(self) -> str:
        return self.url_for(DEFAULT_WEBHOOK_ID)

    async def start(self) -> str:
        sock = bind_socket(self.config.host, self.config.port)
        self.port = sock.getsockname()[1]
        # _serve, not serve: the test process owns its signals, the in-loop server must not
        # capture them.
        self._task = asyncio.get_running_loop().create_task(self._server._serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("botsim exited during startup")
            await asyncio.sleep(0.005)
        return self.base_url

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.request_stop()
        await self._task
        self._task = None

    async def __aenter__(self) -> BotsimServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
