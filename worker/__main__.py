"""`python -m worker`: see worker/runner.py."""

from worker.runner import run

run()
