"""The device link: framing, MAC and counters, the same over MQTT, CoAP and HTTP.

Every message between a device and the gateway is one byte string::

    ST1 <counter> <mac>\\n<body>

* ``counter``: decimal, strictly increasing per device and direction (gaps
  allowed), persisted by both sides so a reboot never reuses one;
* ``mac``: 64 lowercase hex digits,
  ``HMAC-SHA256(secret, "ST1\\n" + device_id + "\\n" + channel + "\\n" + counter + "\\n" + body)``;
* ``body``: JSON (UTF-8) or CBOR, as the transport says (MQTT: JSON;
  CoAP: content-format 50 JSON / 60 CBOR; HTTP: ``Content-Type``).

The *channel* is the logical name of the message, identical on every
transport (MQTT topic ``st/v1/<device>/up/<channel>``, CoAP and HTTP path
``.../<device>/<channel>``), so a MAC binds the message to its device and
its meaning. Only ``hashlib`` and string concatenation are needed on the
device: no canonical JSON. See ``docs/protocol.md``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from typing import Any

import cbor2

from safething.errors import SafeThingError

__all__ = [
    "CHANNELS_DOWN",
    "CHANNELS_UP",
    "MAGIC",
    "MAX_MESSAGE_BYTES",
    "BadMacError",
    "BadMessageError",
    "Frame",
    "PayloadError",
    "ProtocolError",
    "RateLimitedError",
    "ReplayError",
    "RevokedDeviceError",
    "TooLargeError",
    "UnknownChannelError",
    "UnknownDeviceError",
    "check_channel",
    "check_device_id",
    "decode_body",
    "encode_body",
    "frame",
    "mac",
    "parse_frame",
]

MAGIC = b"ST1"
MAX_MESSAGE_BYTES = 16 * 1024
"""Largest message accepted from a device (frame + body)."""

CHANNELS_UP = ("birth", "reading", "event/", "result/", "state", "ack", "poll")
"""Uplink channels: exact names, or prefixes ending in ``/`` followed by a name."""
CHANNELS_DOWN = ("action/", "desired", "error")
"""Downlink channels."""

_DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{4,63}$")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,63}$")


# --- errors: each knows how every transport reports it ---------------------------------


class ProtocolError(SafeThingError):
    """A device message the gateway refuses. ``http``/``coap`` are the status to reply
    with, ``reason`` a short machine-readable word (metrics label, MQTT error topic);
    :func:`safething_gateway.replies.reply_for` turns it into each transport's reply."""

    http = 400
    coap = "4.00"
    reason = "bad_message"


class BadMessageError(ProtocolError):
    """Not a frame: missing header, bad counter or MAC field."""


class BadMacError(ProtocolError):
    http, coap, reason = 401, "4.01", "bad_mac"


class UnknownDeviceError(ProtocolError):
    http, coap, reason = 404, "4.04", "unknown_device"


class RevokedDeviceError(ProtocolError):
    http, coap, reason = 403, "4.03", "revoked"


class ReplayError(ProtocolError):
    http, coap, reason = 409, "4.03", "replay"


class UnknownChannelError(ProtocolError):
    http, coap, reason = 404, "4.04", "unknown_channel"


class TooLargeError(ProtocolError):
    http, coap, reason = 413, "4.13", "too_large"


class PayloadError(ProtocolError):
    """The body does not decode or does not match the device's declared description."""

    http, coap, reason = 422, "4.22", "bad_payload"


class RateLimitedError(ProtocolError):
    http, coap, reason = 429, "4.29", "rate_limited"


# --- framing --------------------------------------------------------------------------


def check_device_id(device_id: str) -> str:
    if not isinstance(device_id, str) or not _DEVICE_ID.fullmatch(device_id):
        raise UnknownDeviceError(
            f"invalid device id {device_id!r}: 5-64 characters of letters, digits, '-' and '_'"
        )
    return device_id


def check_channel(channel: str, *, uplink: bool = True) -> str:
    """Return ``channel`` if it is a known channel with a valid name part."""
    known = CHANNELS_UP if uplink else CHANNELS_DOWN
    for item in known:
        if item.endswith("/"):
            if channel.startswith(item) and _NAME.fullmatch(channel[len(item) :]):
                return channel
        elif channel == item:
            return channel
    raise UnknownChannelError(f"unknown channel {channel!r}")


def mac(secret: bytes, device_id: str, channel: str, counter: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of a message."""
    message = b"\n".join((MAGIC, device_id.encode(), channel.encode(), str(counter).encode(), body))
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def frame(secret: bytes, device_id: str, channel: str, counter: int, body: bytes) -> bytes:
    """A complete message: header line and body."""
    tag = mac(secret, device_id, channel, counter, body)
    return b"%s %d %s\n" % (MAGIC, counter, tag.encode()) + body


@dataclass(frozen=True, slots=True)
class Frame:
    """A parsed message whose MAC is not yet checked."""

    counter: int
    """The sender's counter."""
    mac: str
    """The MAC as sent (hex)."""
    body: bytes
    """The body bytes exactly as sent (what the MAC covers)."""

    def verify(self, secret: bytes, device_id: str, channel: str) -> None:
        """Raise ``BadMacError`` unless the MAC is right (constant-time compare)."""
        expected = mac(secret, device_id, channel, self.counter, self.body)
        if not hmac.compare_digest(expected, self.mac):
            raise BadMacError(f"wrong MAC for {device_id}/{channel} counter {self.counter}")


def parse_frame(data: bytes) -> Frame:
    """Split a message into counter, MAC and body; ``BadMessageError`` if malformed."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise TooLargeError(f"message of {len(data)} bytes; the limit is {MAX_MESSAGE_BYTES}")
    head, sep, body = data.partition(b"\n")
    parts = head.split(b" ")
    if not sep or len(parts) != 3 or parts[0] != MAGIC:
        raise BadMessageError(
            "not a SAFEthing device message: expected 'ST1 <counter> <mac>\\n<body>'"
        )
    counter_text, tag = parts[1], parts[2]
    if not counter_text.isdigit() or len(counter_text) > 19:
        raise BadMessageError("the counter must be a decimal number")
    if len(tag) != 64 or not re.fullmatch(rb"[0-9a-f]{64}", tag):
        raise BadMessageError("the MAC must be 64 lowercase hex digits")
    return Frame(int(counter_text), tag.decode(), body)


def decode_body(body: bytes, content_format: str) -> Any:
    """JSON or CBOR body to Python values; ``PayloadError`` if it does not decode."""
    if not body:
        return None
    try:
        if content_format == "cbor":
            return cbor2.loads(body)
        return json.loads(body)
    except Exception as e:
        raise PayloadError(f"body is not valid {content_format.upper()}: {e}") from e


def encode_body(value: Any, content_format: str = "json") -> bytes:
    if content_format == "cbor":
        return bytes(cbor2.dumps(value))
    return json.dumps(value, separators=(",", ":")).encode()
