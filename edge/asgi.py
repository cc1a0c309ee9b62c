"""What gunicorn loads (`edge.asgi:app`): settings from the environment, then create_app."""

from edge.app import create_app
from edge.settings import EdgeSettings

app = create_app(EdgeSettings.from_env())
