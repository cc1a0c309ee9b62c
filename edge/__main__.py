"""`python -m edge`: run the edge under gunicorn with uvicorn workers (async: one process holds
thousands of waiting webhooks). Settings are validated here first, so a bad variable stops the
process with one clear line instead of a traceback per gunicorn worker.
"""

from __future__ import annotations

import sys

from gunicorn.app.base import BaseApplication

from edge.settings import EdgeSettings
from shared import logs
from shared.config import ConfigError
from shared.metrics import mark_process_dead, prepare_multiprocess_dir


class EdgeServer(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: EdgeSettings) -> None:
        self._settings = settings
        super().__init__()

    def load_config(self) -> None:
        s = self._settings
        for key, value in {
            "bind": f"{s.host}:{s.port}",
            "workers": s.workers,
            "worker_class": "uvicorn_worker.UvicornWorker",
            # Never preload: gRPC servers must be created after the fork (docs/architecture.md,
            # "Pitfalls").
            "preload_app": False,
            "graceful_timeout": s.graceful_timeout_s,
            "timeout": 30,
            "keepalive": 75,
            "backlog": 4096,
            "loglevel": s.log_level.lower(),
            "accesslog": None,
            "child_exit": lambda _server, worker: mark_process_dead(worker.pid),
        }.items():
            self.cfg.set(key, value)

    def load(self):  # type: ignore[no-untyped-def]
        from edge.asgi import app

        return app


def main() -> int:
    try:
        settings = EdgeSettings.from_env()
    except ConfigError as exc:
        print(f"edge: configuration error: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level)
    # Before the fork, so every gunicorn process writes its metrics where /metrics reads them.
    prepare_multiprocess_dir()
    print(
        f"edge: paste this URL into Twilio ('A call comes in', HTTP POST): {settings.voice_url}",
        flush=True,
    )
    print(f"edge: status callback URL: {settings.status_url}", flush=True)
    if settings.routes:
        listed = ", ".join(settings.routes)
        print(f"edge: ROUTES_FILE {settings.routes_file}: routes {listed}", flush=True)
    EdgeServer(settings).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
