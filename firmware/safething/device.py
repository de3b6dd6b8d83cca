# The Device: one SAFEthing device on one transport (docs/protocol.md).
#
#   from safething.device import Device
#   from safething.port import config
#   d = Device(config(), {"title": "Soil sensor", "attributes": [...], "actions": [...]})
#   d.on_action("OpenValve", lambda args: valve.on())
#   d.run(read=lambda: {"moisture": adc.read() / 10.24}, every=60000)   # always on
#   d.cycle(read, 600000)                                            # or sleepy
#
# Messages go out oldest counter first: framed control messages (acks,
# results, state) before buffered readings, which get their counter only
# when sent. Transports (safething.mqtt/coap/http) are duck-typed:
#   PUSH              connection-oriented: last will, online state, pushed downlinks
#   open(will)        connect; `will` is the framed last will or None
#   send(channel, m)  deliver one sealed message; OSError: try later, Refused: dropped
#   poll(link, wait)  -> ([(channel, frame), ...], more)
#   close(clean)      clean: a goodbye (MQTT DISCONNECT); else just drop the line
import json
from binascii import unhexlify

from . import port
from .link import Link, Refused
from .port import const
from .ring import Ring

TYPE_CHECKING = const(0)  # mypy reads the block below; the compiler drops it
if TYPE_CHECKING:
    from typing import Any, Callable

_OUT = const(8)  # framed messages kept while offline


def transport(cfg):
    # type: (dict[str, Any]) -> Any
    # The transport named by the config; only its module is loaded (RAM).
    t = cfg["transport"]
    if t == "mqtt":
        from .mqtt import Mqtt as T
    elif t == "coap":
        from .coap import Coap as T  # type: ignore[assignment]
    elif t == "http":
        from .http import Http as T  # type: ignore[assignment]
    else:
        raise ValueError(t)
    return T(cfg[t], cfg["device_id"])


class Device:
    def __init__(self, cfg, description, net=None, ring=16, path="st_", rtc=None):
        # type: (dict[str, Any], dict[str, Any], Any, int, str, Any) -> None
        self.id = cfg["device_id"]
        d = description
        d["format"] = 1
        d["id"] = self.id
        a = d.setdefault("attributes", [])
        if "dropped" not in [x["name"] for x in a]:  # readings lost while offline
            a.append({"name": "dropped", "type": "integer", "minimum": 0, "dynamic": True})
        self.description = d
        self.link = Link(
            self.id,
            unhexlify(cfg["secret"]),
            path + "link",
            rtc=port.rtc() if rtc is None else rtc,
            v=2 if cfg.get("link") == "ST2" else 1,
        )
        self.ring = Ring(ring, path + "ring")
        self.net = net or transport(cfg)
        self.online = False
        self.born = self.link.born
        self.error = None  # type: Any  # (channel, reason) of the last refusal
        self._out = []  # type: list[tuple[str, bytes]]
        self._act = {}  # type: dict[str, Callable[[dict[str, Any]], Any]]
        self._want = {}  # type: dict[str, Callable[[Any], Any]]
        self._done = []  # type: list[str]  # recent action request ids

    def on_action(self, name, fn):
        # type: (str, Callable[[dict[str, Any]], Any]) -> None
        # fn(args) -> result, run when the gateway forwards action `name`; raise to fail.
        self._act[name] = fn

    def on_desired(self, name, fn):
        # type: (str, Callable[[Any], Any]) -> None
        # fn(value) -> value now (None: as asked), for a writable attribute.
        self._want[name] = fn

    # --- sending -----------------------------------------------------------------

    def start(self, birth=True):
        # type: (bool) -> bool
        # Connect (MQTT: last will, then online) and send the birth. False if unreachable.
        lk = self.link
        will = None
        if self.net.PUSH:
            will = lk.frame("state", b'{"online": false}')
            w = lk.up
        try:
            self.net.open(will)
        except Exception as e:  # OSError, or umqtt's MQTTException for a refused login
            self.error = ("open", e)
            return self._lost()
        self.online = True
        # state and birth go out before anything buffered: the gateway needs the birth first
        if will:
            self._emit("state", b'{"online": true, "will": %d}' % w, False)
        if birth:
            self._emit("birth", json.dumps({"description": self.description}).encode(), False)
        ok = self.flush()
        self.born = self.born or (birth and ok)
        return ok

    def reading(self, values):
        # type: (dict[str, Any]) -> bool
        # Send attribute values ({"moisture": 41}); kept in the ring while offline.
        self.ring.push("reading", json.dumps(values).encode())
        return self.flush()

    def event(self, topic, data=None):
        # type: (str, Any) -> bool
        self.ring.push("event/" + topic, b"" if data is None else json.dumps(data).encode())
        return self.flush()

    def _emit(self, channel, body, send=True):
        # type: (str, bytes, bool) -> None
        o = self._out
        o.append((channel, self.link.frame(channel, body)))
        if len(o) > _OUT:
            o.pop(0)
        if send:
            self.flush()

    def flush(self):
        # type: () -> bool
        # Send what waits, in counter order. True when everything went out.
        if not self.online:
            return False
        o = self._out
        r = self.ring
        try:
            while True:
                if o:
                    c, m = o[0]
                    try:
                        self.net.send(c, m)
                    except Refused as e:  # e.g. "replay": a resend that got through before
                        self.error = (c, e.args[0])
                    o.pop(0)
                elif r.n:
                    c, b = r.pop()
                    o.append((c, self.link.frame(c, b)))
                elif r.dropped != r.told:
                    r.told = r.dropped
                    o.append(("reading", self.link.frame("reading", b'{"dropped": %d}' % r.told)))
                else:
                    return True
        except OSError as e:
            self.error = ("send", e)
            return self._lost()

    def _lost(self, clean=False):
        # type: (bool) -> bool
        self.online = False
        try:
            self.net.close(clean)
        except Exception:
            pass
        return False

    # --- receiving ---------------------------------------------------------------

    def poll(self, wait=0):
        # type: (int) -> int
        # Fetch and act on waiting downlinks (MQTT: those pushed within `wait` ms).
        k = 0
        more = True
        try:
            while more and self.flush():
                downs, more = self.net.poll(self.link, wait)
                for c, m in downs:
                    k += 1
                    self._down(c, m)
        except OSError as e:
            self.error = ("poll", e)
            self._lost()
        return k

    def _down(self, channel, data):
        # type: (str, bytes) -> None
        try:
            body = self.link.accept(channel, data)
        except Refused as e:  # forged or garbled: ignored, never acknowledged
            self.error = (channel, e.args[0])
            return
        self._emit("ack", b'{"down": %d}' % self.link.down)
        if body is None:  # seen before: acknowledged again, not run again
            return
        try:
            v = json.loads(body) if body else None
        except ValueError:
            return
        if channel[:7] == "action/":
            self._run(channel[7:], v)
        elif channel == "desired" and isinstance(v, dict):
            now = {}
            for k in v:
                fn = self._want.get(k)
                x = fn(v[k]) if fn else None
                now[k] = v[k] if x is None else x
            self.reading(now)
        elif channel == "error":
            self.error = (channel, v)

    def _run(self, rid, v):
        # type: (str, Any) -> None
        if rid in self._done:
            return
        self._done.append(rid)
        if len(self._done) > 4:
            self._done.pop(0)
        a = str(v.get("action")) if isinstance(v, dict) else ""
        fn = self._act.get(a)
        if fn is None:
            r = {"state": "rejected", "message": "no action %s" % a}
        else:
            try:
                r = {"state": "done", "result": fn(v.get("args") or {})}
            except Exception as e:
                r = {"state": "failed", "message": str(e) or repr(e)}
        self._emit("result/" + rid, json.dumps(r).encode())

    # --- life cycles -------------------------------------------------------------

    def stop(self):
        # type: () -> None
        # Say offline (MQTT), keep unsent data on flash, disconnect. Unsent
        # readings and events go back into the ring unframed (a new counter
        # next time); unsent acks and results are dropped (the gateway sends
        # an unacknowledged downlink again, and times out the action).
        if self.online and self.net.PUSH:
            self._emit("state", b'{"online": false}')
        o = self._out
        while o:
            c, m = o.pop()
            if c == "reading" or c[:6] == "event/":
                self.ring.push(c, self.link.body(m), True)
        self.ring.save()
        self._lost(True)

    def sleep(self, ms):
        # type: (int) -> None
        self.stop()
        self.link.sleep(self.born)
        port.deepsleep(ms)

    def _read(self, read):
        # type: (Callable[[], dict[str, Any] | None]) -> None
        try:
            v = read()
        except Exception as e:  # a sensor that fails once must not stop the device
            self.error = ("read", e)
            return
        if v:
            self.ring.push("reading", json.dumps(v).encode())

    def cycle(self, read, ms, wait=2000):
        # type: (Callable[[], dict[str, Any] | None], int, int) -> None
        # One wake of a sleepy device: read, send, fetch actions and desired
        # values, deep sleep `ms`. The birth goes only after a cold start.
        self._read(read)
        if self.start(not (self.born and port.woke())):
            self.poll(wait)
        self.sleep(ms)

    def run(self, read=None, every=60000, wait=1000):
        # type: (Callable[[], dict[str, Any] | None] | None, int, int) -> None
        # An always-on device: read every `every` ms, reconnect with back-off,
        # act on downlinks (MQTT: as pushed; CoAP/HTTP: a poll every `wait` ms).
        t = port.ticks_add(port.ticks_ms(), -every)
        retry = port.ticks_ms()
        back = 1000
        while True:
            now = port.ticks_ms()
            if read and port.ticks_diff(now, t) >= every:
                t = now
                self._read(read)
                self.flush()
            if not self.online and port.ticks_diff(now, retry) >= 0:
                if self.start():
                    back = 1000
                else:
                    retry = port.ticks_add(now, back)
                    back = min(back * 2, 300000)
            if self.online:
                self.poll(wait)
                if self.net.PUSH:
                    continue
            port.sleep_ms(wait)
