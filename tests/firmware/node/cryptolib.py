# Runs under MicroPython (the WebAssembly port), not CPython.
#
# The WebAssembly build of MicroPython has no `cryptolib` (ESP8266, ESP32 and
# RP2 builds have it, in C). This stands in for it in the tests only: AES-128
# encryption in ECB mode (mode 1), all that the firmware's AES-128-CTR uses,
# written from FIPS 197 in plain Python. It is slow (pure Python), so the
# per-message figures of `safething bench` give its share separately. Checked
# by tests/firmware/test_wasm.py against the gateway's `cryptography` package.


def _sbox():
    s = bytearray(256)
    p = q = 1
    while True:  # p runs over the multiplicative group, q = p^-1 (FIPS 197 5.1.1)
        p = p ^ (p << 1) ^ (0x1B if p & 0x80 else 0)
        p &= 0xFF
        q ^= q << 1
        q ^= q << 2
        q ^= q << 4
        q &= 0xFF
        if q & 0x80:
            q ^= 0x09
        x = q ^ (q << 1 | q >> 7) ^ (q << 2 | q >> 6) ^ (q << 3 | q >> 5) ^ (q << 4 | q >> 4)
        s[p] = (x ^ 0x63) & 0xFF
        if p == 1:
            break
    s[0] = 0x63
    return bytes(s)


SBOX = _sbox()


def _xt(a):
    a <<= 1
    return (a ^ 0x1B) & 0xFF if a & 0x100 else a


def _expand(key):
    w = bytearray(key)
    rc = 1
    while len(w) < 176:
        t = w[-4:]
        if len(w) % 16 == 0:
            t = bytearray((SBOX[t[1]] ^ rc, SBOX[t[2]], SBOX[t[3]], SBOX[t[0]]))
            rc = _xt(rc)
        for i in range(4):
            w.append(w[len(w) - 16] ^ t[i])
    return bytes(w)


def _block(w, b):
    s = bytearray(b[i] ^ w[i] for i in range(16))
    for r in range(1, 11):
        # SubBytes and ShiftRows: column-major state, row i rotated left by i
        s = bytearray(SBOX[s[(i + 4 * (i % 4)) % 16]] for i in range(16))
        if r < 10:  # MixColumns
            for c in range(0, 16, 4):
                a0, a1, a2, a3 = s[c], s[c + 1], s[c + 2], s[c + 3]
                t = a0 ^ a1 ^ a2 ^ a3
                s[c] = a0 ^ t ^ _xt(a0 ^ a1)
                s[c + 1] = a1 ^ t ^ _xt(a1 ^ a2)
                s[c + 2] = a2 ^ t ^ _xt(a2 ^ a3)
                s[c + 3] = a3 ^ t ^ _xt(a3 ^ a0)
        k = 16 * r
        for i in range(16):
            s[i] ^= w[k + i]
    return s


class aes:
    def __init__(self, key, mode, iv=None):
        if len(key) != 16 or mode != 1:
            raise ValueError("this stand-in does AES-128 in ECB mode (1) only")
        self.w = _expand(key)

    def encrypt(self, data, out=None):
        if len(data) % 16:
            raise ValueError("ECB takes whole 16-byte blocks")
        r = bytearray()
        for i in range(0, len(data), 16):
            r += _block(self.w, data[i : i + 16])
        return bytes(r)
