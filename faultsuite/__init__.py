"""The fault-injection suite: `python -m faultsuite [--smoke]` (see faultsuite/run.py)."""
