"""The gateway demo: three simulated gardening devices, one per transport, and a controller.

A private Mosquitto on a free port, the gateway with its MQTT, CoAP and HTTP
bridges, one gardening device (soil moisture sensor and valve) speaking each
transport with its own secret and counters, and a controller SAFEthing that
subscribes to every device's alarms and opens or closes its valve through
the gateway. By default one line per event that matters (an alarm and the
action it led to, when that action ends); ``verbose`` prints every reading
and every action state as it happens. The registry and device counters live
in ``state_dir`` so a rerun continues where the last one stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from safething.errors import SafeThingError
from safething.net import Client, Identity
from safething.resource import Tasks
from safething.store import Store
from safething.things import ActionStatus, Notification, Thing, ThingClient, ThingDescription
from safething_gateway.broker import Mosquitto, free_port
from safething_gateway.core import Bridge, Gateway
from safething_gateway.device_clients.base import DeviceLink
from safething_gateway.registry import Registry

__all__ = ["GatewayDemo", "device_description"]

log = logging.getLogger("safething.gateway.demo")

Echo = Callable[[str], None]
TRANSPORTS = ("mqtt", "coap", "http")
DRY_BELOW = 20.0
WET_ABOVE = 75.0
TICK_S = 0.5


def device_description(device_id: str) -> dict[str, Any]:
    """What a gardening device announces in its birth message (protocol §3)."""
    return {
        "format": 1,
        "id": device_id,
        "title": "Gardening device",
        "description": "Soil moisture sensor and a valve, bridged by the gateway",
        "attributes": [
            {
                "name": "moisture",
                "type": "number",
                "unit": "%",
                "minimum": 0,
                "maximum": 100,
                "dynamic": True,
            },
            {"name": "valve", "type": "enum", "choices": ["open", "closed"], "dynamic": True},
            {"name": "model", "type": "string", "value": "GD-1 (simulated)"},
        ],
        "topics": [
            {"name": "VeryDryAlarm", "type": "number", "unit": "%"},
            {"name": "VeryWetAlarm", "type": "number", "unit": "%"},
        ],
        "actions": [
            {
                "name": "OpenValve",
                "params": [
                    {"name": "psi", "type": "number", "minimum": 0, "maximum": 100, "default": 30}
                ],
                "output": {"type": "object"},
                "timeout_s": 20,
            },
            {"name": "CloseValve", "output": {"type": "object"}, "timeout_s": 20},
        ],
    }


class _Soil:
    """Dries slowly; the open valve wets it quickly."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.moisture = self.rng.uniform(22, 40)
        self.valve = "closed"

    def step(self) -> float:
        delta = 9.0 if self.valve == "open" else -self.rng.uniform(1.5, 3.5)
        self.moisture = round(min(100.0, max(0.0, self.moisture + delta)), 1)
        return self.moisture


class _SimulatedDevice:
    """One gardening device: a DeviceLink and a transport client."""

    def __init__(self, demo: GatewayDemo, transport: str, link: DeviceLink, seed: int) -> None:
        self.demo = demo
        self.transport = transport
        self.link = link
        self.soil = _Soil(seed)
        self.client: Any = None
        self.needless = 0  # valve actions that found the valve already as asked
        link.on_action = self._act

    def _act(self, action: str, args: dict[str, Any]) -> dict[str, Any]:
        if action == "OpenValve":
            self.needless += self.soil.valve == "open"
            self.soil.valve = "open"
            return {"valve": "open", "psi": args.get("psi")}
        if action == "CloseValve":
            self.needless += self.soil.valve == "closed"
            self.soil.valve = "closed"
            return {"valve": "closed"}
        raise ValueError(f"unknown action {action}")

    async def start(self) -> None:
        demo = self.demo
        if self.transport == "mqtt":
            from safething_gateway.device_clients.mqtt import MqttDevice

            assert demo.broker is not None
            self.client = MqttDevice(self.link, "127.0.0.1", demo.broker.port)
        elif self.transport == "coap":
            from safething_gateway.device_clients.coap import CoapDevice

            self.client = CoapDevice(self.link, "127.0.0.1", demo.coap_port)
        else:
            from safething_gateway.device_clients.http import HttpDevice

            self.client = HttpDevice(self.link, f"http://127.0.0.1:{demo.http_port}")
        await self.client.start()
        await self.client.reading({"moisture": self.soil.moisture, "valve": self.soil.valve})
        if self.transport == "coap":
            await self.client.observe()
        elif self.transport == "http":
            demo.spawn(self._long_poll(), f"{self.link.device_id}:poll")
        demo.spawn(self._sense(), f"{self.link.device_id}:sense")

    async def _long_poll(self) -> None:
        while True:
            try:
                await self.client.poll(wait=5)
            except SafeThingError as e:  # refused: say so in one line and poll again
                self.demo.line("refused", f"{self.link.device_id} poll: {e}")
                await asyncio.sleep(TICK_S)

    async def _sense(self) -> None:
        shown_valve = self.soil.valve
        while True:
            await asyncio.sleep(TICK_S)
            value = self.soil.step()
            reading: dict[str, Any] = {"moisture": value}
            if self.soil.valve != shown_valve:
                reading["valve"] = shown_valve = self.soil.valve
            try:
                await self.client.reading(reading)
                if value < DRY_BELOW and self.soil.valve == "closed":
                    await self.client.event("VeryDryAlarm", value)
                elif value > WET_ABOVE and self.soil.valve == "open":
                    await self.client.event("VeryWetAlarm", value)
            except SafeThingError as e:  # refused by the gateway: one line, keep sensing
                self.demo.line("refused", f"{self.link.device_id}: {e}")

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()


class GatewayDemo:
    """``async with GatewayDemo(store, owner, state_dir) as demo: await demo.run(...)``."""

    def __init__(
        self,
        store: Store,
        owner: Identity,
        state_dir: Path,
        *,
        echo: Echo = print,
        verbose: bool = False,
    ) -> None:
        self.store = store
        self.owner = owner
        self.state_dir = state_dir
        self.echo = echo
        self.verbose = verbose
        self.counts: Counter[str] = Counter()
        self.broker: Mosquitto | None = None
        self._broker_dir: tempfile.TemporaryDirectory[str] | None = None
        self.registry: Registry | None = None
        self.gateway: Gateway | None = None
        self.coap_port = 0
        self.http_port = 0
        self.devices: list[_SimulatedDevice] = []
        self.controller: Thing | None = None
        self.console = ThingClient(Client(store))
        self._tasks = Tasks("gateway-demo:", log=log)
        self._busy: set[str] = set()
        self._valve: dict[str, str] = {}  # what the controller knows of each valve
        self.web: Any = None
        """The web console, when its extra is installed (``pip install 'safething[console]'``)."""

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self._tasks.spawn(coro, name)

    def line(self, kind: str, text: str) -> None:
        now = time.time()
        stamp = time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"
        self.echo(f"{stamp}  {kind:<12}  {text}")

    async def __aenter__(self) -> GatewayDemo:
        try:
            await self._start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _start(self) -> None:
        from safething_gateway.bridges.coap import CoapBridge
        from safething_gateway.bridges.http import HttpBridge
        from safething_gateway.bridges.mqtt import MqttBridge

        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # its own directory, which the broker's user (broker_user()) can reach
        self._broker_dir = tempfile.TemporaryDirectory(prefix="safething-demo-broker-")
        self.broker = Mosquitto(free_port(), Path(self._broker_dir.name))
        self.broker.start()
        self.echo(f"no MQTT broker configured: started a private Mosquitto on {self.broker.url}")
        self.registry = Registry(self.state_dir / "gateway.db")
        coap = CoapBridge("127.0.0.1", 0)
        http = HttpBridge("127.0.0.1", 0)
        bridges: list[Bridge] = [MqttBridge("127.0.0.1", self.broker.port), coap, http]
        self.gateway = Gateway(
            store=self.store, registry=self.registry, owner=self.owner, bridges=bridges
        )
        await self.gateway.start()
        self.coap_port, self.http_port = coap.port, http.port
        self.echo("gateway endpoints:")
        for endpoint in self.gateway.endpoints():
            self.echo(f"  {endpoint}")
        self.echo(f"  http://127.0.0.1:{self.http_port}/metrics   /healthz   /openapi.json")
        await self._start_web()
        suffix = self.owner.public_sign_key.hex()[:6]
        for i, transport in enumerate(TRANSPORTS):
            device_id = f"garden-{transport}-{suffix}"
            record = self.registry.find(device_id) or self.registry.add(device_id, transport)
            link = DeviceLink(
                device_id,
                record.secret,
                device_description(device_id),
                state_file=self.state_dir / f"{device_id}.counters.json",
                version=record.protocol,
            )
            self.devices.append(_SimulatedDevice(self, transport, link, seed=i))
        for device in self.devices:
            await device.start()
            self.echo(f"device {device.link.device_id} is online over {device.transport}")
        await self._start_controller(suffix)

    async def _start_web(self) -> None:
        """The console on 127.0.0.1:8088 (or a free port): its address is printed (no login
        on loopback, so no setup code; one listening beyond loopback prints its code)."""
        try:
            from safething_gateway.console import Console, ConsoleSettings
        except ImportError:
            self.echo("web console: not installed (pip install 'safething[console]')")
            return
        from safething_gateway.provisioning import DeviceEndpoints

        assert self.gateway is not None and self.broker is not None
        endpoints = DeviceEndpoints(
            mqtt_port=self.broker.port,
            coap_port=self.coap_port,
            http_url=f"http://127.0.0.1:{self.http_port}",
        )
        for port in (8088, 0):
            web = Console(
                store=self.store,
                owner=self.owner,
                settings=ConsoleSettings(self.state_dir / "console", port=port),
                gateway=self.gateway,
                endpoints=endpoints,
            )
            try:
                await web.start()
                await web.serve()
            except OSError:
                await web.close()
                continue
            self.web = web
            for text in web.announce():
                self.echo(text)
            return

    async def _start_controller(self, suffix: str) -> None:
        ids = [d.link.device_id for d in self.devices]
        identity_path = self.state_dir / "controller.identity.json"
        identity = (
            Identity.load(identity_path)
            if identity_path.exists()
            else Identity.generate("controller")
        )
        if not identity_path.exists():
            identity.save(identity_path)
        description = ThingDescription(
            f"garden-controller-{suffix}", title="Gardening controller (via the gateway)"
        )
        self.controller = Thing(description, identity=identity, owner=self.owner, store=self.store)
        await self.controller.start()
        await self.controller.register()
        await self.controller.publish()
        for device_id in ids:
            await self.controller.subscribe(device_id, topic="VeryDryAlarm", callback=self._dry)
            await self.controller.subscribe(
                device_id, attribute="moisture", filter=f"gt:{WET_ABOVE:g}", callback=self._wet
            )
            if self.verbose:
                self.spawn(self._show(device_id), f"show:{device_id}")

    async def _show(self, device_id: str) -> None:
        async with self.console.subscribe(device_id, attribute="moisture") as readings:
            async for note in readings:
                self.line("reading", f"{device_id}  moisture = {note.value:g} %  (seq {note.seq})")

    def _dry(self, note: Notification) -> None:
        self.counts["VeryDryAlarm"] += 1
        cause = f"VeryDryAlarm {note.value:g} %"
        if self.verbose:
            self.line("notification", f"{cause} from {note.thing_id}")
        self._want(note.thing_id, "OpenValve", "open", cause, psi=30)

    def _wet(self, note: Notification) -> None:
        cause = f"moisture {note.value:g} % > {WET_ABOVE:g} %"
        if self.verbose:
            self.line("notification", f"{cause} on {note.thing_id}")
        self._want(note.thing_id, "CloseValve", "closed", cause)

    def _want(self, device_id: str, action: str, valve: str, cause: str, **args: Any) -> None:
        """Request ``action`` unless one is under way or the valve is known to be ``valve``."""
        if device_id in self._busy or self._valve.get(device_id) == valve:
            return
        self._busy.add(device_id)
        self.spawn(self._request(device_id, action, cause, args), f"{action}:{device_id}")

    async def _request(self, device_id: str, action: str, cause: str, args: dict[str, Any]) -> None:
        assert self.controller is not None
        try:
            started = time.monotonic()
            handle = await self.controller.request(device_id, action, **args)
            shown = f"{action} on {device_id}"
            if self.verbose:
                async for status in handle.states():
                    self._state(shown, status)
            status = await handle.wait()
            self.counts[f"{action} {status.state}"] += 1
            if status.state == "done" and isinstance(status.result, dict):
                self._valve[device_id] = str(status.result.get("valve", ""))
            if not self.verbose:
                took = (time.monotonic() - started) * 1000
                result = f" -> {status.result}" if status.state == "done" else ""
                self.line("action", f"{shown}: {status.state} in {took:.0f} ms ({cause}){result}")
        finally:
            self._busy.discard(device_id)

    def _state(self, shown: str, status: ActionStatus) -> None:
        extra = ""
        if status.state == "done":
            extra = f" -> {status.result}"
        elif status.message:
            extra = f" ({status.message})"
        self.line("action", f"{shown}: {status.state}{extra}")

    async def run(self, *, seconds: float | None = None, stop: asyncio.Event | None = None) -> None:
        waiter = stop or asyncio.Event()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await waiter.wait()

    def summary(self) -> str:
        parts = [f"{self.counts['VeryDryAlarm']} VeryDryAlarm"]
        parts += [f"{k} {n}" for k, n in sorted(self.counts.items()) if " " in k]
        return ", ".join(parts)

    async def close(self) -> None:
        await self._tasks.cancel_all()
        for device in self.devices:
            with contextlib.suppress(Exception):
                await device.close()
        if self.controller is not None:
            await self.controller.close()
        await self.console.close()
        if self.web is not None:
            await self.web.close()
        if self.gateway is not None:
            await self.gateway.close()
        if self.registry is not None:
            self.registry.close()
        if self.broker is not None:
            self.broker.stop()
        if self._broker_dir is not None:
            self._broker_dir.cleanup()
            self._broker_dir = None
