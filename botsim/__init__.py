"""botsim: a faithful stand-in for the Botpress Chat API, with scripted bots and faults."""

from .app import create_app
from .bots import ECHO_FORMAT, GOODBYE, GREETING, Bot, EchoBot, Outgoing, Reply, Turn
from .config import BotsimConfig
from .server import DEFAULT_WEBHOOK_ID, BotsimServer

__all__ = [
    "DEFAULT_WEBHOOK_ID",
    "ECHO_FORMAT",
    "GOODBYE",
    "GREETING",
    "Bot",
    "BotsimConfig",
    "BotsimServer",
    "EchoBot",
    "Outgoing",
    "Reply",
    "Turn",
    "create_app",
]
