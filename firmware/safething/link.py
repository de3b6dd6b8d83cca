# The device end of the SAFEthing link (docs/protocol.md section 2): framing,
# MAC, counters kept on flash, downlink checks. Pure logic: no sockets, no pins.
#
#   ST1 <counter> <mac>\n<body>
#   mac = HMAC-SHA256(secret, "ST1\n" + id + "\n" + channel + "\n" + counter + "\n" + body)
#
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


class Link:
    def __init__(self, device_id, secret, path="st_link", block=BLOCK, rtc=None):
        # type: (str, bytes, str, int, Any) -> None
        self.id = device_id
        self.key = secret
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

    def mac(self, channel, counter, body):
        # type: (str, int, bytes) -> bytes
        h = hmac.new(self.key, None, hashlib.sha256)
        h.update(("ST1\n%s\n%s\n%d\n" % (self.id, channel, counter)).encode())
        h.update(body)
        return hexlify(h.digest())

    def frame(self, channel, body=b""):
        # type: (str, bytes) -> bytes
        # A complete uplink with the next counter. body: bytes, MACed as sent.
        c = self.next()
        return b"ST1 %d %s\n" % (c, self.mac(channel, c, body)) + body

    def accept(self, channel, data):
        # type: (str, bytes) -> bytes | None
        # Check a downlink: its body (bytes) if new, None if seen before
        # (acknowledge again, do not act), Refused if forged or malformed.
        i = data.find(b"\n")
        a = data[:i].split(b" ")
        if i < 0 or len(a) != 3 or a[0] != b"ST1" or not a[1].isdigit():
            raise Refused("bad_message")
        c = int(a[1])
        body = data[i + 1 :]
        if not same(self.mac(channel, c, body), a[2]):
            raise Refused("bad_mac")
        if c <= self.down:
            return None
        self.down = c  # saved before acting: an action runs at most once
        self._save()
        return body

    def sleep(self, born=True):
        # type: (bool) -> None
        # Leave the exact counter in RTC memory for the next wake.
        if self.rtc:
            self.rtc.memory(b"STL %d %d %d" % (self.up, self.end, 1 if born else 0))
