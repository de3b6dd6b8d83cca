# A bounded buffer of unsent messages, oldest first, in RAM.
# The slots are allocated once (no list growth, no heap fragmentation); when it
# is full the oldest item is dropped and counted. Items are (channel, body)
# pairs, *unframed*: they get their counter when they are sent, so counters
# reach the gateway in order however long the device was offline.
# With `path`, save() writes the items to a flash file (before deep sleep) and
# the next start reads it back once; flash is not touched per reading.


from .port import const

TYPE_CHECKING = const(0)  # mypy reads the block below; the compiler drops it
if TYPE_CHECKING:
    from typing import Any


class Ring:
    def __init__(self, size=16, path=None):
        # type: (int, str | None) -> None
        self.size = size
        self.path = path
        self._b = [None] * size  # type: list[Any]
        self._h = 0  # index of the oldest item
        self.n = 0  # items held
        self.dropped = 0  # items dropped because the ring was full (ever, persisted)
        self.told = 0  # the drop count the gateway last got
        if path:
            self.load()

    def push(self, channel, body, front=False):
        # type: (str, bytes, bool) -> None
        # front: an item older than all held (put back unsent); dropped if full.
        if self.n == self.size:
            self.dropped += 1
            if front:
                return
            self.pop()
        if front:
            self._h = i = (self._h - 1) % self.size
        else:
            i = (self._h + self.n) % self.size
        self._b[i] = (channel, body)
        self.n += 1

    def peek(self):
        # type: () -> tuple[str, bytes]
        return self._b[self._h]

    def pop(self):
        # type: () -> tuple[str, bytes]
        item = self._b[self._h]
        self._b[self._h] = None
        self._h = (self._h + 1) % self.size
        self.n -= 1
        return item

    # File: "<dropped> <told>\n" then one "<channel> <body>\n" per item
    # (JSON bodies never hold a raw newline).
    def save(self):
        # type: () -> None
        if not self.path:
            return
        import os

        try:
            os.remove(self.path)
        except OSError:
            pass
        if self.n or self.dropped:
            with open(self.path, "wb") as f:
                f.write(b"%d %d\n" % (self.dropped, self.told))
                for i in range(self.n):
                    c, b = self._b[(self._h + i) % self.size]
                    f.write(c.encode() + b" " + b + b"\n")

    def load(self):
        # type: () -> None
        import os

        p = self.path
        if not p:
            return
        try:
            with open(p, "rb") as f:
                a = f.readline().split()
                self.dropped, self.told = int(a[0]), int(a[1])
                for line in f:
                    i = line.find(b" ")  # (no str.partition on ESP8266)
                    self.push(line[:i].decode(), line[i + 1 :].rstrip(b"\n"))
            os.remove(p)  # at most once: a crash before save() loses, never repeats
        except (OSError, ValueError, IndexError):
            pass
