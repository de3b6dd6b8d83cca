"""The files we ship make the features we ship work: Home Assistant publishing and adoption
on a real Mosquitto configured by gateway/mosquitto-safething.conf, a gateway configured
by gateway/gateway.example.toml (only ports, paths and the two switches changed), and the
logins ``safething broker-login`` and ``safething provision`` write.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import queue
import re
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from safething.cli import main
from safething.net import Client, Identity
from safething.things import ThingClient
from safething.things.discovery import list_things
from safething_gateway.app import GatewayApp
from safething_gateway.broker import free_port
from safething_gateway.config import load_config
from safething_gateway.demo import device_description
from safething_gateway.device_clients.base import DeviceLink
from safething_gateway.device_clients.mqtt import MqttDevice

ROOT = Path(__file__).resolve().parents[2]
TASMOTA = json.loads((Path(__file__).parent / "data" / "tasmota_sonoff.json").read_text())


@contextlib.contextmanager
def shipped_broker(etc: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """Mosquitto with the shipped snippet under a main config like Debian's."""
    root = etc.parent
    (root / "conf.d").mkdir()
    (root / "mosq-lib").mkdir()
    snippet = (ROOT / "gateway" / "mosquitto-safething.conf").read_text()
    text = snippet.replace("/etc/safething/", f"{etc}/").replace(
        "listener 1883 127.0.0.1", f"listener {port} 127.0.0.1"
    )
    assert f"password_file {etc}/" in text and f"acl_file {etc}/" in text
    assert f"listener {port} " in text
    (root / "conf.d" / "safething.conf").write_text(text)
    main_conf = (
        f"pid_file {root}/mosquitto.pid\npersistence true\npersistence_location {root}/mosq-lib/\n"
        f"log_dest stderr\ninclude_dir {root}/conf.d\n"
    )
    if os.geteuid() == 0:
        main_conf += "user root\n"  # the test's directories are private to root
    (root / "mosquitto.conf").write_text(main_conf)
    process = subprocess.Popen(
        [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(root / "mosquitto.conf")],
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            assert process.poll() is None, process.stderr.read()  # type: ignore[union-attr]
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "mosquitto did not listen"
                time.sleep(0.02)
        yield process
    finally:
        process.terminate()
        process.wait(10)
        assert process.stderr is not None
        process.stderr.close()


class Peer:
    """Home Assistant's (or a Tasmota plug's) side: a paho client with its own login."""

    def __init__(self, port: int, username: str, password: str) -> None:
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.seen: list[tuple[str, bytes]] = []
        self.connected: queue.Queue[bool] = queue.Queue()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=username)
        self.client.username_pw_set(username, password)
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, bytes(m.payload)))
        self.subacks: queue.Queue[int] = queue.Queue()
        self.client.on_subscribe = lambda c, u, mid, codes, p: self.subacks.put(mid)
        self.client.on_connect = lambda c, u, f, reason, p: self.connected.put(
            not reason.is_failure
        )
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.connected.get(timeout=10), f"the broker refused the login {username}"

    def subscribe(self, *topics: str) -> None:
        """Subscribe and wait for the broker's SUBACK of each topic."""
        for topic in topics:
            result, mid = self.client.subscribe(topic, qos=1)
            assert result == mqtt.MQTT_ERR_SUCCESS
            while self.subacks.get(timeout=30) != mid:
                pass

    async def publish(self, topic: str, payload: str, *, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        await asyncio.to_thread(info.wait_for_publish, 10)

    async def expect(self, pattern: str) -> bytes:
        """The first message (so far or to come) on a topic matching ``pattern``."""
        async with asyncio.timeout(120):  # a hang guard only
            while True:
                for topic, got in self.seen:
                    if mqtt.topic_matches_sub(pattern, topic):
                        return got
                with contextlib.suppress(queue.Empty):
                    self.seen.append(await asyncio.to_thread(self.messages.get, True, 0.5))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def login(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[str, str]:
    assert main(["broker-login", *argv]) == 0
    printed = capsys.readouterr().out
    user = re.search(r'^username(?: =|:) "?([^"\n]+?)"?$', printed, re.M)
    password = re.search(r'^password(?: =|:) "?([^"\n]+?)"?$', printed, re.M)
    assert user and password, printed
    return user[1], password[1]


def gateway_config(tmp_path: Path, etc: Path, port: int) -> Path:
    """gateway.example.toml as shipped, but for ports, paths and the two switches."""
    lib = tmp_path / "lib"
    lib.mkdir()
    text = (ROOT / "gateway" / "gateway.example.toml").read_text()
    changes = {
        'store = ""': f'store = "sqlite://{lib}/vault.db"',
        "/var/lib/safething/": f"{lib}/",
        "/etc/safething/": f"{etc}/",
        "port = 1883": f"port = {port}",
        'bind = "0.0.0.0"': 'bind = "127.0.0.1"',
        "port = 5683": f"port = {free_port(socket.SOCK_DGRAM)}",
        "port = 8080": f"port = {free_port()}",
        # no broker yet: the logins come first (docs/gateway.md), then the broker starts
        'reload_command = "sudo systemctl reload mosquitto"': 'reload_command = "true"',
        "homeassistant = false": "homeassistant = true",
        "publish = false": "publish = true",
    }
    if os.geteuid() != 0:  # only root may hand the files to the mosquitto group
        changes['files_group = "mosquitto"'] = 'files_group = ""'
    for old, new in changes.items():
        assert old in text, old
        text = text.replace(old, new)
    path = etc / "gateway.toml"
    path.write_text(text)
    path.chmod(0o600)
    Identity.generate("gateway").save(lib / "identity.json")
    return path


async def test_home_assistant_publishing_and_adoption_with_the_shipped_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    port = free_port()
    config = gateway_config(tmp_path, etc, port)
    user, password = login(capsys, "--config", str(config))
    secrets = etc / "secrets.toml"  # next to the config: read without being named
    secrets.write_text(f'[mqtt]\npassword = "{password}"\n')
    secrets.chmod(0o600)
    ha_user, ha_password = login(capsys, "--config", str(config), "--for", "homeassistant")
    plug_topics = ["tasmota_A1B2C3/#", "homeassistant/switch/#", "homeassistant/sensor/#"]
    plug = ["--for", "client", "--username", "tasmota-a1b2c3"]
    for topic in plug_topics:
        plug += ["--topic", topic]
    plug_user, plug_password = login(capsys, "--config", str(config), *plug)
    with shipped_broker(etc, port) as broker:
        reload = f'reload_command = "kill -HUP {broker.pid}"'
        config.write_text(config.read_text().replace('reload_command = "true"', reload))
        device_file = tmp_path / "garden-07.json"
        argv = ["provision", "garden-07", "--transport", "mqtt", "--config", str(config)]
        argv += ["--host", "127.0.0.1", "--out", str(device_file), "--no-qr"]
        assert main(argv) == 0
        capsys.readouterr()
        device = json.loads(device_file.read_text())
        acl = (etc / "mosquitto.acl").read_text()
        assert stat.S_IMODE((etc / "mosquitto.acl").stat().st_mode) in (0o600, 0o640)

        ha = Peer(port, ha_user, ha_password)
        tasmota = Peer(port, plug_user, plug_password)
        ha.subscribe("homeassistant/device/+/config", "safething/#")
        cfg = load_config(config)
        link = DeviceLink(
            "garden-07",
            bytes.fromhex(device["secret"]),
            device_description("garden-07"),
            state_file=tmp_path / "garden-07.counters.json",
        )
        link.on_action = lambda action, args: {"valve": "closed"}
        try:
            async with (
                GatewayApp(cfg) as app,
                MqttDevice(
                    link,
                    device["mqtt"]["host"],
                    device["mqtt"]["port"],
                    username=device["mqtt"]["username"],
                    password=device["mqtt"]["password"],
                ) as garden,
            ):
                await garden.start()
                await garden.reading({"moisture": 41.5, "valve": "closed"})
                # publishing: the gateway's posts reach Home Assistant (denied before: silently)
                discovery = json.loads(await ha.expect("homeassistant/device/+/config"))
                assert discovery["device"]["identifiers"] == ["safething_garden-07"]
                assert await ha.expect("safething/$gateway") == b"online"
                assert await ha.expect("safething/garden-07/moisture") == b"41.5"

                # adoption: a Tasmota plug with its own login; its state topics are read
                async def send(part: str, *, retain: bool) -> None:
                    for m in TASMOTA[part]:
                        payload = m["payload"]
                        text = payload if isinstance(payload, str) else json.dumps(payload)
                        await tasmota.publish(m["topic"], text, retain=retain)

                await send("retained", retain=True)
                assert app.store is not None
                async with ThingClient(Client(app.store)) as things:
                    async with asyncio.timeout(120):  # a hang guard only
                        for tick in itertools.count():
                            # Its telemetry is not retained: the gateway reads it once it
                            # follows the topics the discovery names, so the plug sends it
                            # again every second, as a plug does every TelePeriod.
                            if tick % 20 == 0:
                                await send("live", retain=False)
                            with contextlib.suppress(Exception):
                                reading = await things.read("ha-A1B2C3", "am2301_temperature")
                                if reading.value == 21.4:
                                    break
                            await asyncio.sleep(0.05)
                    # the gateway's own published device came first on the same topic tree;
                    # it was seen and not adopted as a device of its own
                    ids = [t.id for t in await list_things(Client(app.store))]
                assert "ha-A1B2C3" in ids and "garden-07" in ids
                assert not [i for i in ids if "safething" in i], ids

                # the plug's login is confined to its topics: a forged state of a SAFEthing
                # and a forged device uplink are dropped by the broker; the permitted message
                # it sends after them arrives, so they arrived too and were refused
                ha.subscribe("homeassistant/sensor/#")
                await tasmota.publish("safething/garden-07/moisture", "99")
                await tasmota.publish("st/v1/garden-07/up/reading", "ST1 1 00\n{}")
                await tasmota.publish("homeassistant/sensor/after/config", "{}")
                await ha.expect("homeassistant/sensor/after/config")
                seen = [(t, p) for t, p in ha.seen if t == "safething/garden-07/moisture"]
                assert b"99" not in [p for _, p in seen], seen
        finally:
            ha.close()
            tasmota.close()
    assert f"user {user}" in acl


def test_the_gateway_login_grows_with_the_features_on(tmp_path: Path) -> None:
    from safething_gateway.mosquitto import MosquittoAuth

    auth = MosquittoAuth(tmp_path / "passwd", tmp_path / "acl")
    auth.add_gateway_user("gw")
    assert auth.users() == ["gw"]
    plain = (tmp_path / "acl").read_text()
    assert "homeassistant" not in plain and "safething/#" not in plain and " #\n" not in plain
    auth.add_gateway_user("gw", publish=True, adopt_homeassistant=True, adopt_homie=True)
    assert sorted(auth.users()) == ["gw", "gw-ha-adopt", "gw-ha-publish", "gw-homie-adopt"]
    both = (tmp_path / "acl").read_text()
    assert (
        "user gw-ha-publish\ntopic readwrite homeassistant/#\ntopic readwrite safething/#" in both
    )
    assert "user gw-ha-adopt\ntopic readwrite #\n" in both
    auth.add_gateway_user("gw")  # turned off again: those logins go
    assert auth.users() == ["gw"]
    with pytest.raises(ValueError, match="not an MQTT topic"):
        auth.add_client_user("plug", ["tele/x y"])


@pytest.fixture(autouse=True)
def _no_default_config(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.delenv("SAFETHING_GATEWAY_CONFIG", raising=False)
    monkeypatch.delenv("SAFETHING_STORE", raising=False)
