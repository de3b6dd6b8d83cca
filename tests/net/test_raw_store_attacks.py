"""A store attacker who edits single fields of a record, and one who reads the raw
SQLite bytes (``vault.db`` and its ``-wal``) instead of going through the store API."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from safething.errors import TamperedDataError
from safething.net import TAG_THING, Client, Identity, XorName
from safething.net.records import EntryRecord
from safething.store import Store, open_store

NAME = XorName.of("vault-raw-01")
KEY, VALUE = "front-door-code-4412", b"PLAIN-1234-secret-7731"


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[Store]:
    async with await open_store(f"sqlite://{tmp_path}/vault.db") as s:
        yield s


def _raw(path: Path, key: str) -> bytes:
    db = sqlite3.connect(path, isolation_level=None, timeout=10)
    try:
        row = db.execute("SELECT value FROM records WHERE key = ?", (key,)).fetchone()
    finally:
        db.close()
    assert row is not None, key
    return bytes(row[0])


def _overwrite(path: Path, key: str, value: bytes) -> None:
    db = sqlite3.connect(path, isolation_level=None, timeout=10)
    try:
        cur = db.execute(
            "UPDATE records SET value = ?, rev = rev + 1000000 WHERE key = ?", (value, key)
        )
        assert cur.rowcount == 1
    finally:
        db.close()


async def _two_private_entries(store: Store) -> tuple[Client, object, list[str]]:
    client = Client(store, Identity.generate())
    md = await client.create_md(NAME, TAG_THING, private=True)
    await md.insert("a", b"open the valve")
    await md.insert("b", b"keep it shut")
    keys = sorted(r.key for r in await store.scan(md.address.entry_prefix))
    return client, md, keys


@pytest.mark.parametrize("field", ["stored_value", "sealed_key"])
async def test_one_encrypted_field_swapped_under_the_original_signature(
    sqlite_store: Store, tmp_path: Path, field: str
) -> None:
    """Only the ciphertext (or the sealed key) of entry "a" is replaced by entry "b"'s;
    a's key, version, signer and signature stay. Both decrypt under the MD's key, so
    only the signature (value) or the keyed-hash check (key) can tell."""
    _, md, keys = await _two_private_entries(sqlite_store)
    address = md.address  # type: ignore[attr-defined]
    vault = tmp_path / "vault.db"
    records = {k: EntryRecord.from_bytes(_raw(vault, k), address, None) for k in keys}
    a_key = next(k for k in keys if records[k].stored_key == md._codec.stored_key(b"a"))  # type: ignore[attr-defined]
    b_key = next(k for k in keys if k != a_key)
    forged = dataclasses.replace(records[a_key], **{field: getattr(records[b_key], field)})
    assert forged.signature == records[a_key].signature
    _overwrite(vault, a_key, forged.to_bytes())

    reader = Client(sqlite_store).md(NAME, TAG_THING, secret=md.secret)  # type: ignore[attr-defined]
    with pytest.raises(TamperedDataError):
        await reader.get("a")
    entries = await reader.entries(skip_tampered=True)
    assert entries == {b"b": entries[b"b"]}  # the untouched entry is still served
    assert entries[b"b"].value == b"keep it shut"
    assert reader.client.tampered_count >= 1


async def test_no_plaintext_in_the_raw_database_or_its_wal(
    sqlite_store: Store, tmp_path: Path
) -> None:
    client = Client(sqlite_store, Identity.generate())
    md = await client.create_md(NAME, TAG_THING, private=True)
    await md.insert(KEY, VALUE)
    await md.update(KEY, VALUE + b"-2")
    assert await md.get_value(KEY) == VALUE + b"-2"  # written, and readable with the key
    files = [tmp_path / "vault.db", tmp_path / "vault.db-wal"]
    raw = b"".join(f.read_bytes() for f in files if f.exists())
    assert (tmp_path / "vault.db-wal").exists()  # the attacker copies it while it is live
    assert len(raw) > 4096
    for secret in (KEY.encode(), VALUE, VALUE.hex().encode(), KEY.encode().hex().encode()):
        assert secret not in raw
    # what the attacker reads is the entry's record (ciphertext), not nothing
    (entry,) = await sqlite_store.scan(md.address.entry_prefix)
    assert entry.value in raw
