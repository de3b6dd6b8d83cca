# HMAC-SHA256 (RFC 2104) with nothing but hashlib, for ports without `hmac`.
# Same call shape as CPython's and micropython-lib's: new(key, msg, digestmod);
# only SHA-256 is supported (digestmod is accepted and ignored).
try:
    import hashlib
except ImportError:  # pragma: no cover - very old ports
    import uhashlib as hashlib  # type: ignore[no-redef]
from binascii import hexlify


class HMAC:
    def __init__(self, key, msg=None, digestmod=None):
        if len(key) > 64:
            key = hashlib.sha256(key).digest()
        key = key + bytes(64 - len(key))
        # Only the outer pad is kept (64 bytes); the inner hash runs as data arrives.
        self._o = bytes(b ^ 0x5C for b in key)
        self._h = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        if msg:
            self._h.update(msg)

    def update(self, msg):
        self._h.update(msg)

    def digest(self):
        o = hashlib.sha256(self._o)
        o.update(self._h.digest())
        return o.digest()

    def hexdigest(self):
        return hexlify(self.digest()).decode()


new = HMAC
