# A minimal CoAP client (RFC 7252) over UDP: confirmable POSTs with
# retransmission and exponential back-off, piggybacked or separate replies,
# Block1 for large uplinks and Block2 for large poll answers (RFC 7959).
# POST coap://<host>/st/v1/<id>/<channel>, Content-Format 50 (JSON body);
# the poll answer is then a JSON array of [channel, message] pairs (ST2
# messages in base64).
import json
import random
import socket
from binascii import a2b_base64

from . import port
from .port import const
from .link import Refused

_CON = const(0)
_NON = const(1)
_ACK = const(2)
_POST = const(2)
_JSON = const(50)
_BLOCK = const(1024)  # block size, SZX 6
_WAIT = const(2000)  # ACK_TIMEOUT ms; x1..1.5 at random, doubled per retry
_TRIES = const(4)  # MAX_RETRANSMIT
_SEPARATE = const(30000)  # ms to wait for a separate reply after an empty ACK


def uint(n):
    # A CoAP uint option value: big-endian, no leading zero bytes.
    b = b""
    while n:
        b = bytes((n & 255,)) + b
        n >>= 8
    return b


def encode(typ, code, mid, token, opts, payload=b""):
    # opts: [(number, bytes)] sorted by number.
    m = bytearray((0x40 | typ << 4 | len(token), code, mid >> 8, mid & 255))
    m += token
    last = 0
    for num, val in opts:
        d = num - last
        last = num
        n = len(val)
        m.append((d if d < 13 else 13 if d < 269 else 14) << 4 | (n if n < 13 else 13 if n < 269 else 14))
        for x in (d, n):
            if 13 <= x < 269:
                m.append(x - 13)
            elif x >= 269:
                m += bytes(((x - 269) >> 8, (x - 269) & 255))
        m += val
    if payload:
        m.append(0xFF)
        m += payload
    return bytes(m)


def decode(d):
    # -> (type, code, mid, token, [(number, bytes)], payload), None if no CoAP.
    if len(d) < 4 or d[0] >> 6 != 1:
        return None
    i = 4 + (d[0] & 15)
    tok = d[4:i]
    opts = []
    num = 0
    while i < len(d) and d[i] != 0xFF:
        b = d[i]
        i += 1
        x = [b >> 4, b & 15]
        for j in (0, 1):
            if x[j] == 13:
                x[j] = d[i] + 13
                i += 1
            elif x[j] == 14:
                x[j] = (d[i] << 8 | d[i + 1]) + 269
                i += 2
        num += x[0]
        opts.append((num, d[i : i + x[1]]))
        i += x[1]
    return d[0] >> 4 & 3, d[1], d[2] << 8 | d[3], tok, opts, d[i + 1 :]


def option(opts, num):
    # The uint value of option `num`, or None.
    for n, v in opts:
        if n == num:
            return int.from_bytes(v, "big") if v else 0
    return None


class Coap:
    PUSH = False

    def __init__(self, cfg, device_id):
        self.host = cfg["host"]
        self.port = cfg.get("port", 5683)
        self.path = ("st", "v1", device_id)
        self.s = None
        self.mid = random.getrandbits(16)

    def open(self, will):
        if not self.s:
            self.addr = socket.getaddrinfo(self.host, self.port)[0][-1]
            self.s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def close(self, clean=True):
        if self.s:
            self.s.close()
            self.s = None

    def _exchange(self, msg, mid, token):
        # Send a confirmable message until acknowledged; the reply (decoded).
        s = self.s
        if not s:
            raise OSError("closed")
        t = _WAIT + random.getrandbits(10) * _WAIT // 2048
        for _ in range(_TRIES + 1):
            s.sendto(msg, self.addr)
            end = port.ticks_add(port.ticks_ms(), t)
            while True:
                left = port.ticks_diff(end, port.ticks_ms())
                if left <= 0:
                    break
                s.settimeout(left / 1000)
                try:
                    r = decode(s.recvfrom(1280)[0])
                except OSError:  # timed out
                    break
                if not r or r[3] != token and r[1]:
                    continue
                if r[0] == 3 and r[2] == mid:  # reset: the gateway refuses to talk
                    raise OSError(104)
                if r[0] == _ACK and r[2] == mid:
                    if r[1]:  # piggybacked reply
                        return r
                    end = port.ticks_add(port.ticks_ms(), _SEPARATE)  # empty ACK: reply later
                    t = 0
                elif r[0] in (_CON, _NON) and r[1]:  # separate reply
                    if r[0] == _CON:
                        s.sendto(encode(_ACK, 0, r[2], b"", ()), self.addr)
                    return r
            if not t:
                break
            t *= 2
        raise OSError(110)  # ETIMEDOUT

    def request(self, channel, payload):
        # POST one message; (code, payload) of the final reply, blocks reassembled.
        path = [(11, p.encode()) for p in self.path + tuple(channel.split("/"))]
        token = uint(random.getrandbits(32)) or b"\x01"
        body = b""
        num = 0  # Block1 number
        b2 = None  # Block2 option to ask for the next block
        while True:
            opts = path + [(12, uint(_JSON))]
            part = payload
            if len(payload) > _BLOCK:
                part = payload[num * _BLOCK : (num + 1) * _BLOCK]
                more = (num + 1) * _BLOCK < len(payload)
                opts.append((27, uint(num << 4 | more << 3 | 6)))
            if b2 is not None:
                opts.insert(len(path) + 1, (23, uint(b2)))
            self.mid = (self.mid + 1) & 0xFFFF
            r = self._exchange(encode(_CON, _POST, self.mid, token, opts, part), self.mid, token)
            code = r[1]
            if code == 0x5F:  # 2.31 Continue: next Block1 block
                num += 1
                continue
            body += r[5]
            x = option(r[4], 23)
            if code >> 5 == 2 and x is not None and x & 8:  # more Block2 blocks
                b2 = ((x >> 4) + 1) << 4 | (x & 7)
                continue
            return code, body

    def send(self, channel, msg):
        code, body = self.request(channel, msg)
        if code >> 5 == 4:  # diagnostic payload "<reason>: <detail>"
            raise Refused(body.split(b":")[0].decode())
        if code >> 5 != 2:
            raise OSError(code)
        return body

    def poll(self, link, wait):
        b = self.send("poll", link.frame("poll"))
        # JSON carries an ST2 frame (binary) in base64, an ST1 frame as text
        return [(c, m.encode() if m[:4] == "ST1 " else a2b_base64(m.encode())) for c, m in json.loads(b)] if b else [], False
