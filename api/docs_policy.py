"""The docs pages may load nothing from another host, whatever their scripts ask for.

fastapi-offline serves the assets of `/docs` and `/redoc` from the package, but ReDoc's
bundle still asks a CDN for the logo of its menu's footer (and hides it when that
fails). A Content-Security-Policy of this origin only makes the browser refuse any such
request before it leaves: the pages behave offline as they do online. Swagger UI's page
starts it with an inline script, and both style themselves inline, hence `'unsafe-inline'`
for scripts and styles; ReDoc runs its search in a worker from a `blob:` URL.
"""

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DOCS_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; "
    "connect-src 'self'; base-uri 'none'; frame-ancestors 'none'"
)


def _with_policy(app: ASGIApp) -> ASGIApp:
    header = (b"content-security-policy", DOCS_POLICY.encode())

    async def answer(scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_policy(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message["headers"], header]
            await send(message)

        await app(scope, receive, send_with_policy)

    return answer


def confine_docs_pages(app: FastAPI, paths: tuple[str, ...] = ("/docs", "/redoc")) -> None:
    """Send `DOCS_POLICY` with the pages at `paths`."""
    for route in app.router.routes:
        if isinstance(route, APIRoute) and route.path in paths:
            route.app = _with_policy(route.app)
