"""`python -m bench.receiver --port P [--fail-share 0.3] [--seed S]`: a webhook receiver for
the benchmarks, in a process of its own so that its CPU is not the worker's.

It answers 204, or 503 for `--fail-share` of the tries (drawn at random), without
checking signatures (the tests do that, with `standardwebhooks`). `GET /stats` says how
many tries it got, and how many it failed.
"""

import argparse
import random

from aiohttp import web


def create_app(fail_share: float, seed: int) -> web.Application:
    draw = random.Random(seed)
    counts = {"tries": 0, "failed": 0}

    async def receive(request: web.Request) -> web.Response:
        await request.read()
        counts["tries"] += 1
        if draw.random() < fail_share:
            counts["failed"] += 1
            return web.Response(status=503)
        return web.Response(status=204)

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(counts)

    app = web.Application()
    app.router.add_post("/hooks", receive)
    app.router.add_get("/stats", stats)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.receiver", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--fail-share", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=1)
    options = parser.parse_args()
    app = create_app(options.fail_share, options.seed)
    web.run_app(app, host="127.0.0.1", port=options.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
