"""A second OS process for tests/store/test_sqlite.py: ``python _sqlite_child.py MODE URL ...``.

Modes:
  write URL N            put ``x.<i>`` = ``<i>:<time.time()>`` for i < N, one commit each
  ack URL                write forever (single and batched commits); after each commit
                         returns print ``<key> <revision>`` per accepted write, flushed
  incr URL KEY N         add 1 to the counter under KEY N times (read, update, retry)
"""

from __future__ import annotations

import asyncio
import sys
import time

from safething.errors import ConflictError
from safething.store import Write, open_store


async def write(url: str, count: int) -> None:
    async with await open_store(url) as store:
        for i in range(count):
            await store.put(f"x.{i}", f"{i}:{time.time()!r}".encode())


async def ack(url: str) -> None:
    async with await open_store(url) as store:
        i = 0
        while True:
            if i % 2:
                key = f"ack.s{i}"
                revision = await store.create(key, key.encode())
                print(key, revision, flush=True)
            else:
                keys = [f"ack.b{i}.{j}" for j in range(10)]
                results = await store.commit([Write(k, k.encode()) for k in keys])
                print("\n".join(f"{k} {r}" for k, r in zip(keys, results, strict=True)), flush=True)
            i += 1


async def incr(url: str, key: str, count: int) -> None:
    async with await open_store(url) as store:
        done = 0
        while done < count:
            record = await store.get(key)
            try:
                if record is None:
                    await store.create(key, b"1")
                else:
                    await store.update(key, str(int(record.value) + 1).encode(), record.revision)
            except ConflictError:
                continue
            done += 1


def main(argv: list[str]) -> None:
    mode, url, *rest = argv
    if mode == "write":
        asyncio.run(write(url, int(rest[0])))
    elif mode == "ack":
        asyncio.run(ack(url))
    elif mode == "incr":
        asyncio.run(incr(url, rest[0], int(rest[1])))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
