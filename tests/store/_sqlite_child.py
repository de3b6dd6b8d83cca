"""A second OS process for tests/store/test_sqlite.py: ``python _sqlite_child.py MODE URL ...``.

Modes:
  write URL N            put ``x.<i>`` = ``<i>:<time.time()>`` for i < N, one commit each
  ack URL [WRITERS]      write forever (single and batched commits), WRITERS (1) tasks
                         at once; after each commit returns print ``<key> <revision>``
                         per accepted write, flushed
  incr URL KEY N         add 1 to the counter under KEY N times (read, update, retry)
  two URL TAG            open two store objects on URL (the second once the first has
                         committed), then write forever through both in turn; print
                         ``<key> <revision>`` after each commit returns, flushed
  touch URL              open the file with the sqlite3 module and with a store, read, close
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import time

from safething.errors import ConflictError
from safething.store import Write, open_store


async def write(url: str, count: int) -> None:
    async with await open_store(url) as store:
        for i in range(count):
            await store.put(f"x.{i}", f"{i}:{time.time()!r}".encode())


async def ack(url: str, writers: int) -> None:
    async with await open_store(url) as store:

        async def writer(w: int) -> None:
            i = 0
            while True:
                if i % 2:
                    key = f"ack.{w}s{i}"
                    revision = await store.create(key, key.encode())
                    print(key, revision, flush=True)
                else:
                    keys = [f"ack.{w}b{i}.{j}" for j in range(10)]
                    results = await store.commit([Write(k, k.encode()) for k in keys])
                    lines = (f"{k} {r}" for k, r in zip(keys, results, strict=True))
                    print("\n".join(lines), flush=True)
                i += 1

        await asyncio.gather(*(writer(w) for w in range(writers)))


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


async def two(url: str, tag: str) -> None:
    async with await open_store(url) as first:
        key = f"two.{tag}.first"
        print(key, await first.create(key, key.encode()), flush=True)
        # The second store object opens the file while the first holds connections
        # (and their locks) on it.
        async with await open_store(url) as second:
            i = 0
            while True:
                key = f"two.{tag}.{i}"
                store = first if i % 2 else second
                print(key, await store.create(key, key.encode()), flush=True)
                i += 1


async def touch(url: str) -> None:
    from safething.store.urls import sqlite_path_from_url

    path, _ = sqlite_path_from_url(url)
    conn = sqlite3.connect(path)
    try:
        conn.execute("SELECT count(*) FROM records").fetchall()
    finally:
        conn.close()
    async with await open_store(url) as store:
        await store.get("two.none")


def main(argv: list[str]) -> None:
    mode, url, *rest = argv
    if mode == "write":
        asyncio.run(write(url, int(rest[0])))
    elif mode == "ack":
        asyncio.run(ack(url, int(rest[0]) if rest else 1))
    elif mode == "incr":
        asyncio.run(incr(url, rest[0], int(rest[1])))
    elif mode == "two":
        asyncio.run(two(url, rest[0]))
    elif mode == "touch":
        asyncio.run(touch(url))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
