"""``safething demo``: the main job, on the embedded SQLite store.

Creates (or reuses) an identity, writes signed data, reads it back
verified, keeps a secret in a private MD, stores a blob, follows a change
through the change feed, and shows a lying store being caught.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from safething.cli.common import (
    add_identity_option,
    add_store_option,
    default_identity_path,
    load_identity,
    open_cli_store,
    out,
)
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
from safething.store import open_store

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="run the demo on the embedded store")
    add_store_option(p)
    add_identity_option(p)
    p.set_defaults(func=cmd_demo, is_async=True)


def _step(text: str) -> None:
    out()
    out(f"== {text}")


async def cmd_demo(args: argparse.Namespace) -> int:
    path = args.identity or default_identity_path()
    _step("identity")
    if path.exists():
        identity = load_identity(path)
        out(f"using the identity in {path}")
    else:
        identity = Identity.generate("demo")
        identity.save(path)
        out(f"created a new identity in {path} (mode 0600)")
    me = identity.public_sign_key
    out(f"public sign key: {me.hex()}")

    async with await open_cli_store(args.store) as store:
        out(f"store: {store.url}")
        client = Client(store, identity)

        _step("a public MutableData: signed readings anyone can verify")
        name = XorName.of(f"demo-greenhouse:{me.hex()}")
        try:
            md = await client.create_md(name, TAG_THING, permissions={ANYONE: Action.READ})
            out(f"created MD {md.address}")
        except EntryExistsError:
            md = client.md(name, TAG_THING)
            out(f"reusing MD {md.address} from an earlier run")
        reading = f"{40 + time.time() % 10:.1f}"
        entry = await md.put("moisture", reading)
        await md.put("valve", "closed")
        out(f"wrote moisture = {reading} (version {entry.version}, signed by {me.hex()[:16]}...)")
        reader = Client(store).md(name, TAG_THING, owner=me)
        for key, e in sorted((await reader.entries()).items()):
            out(f"  a reader with no keys verified {key.decode()} = {e.value!r} v{e.version}")

        await _private(client, store.url)
        await _blob(client)
        await _watch(client, md)
        await _public_name(client, me.hex()[:8])
        await _lying_store(identity)

        info = await store.info()
        _step("vault")
        out(
            f"{info.records} records ({info.record_bytes} bytes), {info.chunks} chunks, "
            f"revision {info.revision}, {info.file_bytes or 0} bytes on disk"
        )
    out()
    out("done. Inspect it with: safething md ls   |   safething vault info")
    return 0


async def _private(client: Client, url: str) -> None:
    _step("a private MutableData: the store sees only ciphertext")
    md = await client.create_md(XorName.of(str(time.time_ns())), TAG_THING, private=True)
    await md.insert("wifi-password", "correct horse battery staple")
    raw = await client.store.scan(md.address.entry_prefix)
    leaked = any(b"horse" in r.value or "wifi" in r.key for r in raw)
    out(f"stored 1 entry; plaintext visible in {url}: {'YES' if leaked else 'no'}")
    out(f"read back with the MD's key: {await md.get_value('wifi-password')!r}")


async def _blob(client: Client) -> None:
    _step("ImmutableData: a 2.5 MB firmware image in content-addressed chunks")
    image = bytes(range(256)) * 10_000
    started = time.perf_counter()
    ref = await put_blob(client.store, image, encrypt=True)
    back = await get_blob(client.store, ref)
    took = (time.perf_counter() - started) * 1000
    where = ref.address.hex()[:16]
    out(f"stored and verified {len(back)} bytes in {took:.0f} ms; data map at {where}...")


async def _watch(client: Client, md: MutableData) -> None:
    _step("change feed: a watcher sees a signed update")
    async with Client(client.store).md(md.address.name, md.address.tag).watch() as changes:
        started = time.perf_counter()
        await md.put("valve", "open")
        async with asyncio.timeout(5):
            async for entry in changes:
                if entry.key == b"valve":
                    break
        ms = (time.perf_counter() - started) * 1000
    out(f"watcher verified valve = {entry.value!r} (v{entry.version}) {ms:.1f} ms after the write")


async def _public_name(client: Client, suffix: str) -> None:
    _step("public names: safe://service.publicid")
    url = f"safe://greenhouse.demo-{suffix}"
    names = PublicNames(client)
    try:
        service = await names.create_service(url)
        await service.insert("about", "the demo greenhouse")
        out(f"registered {url}")
    except NameTakenError:
        out(f"{url} was registered by an earlier run")
    resolved = await PublicNames(Client(client.store)).resolve(url)
    out(f"resolved {url} -> MD {resolved.address}")


async def _lying_store(identity: Identity) -> None:
    _step("a lying store (in memory, so your vault stays clean)")
    async with await open_store("memory://") as store:
        md = await Client(store, identity).create_md(XorName.of("victim"), TAG_THING)
        await md.insert("command", "close valve")
        key = md.address.entry_key(b"command")
        record = await store.get(key)
        assert record is not None
        forged = record.value.replace(b"close valve", b"open  valve")
        await store.put(key, forged)
        out("the store swapped 'close valve' for 'open  valve' behind the writer's back")
        reader = Client(store).md(md.address.name, md.address.tag, owner=identity.public_sign_key)
        try:
            await reader.get("command")
            out("the reader accepted it: THIS IS A BUG")
        except TamperedDataError as e:
            out(f"the reader refused it: {e}")
