# HTTP transport on (u)requests: POST <url>/st/v1/devices/<id>/<channel>.
# 204: accepted. A poll answers one downlink per response (200, headers
# ST-Channel and ST-More) or 204 when nothing waits. 4xx: refused
# (problem+json, the reason is the last word of its "type"); 5xx: try later.
try:
    import requests
except ImportError:
    import urequests as requests  # type: ignore[no-redef]

from .link import Refused


class Http:
    PUSH = False

    def __init__(self, cfg, device_id, timeout=10):
        self.url = cfg["url"].rstrip("/") + "/st/v1/devices/" + device_id + "/"
        self.timeout = timeout

    def open(self, will):
        pass

    def close(self, clean=True):
        pass

    def _post(self, channel, msg):
        r = requests.post(
            self.url + channel,
            data=msg,
            headers={"Content-Type": "application/json"},
            timeout=self.timeout,
        )
        try:
            s = r.status_code
            if s >= 500:
                raise OSError(s)
            if s >= 400:
                try:
                    why = r.json()["type"].split("/")[-1]
                except Exception:
                    why = str(s)
                raise Refused(why)
            if s != 200:
                return None
            ch = None
            more = 0
            for k, v in r.headers.items():  # any case: servers send st-channel
                k = k.lower()
                if k == "st-channel":
                    ch = v
                elif k == "st-more":
                    more = int(v)
            return ch, r.content, more
        finally:
            r.close()

    def send(self, channel, msg):
        self._post(channel, msg)

    def poll(self, link, wait):
        a = self._post("poll", link.frame("poll"))
        if not a or not a[0]:
            return [], False
        return [(a[0], a[1])], a[2] > 0
