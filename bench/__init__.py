"""auditq's benchmarks: `uv run python -m bench [submit|batch|worker|peer|reads|polling] [--quick]`.

Each benchmark measures auditq side by side with a baseline in the same run and
writes its section of bench/RESULTS.md. See bench/common.py for the harness.
"""
