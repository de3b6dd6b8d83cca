"""Custodial things restored on demand after a gateway restart (safething_gateway.core).

A restarted gateway brings up no device's thing until the device's first message or a
write into the thing's inbox. These tests show that such a thing, woken by the inbox
alone, serves a request that waited while the gateway was down, and still refuses what
an attacker holding the store writes into the inbox of a thing that is not running: a
genuine request replayed after it was done, and a forged one.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from safething.errors import StoreError, ThingError
from safething.net import Client, Identity
from safething.net.records import EntryRecord
from safething.store import Store, open_store
from safething.things import Thing, ThingClient
from safething.things.layout import ThingAddresses
from safething_gateway.core import RESTORE_RETRY_S, Gateway
from safething_gateway.protocol import PayloadError
from safething_gateway.registry import DeviceRecord, Registry

from .conftest import SENSOR, Device


async def _until(check: Callable[[], bool], what: str) -> None:
    try:
        async with asyncio.timeout(20):
            while not check():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"not within 20 s: {what}") from None


async def _gone(store: Store, key: str) -> None:
    async with asyncio.timeout(20):
        while await store.get(key) is not None:
            await asyncio.sleep(0.02)


async def test_a_thing_woken_by_its_inbox_refuses_a_replayed_and_a_forged_request(
    tmp_path: Path,
) -> None:
    owner = Identity.generate("owner")
    inbox = ThingAddresses.of("sensor-01").inbox
    async with await open_store(f"sqlite:///{tmp_path}/vault.db") as store:
        registry = Registry(tmp_path / "gateway.db")
        device = Device("sensor-01", registry.add("sensor-01", "http").secret)
        requester = ThingClient(Client(store, owner))

        def gateway() -> Gateway:
            return Gateway(store=store, registry=registry, owner=owner)

        try:
            async with gateway() as gw:
                await gw.start()
                birth = device.message("birth", {"description": SENSOR})
                await gw.handle("sensor-01", "birth", birth)

            # The gateway is down: a request waits in the inbox; the attacker keeps its bytes.
            handle = await requester.request("sensor-01", "OpenValve", psi=40)
            key = inbox.entry_key(f"r/{handle.request_id}".encode())
            genuine = await store.get(key)
            assert genuine is not None and genuine.value is not None

            async with gateway() as gw:
                await gw.start()
                # No message from the device: the waiting request wakes its thing.
                await _until(lambda: "sensor-01" in gw.things, "the inbox restores the thing")
                async with asyncio.timeout(20):
                    while not (
                        down := await gw.handle("sensor-01", "poll", device.message("poll", {}))
                    ):
                        await asyncio.sleep(0.02)
                assert down[0].channel == f"action/{handle.request_id}"
                await gw.handle(
                    "sensor-01", "ack", device.message("ack", {"down": down[0].counter})
                )
                result = device.message(f"result/{handle.request_id}", {"state": "done"})
                await gw.handle("sensor-01", f"result/{handle.request_id}", result)
                assert (await handle.wait(20)).state == "done"
                await _gone(store, key)  # the thing purges a finished request

            # Restarted again: the thing is not running until something wakes it.
            async with gateway() as gw:
                await gw.start()
                await asyncio.sleep(0.2)  # the start-up scan found every inbox empty
                assert "sensor-01" not in gw.things

                # A forged request (the owner's bytes under a new id) wakes it: refused.
                record = EntryRecord.from_bytes(genuine.value, inbox, None)
                forged_key = b"r/f0rged0000000001"
                forged = dataclasses.replace(record, stored_key=forged_key)
                await store.put(inbox.entry_key(forged_key), forged.to_bytes())
                await _until(lambda: "sensor-01" in gw.things, "a forged request wakes the thing")
                thing = gw.things["sensor-01"]
                await _until(lambda: thing.client.tampered_count >= 1, "the forgery is counted")
                await store.delete(inbox.entry_key(forged_key))

            async with gateway() as gw:
                await gw.start()
                await asyncio.sleep(0.2)
                assert "sensor-01" not in gw.things
                # The genuine request, done before, written back: a replay, refused.
                await store.put(key, genuine.value)
                await _until(lambda: "sensor-01" in gw.things, "a replayed request wakes the thing")
                thing = gw.things["sensor-01"]
                await _until(lambda: thing.refused_count >= 1, "the replay is refused")
                # The device is never handed either again; the request stays done.
                assert await gw.handle("sensor-01", "poll", device.message("poll", {})) == []
                await asyncio.sleep(0.2)
                assert handle.state == "done"  # it follows the outbox: nothing written again
        finally:
            await requester.close()
            registry.close()


async def test_the_inbox_watch_is_opened_again_after_a_failure(tmp_path: Path) -> None:
    """The store fails while the gateway looks at the inboxes: a second later it looks
    again, and a request that waited while the gateway was down is still served."""
    owner = Identity.generate("owner")
    async with await open_store(f"sqlite:///{tmp_path}/vault.db") as store:
        registry = Registry(tmp_path / "gateway.db")
        device = Device("sensor-01", registry.add("sensor-01", "http").secret)
        requester = ThingClient(Client(store, owner))
        try:
            async with Gateway(store=store, registry=registry, owner=owner) as gw:
                await gw.start()
                await gw.handle(
                    "sensor-01", "birth", device.message("birth", {"description": SENSOR})
                )
            handle = await requester.request("sensor-01", "OpenValve", psi=40)
            async with Gateway(store=store, registry=registry, owner=owner) as gw:
                failures: list[str] = []
                scan = gw._inbox_keys

                async def failing_once() -> list[str]:
                    if not failures:
                        failures.append("scan")
                        raise StoreError("the store went away")
                    return await scan()

                gw._inbox_keys = failing_once  # type: ignore[method-assign]
                await gw.start()
                await _until(lambda: "sensor-01" in gw.things, "the inbox restores the thing")
                assert failures == ["scan"]
                async with asyncio.timeout(20):
                    while not (
                        down := await gw.handle("sensor-01", "poll", device.message("poll", {}))
                    ):
                        await asyncio.sleep(0.02)
                assert down[0].channel == f"action/{handle.request_id}"
        finally:
            await requester.close()
            registry.close()


async def _born(store: Store, registry: Registry, owner: Identity) -> Device:
    """sensor-01, born under a gateway that then stops."""
    device = Device("sensor-01", registry.add("sensor-01", "http").secret)
    async with Gateway(store=store, registry=registry, owner=owner) as gw:
        await gw.start()
        await gw.handle("sensor-01", "birth", device.message("birth", {"description": SENSOR}))
    return device


@pytest.mark.parametrize(
    ("channel", "body"), [("ack", {"down": 1}), ("poll", {}), ("state", {"online": True})]
)
async def test_a_devices_first_message_of_any_kind_restores_its_thing(
    tmp_path: Path, channel: str, body: dict[str, Any]
) -> None:
    """After a restart, the device's first message that passes the link's checks brings
    its thing up, whatever its channel: an acknowledgement or a poll too."""
    owner = Identity.generate("owner")
    async with await open_store(f"sqlite:///{tmp_path}/vault.db") as store:
        registry = Registry(tmp_path / "gateway.db")
        try:
            device = await _born(store, registry, owner)
            async with Gateway(store=store, registry=registry, owner=owner) as gw:
                await gw.start()
                assert "sensor-01" not in gw.things
                await gw.handle("sensor-01", channel, device.message(channel, body))
                assert "sensor-01" in gw.things
        finally:
            registry.close()


async def test_a_thing_that_cannot_be_restored_is_not_tried_for_every_message(
    tmp_path: Path,
) -> None:
    """Restoring costs a dozen verified reads: one that failed (logged) is tried again
    only after RESTORE_RETRY_S, not for every message or inbox write."""
    owner = Identity.generate("owner")
    async with await open_store(f"sqlite:///{tmp_path}/vault.db") as store:
        registry = Registry(tmp_path / "gateway.db")
        try:
            device = await _born(store, registry, owner)
            async with Gateway(store=store, registry=registry, owner=owner) as gw:
                attempts: list[str] = []

                async def refused(record: DeviceRecord, doc: dict[str, Any]) -> Thing:
                    attempts.append(record.device_id)
                    raise ThingError("the thing's MDs are unreadable")

                gw._thing_for = refused  # type: ignore[method-assign]
                await gw.start()
                for moisture in (1, 2, 3):
                    reading = device.message("reading", {"moisture": moisture})
                    with pytest.raises(PayloadError):
                        await gw.handle("sensor-01", "reading", reading)
                assert attempts == ["sensor-01"]
                gw._failed["sensor-01"] -= RESTORE_RETRY_S  # as if that long ago
                with pytest.raises(PayloadError):
                    await gw.handle(
                        "sensor-01", "reading", device.message("reading", {"moisture": 4})
                    )
                assert attempts == ["sensor-01", "sensor-01"]
        finally:
            registry.close()


def test_the_gateway_hashes_inbox_names_as_the_things_layout_does() -> None:
    from safething_gateway.core import _inbox_name

    for thing_id in ("sensor-01", "bench-load-09999", "pompe-été"):
        assert _inbox_name(thing_id) == ThingAddresses.of(thing_id).inbox.name.hex()


async def test_things_brought_up_after_start_are_kept_out_of_full_collections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Things restored on demand (or born) after the start are frozen like those of
    the start, a batch at a time, so full collections do not walk them."""
    import gc

    import safething_gateway.core

    monkeypatch.setattr(safething_gateway.core, "_FREEZE_EVERY", 2)
    owner = Identity.generate("owner")
    async with await open_store(f"sqlite:///{tmp_path}/vault.db") as store:
        registry = Registry(tmp_path / "gateway.db")
        devices = [
            Device(f"sensor-0{i}", registry.add(f"sensor-0{i}", "http").secret) for i in (1, 2)
        ]
        try:
            async with Gateway(store=store, registry=registry, owner=owner) as gw:
                await gw.start()
                frozen = gc.get_freeze_count()
                for device in devices:
                    doc = {**SENSOR, "id": device.device_id}
                    birth = device.message("birth", {"description": doc})
                    await gw.handle(device.device_id, "birth", birth)
                assert gc.get_freeze_count() > frozen
                assert gw._unfrozen == 0
        finally:
            registry.close()
