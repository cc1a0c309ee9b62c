"""The edge: Falcon ASGI app under gunicorn that answers Twilio's webhooks (see edge/webhooks.py)."""
