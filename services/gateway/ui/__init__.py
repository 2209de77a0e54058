"""The web pages the gateway serves under ``/ui/``: the review page and the operator console.

Plain HTML, ES modules and CSS from ``pages/`` (no build step), plus Plotly from npm
(``infra/install-ui-deps.sh`` puts it in ``node_modules/``). The pages hold no data: they are
open like health, and every call they make sends the API key the user typed (kept in
``sessionStorage``) as ``Authorization: Bearer``, never in a URL or a cookie. Every answer
under ``/ui/`` carries a strict Content-Security-Policy: nothing inline, nothing from any
other host.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from medops.errors import NotFoundError
from medops.service.middleware import ASGIApp, Message, Receive, Scope, Send

UI_PREFIX = "/ui"
PAGES = Path(__file__).parent / "pages"
PLOTLY = Path(__file__).parent / "node_modules" / "plotly.js-dist-min" / "plotly.min.js"

PLOTLY_STYLES = (
    "'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=' "
    "'sha256-V2sIX92Uh6ZaGSFTKMHghsB85b9toJtmazgG09AI2uk='"
)
"""The only inline styles let through, by hash: the empty ``<style>`` element Plotly creates
and then fills through the CSSOM (which CSP allows), and the map stylesheet its bundle inserts
on load (plotly.js-dist-min 3.1.2; the browser tests fail on any other CSP violation)."""

CONTENT_SECURITY_POLICY = (
    f"default-src 'self'; script-src 'self'; style-src 'self' {PLOTLY_STYLES}; "
    "img-src 'self' data: blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-cache",
}


def is_page(path: str) -> bool:
    """The page files need no key (they carry no data; the calls they make do)."""
    return path == UI_PREFIX or path.startswith(UI_PREFIX + "/")


class SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` to every answer under ``/ui/``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_page(scope["path"]):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def add_ui_routes(app: FastAPI) -> None:
    """Serve the pages and the vendored Plotly under ``/ui/``."""

    @app.get(UI_PREFIX, include_in_schema=False)
    async def ui_root() -> RedirectResponse:
        return RedirectResponse(f"{UI_PREFIX}/")

    @app.get(f"{UI_PREFIX}/vendor/plotly.min.js", include_in_schema=False)
    async def plotly() -> FileResponse:
        if not PLOTLY.is_file():
            raise NotFoundError("plotly.min.js is not installed: run infra/install-ui-deps.sh")
        return FileResponse(PLOTLY, media_type="text/javascript")

    app.mount(UI_PREFIX, StaticFiles(directory=PAGES, html=True), name="ui")
