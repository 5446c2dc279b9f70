"""The API with its metrics changed, for figure 12 (bench/metrics.py).

- `uncached`: `GET /metrics` reads the fleet-wide figures from PostgreSQL and Redis on
  every scrape, instead of at most every `FLEET_TTL_S`: what a scrape costs the first
  time in five seconds.
- `unmetered`: the request gate records no per-request metric: the API with its metrics
  off, to weigh what they cost a submit.

`uvicorn bench.baselines.metrics_apps:uncached --factory` (or `:unmetered`), with the
environment of the API.
"""

from fastapi import FastAPI
from starlette.types import Scope

import api.app
import api.metrics
from api.metrics import ApiMetrics


def uncached() -> FastAPI:
    api.metrics.FLEET_TTL_S = 0.0
    return api.app.create_app()


class _Unobserved(ApiMetrics):
    def observe(self, scope: Scope, status: int, seconds: float) -> None:
        pass


def unmetered() -> FastAPI:
    # create_app builds its ApiMetrics by the name the module imported.
    setattr(api.app, "ApiMetrics", _Unobserved)  # noqa: B010
    return api.app.create_app()
