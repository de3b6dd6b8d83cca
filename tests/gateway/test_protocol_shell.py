"""docs/protocol.md §7, run as written: ``openssl``, ``curl`` and ``mosquitto_pub`` against a
running gateway (HTTP and MQTT bridges, a Mosquitto with logins and ACLs).

The shell blocks and the HTTP and MQTT commands are taken from the document; only the
gateway's address, ports and the broker password are put in. What the commands seal is
opened by the gateway, and what the gateway seals is opened by the commands."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from safething.net import Client
from safething.things import ThingClient
from safething_gateway.core import Gateway
from safething_gateway.testing import open_site

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
DEVICE = "sensor-01"

pytestmark = pytest.mark.skipif(
    not all(
        shutil.which(t) for t in ("bash", "openssl", "curl", "mosquitto_pub", "coap-client-notls")
    ),
    reason="needs bash, openssl, curl, mosquitto_pub and coap-client-notls (scripts/_setup.sh)",
)


@dataclass(frozen=True)
class Recipe:
    keys: str
    """The block that defines the keys and ``seal``."""
    messages: str
    """The block that seals the birth and a reading."""
    poll: str
    """The block that polls for a downlink and opens it."""
    http: str
    """The curl command that posts the reading."""
    mqtt: str
    """The mosquitto_pub command that publishes the reading."""
    coap: str
    """The coap-client command that posts the reading."""


def recipe() -> Recipe:
    section = DOC.read_text().split("## 7. Try it from a shell", 1)[1]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    assert len(blocks) == 3, "§7 has three sh blocks: keys and seal, messages, poll"
    http = re.search(r"^- HTTP: `(.*?)`$", section, re.M)
    mqtt = re.search(r"^- MQTT: `(.*?)`$", section, re.M)
    coap = re.search(r"^  `(coap-client-notls .*?)`$", section, re.M)
    assert http and mqtt and coap
    return Recipe(*blocks, http.group(1), mqtt.group(1), coap.group(1))


@dataclass
class Served:
    gateway: Gateway
    http_port: int
    mqtt_port: int
    coap_port: int
    password: str
    folder: Path


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    async with open_site(tmp_path / "site") as site:
        record, password = await site.provision("http", DEVICE)  # with a broker login below
        assert site.auth is not None
        password = site.auth.add_device(DEVICE)
        site.broker.reload()
        await site.login_works(DEVICE, password, True)
        folder = tmp_path / "device"
        await asyncio.to_thread(folder.mkdir)
        config = {"device_id": DEVICE, "secret": record.secret.hex(), "link": "ST2"}
        await asyncio.to_thread((folder / f"{DEVICE}.json").write_text, json.dumps(config))
        async with site.gateway("mqtt", "http", "coap") as gateway:
            http_port = site.bridges["http"].port  # type: ignore[attr-defined]
            coap_port = site.bridges["coap"].port  # type: ignore[attr-defined]
            yield Served(gateway, http_port, site.broker.port, coap_port, password, folder)


def _run(served: Served, script: str, *, stderr: bool = False) -> str:
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=served.folder,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout + (done.stderr if stderr else "")


def _http(served: Served, command: str) -> str:
    return command.replace("127.0.0.1:8080", f"127.0.0.1:{served.http_port}")


async def test_the_shell_recipe_talks_to_a_running_gateway(served: Served) -> None:
    doc = recipe()
    post = _http(served, doc.http)
    birth = post.replace("reading.bin", "birth.bin").replace("$DEV/reading", "$DEV/birth")
    # the birth, the reading, the same reading again: 204, 204, 409
    out = await asyncio.to_thread(
        _run,
        served,
        f"{doc.keys}\n{doc.messages}\n{birth}\necho ===\n{post}\necho ===\n{post}\n",
    )
    answers = out.split("===")
    assert [a.split()[1] for a in answers] == ["204", "204", "409"], out
    assert "replay" in answers[2]
    reader = ThingClient(Client(served.gateway.store))
    assert (await reader.read(DEVICE, "moisture")).value == 41

    # the gateway seals a downlink; the document's commands open it and acknowledge it
    queued = await served.gateway.send(DEVICE, "desired", {"target": 40})
    ack = _http(
        served,
        post.replace("reading.bin", "ack.bin").replace("$DEV/reading", "$DEV/ack"),
    )
    out = await asyncio.to_thread(
        _run,
        served,
        f'{doc.keys}\n{_http(served, doc.poll)}\necho\necho "=== $CHANNEL $C"\n'
        f'printf \'{{"down": %s}}\' "$C" | seal ack 4 > ack.bin\n{ack}\n',
    )
    body, _, rest = out.partition("===")
    assert json.loads(body) == {"target": 40}
    assert rest.split()[:2] == ["desired", str(queued.counter)]
    assert " 204 " in rest
    assert served.gateway.registry.pending(DEVICE) == []

    # MQTT: a new reading under counter 5, published with mosquitto_pub
    publish = doc.mqtt.replace("-p 1883", f"-p {served.mqtt_port}").replace(
        "<password>", f"'{served.password}'"
    )
    await asyncio.to_thread(
        _run,
        served,
        f"{doc.keys}\nprintf '%s' '{{\"moisture\": 43}}' | seal reading 5 > reading.bin\n"
        f"{publish}\n",
    )
    async with asyncio.timeout(15):
        while (await reader.read(DEVICE, "moisture")).value != 43:
            await asyncio.sleep(0.05)
    assert served.gateway.registry.get(DEVICE).rx_counter == 5

    # CoAP: counter 6 with coap-client; the same message again is refused (4.03 replay)
    post_coap = doc.coap.replace("coap://127.0.0.1/", f"coap://127.0.0.1:{served.coap_port}/")
    out = await asyncio.to_thread(
        _run,
        served,
        f"{doc.keys}\nprintf '%s' '{{\"moisture\": 44}}' | seal reading 6 > reading.bin\n"
        f"{post_coap}\necho ===\n{post_coap}\n",
        stderr=True,
    )
    async with asyncio.timeout(15):
        while (await reader.read(DEVICE, "moisture")).value != 44:
            await asyncio.sleep(0.05)
    assert "4.03" in out.partition("===")[2], out
    assert served.gateway.registry.get(DEVICE).rx_counter == 6


def test_the_recipe_is_the_gateways_sealing(tmp_path: Path) -> None:
    """The shell's ``seal`` makes byte for byte what ``protocol.frame`` makes."""
    from safething_gateway.protocol import frame

    doc = recipe()
    secret = bytes(range(32))
    (tmp_path / f"{DEVICE}.json").write_text(json.dumps({"secret": secret.hex()}))
    body = b'{"moisture": 41, "pad": "' + b"x" * 40 + b'"}'  # more than one AES block
    (tmp_path / "body.json").write_bytes(body)
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", f"{doc.keys}\nseal reading 77 < body.json"],
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == frame(secret, DEVICE, "reading", 77, body, uplink=True)
