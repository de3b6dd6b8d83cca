"""The site's nats-server lives and dies with its gateway: a gateway killed with SIGKILL
takes its leaf server along, and a gateway started again on the same files runs its own
server on them, with what the site had stored. A server left running on those files
anyway (here: started by the test, so nothing kills it) is stopped first."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from safething.store import open_store
from safething.store.nats_server import NatsServer

from .processes import hub_and_site


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _read_pid(pid_path: Path) -> int | None:
    try:
        return int(pid_path.read_text().strip())
    except (OSError, ValueError):
        return None


async def _leaf_pid(pid_path: Path, *, not_: int | None = None) -> int:
    """The running leaf server's process id, once its pid file has one (other than
    ``not_``: the file of a server that ended may still be there)."""
    async with asyncio.timeout(60):
        while (pid := _read_pid(pid_path)) is None or pid == not_ or not _running(pid):
            await asyncio.sleep(0.05)
    return pid


async def test_a_killed_gateway_takes_its_leaf_server_along(tmp_path: Path) -> None:
    hub, site, site_port = hub_and_site(tmp_path, "http")
    await hub.start()
    pid_path = site.root / "nats" / "leaf-site1.pid"
    site_url = f"nats://127.0.0.1:{site_port}?bucket=site1"
    try:
        await site.start()
        leaf = await _leaf_pid(pid_path)
        assert _running(leaf)
        async with await open_store(site_url) as store:
            written = await store.put("probe.before", b"kept on the site's files")

        assert site.process is not None
        site.process.send_signal(signal.SIGKILL)
        await site.process.wait()
        async with asyncio.timeout(30):
            while _running(leaf):
                await asyncio.sleep(0.05)

        # started again on the same files (and the same port): its own server, the data
        await site.start()
        await _leaf_pid(pid_path, not_=leaf)
        async with await open_store(site_url) as store:
            record = await store.get("probe.before")
        assert record is not None and record.revision == written
        assert await site.stop() == 0
        async with asyncio.timeout(30):  # a clean stop stops it too
            while (pid := _read_pid(pid_path)) is not None and _running(pid):
                await asyncio.sleep(0.05)
    finally:
        await site.stop()
        await hub.stop()


async def test_a_server_left_on_the_sites_files_is_stopped_first(tmp_path: Path) -> None:
    hub, site, site_port = hub_and_site(tmp_path, "http")
    await hub.start()
    # what a gateway killed before it could arrange for its server's end would leave
    left = NatsServer(site.root / "nats", name="leaf-site1", domain="site1", port=site_port)
    await left.start()
    assert left.process is not None
    try:
        await site.start()
        async with asyncio.timeout(30):
            await left.process.wait()  # stopped, not left beside the gateway's own
        await _leaf_pid(site.root / "nats" / "leaf-site1.pid", not_=left.process.pid)
        assert await site.stop() == 0
    finally:
        await site.stop()
        await left.stop()
        await hub.stop()


async def test_a_gateway_refuses_another_server_on_its_leaf_port(tmp_path: Path) -> None:
    """Another nats-server (not on the site's files) already listens on the leaf port:
    the gateway does not take it for its own site server; it stops with a clear error."""
    hub, site, site_port = hub_and_site(tmp_path, "http")
    foreign = NatsServer(tmp_path / "foreign", name="leaf-site1", domain="site1", port=site_port)
    await foreign.start()
    try:
        with pytest.raises(AssertionError, match="did not start"):
            await site.start()
        assert site.process is not None
        assert await asyncio.wait_for(site.process.wait(), 30) != 0
        assert f"another server answers on 127.0.0.1:{site_port}" in site.log()
        assert "Traceback" not in site.log()
        assert foreign.process is not None and foreign.process.returncode is None
    finally:
        await site.stop()
        await foreign.stop()
        await hub.stop()
