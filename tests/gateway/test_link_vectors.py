"""The device link computed from docs/protocol.md alone (hmac, hashlib and a bare AES
block), compared with safething_gateway.protocol: a device written from the document
interoperates, and a change to the link's constants cannot go unnoticed (written
against the mutants of protocol.py that survived the gateway's tests)."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac

import cbor2
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from safething_gateway.protocol import (
    MAX_MESSAGE_BYTES,
    BadMacError,
    BadMessageError,
    PayloadError,
    ProtocolError,
    RateLimitedError,
    ReplayError,
    RevokedDeviceError,
    TooLargeError,
    UnknownChannelError,
    UnknownDeviceError,
    check_channel,
    decode_body,
    empty_frame,
    encode_body,
    frame,
    link_keys,
    mac,
    parse_frame,
)

SECRET = bytes(range(32))
DEVICE, CHANNEL, BODY = "sensor-01", "reading", b'{"moisture":12}'


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def _key(label: bytes, length: int) -> bytes:
    """HKDF-Expand (RFC 5869) with the secret as PRK, for one block: HMAC(PRK, info|1)."""
    return _hmac(SECRET, label + b"\x01")[:length]


def _ctr(key: bytes, counter: int, data: bytes) -> bytes:
    """AES-128-CTR from single AES blocks: block i is AES(key, counter (8 bytes BE) || i)."""
    aes = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    out = bytearray()
    for i in range(0, len(data), 16):
        block = aes.update(((counter << 64) + i // 16).to_bytes(16, "big"))
        out += bytes(a ^ b for a, b in zip(data[i : i + 16], block, strict=False))
    return bytes(out)


def _tag(key: bytes, magic: bytes, counter: int, body: bytes) -> str:
    fields = (magic, DEVICE.encode(), CHANNEL.encode(), str(counter).encode(), body)
    return hmac.new(key, b"\n".join(fields), hashlib.sha256).hexdigest()


def test_st1_is_hmac_of_the_body_under_the_secret() -> None:
    expected = _tag(SECRET, b"ST1", 7, BODY)
    assert mac(SECRET, DEVICE, CHANNEL, 7, BODY, version=1) == expected
    assert frame(SECRET, DEVICE, CHANNEL, 7, BODY, version=1, uplink=True) == (
        b"ST1 7 " + expected.encode() + b"\n" + BODY
    )


@pytest.mark.parametrize("uplink", [True, False])
@pytest.mark.parametrize("counter", [0, 1, 41, 2**63 - 1])  # 2**63 - 1: 19 digits
def test_st2_is_aes_ctr_then_hmac_with_keys_per_direction(uplink: bool, counter: int) -> None:
    direction = b"up" if uplink else b"down"
    enc = _key(b"safething ST2 " + direction + b" enc", 16)
    key = _key(b"safething ST2 " + direction + b" mac", 32)
    body = BODY * 3  # more than one AES block
    sealed = _ctr(enc, counter, body)
    tag = _tag(key, b"ST2", counter, sealed)
    data = frame(SECRET, DEVICE, CHANNEL, counter, body, version=2, uplink=uplink)
    assert data == b"ST2 %d %s\n" % (counter, tag.encode()) + sealed
    parsed = parse_frame(data)
    assert parsed.open(SECRET, DEVICE, CHANNEL, uplink=uplink) == body
    with pytest.raises(BadMacError):  # the other direction's keys do not fit
        parsed.open(SECRET, DEVICE, CHANNEL, uplink=not uplink)
    assert mac(SECRET, DEVICE, CHANNEL, counter, sealed, uplink=uplink) == tag  # ST2 default


@pytest.mark.parametrize("counter", [-1, 2**64, 2**65])
def test_st2_counters_fit_the_nonce(counter: int) -> None:
    with pytest.raises(ValueError, match="an ST2 counter is 0 to 2"):
        frame(SECRET, DEVICE, CHANNEL, counter, BODY, version=2, uplink=True)
    # the largest nonce still frames (a frame parses only with up to 19 digits, below)
    top = frame(SECRET, DEVICE, CHANNEL, 2**64 - 1, BODY, version=2, uplink=True)
    assert top.startswith(b"ST2 18446744073709551615 ")


def test_frame_and_counter_limits() -> None:
    head = b"ST2 1 " + b"a" * 64 + b"\n"
    assert MAX_MESSAGE_BYTES == 16 * 1024  # docs/protocol.md: at most 16 KiB per message
    fits = head + b"x" * (MAX_MESSAGE_BYTES - len(head))
    assert parse_frame(fits).body == b"x" * (MAX_MESSAGE_BYTES - len(head))
    with pytest.raises(TooLargeError, match=f"message of {MAX_MESSAGE_BYTES + 1} bytes"):
        parse_frame(fits + b"x")
    assert parse_frame(b"ST2 " + b"9" * 19 + b" " + b"a" * 64 + b"\n").counter == int("9" * 19)
    for counter in (b"1" * 20, b"x1", b"-1", b"1.5", b""):
        with pytest.raises(BadMessageError, match="the counter must be a decimal number"):
            parse_frame(b"ST2 " + counter + b" " + b"a" * 64 + b"\n")
    for head in (
        b"ST2 1 " + b"a" * 64,
        b"ST2 1 " + b"a" * 64 + b" extra\n",
        b"ST2 1\n",
        b"ST9 1 a\n",
    ):
        with pytest.raises(BadMessageError, match="not a SAFEthing device message"):
            parse_frame(head)  # no header line, a field too many or too few, an unknown version
    for tag in (b"a" * 63, b"a" * 65, b"A" * 64, b"g" * 64):
        with pytest.raises(BadMessageError, match="64 lowercase hex digits"):
            parse_frame(b"ST2 1 " + tag + b"\n")


@pytest.mark.parametrize(
    ("error", "http", "coap", "reason"),
    [  # docs/protocol.md, the table of refusals
        (BadMessageError, 400, "4.00", "bad_message"),
        (BadMacError, 401, "4.01", "bad_mac"),
        (RevokedDeviceError, 403, "4.03", "revoked"),
        (UnknownDeviceError, 404, "4.04", "unknown_device"),
        (UnknownChannelError, 404, "4.04", "unknown_channel"),
        (ReplayError, 409, "4.03", "replay"),
        (TooLargeError, 413, "4.13", "too_large"),
        (PayloadError, 422, "4.22", "bad_payload"),
        (RateLimitedError, 429, "4.29", "rate_limited"),
    ],
)
def test_each_refusal_has_its_documented_codes(
    error: type[ProtocolError], http: int, coap: str, reason: str
) -> None:
    assert (error.http, error.coap, error.reason) == (http, coap, reason)


def test_an_empty_poll_from_a_query() -> None:
    """``?c=<counter>&m=<tag>`` (HTTP, CoAP) stands for an empty poll of either version."""
    tag = "b" * 64
    polled = empty_frame("12", tag)
    assert (polled.counter, polled.mac, polled.body, polled.version) == (12, tag, b"", None)
    with pytest.raises(BadMessageError, match="decimal"):
        empty_frame("twelve", tag)
    with pytest.raises(BadMessageError, match="64 lowercase hex"):
        empty_frame("12", "B" * 64)


def test_keys_and_frames_cannot_be_changed() -> None:
    parsed = parse_frame(frame(SECRET, DEVICE, CHANNEL, 3, BODY, version=2, uplink=True))
    with pytest.raises(dataclasses.FrozenInstanceError):
        parsed.counter = 4  # type: ignore[misc]
    keys = link_keys(SECRET)
    with pytest.raises(dataclasses.FrozenInstanceError):
        keys.mac_up = bytes(32)  # type: ignore[misc]
    for key in (keys.enc_up, keys.mac_up, keys.enc_down, keys.mac_down):
        assert str(key) not in repr(keys) and key.hex() not in repr(keys)


def test_the_keys_of_ten_thousand_devices_speaking_in_turn_stay_derived() -> None:
    """A gateway is sized for 10,000 devices: each speaking in turn, the second round
    derives no device's keys again (four HKDF derivations per message otherwise)."""
    secrets = [i.to_bytes(4, "big") + bytes(28) for i in range(10_000)]
    first = [link_keys(secret) for secret in secrets]
    again = [link_keys(secret) for secret in secrets]
    assert all(a is b for a, b in zip(first, again, strict=True))


def test_bodies_in_json_and_cbor() -> None:
    value = {"moisture": 12.5, "tags": ["a", "b"], "ok": True}
    for fmt in ("json", "cbor"):
        assert decode_body(encode_body(value, fmt), fmt) == value
    assert encode_body(value, "cbor") == cbor2.dumps(value)
    assert encode_body(value) == b'{"moisture":12.5,"tags":["a","b"],"ok":true}'
    assert decode_body(b"", "cbor") is None
    with pytest.raises(PayloadError, match="body is not valid CBOR"):
        decode_body(b"\xff\xff", "cbor")
    with pytest.raises(PayloadError, match="body is not valid JSON"):
        decode_body(cbor2.dumps(value), "json")
    # a body that is not UTF-8: where, never the byte itself (the codec's text quotes it)
    with pytest.raises(PayloadError, match=r"^body is not valid JSON: not UTF-8 at byte 1$"):
        decode_body(b'"\xff"', "json")


def test_channels_built_at_run_time_are_known() -> None:
    """Bridges cut channels out of topics and paths: equal strings, not the same object."""
    for channel in ("reading", "birth", "event/VeryDryAlarm", "result/r-1"):
        built = "".join(list(channel))
        assert check_channel(built) == channel
    assert check_channel("".join(["des", "ired"]), uplink=False) == "desired"


@pytest.mark.parametrize("length", [0, 1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 130])
def test_the_tag_and_the_key_stream_agree_with_the_libraries(length: int) -> None:
    """The tag (HMAC-SHA256 from kept hash states) and the ST2 body (AES-CTR from a kept
    AES block context) are those of ``hmac`` and of a fresh CTR context, for keys of any
    length (ST1 tags with the secret itself: shorter than, equal to, longer than a hash
    block) and bodies of any length, leading zero bytes included."""
    secret = bytes(range(256))[:length] or b"\x00"
    body = (b"\x00" + bytes(range(1, 256)))[:length] * 2
    fields = (b"ST1", DEVICE.encode(), CHANNEL.encode(), b"9", body)
    expected = hmac.new(secret, b"\n".join(fields), hashlib.sha256).hexdigest()
    assert mac(secret, DEVICE, CHANNEL, 9, body, version=1) == expected
    enc = link_keys(SECRET).enc_up
    for counter in (0, 1, 2**63 - 1, 2**64 - 1):
        ctr = Cipher(algorithms.AES(enc), modes.CTR(counter.to_bytes(8, "big") + bytes(8)))
        encryptor = ctr.encryptor()
        sealed = encryptor.update(body) + encryptor.finalize()
        framed = frame(SECRET, DEVICE, CHANNEL, counter, body, version=2, uplink=True)
        assert framed.endswith(b"\n" + sealed)
        if counter < 2**63:  # (a frame's counter has at most 19 digits)
            assert parse_frame(framed).open(SECRET, DEVICE, CHANNEL, uplink=True) == body
