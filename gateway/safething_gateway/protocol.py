"""The device link: framing, encryption, MAC and counters, the same over MQTT, CoAP and HTTP.

Every message between a device and the gateway is one byte string::

    ST2 <counter> <tag>\\n<ciphertext>

* ``counter``: decimal, strictly increasing per device and direction (gaps
  allowed), persisted by both sides so a reboot never reuses one; it is the
  nonce of the encryption;
* ``ciphertext``: the body (JSON or CBOR, as the transport says) encrypted
  with AES-128-CTR under the direction's encryption key, initial counter block
  ``counter`` (8 bytes big-endian) followed by 8 zero bytes;
* ``tag``: 64 lowercase hex digits, ``HMAC-SHA256(mac key, "ST2\\n" + device_id
  + "\\n" + channel + "\\n" + counter + "\\n" + ciphertext)`` (encrypt-then-MAC);
* keys: ``HKDF-Expand-SHA256(secret, "safething ST2 <up|down> <enc|mac>")``,
  16 bytes for AES, 32 for HMAC, one pair per direction.

The old version ``ST1 <counter> <mac>\\n<body>`` carries the body in clear with
``mac = HMAC-SHA256(secret, "ST1\\n" + device_id + "\\n" + channel + "\\n" +
counter + "\\n" + body)``; the gateway accepts it only from devices provisioned
with it.

The *channel* is the logical name of the message, identical on every
transport (MQTT topic ``st/v1/<device>/up/<channel>``, CoAP and HTTP path
``.../<device>/<channel>``), so a tag binds the message to its device, its
direction and its meaning. See ``docs/protocol.md``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import importlib
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from safething.errors import SafeThingError

__all__ = [
    "CHANNELS_DOWN",
    "CHANNELS_UP",
    "LINK_KEYS_CACHED",
    "MAGIC",
    "MAX_MESSAGE_BYTES",
    "VERSION",
    "BadMacError",
    "BadMessageError",
    "Frame",
    "LinkKeys",
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
    "empty_frame",
    "encode_body",
    "frame",
    "link_keys",
    "mac",
    "parse_frame",
]

LINK_KEYS_CACHED = 16_384
"""Device secrets whose link keys are kept (about 0.4 KB each): more than the 10,000
devices a gateway is sized for, so that devices speaking in turn do not push each other
out (four HKDF derivations per message otherwise; docs/benchmarks.md,
``gateway.sustained10k``)."""

VERSION = 2
"""The link version new devices are provisioned with (``ST2``: bodies encrypted)."""
_MAGICS = {1: b"ST1", 2: b"ST2"}
_VERSIONS = {v: k for k, v in _MAGICS.items()}
MAGIC = _MAGICS[VERSION]
MAX_MESSAGE_BYTES = 16 * 1024
"""Largest message accepted from a device (frame + body)."""

CHANNELS_UP = ("birth", "reading", "event/", "result/", "state", "ack", "poll")
"""Uplink channels: exact names, or prefixes ending in ``/`` followed by a name."""
CHANNELS_DOWN = ("action/", "desired", "error")
"""Downlink channels."""

_DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{4,63}$")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,63}$")
_TAG = re.compile(rb"[0-9a-f]{64}")


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


def link_keys(secret: bytes) -> LinkKeys:
    """The four ST2 keys of a device secret (cached: four HMACs per device, not per message)."""
    return _link_keys(bytes(secret))


@functools.lru_cache(maxsize=LINK_KEYS_CACHED)
def _link_keys(secret: bytes) -> LinkKeys:
    def expand(label: bytes, length: int) -> bytes:
        return HKDFExpand(algorithm=hashes.SHA256(), length=length, info=label).derive(secret)

    return LinkKeys(
        enc_up=expand(b"safething ST2 up enc", 16),
        mac_up=expand(b"safething ST2 up mac", 32),
        enc_down=expand(b"safething ST2 down enc", 16),
        mac_down=expand(b"safething ST2 down mac", 32),
    )


@dataclass(frozen=True, slots=True, repr=False)
class LinkKeys:
    """The keys of one device's ST2 link, derived from its secret (never sent)."""

    enc_up: bytes
    """AES-128 key of device -> gateway bodies."""
    mac_up: bytes
    """HMAC-SHA256 key of device -> gateway tags."""
    enc_down: bytes
    """AES-128 key of gateway -> device bodies."""
    mac_down: bytes
    """HMAC-SHA256 key of gateway -> device tags."""

    def enc(self, *, uplink: bool) -> bytes:
        return self.enc_up if uplink else self.enc_down

    def mac(self, *, uplink: bool) -> bytes:
        return self.mac_up if uplink else self.mac_down


def _ctr(key: bytes, counter: int, data: bytes) -> bytes:
    """AES-128-CTR with the initial block ``counter (8 bytes BE) || 0 (8 bytes)``: block
    ``i`` of the key stream is AES(key, ``counter || i``) (a message has at most
    1,024 blocks, so ``i`` never carries into the counter's half), XORed with the data.

    The blocks are made by a raw AES (ECB) context kept per key, which holds no state
    between calls given whole blocks: the same key stream as a CTR context, whose
    set-up (a new cipher object and key schedule, with the library's checks) cost more
    than the encryption itself, on each side of every message."""
    if not data:
        return b""
    size = len(data)
    first = counter << 64
    blocks = b"".join([(first + i).to_bytes(16, "big") for i in range((size + 15) // 16)])
    with _AES_LOCK:  # a context is used by one thread at a time
        stream = _aes(key).update(blocks)
    plain = int.from_bytes(data, "big") ^ int.from_bytes(stream[:size], "big")
    return plain.to_bytes(size, "big")


_AES_LOCK = threading.Lock()

AES_CONTEXTS_CACHED = 1_024
"""Link keys whose AES context :func:`_ctr` keeps (about 1 KB each): those of a
thousand devices speaking in turn; beyond that a context is made per message, as
before."""


@functools.lru_cache(maxsize=AES_CONTEXTS_CACHED)
def _aes(key: bytes) -> CipherContext:
    return Cipher(algorithms.AES(key), modes.ECB()).encryptor()


def mac(
    secret: bytes,
    device_id: str,
    channel: str,
    counter: int,
    body: bytes,
    *,
    version: int = VERSION,
    uplink: bool = True,
) -> str:
    """The hex tag of a message: over the body (ST1) or the ciphertext (ST2)."""
    magic = _MAGICS[version]
    message = b"\n".join((magic, device_id.encode(), channel.encode(), str(counter).encode(), body))
    key = secret if version == 1 else link_keys(secret).mac(uplink=uplink)
    inner, outer = _hmac_states(key)
    digest = inner.copy()
    digest.update(message)
    tag = outer.copy()
    tag.update(digest.digest())
    hexdigest: str = tag.hexdigest()
    return hexdigest


def _builtin_sha256() -> Callable[[bytes], Any]:
    """CPython's own SHA-256 (``_sha2`` from 3.12, ``_sha256`` before), whose hash objects
    are plain C structs: OpenSSL's (``hashlib``) go through its provider layers on each
    copy and update; ``hashlib``'s on another Python."""
    for name in ("_sha2", "_sha256"):
        with contextlib.suppress(ImportError):
            sha256: Callable[[bytes], Any] = importlib.import_module(name).sha256
            return sha256
    return hashlib.sha256  # pragma: no cover - another Python


_sha256 = _builtin_sha256()


MAC_KEYS_CACHED = 1_024
"""MAC keys whose HMAC states :func:`mac` keeps (a few hundred bytes each)."""

_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


@functools.lru_cache(maxsize=MAC_KEYS_CACHED)
def _hmac_states(key: bytes) -> tuple[Any, Any]:
    """HMAC-SHA256 (RFC 2104) of ``key``: the inner and outer SHA-256 states after its
    padded key block, so that a tag is two copies and two short updates. ``hmac.new``
    made both states again for every message, through OpenSSL's HMAC: on the idle path,
    where each call starts cold, about 60 us of a tag's 90 (a tag on the device and
    one on the gateway per reading; docs/benchmarks.md, ``gateway.latency``)."""
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    block = key.ljust(64, b"\0")
    return _sha256(block.translate(_IPAD)), _sha256(block.translate(_OPAD))


def frame(
    secret: bytes,
    device_id: str,
    channel: str,
    counter: int,
    body: bytes,
    *,
    version: int = VERSION,
    uplink: bool,
) -> bytes:
    """A complete message: header line and body (ST2: the body encrypted).

    ``uplink`` says the direction (device -> gateway): each has its own keys."""
    if version not in _MAGICS:
        raise ValueError(f"unknown link version {version!r}: 1 or 2")
    if version == 2:
        if not 0 <= counter < 2**64:
            raise ValueError(f"an ST2 counter is 0 to 2^64 - 1 (the nonce's 8 bytes): {counter}")
        body = _ctr(link_keys(secret).enc(uplink=uplink), counter, body)
    tag = mac(secret, device_id, channel, counter, body, version=version, uplink=uplink)
    return b"%s %d %s\n" % (_MAGICS[version], counter, tag.encode()) + body


@dataclass(frozen=True, slots=True)
class Frame:
    """A parsed message whose tag is not yet checked."""

    counter: int
    """The sender's counter."""
    mac: str
    """The tag as sent (hex)."""
    body: bytes
    """The bytes after the header line exactly as sent (what the tag covers): the body
    (ST1) or its ciphertext (ST2)."""
    version: int | None = VERSION
    """1 (``ST1``) or 2 (``ST2``); None for a frame a bridge built from a query (an empty
    ``poll``), which takes the device's own version."""

    def verify(self, secret: bytes, device_id: str, channel: str, *, uplink: bool) -> None:
        """Raise ``BadMacError`` unless the tag is right (constant-time compare)."""
        version = self.version or VERSION
        expected = mac(
            secret, device_id, channel, self.counter, self.body, version=version, uplink=uplink
        )
        if not hmac.compare_digest(expected, self.mac):
            raise BadMacError(f"wrong MAC for {device_id}/{channel} counter {self.counter}")

    def open(self, secret: bytes, device_id: str, channel: str, *, uplink: bool) -> bytes:
        """The body in clear, once the tag is verified (``BadMacError`` otherwise)."""
        self.verify(secret, device_id, channel, uplink=uplink)
        if (self.version or VERSION) == 1:
            return self.body
        return _ctr(link_keys(secret).enc(uplink=uplink), self.counter, self.body)


def parse_frame(data: bytes) -> Frame:
    """Split a message into version, counter, tag and body; ``BadMessageError`` if malformed."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise TooLargeError(f"message of {len(data)} bytes; the limit is {MAX_MESSAGE_BYTES}")
    head, sep, body = data.partition(b"\n")
    parts = head.split(b" ")
    version = _VERSIONS.get(parts[0])
    if not sep or len(parts) != 3 or version is None:
        raise BadMessageError(
            "not a SAFEthing device message: expected 'ST2 <counter> <tag>\\n<ciphertext>'"
        )
    counter_text, tag = parts[1], parts[2]
    if not counter_text.isdigit() or len(counter_text) > 19:
        raise BadMessageError("the counter must be a decimal number")
    if len(tag) != 64 or not _TAG.fullmatch(tag):
        raise BadMessageError("the MAC must be 64 lowercase hex digits")
    return Frame(int(counter_text), tag.decode(), body, version)


def empty_frame(counter: str, tag: str) -> Frame:
    """The empty ``poll`` a query ``?c=<counter>&m=<tag>`` stands for (the device's own
    version); ``BadMessageError`` if either is malformed."""
    return replace(parse_frame(b"ST2 %s %s\n" % (counter.encode(), tag.encode())), version=None)


def decode_body(body: bytes, content_format: str) -> Any:
    """JSON or CBOR body to Python values; ``PayloadError`` if it does not decode."""
    if not body:
        return None
    try:
        if content_format == "cbor":
            return cbor2.loads(body)
        return json.loads(body)
    except UnicodeDecodeError as e:  # its text would quote a byte of the body
        raise PayloadError(f"body is not valid JSON: not UTF-8 at byte {e.start}") from e
    except Exception as e:
        raise PayloadError(f"body is not valid {content_format.upper()}: {e}") from e


_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))
"""``json.dumps(value, separators=(",", ":"))`` made a new encoder for every body."""


def encode_body(value: Any, content_format: str = "json") -> bytes:
    if content_format == "cbor":
        return bytes(cbor2.dumps(value))
    return _COMPACT_JSON.encode(value).encode()
