"""What MqttConnection puts on the wire, seen by a scripted broker (the codec cuts what
the client sends): the in-flight cap, QoS 1 messages sent again with ``dup`` after a
reconnect, PUBACKs only when the owner acknowledges and never across connections, a
broker that stops answering pings dropped, and a broker that stops reading: the bytes
waiting for it stay under a cap, and the backlog is written without being copied again.
The real-Mosquitto tests are in test_mqtt_loop.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import pytest

from safething_gateway import mqtt_codec as codec
from safething_gateway.mqtt_client import Message, MqttConnection
from safething_gateway.testing import unique_id as uid
from safething_gateway.testing import wait_until as until


class Session:
    """One client connection as the scripted broker sees it."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.packets: list[tuple[int, bytes]] = []
        self.ended = asyncio.Event()

    def of(self, kind: int) -> list[tuple[int, bytes]]:
        return [(first, body) for first, body in self.packets if first >> 4 == kind]

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    def cut(self) -> None:
        self.writer.transport.abort()


class ScriptedBroker:
    """Accepts connections, CONNACKs each CONNACK, SUBACKs each SUBSCRIBE (granting QoS 1)
    and records every packet; PUBACKs and PINGRESPs only when told (``pingresp``)."""

    def __init__(self) -> None:
        self.sessions: list[Session] = []
        self.pingresp = True
        self.port = 0
        self.reading = asyncio.Event()
        """Cleared: the broker reads nothing more (the client's writes back up)."""
        self.reading.set()
        self.read_size = 65536

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = Session(writer)
        self.sessions.append(session)
        packets = codec.PacketReader(1 << 20)
        try:
            while (await self.reading.wait()) and (data := await reader.read(self.read_size)):
                for first, body in packets.feed(data):
                    session.packets.append((first, body))
                    kind = first >> 4
                    if kind == codec.CONNECT:
                        writer.write(b"\x20\x02\x00\x00")
                    elif kind == codec.SUBSCRIBE:
                        writer.write(b"\x90\x03" + body[:2] + b"\x01")
                    elif kind == codec.PINGREQ and self.pingresp:
                        writer.write(b"\xd0\x00")
        except ConnectionError:
            pass
        finally:
            session.ended.set()
            writer.close()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[ScriptedBroker]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        async with server:
            yield self
            for session in self.sessions:
                session.cut()


def _publish(first: int, body: bytes) -> Message:
    return codec.decode_publish(first, body)


async def test_at_most_max_inflight_qos1_messages_wait_for_a_puback() -> None:
    async with ScriptedBroker().running() as broker:
        connection = MqttConnection(
            "127.0.0.1", broker.port, client_id=uid("cap"), max_inflight=5, label="cap"
        )
        await connection.start()
        try:
            assert await connection.wait_connected(5)
            futures = [connection.publish(f"t/{i}", b"%d" % i, 1)[1] for i in range(12)]
            session = broker.sessions[0]
            await until(lambda: len(session.of(codec.PUBLISH)) == 5)
            await asyncio.sleep(0.2)
            assert len(session.of(codec.PUBLISH)) == 5  # the cap holds
            sent = [_publish(*p) for p in session.of(codec.PUBLISH)]
            session.send(codec.puback(sent[0].mid) + codec.puback(sent[1].mid))
            await until(lambda: len(session.of(codec.PUBLISH)) == 7)
            assert futures[0].result() and futures[1].result() and not futures[2].done()
            topics = [_publish(*p).topic for p in session.of(codec.PUBLISH)]
            assert topics == [f"t/{i}" for i in range(7)]  # in publishing order
        finally:
            await connection.close()


async def test_unacknowledged_qos1_messages_are_sent_again_with_dup_after_a_reconnect() -> None:
    async with ScriptedBroker().running() as broker:
        connection = MqttConnection(
            "127.0.0.1",
            broker.port,
            client_id=uid("dup"),
            max_inflight=2,
            reconnect_delay=(0.05, 0.05),
            label="dup",
        )
        await connection.start()
        try:
            assert await connection.wait_connected(5)
            futures = [connection.publish("t", b"%d" % i, 1)[1] for i in range(3)]
            first = broker.sessions[0]
            await until(lambda: len(first.of(codec.PUBLISH)) == 2)
            first.cut()  # no PUBACK came: both are in flight, the third waits
            await until(lambda: len(broker.sessions) == 2 and connection.connected)
            second = broker.sessions[1]
            await until(lambda: len(second.of(codec.PUBLISH)) == 2)
            again = [_publish(*p) for p in second.of(codec.PUBLISH)]
            assert [(m.payload, m.dup) for m in again] == [(b"0", True), (b"1", True)]
            second.send(b"".join(codec.puback(m.mid) for m in again))
            await until(lambda: len(second.of(codec.PUBLISH)) == 3)
            last = _publish(*second.of(codec.PUBLISH)[2])
            assert (last.payload, last.dup) == (b"2", False)  # never sent before
            second.send(codec.puback(last.mid))
            assert await asyncio.wait_for(asyncio.gather(*futures), 5) == [True] * 3
        finally:
            await connection.close()


async def test_a_puback_goes_out_when_the_owner_acks_and_not_on_a_later_connection() -> None:
    received: list[tuple[Message, int]] = []
    async with ScriptedBroker().running() as broker:
        connection = MqttConnection(
            "127.0.0.1",
            broker.port,
            client_id=uid("ack"),
            manual_ack=True,
            subscriptions=[("in/#", 1)],
            on_message=lambda message, generation: received.append((message, generation)),
            reconnect_delay=(0.05, 0.05),
            label="ack",
        )
        await connection.start()
        try:
            assert await connection.wait_connected(5)
            session = broker.sessions[0]
            session.send(codec.publish(b"in/a", b"x", 1, False, False, 41))
            session.send(codec.publish(b"in/b", b"y", 1, False, False, 42))
            await until(lambda: len(received) == 2)
            await asyncio.sleep(0.2)
            assert session.of(codec.PUBACK) == []  # not before the owner says so
            connection.ack(*received[1])
            await until(lambda: len(session.of(codec.PUBACK)) == 1)
            assert session.of(codec.PUBACK) == [(0x40, b"\x00\x2a")]
            session.cut()
            await until(lambda: len(broker.sessions) == 2 and connection.connected)
            connection.ack(*received[0])  # its connection is gone: its id means nothing now
            second = broker.sessions[1]
            second.send(codec.publish(b"in/a", b"x", 1, False, True, 7))
            await until(lambda: len(received) == 3)
            connection.ack(*received[2])
            await until(lambda: len(second.of(codec.PUBACK)) == 1)
            assert second.of(codec.PUBACK) == [(0x40, b"\x00\x07")]
            assert received[2][0].dup and received[2][1] == received[0][1] + 1
        finally:
            await connection.close()


async def test_a_broker_that_stops_answering_pings_is_dropped() -> None:
    downs: list[str] = []
    async with ScriptedBroker().running() as broker:
        broker.pingresp = False
        connection = MqttConnection(
            "127.0.0.1",
            broker.port,
            client_id=uid("mute"),
            keepalive=1,
            on_disconnect=lambda: downs.append(connection.last_error),
            reconnect_delay=(5, 5),
            label="unanswered",
        )
        await connection.start()
        try:
            assert await connection.wait_connected(5)
            session = broker.sessions[0]
            await asyncio.wait_for(session.ended.wait(), 6)
            assert len(session.of(codec.PINGREQ)) >= 1
            assert downs == ["keep-alive timeout: the broker did not answer"]
        finally:
            await connection.close()


async def test_a_close_cancelled_while_its_disconnect_waits_still_closes_the_socket() -> None:
    """The broker stops reading, so the DISCONNECT waits to be written; the close is
    cancelled then (a stop with a time limit). It used to end at once with the socket
    left open; now it closes the socket, then passes the cancellation on."""
    async with ScriptedBroker().running() as broker:
        connection = MqttConnection(
            "127.0.0.1", broker.port, client_id=uid("stuck"), max_queued=1 << 20, label="stuck"
        )
        await connection.start()
        assert await connection.wait_connected(5)
        session = broker.sessions[0]
        broker.reading.clear()
        for i in range(100_000):  # until the kernel's buffers are full
            connection.publish("e/stuck", b"x" * 1000, 0)
            if i % 50 == 0:
                await asyncio.sleep(0)
            if connection.dropped:
                break
        closing = asyncio.create_task(connection.close())
        await asyncio.sleep(0.1)  # inside the close, the DISCONNECT waiting
        assert not closing.done()
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        assert not connection.connected
        broker.reading.set()  # the broker reads on, to the end of the stream
        await asyncio.wait_for(session.ended.wait(), 10)


def _payloads(session: Session) -> list[bytes]:
    return [_publish(*p).payload for p in session.of(codec.PUBLISH)]


async def test_qos0_messages_for_a_broker_that_stops_reading_stay_under_the_cap(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "safething.gateway.mqtt")
    cap = 64 * 1024
    async with ScriptedBroker().running() as broker:
        connection = MqttConnection(
            "127.0.0.1", broker.port, client_id=uid("slow"), max_queued=cap, label="slow"
        )
        await connection.start()
        try:
            assert await connection.wait_connected(5)
            session = broker.sessions[0]
            broker.reading.clear()
            body = b"x" * 1000
            futures: list[asyncio.Future[bool]] = []
            most = 0
            for i in range(100_000):  # the kernel's buffers fill first (a few MB)
                futures.append(connection.publish("e/slow", b"%06d" % i + body, 0)[1])
                most = max(most, connection.queued)
                if i % 50 == 0:
                    await asyncio.sleep(0)  # the loop writes what it can
                if connection.dropped >= 200:
                    break
            assert connection.dropped >= 200, "QoS 0 messages were queued without limit"
            assert most <= cap
            assert connection.connected
            warnings = [r for r in caplog.records if "dropping QoS 0" in r.getMessage()]
            assert len(warnings) == 1  # one per episode, not one per message
            _, qos1 = connection.publish("e/slow", b"kept", 1)  # QoS 1 is always queued
            broker.reading.set()
            await asyncio.wait_for(asyncio.gather(*futures), 30)
            kept = [i for i, f in enumerate(futures) if f.result()]
            assert len(kept) == len(futures) - connection.dropped
            await until(lambda: len(session.of(codec.PUBLISH)) == len(kept) + 1, timeout=30)
            payloads = _payloads(session)
            assert [int(p[:6]) for p in payloads[:-1]] == kept  # in order, none lost
            assert payloads[-1] == b"kept"
            session.send(codec.puback(_publish(*session.of(codec.PUBLISH)[-1]).mid))
            assert await asyncio.wait_for(qos1, 5)
            assert await asyncio.wait_for(connection.publish("e/slow", b"again", 0)[1], 5)
            assert any("reads again" in r.getMessage() for r in caplog.records)
            assert connection.queued == 0
        finally:
            await connection.close()


async def test_a_backlog_is_written_without_copying_it_again_at_each_step() -> None:
    async with ScriptedBroker().running() as broker:
        connection = MqttConnection(
            "127.0.0.1", broker.port, client_id=uid("copy"), max_queued=1 << 30, label="copy"
        )
        await connection.start()
        copied = 0
        send = connection.client._sock_send

        def counting(data: bytes | memoryview) -> int:
            nonlocal copied
            if isinstance(data, bytes):  # a memoryview into what was copied before is free
                copied += len(data)
            return send(data)

        connection.client._sock_send = counting  # type: ignore[method-assign]
        try:
            assert await connection.wait_connected(5)
            session = broker.sessions[0]
            broker.reading.clear()
            broker.read_size = 16 * 1024
            body = b"y" * 4000
            futures = []
            for i in range(4000):  # 16 MB, most of it waiting for the broker
                futures.append(connection.publish("e/copy", b"%06d" % i + body, 0)[1])
                if i % 100 == 0:
                    await asyncio.sleep(0)
            total = len(futures) * len(codec.publish(b"e/copy", b"0" * 4006, 0, False, False, 0))
            broker.reading.set()
            assert await asyncio.wait_for(asyncio.gather(*futures), 60) == [True] * len(futures)
            await until(lambda: len(session.of(codec.PUBLISH)) == len(futures), timeout=30)
            assert copied <= 1.25 * total, f"{copied} bytes copied to write {total}"
        finally:
            await connection.close()
