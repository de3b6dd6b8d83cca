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
import ipaddress
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
from safething_gateway.console.tls import self_signed_certificate
from safething_gateway.provisioning import DeviceEndpoints

__all__ = ["Console", "ConsoleSettings", "is_loopback"]

log = logging.getLogger("safething.console")


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
    self_signed: bool | None = None
    """Without ``tls_cert``: serve HTTPS with a self-signed certificate made on first
    start and kept in ``state_dir`` (its SHA-256 printed at start and put into
    provisioning QR codes). None: when listening beyond loopback."""
    require_login: bool = False
    """Log in on loopback too. Beyond loopback login is always required (the owner is
    bound with the printed setup code first)."""
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
    def loopback(self) -> bool:
        """Listening on this machine only (127.0.0.0/8, ::1, localhost)."""
        return is_loopback(self.bind)

    @property
    def login_required(self) -> bool:
        return self.require_login or not self.loopback

    @property
    def makes_certificate(self) -> bool:
        """Whether the console serves HTTPS with a certificate it made itself."""
        if self.tls_cert:
            return False
        return self.self_signed if self.self_signed is not None else not self.loopback


def is_loopback(host: str) -> bool:
    if host.strip().lower() in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


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
        self.binding = OwnerBinding(settings.state_dir, owner, needed=settings.login_required)
        self.sessions = Sessions(idle_s=settings.session_idle_s, max_s=settings.session_max_s)
        self.backoff = Backoff()
        self.audit = AuditLog(settings.state_dir / "audit.db", owner)
        self.data = ConsoleData(store, owner, registry=registry, gateway=gateway, admin=admin)
        self.hub = Hub(self.data)
        self.endpoints = endpoints or DeviceEndpoints()
        self.tls_cert, self.tls_key = settings.tls_cert, settings.tls_key
        if settings.makes_certificate:
            self.tls_cert, self.tls_key = self_signed_certificate(settings.state_dir, settings.bind)
        self.tls_fingerprint = _cert_fingerprint(self.tls_cert) if self.tls_cert else ""
        """SHA-256 of the certificate (DER, hex); "" without TLS."""
        self.port = settings.port
        self._server: Any = None
        self._serving: asyncio.Task[None] | None = None

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)

    @property
    def cookie_name(self) -> str:
        return "__Host-st-session" if self.tls else "st-session"

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
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
            ssl_certfile=self.tls_cert or None,
            ssl_keyfile=self.tls_key or None,
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
        if self.tls:
            made = " (self-signed, made by the console)" if self.settings.makes_certificate else ""
            lines.append(f"console certificate SHA-256{made}: {colon_hex(self.tls_fingerprint)}")
        elif not self.settings.loopback:
            lines.append("console: listening beyond loopback without TLS; set tls_cert/tls_key")
        if not self.settings.login_required:
            lines.append("console: no login on loopback (every local user can open it)")
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


def colon_hex(hex_digest: str) -> str:
    """``ab:cd:...``, as browsers show a certificate's fingerprint."""
    return ":".join(hex_digest[i : i + 2] for i in range(0, len(hex_digest), 2)).upper()


def _cert_fingerprint(path: str) -> str:
    try:
        pem = Path(path).expanduser().read_text()
    except OSError as e:
        raise ValueError(f"cannot read the console certificate {path}: {e}") from e
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()
