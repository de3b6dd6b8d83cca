# MQTT transport on umqtt.simple (frozen into ESP8266 builds).
# Topics (docs/protocol.md section 4): <prefix>/<id>/up/<channel> (QoS 1),
# <prefix>/<id>/down/<channel> (QoS 1), <prefix>/<id>/err (QoS 0).
# umqtt.simple publishes QoS 1 synchronously (it waits for the PUBACK), so a
# send that returns was stored by the broker; downlinks arriving meanwhile are
# collected by the callback and handed out by poll().
from umqtt.simple import MQTTClient

from . import port


class Mqtt:
    PUSH = True

    def __init__(self, cfg, device_id):
        self.cfg = cfg
        self.id = device_id
        self.base = "%s/%s/" % (cfg.get("prefix") or "st/v1", device_id)
        self.keepalive = cfg.get("keepalive", 60)
        self.c = None
        self.inbox = []
        self.error = None  # the last problem report on the err topic (bytes)
        self._t = port.ticks_ms()

    def open(self, will):
        cfg = self.cfg
        c = MQTTClient(
            self.id,
            cfg["host"],
            cfg.get("port", 1883),
            cfg.get("username"),
            cfg.get("password"),
            self.keepalive,
        )
        c.set_callback(self._got)
        if will:
            c.set_last_will((self.base + "up/state").encode(), will, False, 1)
        self.c = c
        try:
            c.connect()
            self._t = port.ticks_ms()
            c.subscribe((self.base + "down/#").encode(), 1)
            c.subscribe((self.base + "err").encode(), 0)
        except Exception:
            self.close(False)
            raise

    def _got(self, topic, msg):
        t = topic.decode()
        b = self.base
        if t[: len(b) + 5] == b + "down/":
            self.inbox.append((t[len(b) + 5 :], msg))
        elif t == b + "err":
            self.error = msg

    def send(self, channel, msg):
        if not self.c:
            raise OSError("closed")
        self.c.publish((self.base + "up/" + channel).encode(), msg, False, 1)
        self._t = port.ticks_ms()

    def poll(self, link, wait):
        # Downlinks pushed so far and within `wait` ms; pings to keep the session.
        c = self.c
        if not c:
            raise OSError("closed")
        end = port.ticks_add(port.ticks_ms(), wait)
        while True:
            c.check_msg()
            now = port.ticks_ms()
            if port.ticks_diff(now, self._t) > self.keepalive * 500:
                c.ping()
                self._t = now
            if port.ticks_diff(end, now) <= 0:
                break
            port.sleep_ms(20)
        got = self.inbox
        self.inbox = []
        return got, False

    def close(self, clean=True):
        # clean: DISCONNECT (the broker forgets the will); else drop the
        # socket, and the broker publishes the will.
        c = self.c
        self.c = None
        if c and c.sock:
            try:
                if clean:
                    c.disconnect()
                    return
            except OSError:
                pass
            c.sock.close()
