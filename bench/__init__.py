"""The benchmark suite (docs/architecture.md, "How fast, and how we know"): every figure and
target ratio from one run on one machine.

`python -m bench` (what `make bench` runs) starts everything it needs as real processes on
127.0.0.1, measures each hop alone and the whole pipeline, and writes bench-results/*.json plus
a printed table. `--smoke` runs the same code at tiny sizes (CI). A benchmark prints figures; it
asserts nothing.
"""
