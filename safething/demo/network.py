"""The data-network walkthrough (``safething demo --net``): what things are built on.

Writes signed data, reads it back verified, keeps a secret in a private MD,
stores a blob, follows a change through the change feed, registers a public
name, and shows a lying store being caught.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from safething.errors import EntryExistsError, NameTakenError, TamperedDataError
from safething.net import (
    ANYONE,
    TAG_THING,
    Action,
    Client,
    Identity,
    MutableData,
    PublicNames,
    XorName,
    get_blob,
    put_blob,
)
from safething.store import Store, open_store

__all__ = ["run_network_demo"]

Echo = Callable[[str], None]


async def run_network_demo(store: Store, identity: Identity, *, echo: Echo = print) -> None:
    """Walk through the data network in ``store``, signing as ``identity``."""
    me = identity.public_sign_key
    client = Client(store, identity)

    _step(echo, "a public MutableData: signed readings anyone can verify")
    name = XorName.of(f"demo-greenhouse:{me.hex()}")
    try:
        md = await client.create_md(name, TAG_THING, permissions={ANYONE: Action.READ})
        echo(f"created MD {md.address}")
    except EntryExistsError:
        md = client.md(name, TAG_THING)
        echo(f"reusing MD {md.address} from an earlier run")
    reading = f"{40 + time.time() % 10:.1f}"
    entry = await md.put("moisture", reading)
    await md.put("valve", "closed")
    echo(f"wrote moisture = {reading} (version {entry.version}, signed by {me.hex()[:16]}...)")
    reader = Client(store).md(name, TAG_THING, owner=me)
    for key, e in sorted((await reader.entries()).items()):
        echo(f"  a reader with no keys verified {key.decode()} = {e.value!r} v{e.version}")

    await _private(client, store.url, echo)
    await _blob(client, echo)
    await _watch(client, md, echo)
    await _public_name(client, me.hex()[:8], echo)
    await _lying_store(identity, echo)

    info = await store.info()
    _step(echo, "vault")
    echo(
        f"{info.records} records ({info.record_bytes} bytes), {info.chunks} chunks, "
        f"revision {info.revision}, {info.file_bytes or 0} bytes on disk"
    )


def _step(echo: Echo, text: str) -> None:
    echo("")
    echo(f"== {text}")


async def _private(client: Client, url: str, echo: Echo) -> None:
    _step(echo, "a private MutableData: the store sees only ciphertext")
    md = await client.create_md(XorName.of(str(time.time_ns())), TAG_THING, private=True)
    await md.insert("wifi-password", "correct horse battery staple")
    raw = await client.store.scan(md.address.entry_prefix)
    leaked = any(b"horse" in r.value or "wifi" in r.key for r in raw)
    echo(f"stored 1 entry; plaintext visible in {url}: {'YES' if leaked else 'no'}")
    echo(f"read back with the MD's key: {await md.get_value('wifi-password')!r}")


async def _blob(client: Client, echo: Echo) -> None:
    _step(echo, "ImmutableData: a 2.5 MB firmware image in content-addressed chunks")
    image = bytes(range(256)) * 10_000
    started = time.perf_counter()
    ref = await put_blob(client.store, image, encrypt=True)
    back = await get_blob(client.store, ref)
    took = (time.perf_counter() - started) * 1000
    where = ref.address.hex()[:16]
    echo(f"stored and verified {len(back)} bytes in {took:.0f} ms; data map at {where}...")


async def _watch(client: Client, md: MutableData, echo: Echo) -> None:
    _step(echo, "change feed: a watcher sees a signed update")
    async with Client(client.store).md(md.address.name, md.address.tag).watch() as changes:
        started = time.perf_counter()
        await md.put("valve", "open")
        async with asyncio.timeout(5):
            async for entry in changes:
                if entry.key == b"valve":
                    break
        ms = (time.perf_counter() - started) * 1000
    echo(f"watcher verified valve = {entry.value!r} (v{entry.version}) {ms:.1f} ms after the write")


async def _public_name(client: Client, suffix: str, echo: Echo) -> None:
    _step(echo, "public names: safe://service.publicid")
    url = f"safe://greenhouse.demo-{suffix}"
    names = PublicNames(client)
    try:
        service = await names.create_service(url)
        await service.insert("about", "the demo greenhouse")
        echo(f"registered {url}")
    except NameTakenError:
        echo(f"{url} was registered by an earlier run")
    resolved = await PublicNames(Client(client.store)).resolve(url)
    echo(f"resolved {url} -> MD {resolved.address}")


async def _lying_store(identity: Identity, echo: Echo) -> None:
    _step(echo, "a lying store (in memory, so your vault stays clean)")
    async with await open_store("memory://") as store:
        md = await Client(store, identity).create_md(XorName.of("victim"), TAG_THING)
        await md.insert("command", "close valve")
        key = md.address.entry_key(b"command")
        record = await store.get(key)
        assert record is not None
        forged = record.value.replace(b"close valve", b"open  valve")
        await store.put(key, forged)
        echo("the store swapped 'close valve' for 'open  valve' behind the writer's back")
        reader = Client(store).md(md.address.name, md.address.tag, owner=identity.public_sign_key)
        try:
            await reader.get("command")
            echo("the reader accepted it: THIS IS A BUG")
        except TamperedDataError as e:
            echo(f"the reader refused it: {e}")
