"""What the demo's web server answers, beyond Gradio's own checks.

- The ``Host`` header. On a loopback address only loopback names are answered: any web
  page the user visits could otherwise point a name of its own at 127.0.0.1 (DNS
  rebinding) and drive the page, which, being the same origin then, no browser rule stops.
  Bound to another address the page is meant to be reached by the machine's names on the
  network, which cannot be known here, so every name is answered.
- Writes from other sites. A browser sends a form upload to any address without asking
  first, so any page the user visits could post files into the demo's upload folder (up
  to the upload limit each, kept for an hour). A POST, PUT, PATCH or DELETE whose
  ``Origin`` is not the page's own (scheme aside, the ``Host`` it was sent to) gets 403.
  Requests without an ``Origin`` come from programs, not from a page in a browser.
- Two response headers: the page is not framed by other sites (clickjacking) and no
  response is sniffed into another content type.
"""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit

LOOPBACK_NAMES = ("localhost", "127.0.0.1")  # IPv4 only: the demo refuses to listen on IPv6 (srdeploy.demo.cli)
HEADERS = ((b"x-frame-options", b"DENY"), (b"x-content-type-options", b"nosniff"))


def allowed_hosts(host: str) -> list[str]:
    """The ``Host`` names a server listening on ``host`` answers (``*``: any)."""
    if host == "localhost" or _is_loopback(host):
        return sorted({*LOOPBACK_NAMES, host})
    return ["*"]


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ResponseHeaders:
    """ASGI middleware that adds HEADERS to every HTTP response."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


class SameOriginWrites:
    """ASGI middleware: 403 for a write a page of another origin sent (module docstring)."""

    WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] in self.WRITES:
            headers = dict(scope["headers"])
            origin = headers.get(b"origin")
            if origin is not None and urlsplit(origin.decode("latin-1")).netloc.lower() != headers.get(b"host", b"").decode("latin-1").lower():
                await send({"type": "http.response.start", "status": 403, "headers": [(b"content-type", b"text/plain; charset=utf-8"), *HEADERS]})
                await send({"type": "http.response.body", "body": b"a request from another site's page is refused\n"})
                return
        await self.app(scope, receive, send)


def app_kwargs(host: str) -> dict[str, Any]:
    """Keyword arguments for the FastAPI app Gradio builds (``launch(app_kwargs=...)``)."""
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    return {"middleware": [Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts(host)), Middleware(SameOriginWrites), Middleware(ResponseHeaders)]}
