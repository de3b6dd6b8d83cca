# Runs under MicroPython (the WebAssembly port, driven by run.mjs), not CPython.
#
# Reads /input.json (vectors made by tests/firmware/test_wasm.py with the gateway's
# own code), exercises the firmware library with fakes for the network and the
# RTC, and prints one line "RESULT <json>" whose byte fields are hex. Checks
# that need no outside reference are asserted here; everything the gateway
# must accept is checked byte for byte on the CPython side.
import gc
import json
import os
import sys
from binascii import hexlify, unhexlify

gc.collect()
HEAP0 = gc.mem_alloc()

with open("/input.json") as f:
    IN = json.load(f)
DEVICE = IN["device_id"]
SECRET = unhexlify(IN["secret"])
OUT = {}


def hx(b):
    return hexlify(b).decode()


def exists(path):
    try:
        os.stat(path)
    except OSError:
        return False
    return True


# --- fakes --------------------------------------------------------------------------


class FakeRTC:
    def __init__(self):
        self.mem = b""

    def memory(self, data=None):
        if data is None:
            return self.mem
        self.mem = bytes(data)


class FakeUDP:
    # A UDP socket whose peer answers from aiocoap-encoded templates (mid 0, no token):
    # the request's message id and token are spliced in. "lose" drops one datagram;
    # "sep:<hex>" answers with an empty ACK, then the template as a separate CON reply.
    def __init__(self, script):
        self.script = list(script)
        self.sent = []
        self.pending = []

    def settimeout(self, t):
        pass

    def sendto(self, data, addr):
        self.sent.append(bytes(data))
        if data[1] == 0:  # our empty ACK of a separate reply
            return
        step = self.script.pop(0)
        mid = data[2:4]
        token = data[4 : 4 + (data[0] & 15)]
        if step == "lose":
            return
        if step[:4] == "sep:":
            self.pending.append(bytes((0x60, 0)) + mid)  # empty ACK
            step = step[4:]
            mid = b"\x7f\xfe"
            kind = 0x40  # CON
        else:
            kind = None
        t = unhexlify(step)
        head = bytes(((kind or (t[0] & 0xF0)) | len(token), t[1])) + mid
        self.pending.append(head + token + t[4 + (t[0] & 15) :])

    def recvfrom(self, n):
        if not self.pending:
            raise OSError(110)
        return self.pending.pop(0), ("10.0.0.1", 5683)

    def close(self):
        pass


class FakeSocketModule:
    AF_INET = 2
    SOCK_DGRAM = 2
    udp = None

    def getaddrinfo(self, host, port):
        return [(2, 2, 0, "", (host, port))]

    def socket(self, *args):
        return self.udp


class FakeMQTTClient:
    last = None

    def __init__(self, client_id, server, port=0, user=None, password=None, keepalive=0):
        self.args = (client_id, server, port, user, password, keepalive)
        self.calls = []
        self.sock = self
        self.cb = None
        FakeMQTTClient.last = self

    def set_callback(self, cb):
        self.cb = cb

    def set_last_will(self, topic, msg, retain=False, qos=0):
        self.calls.append(["will", topic.decode(), hx(msg), retain, qos])

    def connect(self, clean_session=True):
        self.calls.append(["connect"])

    def subscribe(self, topic, qos=0):
        self.calls.append(["subscribe", topic.decode(), qos])

    def publish(self, topic, msg, retain=False, qos=0):
        self.calls.append(["publish", topic.decode(), hx(msg), retain, qos])

    def check_msg(self):
        pass

    def ping(self):
        self.calls.append(["ping"])

    def disconnect(self):
        self.calls.append(["disconnect"])

    def close(self):
        self.calls.append(["close"])


class FakeResponse:
    def __init__(self, status, headers, content):
        self.status_code = status
        self.headers = headers
        self.content = content

    def json(self):
        return json.loads(self.content)

    def close(self):
        pass


class FakeRequests:
    def __init__(self):
        self.posts = []
        self.replies = []

    def post(self, url, data=None, headers=None, timeout=None):
        self.posts.append([url, hx(data), headers["Content-Type"]])
        return self.replies.pop(0)


sys.modules["socket"] = FakeSocketModule()


class FakeUmqtt:
    simple = FakeMQTTClient  # `from umqtt.simple import MQTTClient` takes only that


FakeMQTTClient.MQTTClient = FakeMQTTClient
sys.modules["umqtt"] = FakeUmqtt
sys.modules["umqtt.simple"] = FakeMQTTClient
REQUESTS = FakeRequests()
sys.modules["requests"] = REQUESTS


# What an MQTT device's code costs in heap (ESP8266 ports have no hmac: ours is loaded;
# they have cryptolib in C: the stand-in for this build is loaded before counting)
import cryptolib  # noqa: E402

gc.collect()
HEAP1 = gc.mem_alloc()
import safething.device  # noqa: E402
import safething.hmac  # noqa: E402
import safething.mqtt  # noqa: E402, F401

gc.collect()
HEAP = {"before_library": HEAP1 - HEAP0, "mqtt_device_code": gc.mem_alloc() - HEAP1}

# --- hmac ---------------------------------------------------------------------------

from safething import hmac as sthmac  # noqa: E402
from safething.link import Link, Refused  # noqa: E402
from safething.ring import Ring  # noqa: E402

OUT["hmac"] = [sthmac.new(unhexlify(k), unhexlify(m)).hexdigest() for k, m in IN["hmac"]]


# --- link: frames, downlinks, counters ----------------------------------------------

link = Link(DEVICE, SECRET, "/up_link")
OUT["frames"] = [hx(link.frame(ch, unhexlify(body))) for ch, body in IN["up"]]
link = Link(DEVICE, SECRET, "/up_link_st1", v=1)
OUT["frames_st1"] = [hx(link.frame(ch, unhexlify(body))) for ch, body in IN["up"]]


def accept(ch, data):
    try:
        body = link.accept(ch, unhexlify(data))
    except Refused as e:
        return "refused:" + e.args[0]
    return None if body is None else hx(body)


down = Link(DEVICE, SECRET, "/down_link")
link = down
OUT["accept"] = [accept(ch, data) for ch, data in IN["down"]]
OUT["down_after"] = down.down
assert Link(DEVICE, SECRET, "/down_link").down == down.down  # persisted
link = Link(DEVICE, SECRET, "/down_link_st1", v=1)
OUT["accept_st1"] = [accept(ch, data) for ch, data in IN["down_st1"]]


def cost():
    # Per-message cost on this VM, in microseconds: seal an uplink reading, open a
    # downlink action; ST2 and ST1; and the stand-in AES's share (one call of 16 bytes).
    import time

    n = 20
    body = b'{"moisture": 41.5, "temperature": 21.25}'
    r = {"reading_bytes": len(body), "n": n}
    for v in (2, 1):
        lk = Link(DEVICE, SECRET, f"/cost_link{v}", block=1000, v=v)
        t = time.ticks_us()
        for _ in range(n):
            lk.frame("reading", body)
        r[f"seal_st{v}_us"] = time.ticks_diff(time.ticks_us(), t) / n
        data = unhexlify(IN[f"cost_down_st{v}"])
        t = time.ticks_us()
        for _ in range(n):
            lk.down = 0
            assert lk.accept("action/r1", data) is not None
        r[f"open_st{v}_us"] = time.ticks_diff(time.ticks_us(), t) / n
    a = cryptolib.aes(bytes(16), 1)
    t = time.ticks_us()
    for _ in range(n):
        a.encrypt(bytes(48))
    r["aes_48_bytes_us"] = time.ticks_diff(time.ticks_us(), t) / n
    return r


OUT["cost"] = cost()


class CountingLink(Link):
    saves = 0

    def _save(self):
        CountingLink.saves += 1
        super()._save()


def counters():
    r = {}
    a = CountingLink(DEVICE, SECRET, "/c_link", block=8)
    used = [a.next() for _ in range(20)]
    assert used == list(range(1, 21)), used
    r["saves_for_20"] = CountingLink.saves
    with open("/c_link") as f:
        r["file"] = f.read()
    b = CountingLink(DEVICE, SECRET, "/c_link", block=8)  # a reboot (power loss)
    r["after_reboot"] = b.next()
    assert r["after_reboot"] > 20
    # deep sleep with an RTC: the exact counter comes back, once
    rtc = FakeRTC()
    c = CountingLink(DEVICE, SECRET, "/c_link", block=8, rtc=rtc)
    last = c.next()
    c.sleep(True)
    saves = CountingLink.saves
    d = CountingLink(DEVICE, SECRET, "/c_link", block=8, rtc=rtc)
    r["after_wake"] = d.next()
    r["born_after_wake"] = d.born
    r["saves_on_wake"] = CountingLink.saves - saves
    assert r["after_wake"] == last + 1, (last, r["after_wake"])
    e = CountingLink(DEVICE, SECRET, "/c_link", block=8, rtc=rtc)  # token used up
    r["after_second_boot"] = e.next()
    assert r["after_second_boot"] > d.up
    # a token of an older block is ignored
    rtc.mem = b"STL 3 8 1"
    f_ = CountingLink(DEVICE, SECRET, "/c_link", block=8, rtc=rtc)
    assert f_.next() > e.up
    # a crash between writing the new file and renaming it: the .tmp still counts
    with open("/c_link.tmp", "w") as f:
        f.write("1000 7\n")
    g = Link(DEVICE, SECRET, "/c_link", block=8)
    assert g.next() == 1001 and g.down >= 7
    return r


OUT["counters"] = counters()


# --- ring -------------------------------------------------------------------------------


def ring():
    r = Ring(3)
    for i in range(5):
        r.push("reading", b'{"n": %d}' % i)
    assert r.n == 3 and r.dropped == 2
    assert [r.pop()[1] for _ in range(3)] == [b'{"n": 2}', b'{"n": 3}', b'{"n": 4}']
    assert r.n == 0
    s = Ring(4, "/ring")
    s.push("reading", b'{"a": 1}')
    s.push("event/Alarm", b"")
    s.push("event/Alarm", b'"x y"')
    s.save()
    t = Ring(4, "/ring")
    assert not exists("/ring")  # read once
    items = [t.pop() for _ in range(t.n)]
    assert items == [("reading", b'{"a": 1}'), ("event/Alarm", b""), ("event/Alarm", b'"x y"')]
    u = Ring(2, "/ring2")
    for i in range(4):
        u.push("reading", b"%d" % i)
    u.told = 1
    u.save()
    v = Ring(2, "/ring2")
    assert (v.dropped, v.told, v.n) == (2, 1, 2)
    return {"dropped": r.dropped}


OUT["ring"] = ring()


# --- coap ----------------------------------------------------------------------------------

from safething import coap  # noqa: E402

OUT["coap_encoded"] = [
    hx(coap.encode(0, 2, 0x1234, b"\xab\xcd", [(11, b"st"), (11, b"v1"), (12, b"\x32")], b"hi")),
    hx(coap.encode(0, 2, 1, b"", [(11, b"x" * 20), (27, coap.uint(0x1E)), (60, b"\x01")], b"")),
    hx(coap.encode(2, 0, 7, b"", [])),
    hx(coap.encode(0, 2, 9, b"1", [(11, b"y" * 300)], b"z")),
]
OUT["coap_decoded"] = []
for data in IN["coap_responses"]:
    t, code, mid, tok, opts, payload = coap.decode(unhexlify(data))
    OUT["coap_decoded"].append([t, code, mid, hx(tok), [[n, hx(v)] for n, v in opts], hx(payload)])


def coap_client():
    cfg = {"host": "gw", "port": 5683}
    r = {}
    for name, script, channel, payload in IN["coap_scripts"]:
        FakeSocketModule.udp = udp = FakeUDP(script)
        c = coap.Coap(cfg, DEVICE)
        c.open(None)
        try:
            if channel == "poll":
                got = c.poll(Link(DEVICE, SECRET, "/coap_link"), 0)
                res = [[ch, hx(m)] for ch, m in got[0]]
            else:
                res = hx(c.send(channel, unhexlify(payload)))
        except Refused as e:
            res = "refused:" + e.args[0]
        except OSError as e:
            res = "oserror:" + str(e.args[0])
        c.close()
        r[name] = {"result": res, "sent": [hx(d) for d in udp.sent]}
    return r


OUT["coap_client"] = coap_client()


# --- the device, on a fake transport, then on the MQTT and HTTP transports -------------

from safething import port  # noqa: E402
from safething.device import Device  # noqa: E402

SLEPT = []
port.deepsleep = SLEPT.append
port.woke = lambda: True


class FakeNet:
    PUSH = True

    def __init__(self):
        self.up = True
        self.sent = []
        self.queue = []
        self.will = None

    def open(self, will):
        if not self.up:
            raise OSError(113)
        self.will = will

    def send(self, channel, msg):
        if not self.up:
            raise OSError(113)
        self.sent.append([channel, hx(msg)])

    def poll(self, link, wait):
        q, self.queue = self.queue, []
        return q, False

    def close(self, clean=True):
        pass


def description():
    return {
        "title": "Gardening device",
        "attributes": [
            {"name": "moisture", "type": "number", "unit": "%", "dynamic": True},
            {"name": "target", "type": "number", "dynamic": True, "writable": True},
        ],
        "topics": [{"name": "VeryDryAlarm", "type": "number"}],
        "actions": [
            {"name": "OpenValve", "params": [{"name": "psi", "type": "number"}]},
            {"name": "CloseValve"},
        ],
    }


def device():
    cfg = {"device_id": DEVICE, "secret": IN["secret"], "link": "ST2", "transport": "mqtt"}
    rtc = FakeRTC()
    net = FakeNet()
    d = Device(cfg, description(), net=net, ring=4, path="/dev_", rtc=rtc)
    ran = []

    def open_valve(args):
        ran.append(args)
        return {"psi": args.get("psi")}

    def close_valve(args):
        raise ValueError("stuck")

    d.on_action("OpenValve", open_valve)
    d.on_action("CloseValve", close_valve)
    d.on_desired("target", lambda v: min(v, 50))
    r = {}
    assert d.start()
    r["will"] = hx(net.will)
    net.up = False
    for i in range(6):
        assert not d.reading({"moisture": 10 + i})
    # the first one was framed when the link broke: it waits framed, the ring holds 4 more
    assert len(d._out) == 1 and d.ring.n == 4 and d.ring.dropped == 1, d.ring.dropped
    net.up = True
    assert d.start(birth=False)
    assert d.ring.n == 0
    net.queue = [(ch, unhexlify(data)) for ch, data in IN["device_down"]]
    r["polled"] = d.poll()
    assert d.event("VeryDryAlarm", 12.5)
    r["ran"] = ran
    r["sent"] = net.sent
    # sleepy: offline readings survive a deep sleep in the ring file, counters in the RTC
    net.up = False
    d.reading({"moisture": 33})
    last = d.link.up
    d.sleep(600000)
    assert SLEPT == [600000]
    net2 = FakeNet()
    d2 = Device(cfg, description(), net=net2, ring=4, path="/dev_", rtc=rtc)
    assert d2.ring.n == 1 and d2.link.up == last and d2.born, (d2.ring.n, d2.link.up, last, d2.born)
    d2.cycle(lambda: {"moisture": 34}, 60000)
    r["sleepy_sent"] = net2.sent
    return r


OUT["device"] = device()


def mqtt():
    cfg = {
        "device_id": DEVICE,
        "secret": IN["secret"],
        "link": "ST2",
        "transport": "mqtt",
        "mqtt": {
            "host": "gw",
            "port": 1883,
            "prefix": "st/v1",
            "username": DEVICE,
            "password": "pw",
        },
    }
    d = Device(cfg, description(), path="/mqtt_", rtc=False)
    assert d.start()
    c = FakeMQTTClient.last
    d.reading({"moisture": 5})
    ch, data = IN["device_down"][0]
    c.cb(("st/v1/" + DEVICE + "/down/" + ch).encode(), unhexlify(data))
    c.cb(("st/v1/" + DEVICE + "/err").encode(), b'{"title": "replay"}')
    assert d.poll() == 1
    d.stop()
    return {"args": list(c.args), "calls": c.calls}


OUT["mqtt"] = mqtt()


def http():
    cfg = {
        "device_id": DEVICE,
        "secret": IN["secret"],
        "link": "ST2",
        "transport": "http",
        "http": {"url": "http://gw:8080/"},
    }
    d = Device(cfg, description(), path="/http_", rtc=False)
    ok = FakeResponse(204, {}, b"")
    ch, data = IN["device_down"][0]
    REQUESTS.replies = [ok, ok]  # birth, reading
    assert d.start()
    assert d.reading({"moisture": 7})
    REQUESTS.replies = [
        FakeResponse(200, {"st-channel": ch, "ST-More": "1"}, unhexlify(data)),
        ok,  # ack
        ok,  # result
        FakeResponse(204, {"st-more": "0"}, b""),
    ]
    assert d.poll() == 1
    problem = b'{"type": "https://safething.dev/problems/bad_payload", "status": 422}'
    REQUESTS.replies = [FakeResponse(422, {}, problem)]
    assert d.reading({"moisture": "wet"})  # refused: dropped, reported in d.error
    assert d.error == ("reading", "bad_payload"), d.error
    REQUESTS.replies = [FakeResponse(503, {}, b"")]
    assert not d.reading({"moisture": 8})  # gateway trouble: kept for later
    assert d.ring.n == 0 and len(d._out) == 1
    return {"posts": REQUESTS.posts}


OUT["http"] = http()

OUT["heap"] = HEAP
print("RESULT " + json.dumps(OUT))
