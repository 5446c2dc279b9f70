"""auditq's benchmarks: `uv run python -m bench [NAME ...] [--quick]`.

NAME: submit, batch, worker, peer, reads, polling, model-call (all of them by default).

Each benchmark measures auditq side by side with a baseline in the same run and
writes its section of bench/RESULTS.md. See bench/common.py for the harness.
"""
