"""The test site: a gateway host on loopback, for tests, demos and benchmarks.

Shipped in the package (as gpiozero ships its mock pins) so users can test
their own devices and bridges the way SAFEthing tests its own::

    async with open_site(tmp_path) as site:
        record, password = await site.provision("mqtt")
        async with site.gateway("mqtt") as gateway:
            ...

:func:`open_site` starts a private Mosquitto on a free 127.0.0.1 port with
logins and ACLs (:class:`MosquittoAuth`, the broker's user chosen by
:func:`broker_user`), a device registry and a store; :meth:`GatewaySite.gateway`
runs a :class:`Gateway` with bridges on free ports. Production modules never
import this one.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safething.net import Identity
from safething.store import Store, open_store
from safething_gateway.broker import Mosquitto, broker_user, free_port, mosquitto
from safething_gateway.core import Bridge, Gateway
from safething_gateway.device_admin import DeviceAdmin
from safething_gateway.mosquitto import MosquittoAuth
from safething_gateway.registry import DeviceRecord, Registry

__all__ = [
    "GatewaySite",
    "Mosquitto",
    "broker_files_dir",
    "broker_user",
    "free_port",
    "mosquitto",
    "mqtt_login",
    "open_site",
    "unique_id",
    "wait_until",
]


def unique_id(prefix: str) -> str:
    """``prefix-<8 hex digits>``: a name no parallel test run shares (a valid device id)."""
    return f"{prefix}-{secrets.token_hex(4)}"


async def wait_until(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy; that value.
    ``timeout`` only guards against a hang (``TimeoutError``)."""
    async with asyncio.timeout(timeout):
        while True:
            value = check()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return value
            await asyncio.sleep(0.01)


@contextlib.contextmanager
def broker_files_dir() -> Iterator[Path]:
    """A new directory the broker's user (:func:`broker_user`) can reach, for the files
    it reads (password file, ACL); removed on exit. A test's ``tmp_path`` is not one:
    pytest makes it private to whoever runs the tests."""
    with tempfile.TemporaryDirectory(prefix="safething-broker-files-") as tmp:
        path = Path(tmp)
        path.chmod(0o755)
        yield path


def mqtt_login(port: int, user: str | None, password: str | None) -> bool:
    """One MQTT CONNECT to ``127.0.0.1:port`` (None: anonymous): True if accepted."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    answer: list[bool] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=unique_id("probe"))
    if user is not None:
        client.username_pw_set(user, password)
    client.on_connect = lambda c, u, flags, reason, props: answer.append(not reason.is_failure)
    client.connect("127.0.0.1", port)
    try:
        for _ in range(100):
            client.loop(0.05)
            if answer:
                return answer[0]
    finally:
        client.disconnect()
    raise TimeoutError("no CONNACK")


@dataclass
class GatewaySite:
    """What a gateway host runs: a broker with logins and ACLs, a registry, a store."""

    root: Path
    """A private directory for the site's files."""
    store: Store
    registry: Registry
    broker: Mosquitto
    auth: MosquittoAuth | None
    """The broker's password file and ACL; None for an anonymous broker."""
    gateway_user: str | None
    gateway_password: str | None
    owner: Identity = field(default_factory=lambda: Identity.generate("owner"))
    bridges: dict[str, Bridge] = field(default_factory=dict)
    """The bridges of the last :meth:`gateway`, by transport."""

    async def provision(
        self, transport: str = "mqtt", device_id: str | None = None
    ) -> tuple[DeviceRecord, str | None]:
        """What ``safething provision`` does: a registry entry and, for MQTT on a broker
        with logins, a broker login (returned) that works once this returns."""
        done = self.admin.provision(device_id or unique_id("dev"), transport)
        password = done.mqtt_login.get("password")
        if password is not None:
            await self.login_works(done.record.device_id, password, True)
        return done.record, password

    @property
    def admin(self) -> DeviceAdmin:
        """Provisions and revokes devices on this site (registry and broker login), as
        ``safething provision`` and the console do."""
        return DeviceAdmin(self.registry, auth=self.auth, reload=self.broker.reload)

    async def login_works(self, user: str | None, password: str | None, expected: bool) -> None:
        """Wait until the broker answers this login as ``expected`` (it re-reads its
        files on SIGHUP asynchronously)."""

        async def answered() -> bool:
            return await asyncio.to_thread(mqtt_login, self.broker.port, user, password) == (
                expected
            )

        await wait_until(answered)

    def bridge(self, transport: str, **options: Any) -> Bridge:
        """A new bridge for ``transport`` on this site: MQTT logged in as the gateway,
        CoAP and HTTP on free ports."""
        if transport == "mqtt":
            from safething_gateway.bridges.mqtt import MqttBridge

            options.setdefault("client_id", unique_id("gw"))
            return MqttBridge(
                "127.0.0.1",
                self.broker.port,
                username=self.gateway_user,
                password=self.gateway_password,
                **options,
            )
        if transport == "coap":
            from safething_gateway.bridges.coap import CoapBridge

            return CoapBridge("127.0.0.1", 0, **options)
        if transport == "http":
            from safething_gateway.bridges.http import HttpBridge

            return HttpBridge("127.0.0.1", 0, **options)
        raise ValueError(f"no bridge for transport {transport!r}")

    @asynccontextmanager
    async def gateway(
        self, *transports: str, bridges: list[Bridge] | None = None, **options: Any
    ) -> AsyncIterator[Gateway]:
        """A started :class:`Gateway` with a bridge per transport (and ``bridges``)."""
        made = {t: self.bridge(t) for t in transports}
        self.bridges = dict(made)
        async with Gateway(
            store=self.store,
            registry=self.registry,
            owner=self.owner,
            bridges=[*made.values(), *(bridges or [])],
            **options,
        ) as gateway:
            await gateway.start()
            yield gateway


@asynccontextmanager
async def open_site(
    root: Path,
    *,
    store: Store | None = None,
    registry: Registry | None = None,
    logins: bool = True,
) -> AsyncIterator[GatewaySite]:
    """A :class:`GatewaySite` with its files under ``root``; stopped on exit.

    The store is a SQLite file under ``root`` and the registry ``root/gateway.db``
    unless given (then the caller keeps them and closes them). ``logins=False``
    runs an anonymous broker (as most hobby brokers adopted devices live on)."""
    await asyncio.to_thread(root.mkdir, parents=True, exist_ok=True)
    auth = user = password = None
    auth_dir = None
    with contextlib.ExitStack() as stack:
        if logins:
            auth_dir = stack.enter_context(broker_files_dir())
            auth = MosquittoAuth(
                auth_dir / "mosquitto.passwd", auth_dir / "mosquitto.acl", owner=broker_user()
            )
            user = unique_id("gateway")
            password = auth.add_gateway_user(user)
        broker = stack.enter_context(
            mosquitto(
                password_file=auth.password_file if auth else None,
                acl_file=auth.acl_file if auth else None,
            )
        )
        if registry is None:
            registry = stack.enter_context(contextlib.closing(Registry(root / "gateway.db")))
        async with contextlib.AsyncExitStack() as astack:
            if store is None:
                store = await open_store(f"sqlite://{root / 'store.db'}")
                await astack.enter_async_context(store)
            yield GatewaySite(root, store, registry, broker, auth, user, password)
