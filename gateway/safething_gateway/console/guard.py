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
* A console listening on loopback answers only requests addressed to a
  loopback name (``Host`` 127.x.y.z, localhost, [::1]): a web page whose own
  name an attacker re-points at 127.0.0.1 (DNS rebinding) is same-origin with
  itself, so only the name it uses gives it away (421, nothing served).
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["CSP", "Guard", "loopback_host", "same_origin"]

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
_LOOPBACK_HOST = re.compile(r"(127(\.[0-9]{1,3}){3}|localhost|\[::1\])(:[0-9]{1,5})?")


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


def loopback_host(scope: dict[str, Any]) -> bool:
    """Whether the request's ``Host`` names this machine's loopback."""
    for k, v in scope["headers"]:
        if k.lower() == b"host":
            return _LOOPBACK_HOST.fullmatch(v.decode("latin-1").strip().lower()) is not None
    return False


class Guard:
    """ASGI middleware: security headers out, cross-origin state changes refused, and
    on a loopback console any request addressed to another name."""

    def __init__(self, app: Any, *, loopback_only: bool = False) -> None:
        self.app = app
        self.loopback_only = loopback_only

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

        async def refuse(status: int, text: str) -> None:
            await send_with_headers(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8")],
                }
            )
            await send({"type": "http.response.body", "body": f"{text}\n".encode()})

        if self.loopback_only and not loopback_host(scope):
            await refuse(421, "this console answers requests to 127.0.0.1 or localhost only")
            return
        if scope["method"] not in SAFE_METHODS:
            ok, why = same_origin(scope)
            if not ok:
                await refuse(403, f"cross-site request refused ({why})")
                return
        await self.app(scope, receive, send_with_headers)
