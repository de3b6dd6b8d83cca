"""The gateway's MQTT 3.1.1 packets (mqtt_codec): what it writes is what the standard and
paho-mqtt write, what it reads is cut and decoded right however the bytes arrive, and
every malformed or oversized packet is a MalformedPacketError, never another exception
nor an unbounded buffer. Then the connection: a broker that sends such bytes is dropped
and connected again, with the owner told and nothing handed on."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from safething_gateway import mqtt_codec as codec
from safething_gateway.mqtt_client import MqttConnection, topic_matches
from safething_gateway.mqtt_codec import MalformedPacketError, PacketReader
from safething_gateway.testing import unique_id as uid
from safething_gateway.testing import wait_until as until


def _read_all(data: bytes, max_packet: int = 1 << 20) -> list[tuple[int, bytes]]:
    return list(PacketReader(max_packet).feed(data))


# --- writing ------------------------------------------------------------------------------


def test_connect_is_the_standard_packet_with_will_login_and_session_flags() -> None:
    packet = codec.connect(
        "gw",
        keepalive=30,
        clean_session=False,
        username="u",
        password="p",
        will=("t/w", b"bye", True),
    )
    body = (
        b"\x00\x04MQTT\x04"
        + bytes([0x80 | 0x40 | 0x20 | 0x08 | 0x04])  # login, password, will retain, QoS 1
        + b"\x00\x1e"
        + b"\x00\x02gw"
        + b"\x00\x03t/w\x00\x03bye"
        + b"\x00\x01u\x00\x01p"
    )
    assert packet == b"\x10" + bytes([len(body)]) + body
    bare = codec.connect("c", keepalive=0, clean_session=True)
    assert bare == b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x00\x00\x01c"


def test_publish_subscribe_and_acks_are_the_standard_packets() -> None:
    payload = bytes(300)  # a two-byte remaining length: 307 = 0xb3 0x02
    assert codec.publish(b"a/b", payload, 1, True, True, 7) == (
        b"\x3b\xb3\x02\x00\x03a/b\x00\x07" + payload  # PUBLISH, dup, QoS 1, retain
    )
    assert codec.publish(b"a/b", b"x", 0, False, False, 0) == b"\x30\x06\x00\x03a/bx"
    assert codec.puback(513) == b"\x40\x02\x02\x01"
    subscribe = b"\x82\x0c\x00\x03\x00\x03a/#\x01\x00\x01b\x00"
    assert codec.subscribe(3, [("a/#", 1), ("b", 0)]) == subscribe
    assert codec.unsubscribe(4, ["a/#"]) == b"\xa2\x07\x00\x04\x00\x03a/#"


@pytest.mark.parametrize(
    ("size", "field"),
    [
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16_383, b"\xff\x7f"),
        (16_384, b"\x80\x80\x01"),
        (2_097_151, b"\xff\xff\x7f"),
        (2_097_152, b"\x80\x80\x80\x01"),
        (268_435_455, b"\xff\xff\xff\x7f"),
    ],
)
def test_remaining_lengths_are_the_standards_examples(size: int, field: bytes) -> None:
    """MQTT 3.1.1 §2.2.3, table 2.4: written so, and read back so."""
    assert codec._length(size) == field
    reader = PacketReader(codec.MAX_REMAINING_LENGTH)
    assert list(reader.feed(b"\x30" + field)) == ([(0x30, b"")] if size == 0 else [])
    assert reader.buffered == (0 if size == 0 else 1 + len(field))


def test_a_body_longer_than_mqtt_can_frame_is_not_written() -> None:
    with pytest.raises(ValueError, match="at most"):
        codec._length(codec.MAX_REMAINING_LENGTH + 1)
    with pytest.raises(ValueError, match="65535"):
        codec.connect("x" * 70_000, keepalive=1, clean_session=True)


# --- reading ------------------------------------------------------------------------------


def _stream() -> tuple[bytes, list[tuple[int, bytes]]]:
    packets = [
        b"\x20\x02\x00\x00",  # CONNACK
        b"\x90\x03\x00\x01\x01",  # SUBACK
        codec.publish(b"st/v1/d/up/reading", bytes(300), 1, False, True, 9),
        codec.publish(b"t", b"", 0, True, False, 0),
        codec.puback(9),
        b"\xd0\x00",  # PINGRESP
    ]
    return b"".join(packets), [(p[0], _read_all(p)[0][1]) for p in packets]


def test_packets_are_cut_right_however_the_bytes_arrive() -> None:
    data, wanted = _stream()
    assert _read_all(data) == wanted
    for cut in range(1, len(data)):
        reader = PacketReader(1024)
        assert [*reader.feed(data[:cut]), *reader.feed(data[cut:])] == wanted, cut
        assert reader.buffered == 0
    reader = PacketReader(1024)
    one_by_one = [p for i in range(len(data)) for p in reader.feed(data[i : i + 1])]
    assert one_by_one == wanted


def test_a_publish_reads_back_as_written() -> None:
    [(first, body)] = _read_all(codec.publish(b"a/\xc3\xa9", b"\x00\xff", 1, True, True, 65535))
    message = codec.decode_publish(first, body)
    assert (message.topic, message.payload, message.qos, message.retain, message.dup) == (
        "a/é",
        b"\x00\xff",
        1,
        True,
        True,
    )
    assert message.mid == 65535
    [(first, body)] = _read_all(codec.publish(b"b", b"zz", 0, False, False, 0))
    message = codec.decode_publish(first, body)
    assert (message.topic, message.payload, message.qos, message.mid) == ("b", b"zz", 0, 0)


def test_a_topic_that_is_not_utf8_fails_only_when_read() -> None:
    [(first, body)] = _read_all(codec.publish(b"a/\xff", b"x", 0, False, False, 0))
    message = codec.decode_publish(first, body)
    assert message.payload == b"x"
    with pytest.raises(UnicodeDecodeError):
        message.topic  # noqa: B018


def test_a_packet_longer_than_the_limit_is_refused_from_its_header() -> None:
    """Its header says 10 MB: refused at once, before a byte of the body is kept."""
    reader = PacketReader(64 * 1024)
    with pytest.raises(MalformedPacketError, match="more than the 65536 accepted"):
        list(reader.feed(b"\x30" + codec._length(10_000_000)))
    assert reader.buffered == 0
    # exactly the limit is taken
    body = bytes(64 * 1024)
    assert list(reader.feed(b"\x30" + codec._length(len(body)) + body)) == [(0x30, body)]


def test_what_a_reader_keeps_never_exceeds_one_packet() -> None:
    reader = PacketReader(1000)
    data = codec.publish(b"t", bytes(990), 0, False, False, 0)
    for i in range(len(data) - 1):
        assert list(reader.feed(data[i : i + 1])) == []
        assert reader.buffered <= 1000 + 5
    assert len(list(reader.feed(data[-1:]))) == 1 and reader.buffered == 0


def test_a_packet_trickled_a_byte_at_a_time_is_appended_not_copied_again() -> None:
    """A broker (or anyone on its path) sending a 1 MiB packet a byte at a time must not
    make the event loop copy what it holds at every byte: 5 * 10^11 bytes, minutes of a
    core during which no device is served. The reader appends each piece to one buffer."""
    reader = PacketReader(1 << 20)
    data = codec.publish(b"t", bytes(range(256)) * 64, 1, False, False, 7)
    held = None
    for i in range(len(data) - 1):
        assert list(reader.feed(data[i : i + 1])) == []
        if held is None:
            held = reader._rest
        assert reader._rest is held  # grown in place, never rebuilt
    ((first, body),) = reader.feed(data[-1:])
    assert codec.decode_publish(first, body).payload == bytes(range(256)) * 64
    assert reader.buffered == 0


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"\x30\xff\xff\xff\xff\x01", "longer than four bytes"),
        (b"\x36\x05\x00\x01t\x00\x01", "QoS 3"),
        (b"\x34\x05\x00\x01t\x00\x01", "QoS 2"),
        (b"\x30\x01\x00", "without a topic"),
        (b"\x30\x03\x00\x05t", "shorter than its topic"),
        (b"\x32\x04\x00\x01t\x00", "shorter than its topic and packet id"),
        (b"\x32\x05\x00\x01t\x00\x00", "packet id 0"),
    ],
)
def test_malformed_publishes_are_refused(data: bytes, error: str) -> None:
    def read() -> None:
        for first, body in _read_all(data):
            codec.decode_publish(first, body)

    with pytest.raises(MalformedPacketError, match=error):
        read()


@pytest.mark.parametrize(
    ("first", "body", "decode", "error"),
    [
        (0x10, b"", None, "type 1, which a broker does not send"),
        (0x00, b"", None, "type 0"),
        (0xF0, b"", None, "type 15"),
        (0x82, b"", None, "type 8"),
        (0x42, b"\x00\x01", None, "type 4 with flags 0x2"),
        (0x20, b"\x00", codec.decode_connack, "CONNACK"),
        (0x20, b"\x02\x00", codec.decode_connack, "CONNACK"),
        (0x40, b"\x00\x01\x00", lambda b: codec.decode_mid("PUBACK", b), "3 bytes"),
        (0x90, b"\x00\x01", codec.decode_suback, "without return codes"),
        (0x90, b"\x00\x01\x05", codec.decode_suback, "unknown return code"),
    ],
)
def test_malformed_control_packets_are_refused(
    first: int, body: bytes, decode: Callable[[bytes], object] | None, error: str
) -> None:
    def read() -> None:
        codec.check_flags(first)
        assert decode is not None
        decode(body)

    with pytest.raises(MalformedPacketError, match=error):
        read()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=12))
def test_any_bytes_are_packets_or_a_malformed_packet_error(chunks: list[bytes]) -> None:
    """Whatever a broker sends, in whatever pieces: only MalformedPacketError, and the
    reader never keeps more than one packet's worth."""
    reader = PacketReader(64)
    with contextlib.suppress(MalformedPacketError):
        for chunk in chunks:
            for first, body in reader.feed(chunk):
                if codec.check_flags(first) == codec.PUBLISH:
                    codec.decode_publish(first, body)
                elif first >> 4 == codec.CONNACK:
                    codec.decode_connack(body)
                elif first >> 4 == codec.SUBACK:
                    codec.decode_suback(body)
                elif first >> 4 in (codec.PUBACK, codec.UNSUBACK):
                    codec.decode_mid("PUBACK", body)
            assert reader.buffered <= 64 + 5


@pytest.mark.parametrize(
    ("pattern", "topic", "matches"),
    [
        ("a/b", "a/b", True),
        ("a/b", "a/c", False),
        ("a/+", "a/b", True),
        ("a/+", "a/b/c", False),
        ("a/+/c", "a//c", True),
        ("a/#", "a", True),
        ("a/#", "a/b/c", True),
        ("#", "a/b", True),
        ("#", "$SYS/x", False),
        ("$SYS/#", "$SYS/x", True),
        ("+/b", "$x/b", False),
        ("st/v1/+/up/#", "st/v1/d1/up/reading", True),
        ("st/v1/+/up/#", "st/v1/d1/down/action", False),
    ],
)
def test_topic_filters_match_as_paho_matched_them(pattern: str, topic: str, matches: bool) -> None:
    paho = pytest.importorskip("paho.mqtt.client")
    assert topic_matches(pattern, topic) is matches
    assert paho.topic_matches_sub(pattern, topic) is matches


# --- a broker that sends bad bytes ----------------------------------------------------------


class FakeBroker:
    """Accepts connections and answers CONNECT with CONNACK, then, on the first connection
    only, sends ``after``; counts CONNECTs and sees the first connection end."""

    def __init__(self, after: bytes) -> None:
        self.after = after
        self.connects = 0
        self.closed = asyncio.Event()
        self.port = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            first = await reader.readexactly(1)
            assert first == b"\x10"
            self.connects += 1
            writer.write(b"\x20\x02\x00\x00")
            if self.connects == 1:
                writer.write(self.after)
            await writer.drain()
            await reader.read()  # until the client goes
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.closed.set()
            writer.close()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[FakeBroker]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        async with server:
            yield self


@pytest.mark.parametrize(
    ("after", "reason"),
    [
        (b"\x30" + codec._length(10_000_000), "more than the 1024 accepted"),
        (b"\x30\xff\xff\xff\xff\x01", "longer than four bytes"),
        (b"\x34\x05\x00\x01t\x00\x01", "QoS 2"),
        (b"\x20\x02\x00\x00", "out of turn"),
        (b"\xf0\x00", "type 15"),
    ],
)
async def test_a_broker_sending_a_malformed_packet_is_dropped_and_connected_again(
    after: bytes, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    got: list[object] = []
    events: list[str] = []
    async with FakeBroker(after).running() as broker:
        connection = MqttConnection(
            "127.0.0.1",
            broker.port,
            client_id=uid("bad"),
            on_message=lambda message, generation: got.append(message),
            on_connect=lambda generation: events.append("up"),
            on_disconnect=lambda: events.append("down"),
            reconnect_delay=(0.05, 0.05),
            max_packet=1024,
            label="bad broker",
        )
        with caplog.at_level(logging.WARNING):
            await connection.start()
            try:
                await until(lambda: broker.connects >= 2, timeout=10)
                await asyncio.wait_for(broker.closed.wait(), 10)
                await until(lambda: connection.connected)
            finally:
                await connection.close()
    assert got == [] and events[:3] == ["up", "down", "up"]
    assert f"a malformed packet from {connection.url}: " in caplog.text
    assert reason in caplog.text
    assert "Traceback" not in caplog.text
