"""An authenticated device (its secret leaked, or its firmware broken) sends bodies of
any shape on every channel: each message is either handled or refused with a
ProtocolError (a SafeThingError the bridges turn into a reply), never another exception,
and the gateway goes on serving the device's honest readings afterwards."""

from __future__ import annotations

import logging
import random
import secrets
from typing import Any

import pytest

from safething.net import Client, Identity
from safething.store import Store
from safething.things import ThingClient
from safething_gateway.core import Gateway
from safething_gateway.protocol import ProtocolError
from safething_gateway.registry import Registry

from ..hostile import scalar, value
from .conftest import SENSOR, Device

MESSAGES = 400
_WORDS = ("running", "done", "moisture")
_FIELDS = ("description", "moisture", "valve", "state", "progress", "result", "message", "down")


def _scalar(rng: random.Random) -> Any:
    return scalar(rng, binary=False, words=_WORDS)


def _value(rng: random.Random) -> Any:
    return value(rng, fields=_FIELDS, binary=False, words=_WORDS)


def _body(rng: random.Random, channel: str) -> Any:
    if channel == "birth" and rng.random() < 0.5:
        described = dict(SENSOR)
        described[rng.choice([*SENSOR, "extra"])] = _value(rng)
        return {"description": described}
    if channel == "reading" and rng.random() < 0.5:
        return {"moisture": _scalar(rng)}
    if channel.startswith("result/") and rng.random() < 0.5:
        return {"state": rng.choice(["running", "done", "failed", 7]), "progress": _scalar(rng)}
    return _value(rng)


def _channel(rng: random.Random) -> str:
    return rng.choice(
        [
            "birth",
            "reading",
            "reading",
            "event/VeryDryAlarm",
            "event/" + "x" * rng.randint(1, 60),
            f"result/{secrets.token_hex(8)}",
            "result/",
            "state",
            "ack",
            "poll",
        ]
    )


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
async def test_a_device_sending_any_body_gets_refusals_and_the_gateway_goes_on(
    store: Store, registry: Registry, caplog: pytest.LogCaptureFixture, seed: int
) -> None:
    rng = random.Random(seed)
    caplog.set_level(logging.ERROR)
    async with Gateway(
        store=store, registry=registry, owner=Identity.generate("owner"), rate=1e6, burst=10**6
    ) as gateway:
        await gateway.start()
        device = Device("sensor-01", gateway.registry.add("sensor-01", "http").secret)
        await gateway.handle("sensor-01", "birth", device.message("birth", {"description": SENSOR}))
        handled = 0
        for _ in range(MESSAGES):
            channel = _channel(rng)
            try:
                await gateway.handle(
                    "sensor-01", channel, device.message(channel, _body(rng, channel))
                )
                handled += 1
            except ProtocolError:
                pass
        assert handled > 0
        # a birth that parsed changed the description (a device may); its own again:
        await gateway.handle("sensor-01", "birth", device.message("birth", {"description": SENSOR}))
        await gateway.handle("sensor-01", "reading", device.message("reading", {"moisture": 42.0}))
        async with ThingClient(Client(store)) as things:
            assert (await things.read("sensor-01", "moisture")).value == 42.0
    failed = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert failed == [], [r.getMessage() for r in failed]
