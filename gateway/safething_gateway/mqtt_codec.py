"""MQTT 3.1.1 packets, as the gateway's client (:mod:`safething_gateway.mqtt_client`) writes
and reads them: only what it uses (CONNECT with a last will and a login, SUBSCRIBE,
UNSUBSCRIBE, PUBLISH at QoS 0 and 1, PUBACK, PINGREQ, DISCONNECT out; CONNACK, PUBLISH,
PUBACK, SUBACK, UNSUBACK, PINGRESP in).

Reading is two steps: :class:`PacketReader` cuts the bytes of the socket into packets
(``(first byte, body)``), refusing one longer than its ``max_packet`` as soon as its
header says so, so that the bytes it keeps never exceed one packet; :func:`decode_publish`
and the small decoders after it read a body. Anything that breaks the standard raises
:class:`MalformedPacketError`, after which the connection is dropped: the client keeps no
state of a half-understood broker.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from struct import Struct

from safething.errors import SafeThingError

__all__ = [
    "CONNACK",
    "CONNACK_REFUSALS",
    "DISCONNECT_PACKET",
    "MAX_REMAINING_LENGTH",
    "PINGREQ_PACKET",
    "PINGRESP",
    "PUBACK",
    "PUBLISH",
    "SUBACK",
    "UNSUBACK",
    "MalformedPacketError",
    "Message",
    "PacketReader",
    "check_flags",
    "connect",
    "decode_connack",
    "decode_mid",
    "decode_publish",
    "decode_suback",
    "puback",
    "publish",
    "subscribe",
    "unsubscribe",
]

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK = 8, 9, 10, 11
PINGREQ, PINGRESP, DISCONNECT = 12, 13, 14

MAX_REMAINING_LENGTH = 268_435_455
"""The largest body MQTT can frame (four bytes of remaining length)."""

PINGREQ_PACKET = b"\xc0\x00"
DISCONNECT_PACKET = b"\xe0\x00"

CONNACK_REFUSALS = {
    1: "Unsupported protocol version",
    2: "Client identifier not valid",
    3: "Server unavailable",
    4: "Bad user name or password",
    5: "Not authorized",
}
"""CONNACK return codes 1 to 5, in the words paho-mqtt used for them."""

_FIRST_FLAGS = {CONNACK: 0, PUBACK: 0, SUBACK: 0, UNSUBACK: 0, PINGRESP: 0}
"""The fixed header's flags each packet type a client reads must carry (§2.2.2)."""

_H = Struct("!H")
_PUBACK = Struct("!BBH")
_LENGTHS = [bytes((n,)) for n in range(128)]


class MalformedPacketError(SafeThingError, ValueError):
    """The broker sent bytes that are not a packet MQTT 3.1.1 allows a client to read, or
    one longer than the client accepts; the connection is dropped."""


class Message:
    """A PUBLISH read from the broker (attributes named as paho-mqtt's ``MQTTMessage``)."""

    __slots__ = ("_topic", "dup", "mid", "payload", "qos", "retain")

    def __init__(
        self, topic: bytes, payload: bytes, qos: int, retain: bool, dup: bool, mid: int
    ) -> None:
        self._topic = topic
        self.payload = payload
        """The message's bytes."""
        self.qos = qos
        """0 or 1."""
        self.retain = retain
        """Sent by the broker from what it retained for the topic, not as it was published."""
        self.dup = dup
        """The broker may have sent this message before (a redelivery)."""
        self.mid = mid
        """The packet identifier (0 for QoS 0)."""

    @property
    def topic(self) -> str:
        """The topic name; ``UnicodeDecodeError`` if the broker sent one not in UTF-8."""
        return self._topic.decode()

    def __repr__(self) -> str:
        size = len(self.payload)
        return f"Message({self._topic!r}, {size} bytes, qos={self.qos}, mid={self.mid})"


# --- writing ------------------------------------------------------------------------


def _length(n: int) -> bytes:
    """The remaining-length field of a body of ``n`` bytes."""
    if n < 128:
        return _LENGTHS[n]
    if n > MAX_REMAINING_LENGTH:
        raise ValueError(f"an MQTT packet body holds at most {MAX_REMAINING_LENGTH} bytes")
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        if n:
            out.append(digit | 0x80)
        else:
            out.append(digit)
            return bytes(out)


def _string(data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise ValueError("an MQTT string holds at most 65535 bytes")
    return _H.pack(len(data)) + data


def connect(
    client_id: str,
    *,
    keepalive: int,
    clean_session: bool,
    username: str | None = None,
    password: str | None = None,
    will: tuple[str, bytes, bool] | None = None,
) -> bytes:
    """CONNECT; a last will is sent with QoS 1 (``(topic, payload, retain)``)."""
    if not 0 <= keepalive <= 0xFFFF:
        raise ValueError("keepalive must be 0 to 65535 seconds")
    flags = 0x02 if clean_session else 0
    payload = [_string(client_id.encode())]
    if will is not None:
        topic, message, retain = will
        flags |= 0x04 | (1 << 3) | (0x20 if retain else 0)
        payload += [_string(topic.encode()), _string(message)]
    if username is not None:
        flags |= 0x80
        payload.append(_string(username.encode()))
        if password is not None:
            flags |= 0x40
            payload.append(_string(password.encode()))
    body = b"\x00\x04MQTT\x04" + bytes((flags,)) + _H.pack(keepalive) + b"".join(payload)
    return b"\x10" + _length(len(body)) + body


def publish(topic: bytes, payload: bytes, qos: int, retain: bool, dup: bool, mid: int) -> bytes:
    """PUBLISH of ``payload`` on ``topic`` (UTF-8, checked by the caller); ``mid`` is used
    with QoS 1 only."""
    first = 0x30 | (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)
    if qos:
        size = 4 + len(topic) + len(payload)
        return b"".join(
            (_LENGTHS[first], _length(size), _H.pack(len(topic)), topic, _H.pack(mid), payload)
        )
    size = 2 + len(topic) + len(payload)
    return b"".join((_LENGTHS[first], _length(size), _H.pack(len(topic)), topic, payload))


def puback(mid: int) -> bytes:
    return _PUBACK.pack(0x40, 2, mid)


def subscribe(mid: int, topics: Iterable[tuple[str, int]]) -> bytes:
    body = _H.pack(mid) + b"".join(_string(t.encode()) + bytes((qos,)) for t, qos in topics)
    return b"\x82" + _length(len(body)) + body


def unsubscribe(mid: int, topics: Iterable[str]) -> bytes:
    body = _H.pack(mid) + b"".join(_string(t.encode()) for t in topics)
    return b"\xa2" + _length(len(body)) + body


# --- reading ------------------------------------------------------------------------


class PacketReader:
    """Cuts the byte stream from the broker into ``(first byte, body)`` packets."""

    __slots__ = ("_rest", "max_packet")

    def __init__(self, max_packet: int) -> None:
        if not 2 <= max_packet <= MAX_REMAINING_LENGTH:
            raise ValueError(f"max_packet must be 2 to {MAX_REMAINING_LENGTH} bytes")
        self.max_packet = max_packet
        """The longest body accepted; a longer one is refused as soon as its header is read."""
        self._rest = bytearray()
        """The start of a packet not complete yet, appended to in place: a packet that
        arrives a byte at a time costs its length once, not its length squared."""

    @property
    def buffered(self) -> int:
        """Bytes held of a packet not complete yet (at most ``max_packet`` + 5)."""
        return len(self._rest)

    def clear(self) -> None:
        self._rest = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[int, bytes]]:
        """The packets ``data`` completes, in order, then the start of the next one kept;
        a malformed length raises when the packets before it have been taken. To be
        iterated to the end (or :meth:`clear` called)."""
        rest = self._rest
        if rest:
            rest += data
            yield from self._cut(rest, kept=True)
        else:
            yield from self._cut(data, kept=False)

    def _cut(self, data: bytes | bytearray, *, kept: bool) -> Iterator[tuple[int, bytes]]:
        """``kept``: ``data`` is :attr:`_rest` itself (what is used is cut off its front)."""
        pos, end, limit = 0, len(data), self.max_packet
        try:
            while end - pos >= 2:
                length = data[pos + 1]
                head = pos + 2
                if length & 0x80:
                    length &= 0x7F
                    shift, complete = 7, False
                    while head < end:
                        byte = data[head]
                        head += 1
                        length |= (byte & 0x7F) << shift
                        if not byte & 0x80:
                            complete = True
                            break
                        if shift == 21:
                            raise MalformedPacketError("a remaining length longer than four bytes")
                        shift += 7
                    if not complete:
                        break  # the length field is not complete yet
                if length > limit:
                    raise MalformedPacketError(
                        f"a packet of {length} bytes, more than the {limit} accepted"
                    )
                stop = head + length
                if stop > end:
                    break
                yield data[pos], bytes(data[head:stop])
                pos = stop
        except BaseException:  # malformed, or not iterated to the end: nothing is kept
            self._rest = bytearray()
            raise
        if kept:
            del self._rest[:pos]
        elif pos < end:
            self._rest = bytearray(data[pos:])


def check_flags(first: int) -> int:
    """The packet type of a first byte whose flags are right for it (PUBLISH's are read by
    :func:`decode_publish`)."""
    kind = first >> 4
    if kind != PUBLISH:
        wanted = _FIRST_FLAGS.get(kind)
        if wanted is None:
            raise MalformedPacketError(f"packet type {kind}, which a broker does not send")
        if first & 0x0F != wanted:
            raise MalformedPacketError(f"packet type {kind} with flags {first & 0x0F:#x}")
    return kind


def decode_publish(first: int, body: bytes) -> Message:
    qos = (first >> 1) & 0x03
    if qos > 1:
        raise MalformedPacketError(f"a PUBLISH with QoS {qos} (subscriptions ask for 1 at most)")
    size = len(body)
    if size < 2:
        raise MalformedPacketError("a PUBLISH without a topic")
    end = 2 + (body[0] << 8 | body[1])
    if qos:
        if size < end + 2:
            raise MalformedPacketError("a PUBLISH shorter than its topic and packet id")
        mid = body[end] << 8 | body[end + 1]
        if not mid:
            raise MalformedPacketError("a QoS 1 PUBLISH with packet id 0")
        return Message(body[2:end], body[end + 2 :], 1, bool(first & 1), bool(first & 8), mid)
    if size < end:
        raise MalformedPacketError("a PUBLISH shorter than its topic")
    return Message(body[2:end], body[end:], 0, bool(first & 1), bool(first & 8), 0)


def decode_mid(kind: str, body: bytes) -> int:
    """The packet id of a PUBACK or UNSUBACK."""
    if len(body) != 2:
        raise MalformedPacketError(f"a {kind} of {len(body)} bytes instead of 2")
    return body[0] << 8 | body[1]


def decode_connack(body: bytes) -> tuple[bool, int]:
    """``(session present, return code)``."""
    if len(body) != 2 or body[0] & 0xFE:
        raise MalformedPacketError("a malformed CONNACK")
    return bool(body[0] & 1), body[1]


def decode_suback(body: bytes) -> tuple[int, list[int]]:
    """``(packet id, return codes)``: 0 or 1 the QoS granted, 0x80 a refusal."""
    if len(body) < 3:
        raise MalformedPacketError("a SUBACK without return codes")
    codes = list(body[2:])
    if any(c not in (0, 1, 2, 0x80) for c in codes):
        raise MalformedPacketError("a SUBACK with an unknown return code")
    return body[0] << 8 | body[1], codes
