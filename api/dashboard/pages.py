"""`GET /dashboard`: a page the API serves itself, for an operator to keep open.

A static page and its script and style sheet, shipped in the package (`static/`),
read once when the module loads: no CDN, no build step. The script polls
`GET /api/v1/status` and reads `GET /api/v1/audits/{id}` for an audit's page
(`/dashboard/audits/{id}`, the same page).

With `AUTH=keys` the page asks for an admin key in a form that posts it to
`POST /dashboard/session`, which checks it and keeps it in the HttpOnly cookie
`DASHBOARD_COOKIE` (`SameSite=Strict`, `Secure` over HTTPS, gone when the browser
closes); `DELETE /dashboard/session` drops it. The API takes that cookie on reads only
(api/auth.py), so the page's own requests carry no key, and a key is never in a URL.

These routes are not in the OpenAPI schema: they are a browser's pages and form, not
the API. The pages send a Content-Security-Policy that allows this origin only.
"""

from importlib.resources import files
from urllib.parse import parse_qs, urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import Response

from api.auth import DASHBOARD_COOKIE, Forbidden, Unauthorized, caller_of_key
from shared.config import Settings

_STATIC = files("api.dashboard") / "static"
_ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
_ASSET_BYTES = {name: (_STATIC / name).read_bytes() for name in _ASSETS}
_PAGE = (_STATIC / "index.html").read_text(encoding="utf-8")
# A key of `auditq key create` is 46 characters; API_KEYS may be longer, not this long.
MAX_KEY_CHARS = 512

_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


async def page(request: Request) -> Response:
    """The dashboard, or an audit's page: one page, whose script reads its path."""
    settings: Settings = request.app.state.settings
    html = _PAGE.replace("{{auth}}", "keys" if settings.uses_keys else "none")
    return Response(html, media_type="text/html; charset=utf-8", headers=_HEADERS)


async def asset(name: str) -> Response:
    if name not in _ASSETS:
        return Response(status_code=404, headers=_HEADERS)
    return Response(_ASSET_BYTES[name], media_type=_ASSETS[name], headers=_HEADERS)


async def open_session(request: Request) -> Response:
    """Check the posted admin key, then keep it in the dashboard's cookie (204).

    401 for an unknown key, 403 for a member's key or a request from another site.
    Without keys (`AUTH=none`) there is nothing to keep: 204 and no cookie.
    """
    _refuse_other_sites(request)
    settings: Settings = request.app.state.settings
    if not settings.uses_keys:
        return Response(status_code=204)
    key = await _posted_key(request)
    caller = await caller_of_key(request, key, settings)
    if not caller.is_admin:
        raise Forbidden(
            f"The dashboard needs an admin key; this one is a member of {caller.tenant}."
        )
    response = Response(status_code=204)
    response.set_cookie(
        DASHBOARD_COOKIE,
        key,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


async def close_session() -> Response:
    response = Response(status_code=204)
    response.delete_cookie(DASHBOARD_COOKIE, httponly=True, samesite="strict", path="/")
    return response


def _refuse_other_sites(request: Request) -> None:
    """A browser names the page a POST comes from in `Origin`: only this host's may sign
    in, so that another site cannot sign a visitor in with a key of its choosing."""
    origin = request.headers.get("origin")
    if (
        origin is not None
        and urlsplit(origin).netloc.lower() != request.headers.get("host", "").lower()
    ):
        raise Forbidden("A dashboard session is opened from the dashboard's own page only.")


async def _posted_key(request: Request) -> str:
    """The `key` field of a form (`application/x-www-form-urlencoded`)."""
    try:
        fields = parse_qs((await request.body()).decode("utf-8", "replace"), max_num_fields=8)
    except ValueError:  # more fields than a sign-in form has
        fields = {}
    key = (fields.get("key") or [""])[0].strip()
    if not key or len(key) > MAX_KEY_CHARS:
        raise Unauthorized("Enter an admin key of `auditq key create` or of API_KEYS.")
    return key


def add_dashboard(app: FastAPI) -> None:
    app.add_api_route("/dashboard", page, include_in_schema=False)
    app.add_api_route("/dashboard/audits/{audit_id}", page, include_in_schema=False)
    app.add_api_route("/dashboard/assets/{name}", asset, include_in_schema=False)
    app.add_api_route("/dashboard/session", open_session, methods=["POST"], include_in_schema=False)
    app.add_api_route(
        "/dashboard/session", close_session, methods=["DELETE"], include_in_schema=False
    )
