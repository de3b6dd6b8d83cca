# Runs under MicroPython (the WebAssembly port, driven by run.mjs), not CPython.
#
# The per-message cost of the device link for `safething bench` (group firmware.link):
# reads /input.json (a body to seal, downlinks the gateway sealed, a count) and prints
# one line "RESULT <json>" with microseconds per message: sealing an uplink and opening
# a downlink, ST2 and ST1, and the share of the AES stand-in (the WebAssembly build has
# no cryptolib: tests/firmware/node/cryptolib.py, pure Python, stands in for the C one).
import json
import time
from binascii import unhexlify

import cryptolib
from safething.link import Link

with open("/input.json") as f:
    IN = json.load(f)
N = IN["n"]
SECRET = unhexlify(IN["secret"])
BODY = IN["body"].encode()


def per(fn):
    t = time.ticks_us()
    for _ in range(N):
        fn()
    return time.ticks_diff(time.ticks_us(), t) / N


OUT = {"n": N, "body_bytes": len(BODY)}
for v in (2, 1):
    link = Link(IN["device_id"], SECRET, f"/cost{v}", block=N + 1, v=v)
    OUT[f"seal_st{v}_us"] = per(lambda: link.frame("reading", BODY))
    down = unhexlify(IN[f"down_st{v}"])

    def open_():
        link.down = 0  # the same downlink, fresh each time
        assert link.accept(IN["channel"], down) is not None

    OUT[f"open_st{v}_us"] = per(open_)
blocks = (len(BODY) + 15) // 16
OUT["aes_seal_us"] = per(lambda: cryptolib.aes(bytes(16), 1).encrypt(bytes(16 * blocks)))
blocks = (IN["down_body_bytes"] + 15) // 16
OUT["aes_open_us"] = per(lambda: cryptolib.aes(bytes(16), 1).encrypt(bytes(16 * blocks)))
print("RESULT " + json.dumps(OUT))
