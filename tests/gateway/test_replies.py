"""Errors become replies in one place; one waiter for devices that wait for a push."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from aiocoap.numbers.codes import Code

from safething.errors import StoreError, TamperedDataError
from safething_gateway.bridges.coap import coap_reply
from safething_gateway.bridges.http import reply_response
from safething_gateway.bridges.waiters import Waiters
from safething_gateway.protocol import BadMacError, RateLimitedError, ReplayError, TooLargeError
from safething_gateway.replies import Reply, reply_for


def test_a_refusal_answers_with_its_own_status_and_text() -> None:
    reply = reply_for(ReplayError("counter 3 is not above 7"), where="s/reading")
    assert reply == Reply(409, "4.03", "replay", "counter 3 is not above 7")
    doc = reply.problem(channel="reading")
    assert doc["type"].endswith("/replay")
    assert (doc["status"], doc["detail"], doc["channel"]) == (409, reply.detail, "reading")


def test_a_store_outage_is_503_with_a_wait_and_the_cause_only_in_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="safething.gateway"):
        reply = reply_for(StoreError("/var/lib/vault.db: disk I/O error"), where="s/reading")
    assert (reply.status, reply.coap, reply.reason, reply.retry_after) == (
        503,
        "5.03",
        "store_unavailable",
        5,
    )
    assert "disk I/O" not in reply.detail
    assert "disk I/O error" in caplog.text


@pytest.mark.parametrize("error", [TamperedDataError("bad sig by ab12"), KeyError("secret")])
def test_anything_else_is_a_generic_500_logged_with_its_traceback(
    error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="safething.gateway"):
        reply = reply_for(error, where="s/reading")
    assert (reply.status, reply.coap, reply.reason) == (500, "5.00", "internal_error")
    assert str(error).strip("'") not in reply.detail
    assert caplog.records[-1].exc_info is not None


def test_each_transport_renders_the_same_reply() -> None:
    reply = reply_for(BadMacError("wrong MAC"), where="s/reading")
    http = reply_response(reply)
    assert http.status_code == 401
    assert http.headers["WWW-Authenticate"].startswith("ST2")
    assert json.loads(bytes(http.body))["detail"] == "wrong MAC"
    coap = coap_reply(reply)
    assert (coap.code, coap.payload) == (Code.UNAUTHORIZED, b"bad_mac: wrong MAC")

    limited = reply_for(RateLimitedError("slow down"), where="s/reading", rate=0.25)
    assert limited.retry_after == 4
    assert reply_response(limited).headers["Retry-After"] == "4"
    assert coap_reply(limited).opt.max_age == 4

    too_large = coap_reply(reply_for(TooLargeError("17 KiB"), where="s/reading"))
    assert too_large.code == Code.REQUEST_ENTITY_TOO_LARGE
    assert too_large.opt.size1 == 16 * 1024

    outage = reply_for(StoreError("down"), where="s/reading")
    assert reply_response(outage).status_code == 503
    assert coap_reply(outage).code == Code.SERVICE_UNAVAILABLE


async def test_a_long_poll_takes_one_push_and_stops_waiting() -> None:
    waiters = Waiters()
    poll = waiters.add("sensor-01", once=True, limit=4)
    stream = waiters.add("sensor-01", limit=4)
    assert waiters.can_push("sensor-01")
    assert not waiters.can_push("sensor-02")
    assert waiters.push("sensor-01", "action/r1", b"one")
    assert await poll.get() == ("action/r1", b"one")
    assert waiters.push("sensor-01", "action/r2", b"two")
    assert await stream.take() == [("action/r1", b"one"), ("action/r2", b"two")]
    assert waiters.connected() == 1
    waiters.remove(stream)
    assert waiters.connected() == 0
    assert not waiters.push("sensor-01", "action/r3", b"three")


async def test_a_full_waiter_refuses_further_pushes() -> None:
    waiters = Waiters()
    stream = waiters.add("sensor-01", limit=1)
    assert waiters.push("sensor-01", "desired", b"1")
    assert not waiters.can_push("sensor-01")
    assert not waiters.push("sensor-01", "desired", b"2")
    assert await stream.get() == ("desired", b"1")


async def test_an_exclusive_waiter_supersedes_the_one_before() -> None:
    observations = Waiters(exclusive=True)
    first = observations.add("sensor-01")
    second = observations.add("sensor-01")
    assert await first.take() is None
    assert first.end_reason == "superseded by a newer observation"
    observations.remove(first)  # the old observation's clean-up leaves the new one
    assert observations.push("sensor-01", "action/r1", b"x")
    assert await second.take() == [("action/r1", b"x")]


async def test_closing_wakes_every_waiter_and_ends_later_ones_at_once() -> None:
    waiters = Waiters()
    waiting = waiters.add("sensor-01")
    task = asyncio.create_task(waiting.get())
    await asyncio.sleep(0)
    assert not task.done()
    waiters.close("the gateway is shutting down")
    assert await asyncio.wait_for(task, 10) is None
    late = waiters.add("sensor-02")
    assert await late.take() is None
    assert late.end_reason == "the gateway is shutting down"
    assert not waiters.push("sensor-02", "desired", b"1")


def test_problem_documents_are_built_in_one_place() -> None:
    """Only replies.py spells out a problem document; every bridge goes through it."""
    from pathlib import Path

    import safething_gateway

    root = Path(safething_gateway.__file__).parent
    builders = sorted(
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if "safething.dev/problems/" in path.read_text() or '"title": reason' in path.read_text()
    )
    assert builders == ["replies.py"]
