"""The console as one object: settings, owner binding, sessions, audit log, data, live hub.

``async with Console(store=..., owner=..., settings=...) as console`` starts
the live feed; :meth:`Console.serve` runs the web server (uvicorn) on the
configured address until it is closed. The gateway runs one inside its
process (``[console]`` in ``gateway.toml``); ``safething console`` runs one
alone against any store URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safething.net import Identity
from safething.resource import AsyncResource
from safething.store import Store
from safething_gateway.console.audit import AuditLog
from safething_gateway.console.auth import Backoff, OwnerBinding, Sessions
from safething_gateway.console.data import ConsoleData
from safething_gateway.console.live import Hub
from safething_gateway.provisioning import DeviceEndpoints

__all__ = ["Console", "ConsoleSettings"]

log = logging.getLogger("safething.console")

LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


@dataclass(frozen=True, slots=True)
class ConsoleSettings:
    """How the console listens and keeps sessions (``[console]`` in ``gateway.toml``)."""

    state_dir: Path
    """Owner binding (password-encrypted identity), audit log."""
    bind: str = "127.0.0.1"
    """Listen address; anything but loopback needs login (always on) and ideally TLS."""
    port: int = 8443
    """0: any free port."""
    session_idle_s: float = 1800.0
    """A session ends after this long without a request."""
    session_max_s: float = 12 * 3600.0
    """... and this long after login, whatever happens."""
    tls_cert: str = ""
    """PEM certificate (self-signed is fine: its fingerprint goes into provisioning QR codes)."""
    tls_key: str = ""
    """Its PEM private key."""
    page_size: int = 50
    """Things per page."""

    def __post_init__(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("console TLS needs both tls_cert and tls_key")
        if self.session_idle_s <= 0 or self.session_max_s <= 0:
            raise ValueError("console session lifetimes must be positive")
        if not 1 <= self.page_size <= 500:
            raise ValueError("console page_size must be 1..500")

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)

    @property
    def loopback(self) -> bool:
        return self.bind in LOOPBACK


class Console(AsyncResource):
    """Everything the console's pages use."""

    def __init__(
        self,
        *,
        store: Store,
        owner: Identity,
        settings: ConsoleSettings,
        registry: Any = None,
        gateway: Any = None,
        admin: Any = None,
        endpoints: DeviceEndpoints | None = None,
    ) -> None:
        self.settings = settings
        settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.owner = owner
        self.binding = OwnerBinding(settings.state_dir, owner)
        self.sessions = Sessions(idle_s=settings.session_idle_s, max_s=settings.session_max_s)
        self.backoff = Backoff()
        self.audit = AuditLog(settings.state_dir / "audit.db", owner)
        self.data = ConsoleData(store, owner, registry=registry, gateway=gateway, admin=admin)
        self.hub = Hub(self.data)
        self.endpoints = endpoints or DeviceEndpoints()
        self.tls_fingerprint = _cert_fingerprint(settings.tls_cert) if settings.tls else ""
        self.port = settings.port
        self._server: Any = None
        self._serving: asyncio.Task[None] | None = None

    @property
    def cookie_name(self) -> str:
        return "__Host-st-session" if self.settings.tls else "st-session"

    @property
    def url(self) -> str:
        scheme = "https" if self.settings.tls else "http"
        host = self.settings.bind if ":" not in self.settings.bind else f"[{self.settings.bind}]"
        return f"{scheme}://{host}:{self.port}/"

    async def __aenter__(self) -> Console:
        await self.start()
        return self

    async def start(self) -> None:
        await self.hub.start()

    async def serve(self) -> None:
        """Start the web server in the background; returns once it listens."""
        import uvicorn

        from safething_gateway.console.app import create_app

        s = self.settings
        config = uvicorn.Config(
            create_app(self),
            host=s.bind,
            port=s.port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            ssl_certfile=s.tls_cert or None,
            ssl_keyfile=s.tls_key or None,
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._server.install_signal_handlers = lambda: None
        # bind here: a taken port is an OSError for the caller, not uvicorn's sys.exit
        family = socket.AF_INET6 if ":" in s.bind else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((s.bind, s.port))
        except OSError as e:
            sock.close()
            raise OSError(f"the console cannot listen on {s.bind}:{s.port}: {e}") from e
        self.port = sock.getsockname()[1]
        self._serving = asyncio.get_running_loop().create_task(
            self._server.serve(sockets=[sock]), name="console:http"
        )
        while not self._server.started:
            if self._serving.done():
                await self._serving
                raise OSError(f"the console could not start on {s.bind}:{self.port}")
            await asyncio.sleep(0.01)

    def announce(self) -> list[str]:
        """Lines to print at start: the address, and the setup code until an owner is bound."""
        lines = [f"console: {self.url}"]
        if self.binding.setup_code is not None:
            lines.append(
                f"console setup code (one use, binds the owner): {self.binding.setup_code}"
            )
        if not self.settings.loopback and not self.settings.tls:
            lines.append("console: listening beyond loopback without TLS; set tls_cert/tls_key")
        return lines

    async def close(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            # open event streams never end by themselves: close them with the server
            self._server.force_exit = True
        if self._serving is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._serving, 5)
            self._serving = None
        await self.hub.close()
        await self.data.close()
        self.audit.close()


def _cert_fingerprint(path: str) -> str:
    try:
        pem = Path(path).expanduser().read_text()
    except OSError as e:
        raise ValueError(f"cannot read the console certificate {path}: {e}") from e
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()
