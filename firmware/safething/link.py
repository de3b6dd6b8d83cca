# The device end of the SAFEthing link (docs/protocol.md section 2): sealing,
# opening, counters kept on flash. Pure logic: no sockets, no pins.
#
#   ST2 <counter> <tag>\n<ciphertext>
#   ciphertext = AES-128-CTR(enc key, block counter(8 bytes BE) || 0(8 bytes), body)
#   tag = HMAC-SHA256(mac key, "ST2\n" + id + "\n" + channel + "\n" + counter + "\n" + ciphertext)
#   key = HMAC-SHA256(secret, "safething ST2 <up|down> <enc|mac>" + "\x01")
#         (HKDF-Expand, one block; 16 bytes for AES, 32 for HMAC)
#
# ST1 (a config without "link": "ST2") sends the body in clear with
# mac = HMAC-SHA256(secret, "ST1\n" + id + "\n" + channel + "\n" + counter + "\n" + body).
#
# The counter is the nonce: never reused in one direction, so no keystream is.
# Uplink counters are reserved in blocks: the file holds the end of the
# current block, so flash is written once per `block` messages, and a reboot
# starts after the block (gaps are allowed, reuse never is). Before deep sleep
# the exact counter is left in RTC memory (kept while asleep, lost on power
# loss), read once at wake and wiped, so a sleepy device does not burn a block
# per wake.
try:
    import hashlib
except ImportError:  # pragma: no cover
    import uhashlib as hashlib  # type: ignore[no-redef]
try:
    import hmac  # type: ignore[import-not-found]  # the port's or micropython-lib's
except ImportError:
    from . import hmac
from binascii import hexlify
import os

from .port import const

BLOCK = const(32)
TYPE_CHECKING = const(0)  # mypy reads the block below; the compiler drops it
if TYPE_CHECKING:
    from typing import Any


class Refused(Exception):
    # A message refused by the gateway or a downlink refused by us.
    # args[0] is the reason word of docs/protocol.md section 6 ("replay", "bad_mac"...).
    pass


def same(a, b):
    # type: (bytes, bytes) -> bool
    # Constant-time comparison of two byte strings.
    if len(a) != len(b):
        return False
    r = 0
    for i in range(len(a)):
        r |= a[i] ^ b[i]
    return r == 0


def ctr(key, c, data):
    # type: (bytes, int, bytes) -> bytes
    # AES-128-CTR from ECB blocks: block i of message `c` is c (8 bytes) || i (8 bytes).
    n = len(data)
    if not n:
        return b""
    from cryptolib import aes  # C in the port (ucryptolib before 1.20); loaded for ST2 only
    b = bytearray()
    for i in range((n + 15) >> 4):
        b += c.to_bytes(8, "big") + i.to_bytes(8, "big")
    k = aes(key, 1).encrypt(b)
    return (int.from_bytes(data, "big") ^ int.from_bytes(k[:n], "big")).to_bytes(n, "big")


class Link:
    def __init__(self, device_id, secret, path="st_link", block=BLOCK, rtc=None, v=2):
        # type: (str, bytes, str, int, Any, int) -> None
        self.id = device_id
        self.v = v
        self.m = b"ST%d" % v
        if v == 1:
            self.mu = self.md = secret
        else:  # keys per direction: (enc, mac) up, (enc, mac) down

            def k(x):
                return hmac.new(secret, b"safething ST2 " + x + b"\x01", hashlib.sha256).digest()

            self.eu, self.mu = k(b"up enc")[:16], k(b"up mac")
            self.ed, self.md = k(b"down enc")[:16], k(b"down mac")
        self.path = path
        self.block = block
        self.rtc = rtc
        self.up = 0  # last uplink counter used
        self.down = 0  # last downlink counter accepted
        self.end = 0  # uplink counters up to here may have been used
        self.born = False  # the birth went through before the last deep sleep
        for p in (path, path + ".tmp"):  # .tmp: a crash between write and rename
            try:
                with open(p) as f:
                    a = f.read().split()
                self.end = max(self.end, int(a[0]))
                self.down = max(self.down, int(a[1]))
            except (OSError, ValueError, IndexError):
                pass
        self.up = self.end
        if rtc:
            try:
                a = rtc.memory().split()
                if a[0] == b"STL" and int(a[2]) == self.end and int(a[1]) <= self.end:
                    self.up = int(a[1])
                    self.born = a[3] == b"1"
            except (ValueError, IndexError):
                pass
            rtc.memory(b"-")  # one use only: a crash later must not reuse counters

    def _save(self):
        t = self.path + ".tmp"
        with open(t, "w") as f:
            f.write("%d %d\n" % (self.end, self.down))
        try:
            os.remove(self.path)
        except OSError:
            pass
        os.rename(t, self.path)

    def next(self):
        # type: () -> int
        # The next uplink counter; a new block is written to flash when needed.
        self.up += 1
        if self.up > self.end:
            self.end = self.up + self.block - 1
            self._save()
        return self.up

    def mac(self, key, channel, counter, body):
        # type: (bytes, str, int, bytes) -> bytes
        h = hmac.new(key, None, hashlib.sha256)
        h.update(self.m + ("\n%s\n%s\n%d\n" % (self.id, channel, counter)).encode())
        h.update(body)
        return hexlify(h.digest())

    def frame(self, channel, body=b""):
        # type: (str, bytes) -> bytes
        # A complete uplink with the next counter: body (bytes) sealed (ST2).
        c = self.next()
        if self.v > 1:
            body = ctr(self.eu, c, body)
        return b"%s %d %s\n" % (self.m, c, self.mac(self.mu, channel, c, body)) + body

    def body(self, data):
        # type: (bytes) -> bytes
        # The body of one of our own uplinks, in clear again.
        i = data.find(b"\n")
        if self.v < 2:
            return data[i + 1 :]
        return ctr(self.eu, int(data.split(b" ")[1]), data[i + 1 :])

    def accept(self, channel, data):
        # type: (str, bytes) -> bytes | None
        # Check a downlink: its body in clear (bytes) if new, None if seen
        # before (acknowledge again, do not act), Refused if forged or malformed.
        i = data.find(b"\n")
        a = data[:i].split(b" ")
        if i < 0 or len(a) != 3 or a[0] != self.m or not a[1].isdigit():
            raise Refused("bad_message")
        c = int(a[1])
        body = data[i + 1 :]
        if not same(self.mac(self.md, channel, c, body), a[2]):
            raise Refused("bad_mac")
        if c <= self.down:
            return None
        self.down = c  # saved before acting: an action runs at most once
        self._save()
        return ctr(self.ed, c, body) if self.v > 1 else body

    def sleep(self, born=True):
        # type: (bool) -> None
        # Leave the exact counter in RTC memory for the next wake.
        if self.rtc:
            self.rtc.memory(b"STL %d %d %d" % (self.up, self.end, 1 if born else 0))
