"""A nats-server started by SAFEthing (a gateway's leaf server, the test servers) is
accepted only if the server answering on its port is the one it started: another
server already listening there is refused with a clear error, whatever it says."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from safething.errors import StoreError
from safething.store.nats_server import NatsServer, free_port


async def test_another_server_on_the_port_is_refused(tmp_path: Path) -> None:
    foreign = NatsServer(tmp_path / "foreign", name="site1")
    await foreign.start()
    # the same name, port and domain-less set-up as the one to start: only its ID differs
    ours = NatsServer(tmp_path / "ours", name="site1", port=foreign.port)
    try:
        with pytest.raises(StoreError, match=f"another server answers on 127.0.0.1:{ours.port}"):
            await ours.start()
        assert ours.process is not None and ours.process.returncode is not None
        assert foreign.process is not None and foreign.process.returncode is None  # untouched
    finally:
        await ours.stop()
        await foreign.stop()


async def test_a_listener_that_greets_like_nats_is_refused(tmp_path: Path) -> None:
    """Something that is not nats-server at all, answering with a NATS greeting."""
    port = free_port()
    greeting = {"server_id": "NFAKE", "server_name": "n1", "version": "2.12.8"}

    async def greet(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"INFO " + json.dumps(greeting).encode() + b"\r\n")
        await writer.drain()
        writer.close()

    listener = await asyncio.start_server(greet, "127.0.0.1", port)
    ours = NatsServer(tmp_path, port=port)
    try:
        with pytest.raises(StoreError, match=r"another server answers.*server_id NFAKE"):
            await ours.start()
        assert ours.process is not None and ours.process.returncode is not None
    finally:
        await ours.stop()
        listener.close()
        await listener.wait_closed()


async def test_its_own_server_is_accepted_again_after_a_restart(tmp_path: Path) -> None:
    """The log is appended to: a second start checks the ID its own process logged."""
    server = NatsServer(tmp_path)
    try:
        await server.start()
        first = server.process
        await server.kill()
        await server.start()
        assert server.process is not first and server.process is not None
        assert server.process.returncode is None
    finally:
        await server.stop()
