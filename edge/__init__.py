"""The edge: Falcon ASGI app under gunicorn answering Twilio's webhooks (edge/webhooks.py)."""
