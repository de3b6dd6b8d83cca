"""Protections every response and request goes through, in one ASGI middleware.

* Security headers on every response: a strict Content-Security-Policy
  (``default-src 'self'``, no inline script or style, no framing), no
  sniffing, no referrer, no caching of pages.
* State-changing requests (anything but GET, HEAD, OPTIONS) are refused with
  403 unless the browser says they come from this very origin:
  ``Sec-Fetch-Site: same-origin``, or, from a browser that does not send it,
  an ``Origin`` equal to the console's own. A request with neither is
  refused too. This stops cross-site request forgery from another site, and
  from another port of this host (which SameSite cookies alone do not).
"""

from __future__ import annotations

from typing import Any

__all__ = ["CSP", "Guard", "same_origin"]

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def same_origin(scope: dict[str, Any]) -> tuple[bool, str]:
    """Whether a request comes from the console's own pages, and why not."""
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    site = headers.get("sec-fetch-site")
    if site is not None:
        return site == "same-origin", f"Sec-Fetch-Site is {site!r}"
    origin = headers.get("origin")
    if origin is None:
        return False, "no Origin header"
    own = f"{scope.get('scheme', 'http')}://{headers.get('host', '')}"
    return origin == own, f"Origin {origin!r} is not {own!r}"


class Guard:
    """ASGI middleware: security headers out, cross-origin state changes refused."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += _HEADERS
                if not scope["path"].startswith("/static/"):
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        if scope["method"] not in SAFE_METHODS:
            ok, why = same_origin(scope)
            if not ok:
                body = f"cross-site request refused ({why})\n".encode()
                await send_with_headers(
                    {
                        "type": "http.response.start",
                        "status": 403,
                        "headers": [(b"content-type", b"text/plain; charset=utf-8")],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send_with_headers)
