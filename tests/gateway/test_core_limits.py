"""The gateway core's bounds, driven as a bridge drives it: results for request ids it is
not waiting for, and each device's token bucket (refill, burst, the backlog credit after
a restart). Time is moved by rewinding the stamps the gateway keeps, never by sleeping.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from safething.net import Identity
from safething.store import open_store
from safething_gateway import core
from safething_gateway.core import Gateway
from safething_gateway.protocol import PayloadError, RateLimitedError, ReplayError
from safething_gateway.registry import Registry

from .conftest import SENSOR, Device


def _provision(gateway: Gateway, device_id: str) -> Device:
    return Device(device_id, gateway.registry.add(device_id, "http").secret)


async def _result(gateway: Gateway, device: Device, request_id: str, **body: object) -> None:
    channel = f"result/{request_id}"
    await gateway.handle(device.device_id, channel, device.message(channel, body))


async def _polls_accepted(gateway: Gateway, device: Device, most: int = 50) -> int:
    """Polls the device gets through before the first refusal (its bucket's content)."""
    for accepted in range(most):
        try:
            await gateway.handle(device.device_id, "poll", device.message("poll", {}))
        except RateLimitedError:
            return accepted
    raise AssertionError(f"{most} polls and none refused")


async def test_early_results_are_bounded_per_device(gateway: Gateway) -> None:
    """A device floods results for request ids nobody sent: the gateway keeps at most
    EARLY_PER_DEVICE ids (the rest refused) and, per id, the newest updates only."""
    gateway.rate, gateway.burst = 1e6, 10**6
    device = _provision(gateway, "flood-01")
    for i in range(core.EARLY_PER_DEVICE):
        await _result(gateway, device, f"fake-{i}", state="running")
    for i in range(5):
        with pytest.raises(PayloadError) as refused:
            await _result(gateway, device, f"more-{i}", state="running")
        assert "are held already" in str(refused.value.__cause__)  # sealed: in the log
    assert len(gateway._early) == core.EARLY_PER_DEVICE
    assert gateway._early_count == {"flood-01": core.EARLY_PER_DEVICE}
    for n in range(30):  # many updates for one id: only the newest are kept
        await _result(gateway, device, "fake-0", state="running", progress=n)
    updates = gateway._early[("flood-01", "fake-0")][1]
    assert [u.get("progress") for u in updates] == list(range(30 - core._EARLY_UPDATES, 30))
    with pytest.raises(PayloadError, match="a result is"):  # not a state a device reports
        await _result(gateway, device, "fake-1", state="requested")


async def test_early_results_are_bounded_in_total(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many devices, each at its own cap: the total stays at EARLY_TOTAL, oldest out."""
    total = 260  # smaller than 1,024 to keep the test short; not a small int CPython caches
    monkeypatch.setattr(core, "EARLY_TOTAL", total)
    gateway.rate, gateway.burst = 1e6, 10**6
    devices = [_provision(gateway, f"flood-{n:02d}") for n in range(18)]  # 288 results
    for device in devices:
        for i in range(core.EARLY_PER_DEVICE):
            await _result(gateway, device, f"r{i}", state="done")
    assert len(gateway._early) == total
    assert sum(gateway._early_count.values()) == total
    assert ("flood-17", f"r{core.EARLY_PER_DEVICE - 1}") in gateway._early  # newest kept
    assert ("flood-00", "r0") not in gateway._early  # oldest gone
    assert "flood-00" not in gateway._early_count  # all of its results went: not counted
    assert gateway._early_count["flood-01"] == 16 - (288 - total - 16)  # the next, in part


async def test_at_most_1024_early_results_are_held_in_all(gateway: Gateway) -> None:
    """The documented total, as a figure: 64 devices at their 16 fill it, the next result
    pushes the oldest out."""
    gateway.rate, gateway.burst = 1e6, 10**6
    for n in range(64):  # straight into the core's bookkeeping: 1,024 messages take long
        for i in range(16):
            gateway._result(f"flood-{n:02d}", f"r{i}", {"state": "done"})
    assert len(gateway._early) == 1024
    late = _provision(gateway, "flood-64")
    await _result(gateway, late, "r0", state="done")
    assert len(gateway._early) == 1024
    assert ("flood-00", "r0") not in gateway._early
    assert ("flood-64", "r0") in gateway._early


async def test_early_results_expire_and_free_their_devices_place(gateway: Gateway) -> None:
    gateway.rate, gateway.burst = 1e6, 10**6
    device = _provision(gateway, "sensor-01")
    for i in range(3):
        await _result(gateway, device, f"r{i}", state="running")
    # r0 is older than the TTL, r1 a little younger: the next result drops only r0
    for rid, age in (("r0", core.EARLY_RESULT_TTL + 5), ("r1", core.EARLY_RESULT_TTL - 5)):
        stamp, updates = gateway._early[("sensor-01", rid)]
        gateway._early[("sensor-01", rid)] = (stamp - age, updates)
    await _result(gateway, device, "r3", state="running")
    assert sorted(rid for _, rid in gateway._early) == ["r1", "r2", "r3"]
    assert gateway._early_count == {"sensor-01": 3}
    for i in range(4, 4 + core.EARLY_PER_DEVICE - 3):  # the freed place can be used again
        await _result(gateway, device, f"r{i}", state="running")
    with pytest.raises(PayloadError):
        await _result(gateway, device, "one-more", state="running")


async def test_the_bounds_on_early_results_are_the_documented_figures(gateway: Gateway) -> None:
    """docs/security.md promises at most 16 such request ids per device, 8 updates each,
    kept 300 s: the figures themselves, not only whatever the constants say."""
    gateway.rate, gateway.burst = 1e6, 10**6
    device = _provision(gateway, "flood-01")
    for i in range(16):
        await _result(gateway, device, f"r{i}", state="running")
    with pytest.raises(PayloadError):
        await _result(gateway, device, "r16", state="running")
    # r0 is a little older than 300 s, r1 a little younger: the next result drops only r0
    for rid, age in (("r0", 300.5), ("r1", 299.5)):
        stamp, updates = gateway._early[("flood-01", rid)]
        gateway._early[("flood-01", rid)] = (stamp - age, updates)
    await _result(gateway, device, "r16", state="running")
    assert ("flood-01", "r0") not in gateway._early
    assert ("flood-01", "r1") in gateway._early
    for n in range(10):
        await _result(gateway, device, "r1", state="running", progress=n)
    assert [u.get("progress") for u in gateway._early[("flood-01", "r1")][1]] == list(range(2, 10))


async def test_early_results_expire_by_their_age_shortly_after_boot(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway's clock counts from the machine's boot: a gateway started with its Pi
    keeps early results 300 s whatever the clock reads, not longer."""
    now = [120.0]  # two minutes after boot
    monkeypatch.setattr(core, "time", SimpleNamespace(time=time.time, monotonic=lambda: now[0]))
    gateway.rate, gateway.burst = 1e6, 10**6
    device = _provision(gateway, "sensor-01")
    await _result(gateway, device, "r0", state="running")
    now[0] = 600.0  # 480 s later
    await _result(gateway, device, "r1", state="running")
    assert sorted(rid for _, rid in gateway._early) == ["r1"]
    assert gateway._early_count == {"sensor-01": 1}


async def test_a_replay_is_a_replay_even_when_the_bucket_is_empty(gateway: Gateway) -> None:
    """An attacker replays a frame it captured while the device has used its tokens up:
    the answer is a replay (409), before any token is asked for, and it spends none."""
    gateway.rate, gateway.burst = 0.0, 3
    device = _provision(gateway, "sensor-01")
    captured = device.message("poll", {})
    await gateway.handle("sensor-01", "poll", captured)
    last = device.message("poll", {})
    await gateway.handle("sensor-01", "poll", last)
    for replayed in (captured, last, captured):  # an older frame, the last one
        with pytest.raises(ReplayError):
            await gateway.handle("sensor-01", "poll", replayed)
    newest = device.message("poll", {})
    await gateway.handle("sensor-01", "poll", newest)  # the one token left, untouched
    assert await _polls_accepted(gateway, device) == 0
    for replayed in (captured, newest):  # and with none left at all
        with pytest.raises(ReplayError):
            await gateway.handle("sensor-01", "poll", replayed)


async def test_a_device_with_one_early_result_left_is_still_counted(gateway: Gateway) -> None:
    """When one of a device's two early results expires, the other still counts
    against its 16: the device cannot hold one more than the bound."""
    gateway.rate, gateway.burst = 1e6, 10**6
    device = _provision(gateway, "sensor-01")
    for rid in ("r0", "r1"):
        await _result(gateway, device, rid, state="running")
    stamp, updates = gateway._early[("sensor-01", "r0")]
    gateway._early[("sensor-01", "r0")] = (stamp - core.EARLY_RESULT_TTL - 5, updates)
    await _result(gateway, device, "r2", state="running")  # r0 goes: r1 and r2 held
    assert gateway._early_count == {"sensor-01": 2}
    for i in range(3, 3 + core.EARLY_PER_DEVICE - 2):
        await _result(gateway, device, f"r{i}", state="running")
    with pytest.raises(PayloadError):
        await _result(gateway, device, "one-more", state="running")


async def test_without_refill_a_device_gets_exactly_its_burst(gateway: Gateway) -> None:
    gateway.rate, gateway.burst = 0.0, 3  # no refill: whole tokens, no rounding to help
    device = _provision(gateway, "sensor-01")
    assert await _polls_accepted(gateway, device) == 3


async def test_a_bucket_refills_at_the_rate_up_to_the_burst(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the gateway's clock stands still but when moved here: on a loaded machine the
    # polls themselves may take long enough to earn a token
    now = [1000.0]
    monkeypatch.setattr(core, "time", SimpleNamespace(time=time.time, monotonic=lambda: now[0]))
    gateway.rate, gateway.burst = 2.0, 3
    device = _provision(gateway, "sensor-01")
    assert await _polls_accepted(gateway, device) == 3
    now[0] += 1.0  # a second later: 2 tokens more
    assert await _polls_accepted(gateway, device) == 2
    now[0] += 100.0  # long after: never more than the burst
    assert await _polls_accepted(gateway, device) == 3


async def test_a_bucket_refills_by_the_time_passed_shortly_after_boot(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway's clock counts from the machine's boot: ten seconds after boot, 11 s
    more earn 11 s of tokens, whatever the clock reads."""
    now = [10.0]
    monkeypatch.setattr(core, "time", SimpleNamespace(time=time.time, monotonic=lambda: now[0]))
    gateway.rate, gateway.burst = 0.2, 3
    device = _provision(gateway, "sensor-01")
    assert await _polls_accepted(gateway, device) == 3
    now[0] = 21.0  # 11 s later: 2.2 tokens
    assert await _polls_accepted(gateway, device) == 2


async def test_a_restarted_gateway_credits_what_a_device_may_have_sent_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first message since the gateway started may be a backlog the broker kept: the
    bucket holds burst + rate x the time since the device was last seen, at most backlog."""
    owner = Identity.generate("owner")
    registry = Registry(tmp_path / "gateway.db")
    try:
        async with await open_store("memory://") as store:
            seen = _provision_in(registry, "sensor-01")
            async with Gateway(
                store=store, registry=registry, owner=owner, rate=0.01, burst=3, backlog=5
            ) as gateway:
                await gateway.start()
                await gateway.handle(
                    "sensor-01", "birth", seen.message("birth", {"description": SENSOR})
                )
            never = _provision_in(registry, "sensor-02")
            # the gateway restarts 100 s later: sensor-01 may have sent 100 x 0.01 = 1 more
            later = time.time() + 100
            monkeypatch.setattr(
                core, "time", SimpleNamespace(time=lambda: later, monotonic=time.monotonic)
            )
            async with Gateway(
                store=store, registry=registry, owner=owner, rate=0.01, burst=3, backlog=5
            ) as gateway:
                await gateway.start()
                assert await _polls_accepted(gateway, seen) == 3 + 1
                assert await _polls_accepted(gateway, never) == 3  # never seen: no credit
            # 10,000 s: 100 more, but at most the backlog
            later = time.time() + 10_000
            async with Gateway(
                store=store, registry=registry, owner=owner, rate=0.01, burst=3, backlog=5
            ) as gateway:
                await gateway.start()
                assert await _polls_accepted(gateway, seen) == 3 + 5
            # a clock gone back since (a Pi without a real-time clock, before NTP sets
            # it): a device seen "in the future" gets no credit, and not less than its burst
            later = time.time() - 100
            async with Gateway(
                store=store, registry=registry, owner=owner, rate=0.01, burst=3, backlog=5
            ) as gateway:
                await gateway.start()
                assert await _polls_accepted(gateway, seen) == 3
    finally:
        registry.close()


def _provision_in(registry: Registry, device_id: str) -> Device:
    return Device(device_id, registry.add(device_id, "http").secret)


async def test_a_counter_taken_meanwhile_gives_its_token_back(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two copies of one message handled at once both pass the counter check; the
    registry then refuses the second as a replay: it must not cost the device a token
    (nor give it one more)."""
    gateway.rate, gateway.burst = 0.001, 3
    device = _provision(gateway, "sensor-01")
    accept = gateway.registry.accept

    def taken(*args: object, **kwargs: object) -> int:
        raise ReplayError("counter 1 of 'sensor-01' was taken meanwhile")

    monkeypatch.setattr(gateway.registry, "accept", taken)
    with pytest.raises(ReplayError):
        await gateway.handle("sensor-01", "poll", device.message("poll", {}))
    monkeypatch.setattr(gateway.registry, "accept", accept)
    assert await _polls_accepted(gateway, device) == 3


async def test_a_reading_is_journaled_with_its_counter(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reading is kept (journaled) in the same registry transaction that spends its
    counter, so a crash between the two cannot lose it; never by a second write."""
    device = _provision(gateway, "sensor-01")
    await gateway.handle("sensor-01", "birth", device.message("birth", {"description": SENSOR}))

    def second_write(*args: object, **kwargs: object) -> int:
        raise AssertionError("journaled apart from its counter")

    monkeypatch.setattr(gateway.registry, "buffer", second_write)
    reading = "".join(list("reading"))  # as a bridge cuts it out of a topic: not the literal
    await gateway.handle("sensor-01", reading, device.message("reading", {"moisture": 5}))
    assert gateway.registry.buffer_depth() == 0  # written to the store, then dropped
