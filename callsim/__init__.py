"""callsim: a stand-in for Twilio Voice and its callers (signing, TwiML, one call, load)."""

from typing import Any

from callsim.call import CallResult, Event, WebhookRecord, new_call_sid, place_call
from callsim.script import HANG_UP, Script, load_script
from callsim.signing import sign

__all__ = [
    "HANG_UP",
    "CallResult",
    "Event",
    "LoadConfig",
    "LoadReport",
    "Script",
    "WebhookRecord",
    "load_script",
    "new_call_sid",
    "place_call",
    "run_load",
    "sign",
]


def __getattr__(name: str) -> Any:
    # Load mode needs hdrhistogram (a dev dependency): import it only when asked for.
    if name in ("LoadConfig", "LoadReport", "run_load"):
        from callsim import load

        return getattr(load, name)
    raise AttributeError(f"module 'callsim' has no attribute {name!r}")
