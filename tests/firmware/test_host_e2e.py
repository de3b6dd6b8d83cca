"""The firmware as a device process on this machine, end to end through a real gateway.

Each device is ``tests/firmware/e2e_device.py``: CPython running ``firmware/boot.py``
and an unchanged example app (``firmware/examples/garden.py`` or ``dht22.py``) on the
firmware library, in a process of its own, with only the board faked
(``tests/firmware/fakes``: ``machine``, ``network``, ``dht``, ``esp``). Everything
between the device and a SAFEthing is real: micropython-lib's ``umqtt.simple`` on
CPython sockets, a Mosquitto with a login and an ACL per device
(:class:`~safething_gateway.mosquitto.MosquittoAuth`), CoAP over UDP, CPython's
``requests``, the :class:`~safething_gateway.core.Gateway` with its bridges, and a
SQLite store read by :class:`~safething.things.ThingClient`.

The fake ADC reports each sample it gives (``{"hw": "adc", "n": ..., "raw": ...}``)
and the ramp has 300 distinct values, so every moisture value a subscriber gets
names the sample it came from: order and loss are checked sample by sample. The
relay is watched the same way (``{"hw": "pin", "id": 5, "value": 1}``).

MQTT (garden.py, a reading every 100-200 ms instead of 5 s): provisioning to readings
at a subscriber; an action flipping the relay and ending *done* (and a stranger's
refused); broker restarts and outages, the ring's readings in order after the
reconnect, and the drop count when it overflowed; a power cut and reboot that goes
on with fresh counters. CoAP: garden.py's readings and an action. HTTP: dht22.py,
sleepy: four deep-sleep cycles, the counter carried in RTC memory. Readings buffered
before the first birth are delivered after it.
Every device process is killed when its test ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Generic, TypeVar

import pytest

from safething.cli.gateway import _device_config
from safething.net import Client, Identity
from safething.things import Notification, Subscription, ThingClient
from safething_gateway.bridges.coap import CoapBridge
from safething_gateway.config import GatewayConfig
from safething_gateway.core import Gateway
from safething_gateway.testing import GatewaySite, open_site
from safething_gateway.testing import unique_id as uid

HERE = Path(__file__).resolve().parent
E2E = HERE / "e2e_device.py"

pytestmark = pytest.mark.skipif(
    shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists(),
    reason="mosquitto is not installed",
)

T = TypeVar("T")
R = TypeVar("R")
VALVE = 5  # garden.py: the relay on GPIO5
UMQTT_SIMPLE_SHA256 = "8555d2f654deb8eb0d724f79b0811a78cc94029d070f3d96bbd74288653d63a5"
PWRON_RESET, DEEPSLEEP_RESET = 0, 5  # machine.reset_cause() values (MicroPython, ESP8266)


def moisture(raw: int) -> float:
    """What garden.py makes of an ADC value."""
    return round(raw * 100 / 1024, 1)


async def until(
    check: Callable[[], Any], what: str, timeout: float = 10.0, board: Board | None = None
) -> Any:
    """Poll ``check`` (sync or async) every 10 ms until it returns something truthy:
    for state owned by the gateway or the store, which announce nothing. With
    ``board``: fail at once if that device process ends, and show what it said."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                value = check()
                if asyncio.iscoroutine(value):
                    value = await value
                if value:
                    return value
                if board is not None and board.log.ended:
                    raise AssertionError(f"{what}: the device process ended. {board.describe()}")
                await asyncio.sleep(0.01)
    except TimeoutError:
        more = f" {board.describe()}" if board is not None else ""
        raise AssertionError(f"{what}: not within {timeout:g} s.{more}") from None


class Log(Generic[T]):
    """Items that arrive in the background, and a bounded wait for a condition on them."""

    def __init__(self, describe: Callable[[], str] = lambda: "") -> None:
        self.items: list[T] = []
        self.ended = False
        self._changed = asyncio.Condition()
        self._describe = describe

    async def add(self, item: T) -> None:
        async with self._changed:
            self.items.append(item)
            self._changed.notify_all()

    async def end(self) -> None:
        async with self._changed:
            self.ended = True
            self._changed.notify_all()

    async def wait(self, check: Callable[[list[T]], R], what: str, timeout: float = 10.0) -> R:
        """The first truthy ``check(items)``, re-checked at each new item."""
        try:
            async with asyncio.timeout(timeout), self._changed:
                while True:
                    found = check(self.items)
                    if found:
                        return found
                    if self.ended:
                        raise AssertionError(f"{what}: the source ended. {self._describe()}")
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"{what}: not within {timeout:g} s. {self._describe()}") from None


class Board:
    """One ``e2e_device.py`` process: a board running the firmware, and all it printed."""

    def __init__(self, config: Path, state: Path, *options: str) -> None:
        self.config = config
        self.state = state
        self.options = options
        self.stderr = state.parent / f"{state.name}.stderr"
        self.log: Log[dict[str, Any]] = Log(self.describe)
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> Board:
        err = os.open(self.stderr, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(E2E),
                str(self.config),
                str(self.state),
                *self.options,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
            )
        finally:
            os.close(err)  # the child has its own copy
        self._reader = asyncio.get_running_loop().create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        try:
            while line := await self.proc.stdout.readline():
                text = line.decode(errors="replace").rstrip("\n")
                try:
                    doc = json.loads(text)
                except ValueError:
                    doc = None
                await self.log.add(doc if isinstance(doc, dict) else {"text": text})
        finally:
            await self.log.end()

    def describe(self) -> str:
        code = self.proc.returncode if self.proc is not None else None
        try:
            err = self.stderr.read_text(errors="replace")[-2000:]
        except OSError:
            err = ""
        out = "\n".join(json.dumps(d) for d in self.log.items[-15:])
        return f"Device exit status {code}; stderr: {err or '(empty)'}; last stdout:\n{out}"

    def hw(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.log.items if d.get("hw") == kind]

    async def wait_hw(
        self, kind: str, what: str, timeout: float = 10.0, **fields: Any
    ) -> dict[str, Any]:
        def check(items: list[dict[str, Any]]) -> dict[str, Any] | None:
            for d in items:
                if d.get("hw") == kind and all(d.get(k) == v for k, v in fields.items()):
                    return d
            return None

        return await self.log.wait(check, what, timeout)

    async def wait_samples(self, count: int, what: str, timeout: float = 10.0) -> None:
        """Until the ADC gave ``count`` samples in this process."""
        await self.log.wait(lambda _: len(self.hw("adc")) >= count, what, timeout)

    async def kill(self) -> None:
        """Pull the plug (SIGKILL): nothing is saved, nothing said."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()
        if self._reader is not None:
            await self._reader

    async def exited(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        try:
            async with asyncio.timeout(timeout):
                code = await self.proc.wait()
        except TimeoutError:
            raise AssertionError(f"the device did not stop. {self.describe()}") from None
        if self._reader is not None:
            await self._reader
        return code


class Feed:
    """A subscription's notifications, collected as they arrive."""

    def __init__(self, sub: Subscription) -> None:
        self.sub = sub
        self.log: Log[Notification] = Log()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            async for note in self.sub:
                await self.log.add(note)
        finally:
            await self.log.end()

    @property
    def values(self) -> list[Any]:
        return [n.value for n in self.log.items]

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def samples_of(values: list[float], *boards: Board) -> list[int]:
    """The ADC sample number of each moisture value (every value names one sample)."""
    by_value = {moisture(d["raw"]): d["n"] for b in boards for d in b.hw("adc")}
    missing = [v for v in values if v not in by_value]
    assert not missing, f"values no ADC sample gave: {missing}"
    return [by_value[v] for v in values]


def gaps(numbers: list[int]) -> list[tuple[int, int]]:
    """``(after, missing)`` for each jump in a sequence that must rise by one."""
    assert numbers == sorted(set(numbers)), f"out of order or repeated: {numbers}"
    return [(a, b - a - 1) for a, b in itertools.pairwise(numbers) if b != a + 1]


# --- the site: broker with logins and ACLs, registry, SQLite store, gateway --------------------


@dataclass
class Site(GatewaySite):
    """The shared test site (safething_gateway.testing), plus the boards (state dirs =
    their flash) and their config files."""

    boards: list[Board] = field(default_factory=list)

    def config(self) -> GatewayConfig:
        ports: dict[str, dict[str, Any]] = {"mqtt": {"port": self.broker.port}}
        for name in ("coap", "http"):
            bridge = self.bridges.get(name)
            if bridge is not None:
                ports[name] = {"port": bridge.port}  # type: ignore[attr-defined]
        return GatewayConfig().with_overrides(**ports)

    async def provision(  # type: ignore[override]
        self, transport: str, prefix: str = "garden"
    ) -> tuple[str, Path]:
        """What ``safething provision`` does: registry entry, broker login, config file."""
        record, password = await super().provision(transport, uid(prefix))
        device_id = record.device_id
        extra: dict[str, Any] = {}
        if password is not None:
            extra = {"username": device_id, "password": password}
        doc = _device_config(
            self.config(),
            device_id,
            transport,
            record.secret,
            "127.0.0.1",
            extra,
            {"ssid": "garden-wifi", "password": "not-a-secret"},
        )
        path = self.root / f"{device_id}.json"
        path.write_text(json.dumps(doc, indent=2) + "\n")
        return device_id, path

    async def board(self, config: Path, *options: str, state: Path | None = None) -> Board:
        board = Board(config, state or self.root / config.stem, *options)
        self.boards.append(board)
        return await board.start()

    def rejected(self, gateway: Gateway, since: dict[str, float] | None = None) -> dict[str, float]:
        """Messages the gateway refused, by reason (those after ``since``, a former result)."""
        counts: dict[str, float] = {}
        for (name, labels), value in gateway.metrics.counters.items():
            if name == "safething_gateway_rejected_total":
                reason = dict(labels).get("reason", "?")
                counts[reason] = counts.get(reason, 0.0) + value
        since = since or {}
        return {k: v - since.get(k, 0.0) for k, v in counts.items() if v > since.get(k, 0.0)}


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    async with open_site(tmp_path) as shared:
        s = Site(**{f.name: getattr(shared, f.name) for f in fields(GatewaySite)})
        try:
            yield s
        finally:
            for board in s.boards:  # every device process ends with its test
                await board.kill()


async def published(things: ThingClient, device_id: str, board: Board | None = None) -> None:
    async def is_published() -> bool:
        try:
            return await things.status(device_id) == "published"
        except Exception:
            return False

    await until(is_published, f"{device_id} is published (its birth went through)", board=board)


@asynccontextmanager
async def feed(things: ThingClient, device_id: str, attribute: str) -> AsyncIterator[Feed]:
    async with things.subscribe(device_id, attribute=attribute) as sub:
        f = Feed(sub)
        try:
            yield f
        finally:
            await f.close()


class _Admin:
    """A subscriber on ``#`` with a login whose ACL reads every topic (and writes one topic
    of its own, :meth:`marker_topic`, for :meth:`caught_up`)."""

    def __init__(self, port: int, user: str, password: str) -> None:
        import paho.mqtt.client as mqtt

        self._got: list[tuple[str, bytes]] = []
        self.subscribed = asyncio.Event()
        self._marker_topic = self.marker_topic(user)
        self._marker = b""
        self._marked = asyncio.Event()
        loop = asyncio.get_running_loop()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=user)
        self.client.username_pw_set(user, password)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("#", 1)
        self.client.on_subscribe = lambda c, u, m, rc, p: loop.call_soon_threadsafe(
            self.subscribed.set
        )

        def message(c: Any, u: Any, m: Any) -> None:
            payload = bytes(m.payload)
            self._got.append((m.topic, payload))
            if self._marker and payload == self._marker:
                loop.call_soon_threadsafe(self._marked.set)

        self.client.on_message = message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    @staticmethod
    def marker_topic(user: str) -> str:
        return f"capture/{user}/marker"

    async def caught_up(self, timeout: float = 10.0) -> list[tuple[str, bytes]]:
        """Every message the broker took before this call, and none read later.

        The admin publishes a marker and reads up to it: Mosquitto delivers to one
        subscriber in the order it took the messages, so all of them come before it.
        What was read before that may lack the tail its network thread had not read yet
        (a thread behind on a loaded machine): too few messages, or messages looked for
        as absent that were never looked at."""
        self._marked.clear()
        self._marker = f"marker-{os.urandom(8).hex()}".encode()
        self.client.publish(self._marker_topic, self._marker, qos=1)
        try:
            async with asyncio.timeout(timeout):
                await self._marked.wait()
        except TimeoutError:
            raise AssertionError(f"the admin's marker not back within {timeout:g} s") from None
        got = list(self._got)
        return got[: got.index((self._marker_topic, self._marker))]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def _broker_admin(site: Site) -> _Admin:
    assert site.auth is not None
    user = uid("admin")
    password = site.auth._add(
        user, "admin", ["topic read #", f"topic write {_Admin.marker_topic(user)}"]
    )
    site.broker.reload()
    await site.login_works(user, password, True)
    admin = _Admin(site.broker.port, user, password)
    async with asyncio.timeout(10):
        await admin.subscribed.wait()
    return admin


def fast(every: int, wait: int = 50) -> tuple[str, ...]:
    return ("--every", str(every), "--wait", str(wait))


# --- MQTT: the garden example through Mosquitto ------------------------------------------------


async def test_provisioned_garden_device_readings_reach_a_subscriber(site: Site) -> None:
    async with site.gateway("mqtt") as gateway:
        device_id, config = await site.provision("mqtt")
        assert json.loads(config.read_text())["link"] == "ST2"
        wire = await _broker_admin(site)  # the broker's administrator, on #
        board = await site.board(config, *fast(200))
        await board.wait_hw("wifi", "boot.py joins the Wi-Fi", event="connect", ssid="garden-wifi")
        things = ThingClient(Client(site.store))
        await published(things, device_id, board)
        born = site.rejected(gateway)  # see test_readings_taken_before_the_first_birth_...
        assert gateway.registry.get(device_id).online
        async with feed(things, device_id, "moisture") as readings:
            await readings.log.wait(lambda xs: len(xs) >= 5, "five readings at the subscriber")
            numbers = samples_of(readings.values, board)
            assert gaps(numbers) == []  # each sample once, in the order the ADC gave them
        assert (await things.read(device_id, "valve")).value == "closed"
        assert site.rejected(gateway, born) == {}
        # on the broker: sealed ST2 messages, no attribute name, description or value
        # all the broker took until now (the five readings among it), not what was read
        try:
            seen = await wire.caught_up()
        finally:
            wire.close()
        up = [p for t, p in seen if t.startswith(f"st/v1/{device_id}/up/")]
        assert len(up) >= 7  # state, birth, five readings at least
        assert all(p.startswith(b"ST2 ") for p in up), up[:3]
        for text in (b"moisture", b"description", b"valve", b"online"):
            assert not any(text in p for p in up), text


async def test_an_action_flips_the_relay_and_ends_done(site: Site) -> None:
    async with site.gateway("mqtt") as gateway:
        device_id, config = await site.provision("mqtt")
        board = await site.board(config, *fast(200))
        things = ThingClient(Client(site.store))
        await published(things, device_id, board)
        born = site.rejected(gateway)
        await board.wait_hw("pin", "the valve is closed at start", id=VALVE, value=0)

        # OpenValve is "access": "owner" in garden.py: a stranger is turned away by the thing
        stranger = ThingClient(Client(site.store, Identity.generate("stranger")))
        refused = await (await stranger.request(device_id, "OpenValve", psi=40)).wait(10)
        assert refused.state == "rejected", refused
        assert [p["value"] for p in board.hw("pin")] == [0]

        owner = ThingClient(Client(site.store, site.owner))
        async with feed(things, device_id, "valve") as valve:
            handle = await owner.request(device_id, "OpenValve", psi=40)
            await board.wait_hw("pin", "the relay switches on", id=VALVE, value=1)
            status = await handle.wait(10)
            assert status.state == "done", status
            await valve.log.wait(lambda xs: "open" in [n.value for n in xs], "valve: open")
        await until(lambda: gateway.registry.pending(device_id) == [], "the downlink is acked")
        handle = await owner.request(device_id, "CloseValve")
        assert (await handle.wait(10)).state == "done"
        await board.wait_hw("pin", "the relay switches off", id=VALVE, value=0)
        assert [p["value"] for p in board.hw("pin")] == [0, 1, 0]
        await owner.close()
        await stranger.close()
        assert site.rejected(gateway, born) == {}


async def test_broker_restart_buffers_readings_in_the_ring_and_sends_them_in_order(
    site: Site,
) -> None:
    async with site.gateway("mqtt") as gateway:
        device_id, config = await site.provision("mqtt")
        board = await site.board(config, *fast(100))
        things = ThingClient(Client(site.store))
        await published(things, device_id, board)
        born = site.rejected(gateway)
        async with feed(things, device_id, "moisture") as readings:
            await readings.log.wait(lambda xs: len(xs) >= 3, "readings before the restart")

            # 1. a restart, as quick as the broker is
            await outage(site, board, readings)

            # 2. the broker away for eight readings, which wait in the ring (16 slots)
            buffered = await outage(site, board, readings, offline=8)
            assert len(buffered) >= 8  # read while offline, sent after the reconnect
            assert gaps(samples_of(readings.values, board)) == []  # nothing lost or reordered

            # 3. away for longer than the ring holds: the oldest are dropped, and counted
            buffered = await outage(site, board, readings, offline=24)
            dropped = await until(
                lambda: _value(things, device_id, "dropped"), "the device reports drops"
            )
            holes = gaps(samples_of(readings.values, board))
            # one run of readings is missing, as many as the device dropped, all taken
            # while it was offline: the oldest of the outage (the ring keeps the newest)
            assert len(holes) == 1 and holes[0][1] == dropped > 0, (holes, dropped)
            missing = range(holes[0][0] + 1, holes[0][0] + 1 + holes[0][1])
            assert set(missing) <= set(buffered), (holes, buffered)
            assert missing[0] <= buffered[1], (holes, buffered)
        # a message sent again after a reconnect, whose PUBACK the broker's stop cut off
        assert set(site.rejected(gateway, born)) <= {"replay"}


async def outage(site: Site, board: Board, readings: Feed, offline: int = 0) -> list[int]:
    """Restart the broker (at once, or after ``offline`` more ADC samples), wait until
    the device is back and every sample taken meanwhile reached the subscriber (or was
    dropped); returns the samples taken between the stop and the device's reconnect."""
    down = time.monotonic_ns()
    if offline:
        await asyncio.to_thread(site.broker.stop)
        await board.wait_samples(len(board.hw("adc")) + offline, f"{offline} samples offline")
        await asyncio.to_thread(site.broker.start)
    else:
        await asyncio.to_thread(site.broker.restart)
    back = await board.log.wait(
        lambda xs: next(
            (x for x in xs if x.get("event") == "tcp" and x["op"] == "connected" and x["t"] > down),
            None,
        ),
        "the device reconnects",
    )
    taken = [d["n"] for d in board.hw("adc") if down <= d["t"] <= back["t"]]
    last = max(d["n"] for d in board.hw("adc")) + 2
    await readings.log.wait(
        lambda xs: max(samples_of([n.value for n in xs], board)) >= last,
        "readings taken after the reconnect",
    )
    return taken


async def _value(things: ThingClient, device_id: str, attribute: str) -> Any:
    try:
        return (await things.read(device_id, attribute)).value
    except Exception:
        return None


async def test_a_reboot_continues_the_counter(site: Site) -> None:
    async with site.gateway("mqtt") as gateway:
        device_id, config = await site.provision("mqtt")
        board = await site.board(config, *fast(200))
        things = ThingClient(Client(site.store))
        await published(things, device_id, board)
        born = site.rejected(gateway)
        async with feed(things, device_id, "moisture") as readings:
            await readings.log.wait(lambda xs: len(xs) >= 3, "readings before the reboot")
            await board.kill()  # power cut: no goodbye, RAM lost
            await until(
                lambda: not gateway.registry.get(device_id).online,
                "the broker publishes the last will: offline",
            )
            block_end = int((board.state / "st_link").read_text().split()[0])
            before = len(readings.log.items)

            again = await site.board(config, *fast(200), state=board.state)
            await again.wait_hw("adc", "the rebooted device reads again")
            await readings.log.wait(lambda xs: len(xs) >= before + 3, "readings after the reboot")
            await until(lambda: gateway.registry.get(device_id).online, "online again")
            numbers = samples_of(readings.values, board, again)
            rebooted = samples_of(readings.values[before:], again)
            assert gaps(rebooted) == []
            assert numbers == sorted(numbers)
        # counters: the new start skipped the block the old one had reserved
        assert int((board.state / "st_link").read_text().split()[0]) > block_end
        assert site.rejected(gateway, born) == {}  # no replay: nothing was refused
        # boot.py stored the Wi-Fi in flash once; the second boot joined without connect()
        assert again.hw("wifi") and not [w for w in again.hw("wifi") if w["event"] == "connect"]


async def test_readings_taken_before_the_first_birth_are_not_lost(site: Site) -> None:
    async with site.gateway("mqtt") as gateway:
        device_id, config = await site.provision("mqtt")
        board = await site.board(config, *fast(200))
        things = ThingClient(Client(site.store))
        await published(things, device_id, board)
        await board.wait_samples(3, "three samples")
        first = moisture(board.hw("adc")[0]["raw"])  # read before the first connection
        await until(lambda: _history_has(things, device_id, "moisture", 2), "two readings stored")
        history = [r.value for r in await things.history(device_id, "moisture")]
        assert history[0] == first
        assert site.rejected(gateway) == {}


async def _history_has(things: ThingClient, device_id: str, attribute: str, count: int) -> bool:
    try:
        return len(await things.history(device_id, attribute)) >= count
    except Exception:
        return False


# --- CoAP and HTTP, shorter --------------------------------------------------------------------


async def test_garden_over_coap_readings_and_an_action(site: Site) -> None:
    async with site.gateway("coap") as gateway:
        device_id, config = await site.provision("coap")
        bridge = site.bridges["coap"]
        assert isinstance(bridge, CoapBridge)
        assert json.loads(config.read_text())["coap"] == {"host": "127.0.0.1", "port": bridge.port}
        board = await site.board(config, *fast(200, wait=100))
        things = ThingClient(Client(site.store))
        await published(things, device_id, board)
        async with feed(things, device_id, "moisture") as readings:
            await readings.log.wait(lambda xs: len(xs) >= 3, "readings over CoAP")
            owner = ThingClient(Client(site.store, site.owner))
            handle = await owner.request(device_id, "OpenValve", psi=25)
            await board.wait_hw("pin", "the relay switches on (CoAP poll)", id=VALVE, value=1)
            assert (await handle.wait(10)).state == "done"
            await owner.close()
            assert gaps(samples_of(readings.values, board)) == []
        assert site.rejected(gateway) == {}


async def test_sleepy_dht22_over_http_wakes_reads_and_sleeps(site: Site) -> None:
    pytest.importorskip("requests")  # what firmware/safething/http.py uses under CPython
    async with site.gateway("http") as gateway:
        device_id, config = await site.provision("http", prefix="dht")
        assert json.loads(config.read_text())["transport"] == "http"
        things = ThingClient(Client(site.store))
        board = await site.board(config, "--app", "dht22", "--sleep-cap-ms", "50", "--wakes", "4")
        await board.exited(20)  # four wakes: read, send, poll, deep sleep; then it stays off
        boots = [d for d in board.log.items if d.get("event") == "boot"]
        assert [b["cause"] for b in boots] == [PWRON_RESET] + [DEEPSLEEP_RESET] * 3
        assert len({b["pid"] for b in boots}) == 1  # restarted in place, as a board
        assert [d["ms"] for d in board.log.items if d.get("event") == "deepsleep"] == [600000] * 4
        await published(things, device_id)
        dht = board.hw("dht")
        assert [d["n"] for d in dht] == [0, 1, 2, 3]  # one measurement per wake
        measured = [(d["temperature"], d["humidity"]) for d in dht]
        history = await things.history(device_id, "temperature")
        assert [r.value for r in history] == [t for t, _ in measured]
        assert (await things.read(device_id, "humidity")).value == measured[-1][1]
        # RTC memory carried the exact counter across each deep sleep: one block, one write
        assert (board.state / "st_link").read_text().split()[0] == "32"
        assert not (board.state / "st_ring").exists()  # nothing left unsent
        assert site.rejected(gateway) == {}
        assert not gateway.registry.pending(device_id)


def test_vendored_umqtt_is_the_published_release() -> None:
    """micropython-lib's umqtt.simple 1.3.4 from PyPI, unmodified (tests/firmware/vendor)."""
    simple = HERE / "vendor" / "umqtt" / "simple.py"
    assert hashlib.sha256(simple.read_bytes()).hexdigest() == UMQTT_SIMPLE_SHA256
    assert "Version: 1.3.4" in (HERE / "vendor" / "umqtt" / "PKG-INFO").read_text()
