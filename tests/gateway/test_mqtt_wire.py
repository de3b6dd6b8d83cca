"""What MqttConnection puts on the wire, seen by a scripted broker (the codec cuts what
the client sends): the in-flight cap, QoS 1 messages sent again with ``dup`` after a
reconnect, PUBACKs only when the owner acknowledges and never across connections, and
a broker that stops answering pings dropped. The real-Mosquitto tests are in
test_mqtt_loop.py."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

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

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = Session(writer)
        self.sessions.append(session)
        packets = codec.PacketReader(1 << 20)
        try:
            while data := await reader.read(65536):
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
