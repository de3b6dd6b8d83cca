"""The WoT HTTP binding: a real node-wot consumer, real uvicorn, a real SQLite vault."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from safething.demo.garden import GardenDemo
from safething.net import Client, Identity
from safething.store import Store, open_store
from safething.things import ActionRequest, Thing, ThingOwner
from safething_gateway.bridges.http import HttpBridge
from safething_gateway.core import Gateway
from safething_gateway.registry import Registry
from safething_gateway.tokens import TokenStore
from tests.things.conftest import garden_description

NODE_DIR = Path(__file__).parent / "wot_node"


@pytest.fixture(scope="session")
def node() -> str:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed to run the node-wot consumer")
    lock = json.loads((NODE_DIR / "package-lock.json").read_text())
    wanted = lock["packages"]["node_modules/@node-wot/core"]["version"]
    installed = NODE_DIR / "node_modules" / "@node-wot" / "core" / "package.json"
    if not installed.exists() or json.loads(installed.read_text())["version"] != wanted:
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--prefer-offline"],
            cwd=NODE_DIR,
            check=True,
            capture_output=True,
            timeout=600,
        )
    return node


@dataclass
class Site:
    store: Store
    owner: Identity
    gateway: Gateway
    bridge: HttpBridge
    tokens: TokenStore

    @property
    def url(self) -> str:
        return self.bridge.endpoints()[0]


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    owner = Identity.generate("owner")
    tokens = TokenStore(tmp_path / "tokens", owner=owner)
    bridge = HttpBridge("127.0.0.1", 0, tokens=tokens)
    async with await open_store(f"sqlite://{tmp_path}/vault.db") as store:
        registry = Registry(tmp_path / "gateway.db")
        try:
            async with Gateway(
                store=store, registry=registry, owner=owner, bridges=[bridge]
            ) as gateway:
                await gateway.start()
                yield Site(store, owner, gateway, bridge, tokens)
        finally:
            registry.close()


async def test_node_wot_reads_observes_and_invokes_the_demo_garden(site: Site, node: str) -> None:
    token, identity = site.tokens.add("node-wot")
    async with GardenDemo(
        site.store,
        owner=site.owner,
        device=Identity.generate("device"),
        controller=Identity.generate("controller"),
        echo=lambda line: None,
        tick=0.2,
    ) as demo:
        # OpenValve is for the device's group: the owner authorises the token's identity
        await ThingOwner(Client(site.store, site.owner), demo.device_id).add_member(identity.public)
        consumer = await asyncio.create_subprocess_exec(
            node,
            str(NODE_DIR / "consume.mjs"),
            f"{site.url}/wot/{demo.device_id}",
            token,
            "moisture",
            "OpenValve",
            json.dumps({"psi": 40}),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=NODE_DIR,
        )
        assert consumer.stdout is not None
        steps: dict[str, Any] = {}
        try:
            async with asyncio.timeout(120):  # a hang guard, not a performance limit
                while len(steps) < 4:
                    line = await consumer.stdout.readline()
                    if not line:
                        break
                    steps.update(json.loads(line))
                await consumer.wait()
        finally:
            if consumer.returncode is None:
                consumer.kill()
                await consumer.wait()
        assert consumer.stderr is not None
        err = (await consumer.stderr.read()).decode()
        assert consumer.returncode == 0, err
        moisture = [r.value for r in await demo.console.history(demo.device_id, "moisture")]
    assert isinstance(steps["read"], int | float) and 0 <= steps["read"] <= 100
    assert steps["observing"] is True
    # the observed value is one the device wrote (verified on its way out)
    assert steps["observed"] != steps["read"] and steps["observed"] in moisture
    assert steps["invoked"] == {"valve": "open", "psi": 40.0}


@pytest.fixture
async def garden(site: Site) -> AsyncIterator[Thing]:
    async with Thing(
        garden_description(), identity=Identity.generate(), owner=site.owner, store=site.store
    ) as t:

        @t.action("Water")
        async def water(request: ActionRequest) -> float:
            return float(request.args["litres"])

        await t.register()
        await t.publish()
        await t.set("moisture", 40.0)
        await t.set("secret_code", "correct-horse")
        yield t


async def test_tokens_bind_requests_to_an_identity(site: Site, garden: Thing) -> None:
    token, identity = site.tokens.add("stranger")
    owner_token, _ = site.tokens.add("me", as_owner=True)
    base = f"{site.url}/wot/garden-01"
    bearer = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(timeout=30) as http:
        td = (await http.get(base)).json()  # the TD itself is public
        assert td["security"] == ["bearer_sc"]
        assert td["securityDefinitions"]["bearer_sc"]["scheme"] == "bearer"
        forms = td["properties"]["moisture"]["forms"]
        assert forms[0]["href"] == "safe://garden-01/properties/moisture"
        assert forms[0]["security"] == ["safething_sc"]
        assert {f["href"] for f in forms[1:]} == {
            f"{base}/properties/moisture",
            f"{base}/properties/moisture/observe",
        }
        # no token, a wrong token: 401, nothing read
        assert (await http.get(f"{base}/properties/moisture")).status_code == 401
        wrong = {"Authorization": "Bearer stt_" + "x" * 43}
        assert (await http.get(f"{base}/properties/moisture", headers=wrong)).status_code == 401
        # the token's identity reads what anyone may read, and no more
        assert (await http.get(f"{base}/properties/moisture", headers=bearer)).json() == 40.0
        denied = await http.get(f"{base}/properties/secret_code", headers=bearer)
        assert denied.status_code == 403
        # an action for the group: the thing itself refuses the stranger's signed request
        refused = await http.post(f"{base}/actions/Water", json={"litres": 2}, headers=bearer)
        assert refused.status_code == 409 and refused.json()["state"] == "rejected"
        assert "access denied" in refused.json()["detail"]
        # once the owner adds the identity to the group, the same request runs
        await ThingOwner(Client(site.store, site.owner), "garden-01").add_member(identity.public)
        done = await http.post(f"{base}/actions/Water", json={"litres": 2}, headers=bearer)
        assert done.status_code == 200 and done.json() == 2.0
        state = await http.get(f"{site.url}{done.headers['location']}", headers=bearer)
        assert state.json()["status"] == "done" and state.json()["output"] == 2.0
        # an owner token reads owner data
        mine = {"Authorization": f"Bearer {owner_token}"}
        secret = await http.get(f"{base}/properties/secret_code", headers=mine)
        assert secret.json() == "correct-horse"
        # revoked: refused at once
        site.tokens.revoke("stranger")
        assert (await http.get(f"{base}/properties/moisture", headers=bearer)).status_code == 401
        bad = await http.post(f"{base}/actions/Water", content=b"[1]", headers=mine)
        assert bad.status_code == 400
        bad = await http.post(f"{base}/actions/Water", content=b"{nope", headers=mine)
        assert bad.status_code == 400 and "not JSON" in bad.json()["detail"]
        assert (await http.get(f"{base}/properties/nope", headers=mine)).status_code == 404
        assert (await http.get(f"{site.url}/wot/no-such-thing", headers=mine)).status_code == 404
        bad = await http.post(f"{base}/actions/Water", json={"litres": "x"}, headers=mine)
        assert bad.status_code == 400


async def test_long_poll_events_are_not_lost_between_polls(site: Site, garden: Thing) -> None:
    token, _ = site.tokens.add("poller")
    url = f"{site.url}/wot/garden-01/events/VeryDryAlarm"
    bearer = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(timeout=60) as http:
        assert (await http.head(url, headers=bearer)).status_code == 200
        first = asyncio.create_task(http.get(url, headers=bearer))
        sent: list[float] = []
        async with asyncio.timeout(30):
            while not first.done():  # until the poll is there to see one
                sent.append(float(len(sent)))
                await garden.notify("VeryDryAlarm", sent[-1])
                await asyncio.sleep(0.1)
        served = (await first).json()
        # between polls, three more events: the next polls get every later one, in order
        for value in (50.0, 60.0, 70.0):
            sent.append(value)
            await garden.notify("VeryDryAlarm", value)
        got: list[float] = []
        while not got or got[-1] != 70.0:
            got.append((await http.get(url, headers=bearer)).json())
        assert got == sent[sent.index(served) + 1 :]


async def test_history_over_http(site: Site, garden: Thing) -> None:
    token, _ = site.tokens.add("charts")
    for i in range(70):
        await garden.set("moisture", float(i % 50))
    bearer = {"Authorization": f"Bearer {token}"}
    url = f"{site.url}/wot/garden-01/properties/moisture/history"
    async with httpx.AsyncClient(timeout=30) as http:
        points = (await http.get(url, headers=bearer)).json()["points"]
        assert len(points) == 71 and [p["seq"] for p in points] == list(range(1, 72))
        [bucket] = (await http.get(url, params={"every": 86400 * 10}, headers=bearer)).json()[
            "buckets"
        ]
        assert bucket["count"] == 71 and bucket["max"] == 49.0
        live = (await http.get(f"{site.url}/wot/garden-01/availability", headers=bearer)).json()
        assert live["state"] == "online"


async def test_token_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from safething.cli import main

    (tmp_path / "gateway.toml").write_text(
        f'[gateway]\nregistry = "{tmp_path}/gateway.db"\n[http]\nwot = true\n'
    )
    owner = Identity.generate("owner")
    owner.save(tmp_path / "owner.json")
    store_url = f"sqlite://{tmp_path}/vault.db"
    monkeypatch.setenv("SAFETHING_GATEWAY_CONFIG", str(tmp_path / "gateway.toml"))
    monkeypatch.setenv("SAFETHING_STORE", store_url)
    monkeypatch.setenv("SAFETHING_IDENTITY", str(tmp_path / "owner.json"))
    async with Thing(
        garden_description(), identity=Identity.generate(), owner=owner, store=store_url
    ) as t:
        await t.register()
    code = await asyncio.to_thread(main, ["token", "add", "node-red", "--group", "garden-01"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0 and lines[1].startswith("stt_")
    grant = TokenStore(tmp_path / "http-tokens").check(f"Bearer {lines[1]}")
    # only the token's hash is kept, in files no one else may read
    directory = tmp_path / "http-tokens"
    assert directory.stat().st_mode & 0o777 == 0o700
    for path in directory.iterdir():
        assert path.stat().st_mode & 0o777 == 0o600
        assert lines[1].encode() not in path.read_bytes() and lines[1] not in path.name
    async with await open_store(store_url) as store:
        members = await ThingOwner(Client(store, owner), "garden-01").members()
    assert grant.identity.public_sign_key in members
    assert await asyncio.to_thread(main, ["token", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "node-red"
    assert await asyncio.to_thread(main, ["token", "revoke", "node-red"]) == 0
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["token", "revoke", "node-red"]) == 1
    assert "no token named" in capsys.readouterr().err


async def test_only_verified_values_are_served(site: Site, garden: Thing, tmp_path: Path) -> None:
    """The store's attacker rewrites the latest moisture in the SQLite file, keeping the
    thing's signature: the binding answers 502, never the forged value."""
    import dataclasses
    import sqlite3

    from safething.net.records import EntryRecord
    from safething.things.layout import ThingAddresses
    from safething.things.values import dumps

    token, _ = site.tokens.add("reader")
    bearer = {"Authorization": f"Bearer {token}"}
    url = f"{site.url}/wot/garden-01/properties/moisture"
    async with httpx.AsyncClient(timeout=30) as http:
        assert (await http.get(url, headers=bearer)).json() == 40.0  # the genuine value
        address = ThingAddresses.of("garden-01").thing
        db = sqlite3.connect(tmp_path / "vault.db", isolation_level=None, timeout=10)
        try:
            rows = db.execute(
                "SELECT key, value FROM records WHERE key LIKE ?", (address.entry_prefix + "%",)
            ).fetchall()
            [(key, raw)] = [
                (k, v)
                for k, v in rows
                if EntryRecord.from_bytes(bytes(v), address, None).stored_key == b"a/moisture"
            ]
            record = EntryRecord.from_bytes(bytes(raw), address, None)
            forged = dataclasses.replace(record, stored_value=dumps({"n": 1, "t": 0.0, "v": 99.0}))
            db.execute(
                "UPDATE records SET value = ?, rev = rev + 1000000 WHERE key = ?",
                (forged.to_bytes(), key),
            )
        finally:
            db.close()
        token2, _ = site.tokens.add("fresh-reader")  # a client that never saw the genuine one
        for headers in (bearer, {"Authorization": f"Bearer {token2}"}):
            answer = await http.get(url, headers=headers)
            assert answer.status_code == 502, answer.text
            assert "99" not in answer.text
