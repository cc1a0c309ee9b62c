"""The local stack: a private Redis, botsim, the edge under gunicorn and N workers, as real
processes. `python -m devstack` runs it for a person; tests use the same code (devstack.stack)."""
