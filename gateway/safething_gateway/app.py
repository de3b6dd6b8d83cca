"""Assemble a gateway from its configuration and run it until SIGTERM or Ctrl-C.

Start-up order: store, registry, owner identity, (private broker), gateway
with its bridges. Shutdown runs in reverse, every task cancelled and
awaited; each write the gateway makes is a single atomic transaction, so a
stop never leaves anything half-written.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safething.errors import IdentityError
from safething.local_identity import default_identity_path, load_identity
from safething.net import Identity
from safething.resource import AsyncResource, cancel_and_wait
from safething.store import Store, open_store
from safething_gateway import systemd
from safething_gateway.broker import Mosquitto, free_port
from safething_gateway.config import GatewayConfig
from safething_gateway.core import Bridge, Gateway
from safething_gateway.mosquitto import GATEWAY_LOGIN_ROLES
from safething_gateway.registry import Registry

__all__ = ["GatewayApp", "configure_logging", "serve"]

log = logging.getLogger("safething.gateway")


LOG_FIELDS = ("device", "reason", "transport", "channel", "thing")
"""Record attributes (``log.info(..., extra={"device": ...})``) that JSON logs carry as
fields of their own, so Loki, jq or journalctl can filter on them."""

_JOURNAL_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def journal_priority(level: int) -> int:
    """The syslog priority journald files a record of this level under."""
    for threshold in sorted(_JOURNAL_PRIORITY, reverse=True):
        if level >= threshold:
            return _JOURNAL_PRIORITY[threshold]
    return 7


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "t": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in LOG_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                doc[name] = value if isinstance(value, int | float | bool) else str(value)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


class _JournalPrefix(logging.Formatter):
    """Prefix each line with ``<priority>`` (sd-daemon(3)): journald, reading the unit's
    stderr, files the line under that priority, so ``journalctl -p warning`` works."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        priority = journal_priority(record.levelno)
        return "\n".join(f"<{priority}>{line}" for line in self.inner.format(record).split("\n"))


def configure_logging(fmt: str = "text", *, verbose: bool = False) -> None:
    """Logs on stderr, as text or JSON lines; under systemd (``$JOURNAL_STREAM`` set)
    each line carries its journald priority."""
    handler = logging.StreamHandler(sys.stderr)
    formatter: logging.Formatter = (
        _JsonFormatter()
        if fmt == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    if os.environ.get("JOURNAL_STREAM"):
        formatter = _JournalPrefix(formatter)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


def _owner(config: GatewayConfig, identity: Identity | None) -> Identity:
    if identity is not None:
        return identity
    path = Path(config.gateway.identity).expanduser() if config.gateway.identity else None
    try:
        return load_identity(path or default_identity_path())
    except IdentityError as e:
        raise IdentityError(f"the gateway needs an owner identity: {e}") from e


class GatewayApp(AsyncResource):
    """A configured gateway: ``async with GatewayApp(config) as app: ...``."""

    def __init__(self, config: GatewayConfig, *, identity: Identity | None = None) -> None:
        self.config = config
        self._identity = identity
        self.store: Store | None = None
        self.registry: Registry | None = None
        self.broker: Mosquitto | None = None
        self.gateway: Gateway | None = None
        self.console: Any = None
        """The web console (``[console] enabled``), serving once :meth:`start` returns."""
        self._broker_dir: Any = None
        self.leaf: Any = None
        """The site's nats-server (``[leaf] enabled``), a :class:`NatsServer`."""

    async def __aenter__(self) -> GatewayApp:
        await self.start()
        return self

    async def start(self) -> None:
        cfg = self.config
        try:
            store_url = cfg.gateway.store or None
            if cfg.leaf.enabled:
                store_url = store_url or await self._start_leaf()
            self.store = await open_store(store_url)
            self.registry = Registry(cfg.gateway.registry_path)
            owner = _owner(cfg, self._identity)
            mqtt_port = cfg.mqtt.port
            if cfg.mqtt.enabled and cfg.mqtt.start_broker:
                mqtt_port = self._start_broker(mqtt_port)
            bridges = self._bridges(mqtt_port, owner)
            self.gateway = Gateway(
                store=self.store,
                registry=self.registry,
                owner=owner,
                bridges=bridges,
                rate=cfg.gateway.rate_limit,
                burst=cfg.gateway.burst,
                offline_after=cfg.gateway.offline_after,
                max_things=cfg.gateway.max_things,
                close_after=cfg.gateway.close_after,
                close_births=cfg.gateway.close_births,
            )
            await self.gateway.start()
            if cfg.console.enabled:
                await self._start_console(owner, mqtt_port)
        except BaseException:
            await self.close()
            raise

    async def _start_console(self, owner: Identity, mqtt_port: int) -> None:
        from dataclasses import replace

        from safething_gateway.console import Console, ConsoleSettings
        from safething_gateway.device_admin import DeviceAdmin
        from safething_gateway.provisioning import DeviceEndpoints

        c = self.config.console
        assert self.store is not None and self.gateway is not None
        self.console = Console(
            store=self.store,
            owner=owner,
            settings=ConsoleSettings(
                c.state_path,
                bind=c.bind,
                port=c.port,
                session_idle_s=c.session_idle_s,
                session_max_s=c.session_max_s,
                tls_cert=c.tls_cert,
                tls_key=c.tls_key,
                self_signed=c.self_signed_flag,
                require_login=c.require_login,
            ),
            gateway=self.gateway,
            admin=DeviceAdmin.from_config(self.config, self.gateway.registry),
            endpoints=replace(DeviceEndpoints.from_config(self.config), mqtt_port=mqtt_port),
        )
        await self.console.start()
        await self.console.serve()

    async def _start_leaf(self) -> str:
        """Start the site's nats-server, a leaf node of the hub; its store URL."""
        from safething.store.nats import site_write_mapping
        from safething.store.nats_server import NatsServer, free_port

        leaf = self.config.leaf
        server = NatsServer(
            leaf.directory(self.config.gateway.registry_path),
            name=f"leaf-{leaf.domain}",
            host=leaf.listen,
            port=leaf.port or free_port(),
            domain=leaf.domain,
            extra_config=f'leafnodes {{ remotes: [ {{ url: "{leaf.hub}" }} ] }}\n'
            + site_write_mapping(leaf.domain),  # writes from the hub (hub -> site requests)
        )
        await server.start()
        self.leaf = server
        log.info(
            "started the site's nats-server on %s:%d (JetStream domain %s, leaf of %s)",
            leaf.listen,
            server.port,
            leaf.domain,
            leaf.hub,
        )
        return leaf.store_url(server.url)

    def _start_broker(self, port: int) -> int:
        import tempfile

        self._broker_dir = tempfile.TemporaryDirectory(prefix="safething-broker-")
        broker = Mosquitto(port or free_port(), Path(self._broker_dir.name))
        broker.start()
        self.broker = broker
        log.info("started a private Mosquitto on %s (no broker was configured)", broker.url)
        return broker.port

    def _bridges(self, mqtt_port: int, owner: Identity) -> list[Bridge]:
        cfg = self.config
        bridges: list[Bridge] = []
        username = cfg.mqtt.username or None
        password = cfg.mqtt.password or None

        def login(role: str) -> str | None:
            """Each MQTT connection its own login (the broker binds client id to login, so
            two connections with one login would throw each other off), one password."""
            return f"{username}-{role}" if username else None

        if cfg.mqtt.enabled:
            from safething_gateway.bridges.mqtt import MqttBridge

            bridges.append(
                MqttBridge(
                    cfg.mqtt.host,
                    mqtt_port,
                    prefix=cfg.mqtt.prefix,
                    username=username,
                    password=password,
                )
            )
        if cfg.coap.enabled:
            from safething_gateway.bridges.coap import CoapBridge

            bridges.append(CoapBridge(cfg.coap.bind, cfg.coap.port))
        if cfg.http.enabled:
            from safething_gateway.bridges.http import HttpBridge

            tokens = None
            if cfg.http.wot:
                from safething_gateway.tokens import TokenStore

                tokens = TokenStore(cfg.gateway.tokens_path, owner=owner)
            bridges.append(HttpBridge(cfg.http.bind, cfg.http.port, tokens=tokens))
        if cfg.mirror.enabled:
            from safething_gateway.mirror import JsonMirror

            bridges.append(
                JsonMirror(
                    cfg.mqtt.host,
                    mqtt_port,
                    prefix=cfg.mirror.prefix,
                    username=login(GATEWAY_LOGIN_ROLES[3]),
                    password=password,
                )
            )
        if cfg.adoption.homeassistant or cfg.adoption.homie or cfg.homeassistant.publish:
            from safething_gateway import adoption

            if cfg.adoption.homeassistant:
                bridges.append(
                    adoption.HomeAssistantAdopter(
                        cfg.mqtt.host,
                        mqtt_port,
                        discovery_prefix=cfg.adoption.discovery_prefix,
                        username=login(GATEWAY_LOGIN_ROLES[0]),
                        password=password,
                    )
                )
            if cfg.adoption.homie:
                bridges.append(
                    adoption.HomieAdopter(
                        cfg.mqtt.host,
                        mqtt_port,
                        username=login(GATEWAY_LOGIN_ROLES[1]),
                        password=password,
                    )
                )
            if cfg.homeassistant.publish:
                bridges.append(
                    adoption.HomeAssistantPublisher(
                        cfg.mqtt.host,
                        mqtt_port,
                        discovery_prefix=cfg.adoption.discovery_prefix,
                        username=login(GATEWAY_LOGIN_ROLES[2]),
                        password=password,
                    )
                )
        return bridges

    def endpoints(self) -> list[str]:
        found = self.gateway.endpoints() if self.gateway else []
        return found + ([self.console.url] if self.console is not None else [])

    async def alive(self) -> bool:
        """For the systemd watchdog: the event loop turns (we are here) and the device
        registry answers; a store outage does not count (the gateway buffers through it)."""
        if self.gateway is None:
            return False
        health = await self.gateway.health(timeout=5.0)
        return health.problem is None or health.problem[0] != "registry_unavailable"

    async def close(self) -> None:
        if self.console is not None:
            await self.console.close()
            self.console = None
        if self.gateway is not None:
            await self.gateway.close()
            self.gateway = None
        if self.broker is not None:
            self.broker.stop()
            self.broker = None
        if self._broker_dir is not None:
            self._broker_dir.cleanup()
            self._broker_dir = None
        if self.registry is not None:
            self.registry.close()
            self.registry = None
        if self.store is not None:
            await self.store.close()
            self.store = None
        if self.leaf is not None:
            await self.leaf.stop()
            self.leaf = None


async def serve(
    config: GatewayConfig,
    *,
    identity: Identity | None = None,
    on_ready: Callable[[GatewayApp], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run until SIGTERM/SIGINT (or ``stop`` is set); clean shutdown either way."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    started = time.monotonic()
    try:
        async with GatewayApp(config, identity=identity) as app:
            log.info(
                "gateway up in %.0f ms: %s",
                (time.monotonic() - started) * 1000,
                ", ".join(app.endpoints()) or "no bridges",
            )
            if on_ready is not None:
                on_ready(app)
            systemd.notify("READY=1", f"STATUS=serving {', '.join(app.endpoints())}")
            pinger = asyncio.create_task(systemd.watchdog(app.alive), name="watchdog")
            try:
                await stop.wait()
            finally:
                if await cancel_and_wait(pinger, log=log):
                    raise asyncio.CancelledError
            systemd.notify("STOPPING=1", "STATUS=stopping")
            log.info("stopping")
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
