"""The Raspberry Pi examples, run on gpiozero's mock pins against a real SQLite store.

Each example is loaded from ``examples/raspberrypi/`` as it ships and driven
through its own functions (``start``, ``measure``, ``publish``); the last
test runs every script's ``main`` as a process, stops it with SIGTERM (what
``systemctl stop`` sends) and expects a clean exit.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory, MockSPIDevice

from safething.errors import ActionFailedError
from safething.net import Client, Identity
from safething.store import open_store
from safething.things import Notification, ThingClient, ThingDescription
from safething.things.sync import SyncThing

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "raspberrypi"


def load(name: str) -> ModuleType:
    """Import ``examples/raspberrypi/<name>.py`` (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(f"raspberrypi_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


garden_device = load("garden_device")
garden_controller = load("garden_controller")
led_relay = load("led_relay")
pir_motion = load("pir_motion")
temperature = load("temperature")


class MockMCP3008(MockSPIDevice):  # type: ignore[misc]
    """The chip's side of SPI0 (SCLK 11, MOSI 10, MISO 9, CE0 8): every read gets ``value``.

    The host clocks out a start bit, the single-ended bit and three channel
    bits; the chip answers with a don't-care bit, a null bit and 10 bits of
    result, most significant first. ``value`` is the input as a fraction of
    the reference voltage (0..1), like ``MCP3008.value``.
    """

    def __init__(self, value: float = 0.0) -> None:
        super().__init__(11, 10, 9, 8)
        self.value = value

    def on_bit(self) -> None:
        if 1 in self.rx_buf and len(self.rx_buf) == self.rx_buf.index(1) + 5:
            self.tx_word(round(self.value * 1023), 12)


def wait_until(condition: Callable[[], Any], timeout: float = 10.0) -> None:
    """Poll ``condition`` (state we do not get an event for, like a pin) until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


@pytest.fixture(autouse=True)
def no_lingering_threads() -> Iterator[None]:
    """Every SyncThing and gpiozero device is closed at the end: no thread outlives a test."""
    before = set(threading.enumerate())
    yield
    wait_until(lambda: set(threading.enumerate()) <= before, timeout=5)


@pytest.fixture
def pins(monkeypatch: pytest.MonkeyPatch) -> Iterator[MockFactory]:
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    previous = Device.pin_factory
    Device.pin_factory = factory = MockFactory()
    yield factory
    factory.reset()
    Device.pin_factory = previous


@pytest.fixture
def store(tmp_path: Path) -> str:
    return f"sqlite://{tmp_path}/vault.db"


# --- the gardening pair ---------------------------------------------------------------


def test_moisture_follows_the_mcp3008(pins: MockFactory, store: str) -> None:
    me = Identity.generate()
    with MockMCP3008(0.42) as adc:
        device, sensor, valve = garden_device.start("garden-device-01", me, store=store)
        with sensor, valve, device:
            assert garden_device.measure(device, sensor) == pytest.approx(42.0, abs=0.15)
            assert device.read("garden-device-01", "moisture").value == pytest.approx(
                42.0, abs=0.15
            )
            adc.value = 0.9
            assert garden_device.measure(device, sensor) == pytest.approx(90.0, abs=0.15)
            assert device.read("garden-device-01", "valve").value == "closed"


def test_controller_requests_switch_the_relay(pins: MockFactory, store: str) -> None:
    me = Identity.generate()  # one Pi, one identity: the controller may use the valve
    relay = pins.pin(17)
    with MockMCP3008(0.5):
        device, sensor, valve = garden_device.start("garden-device-01", me, store=store)
        controller = garden_controller.start(
            "garden-controller-01", me, "garden-device-01", store=store
        )
        stranger = SyncThing(
            ThingDescription("stranger-01"), identity=Identity.generate(), store=store
        )
        with sensor, valve, device, controller, stranger:
            assert not relay.state
            controller.request("garden-device-01", "OpenValve", psi=20)
            assert relay.state
            assert controller.read("garden-device-01", "valve").value == "open"
            controller.request("garden-device-01", "CloseValve")
            assert not relay.state
            assert controller.read("garden-device-01", "valve").value == "closed"
            with pytest.raises(ActionFailedError, match="access denied"):
                stranger.request("garden-device-01", "OpenValve")
            assert not relay.state


def test_a_dry_garden_gets_watered(pins: MockFactory, store: str) -> None:
    """The full loop of the seed: dry -> VeryDryAlarm -> OpenValve; moisture > 70 -> CloseValve."""
    device_key, controller_key = Identity.generate(), Identity.generate()
    relay = pins.pin(17)
    with MockMCP3008(0.5) as adc:
        device, sensor, valve = garden_device.start(
            "garden-device-01", device_key, owner=controller_key.public, store=store
        )
        controller = garden_controller.start(
            "garden-controller-01", controller_key, "garden-device-01", store=store
        )
        with sensor, valve, device, controller:
            garden_device.measure(device, sensor)  # 50 %: nothing to do
            adc.value = 0.1
            garden_device.measure(device, sensor)  # 10 %: VeryDryAlarm
            wait_until(lambda: relay.state)
            wait_until(lambda: _value(controller, "garden-controller-01", "watering") is True)
            adc.value = 0.75
            garden_device.measure(device, sensor)  # 75 % > 70 %: enough
            wait_until(lambda: not relay.state)
            wait_until(lambda: _value(controller, "garden-controller-01", "watering") is False)
            assert controller.read("garden-device-01", "valve").value == "closed"


def _value(thing: SyncThing, thing_id: str, attribute: str) -> Any:
    try:
        return thing.read(thing_id, attribute).value
    except LookupError:  # no value yet
        return None


# --- PIR, LED, thermometer ------------------------------------------------------------


def test_motion_reaches_a_subscriber(pins: MockFactory, store: str) -> None:
    seen: list[Notification] = []
    motion, still = threading.Event(), threading.Event()

    def heard(note: Notification) -> None:
        seen.append(note)
        (motion if note.name == "Motion" else still).set()

    thing, pir = pir_motion.start("pir-01", Identity.generate(), store=store)
    watcher = SyncThing(ThingDescription("watcher-01"), identity=Identity.generate(), store=store)
    with pir, thing, watcher:
        watcher.subscribe("pir-01", topic="Motion", callback=heard)
        watcher.subscribe("pir-01", topic="NoMotion", callback=heard)
        assert pir.wait_for_no_motion(5)  # the sensor's first sample: still
        pins.pin(22).drive_high()
        assert motion.wait(10)
        pins.pin(22).drive_low()
        assert still.wait(10)
        assert [n.name for n in seen] == ["Motion", "NoMotion"]
        assert seen[0].thing_id == "pir-01"


def test_led_actions_drive_the_pin(pins: MockFactory, store: str) -> None:
    me = Identity.generate()
    led_pin = pins.pin(27)
    thing, led = led_relay.start("led-01", me, store=store)
    user = SyncThing(ThingDescription("led-user-01"), identity=me, store=store)
    with led, thing, user:
        assert user.read("led-01", "state").value == "off"
        user.request("led-01", "TurnOn")
        assert led_pin.state
        assert user.read("led-01", "state").value == "on"
        user.request("led-01", "TurnOff")
        assert not led_pin.state
        led_pin.clear_states()
        user.request("led-01", "Blink", on_time=0.01, off_time=0.01)
        assert user.read("led-01", "state").value == "blinking"
        wait_until(lambda: len(led_pin.states) >= 5)  # on, off, on, off...
        user.request("led-01", "TurnOff")
        assert not led_pin.state


def test_relay_wired_active_low(pins: MockFactory, store: str) -> None:
    me = Identity.generate()
    thing, led = led_relay.start("relay-01", me, store=store, pin=5, active_high=False)
    with led, thing:
        assert pins.pin(5).state  # off = high for a module that switches on low
        thing.request("relay-01", "TurnOn")
        assert not pins.pin(5).state


def test_thermometer_publishes_the_w1_file(pins: MockFactory, store: str, tmp_path: Path) -> None:
    sensor = tmp_path / "w1" / "28-0000075b1a2c" / "temperature"
    sensor.parent.mkdir(parents=True)
    sensor.write_text("21562\n")
    pattern = str(tmp_path / "w1" / "28-*" / "temperature")
    thing, thermometer = temperature.start(
        "thermometer-01", Identity.generate(), store=store, sensor=pattern
    )
    with thermometer, thing:
        assert temperature.publish(thing, thermometer) == 21.56
        assert thing.read("thermometer-01", "temperature").value == 21.56
        sensor.write_text("-1250\n")
        temperature.publish(thing, thermometer)
        assert thing.read("thermometer-01", "temperature").value == -1.25
    with pytest.raises(SystemExit, match="no DS18B20"):
        temperature.start(
            "thermometer-02", Identity.generate(), store=store, sensor=str(tmp_path / "none-*")
        )


def test_a_request_queued_while_the_script_was_down_runs_after_a_restart(
    pins: MockFactory, store: str
) -> None:
    me = Identity.generate()
    thing, led = led_relay.start("led-01", me, store=store)
    led.close()
    thing.close()  # the Pi reboots...
    restarted: list[Any] = []

    async def request_then_restart() -> str:
        async with await open_store(store) as vault, ThingClient(Client(vault, me)) as client:
            handle = await client.request("led-01", "TurnOn")  # ...a request waits in the inbox
            restarted.extend(await asyncio.to_thread(led_relay.start, "led-01", me, store=store))
            return (await handle.wait(10)).state

    try:
        assert asyncio.run(request_then_restart()) == "done"
        assert pins.pin(27).state
    finally:
        for part in reversed(restarted):
            part.close()


# --- the scripts as scripts -----------------------------------------------------------


def _until_ready(process: subprocess.Popen[str], name: str, timeout: float = 60.0) -> None:
    """Until the script prints its "Ctrl-C to stop" line. Not always its first: the
    controller's subscriptions start before it, and an alarm of the device running beside
    it can print first. A script that ends or stays silent fails with what it wrote."""
    assert process.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    stdout = process.stdout

    def read() -> None:
        for line in stdout:
            lines.put(line)
            if "Ctrl-C to stop" in line:
                return
        lines.put("")  # the end of its output

    threading.Thread(target=read, daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        seen.append(line)
        if "Ctrl-C to stop" in line:
            return
        if not line:
            break
    process.kill()
    _, stderr = process.communicate()
    raise AssertionError((name, seen, stderr))


def test_every_script_runs_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    """``python <example>.py`` with GPIOZERO_PIN_FACTORY=mock, as systemd would run it."""
    identity = tmp_path / "identity.json"
    Identity.generate("pi").save(identity)
    sensor = tmp_path / "28-000000000001" / "temperature"
    sensor.parent.mkdir()
    sensor.write_text("19000\n")
    env = {
        **os.environ,
        "GPIOZERO_PIN_FACTORY": "mock",
        "SAFETHING_STORE": f"sqlite://{tmp_path}/vault.db",
        "SAFETHING_IDENTITY": str(identity),
        "W1_SENSOR": str(tmp_path / "28-*" / "temperature"),
        "INTERVAL": "0.2",
        "PYTHONUNBUFFERED": "1",
    }
    started: dict[str, subprocess.Popen[str]] = {}
    try:
        # the device first: the controller subscribes to it
        for name in (
            "garden_device",
            "garden_controller",
            "led_relay",
            "pir_motion",
            "temperature",
        ):
            started[name] = process = subprocess.Popen(
                [sys.executable, str(EXAMPLES / f"{name}.py")],
                env=env,
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            _until_ready(process, name)
        for process in started.values():
            process.send_signal(signal.SIGTERM)
        for name, process in started.items():
            _, stderr = process.communicate(timeout=15)
            assert process.returncode == 0, (name, stderr)
            assert "Traceback" not in stderr, (name, stderr)
    finally:
        for process in started.values():
            if process.poll() is None:
                process.kill()
                process.wait()


def test_the_quickstart_shows_the_scripts_verbatim() -> None:
    """The docs show the examples as they ship, not paraphrases of them."""
    sources = "\n".join(path.read_text() for path in sorted(EXAMPLES.glob("*.py")))
    text = (ROOT / "docs" / "quickstart-raspberrypi.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) >= 2
    for block in blocks:
        assert block in sources, block
