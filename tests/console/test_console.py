"""The console's parts without a browser: the audit chain, back-off, sessions, the origin
check, and the console as the gateway process and ``safething console`` run it."""

from __future__ import annotations

import hashlib
import html
import json
import os
import signal
import sqlite3
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from safething.net import Identity
from safething_gateway.console.audit import AuditLog
from safething_gateway.console.auth import Backoff, Sessions, SlowDownError
from safething_gateway.console.guard import same_origin


def _log(tmp_path: Path, signer: Identity | None = None) -> AuditLog:
    log = AuditLog(tmp_path / "audit.db", signer or Identity.generate("owner"))
    for i in range(5):
        log.append("owner", "request", f"garden-{i}", "OpenValve psi=30")
    return log


def test_an_intact_audit_log_verifies(tmp_path: Path) -> None:
    log = _log(tmp_path)
    entries = list(log.entries())
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    assert all(e.ok for e in entries)
    exported = [json.loads(line) for line in log.export()]
    assert len(exported) == 5
    # what is exported checks elsewhere: the owner key verifies each signature
    assert all(log.key.verify(row["doc"].encode(), bytes.fromhex(row["sig"])) for row in exported)


def test_a_removed_audit_entry_breaks_the_chain_at_the_next(tmp_path: Path) -> None:
    log = _log(tmp_path)
    with sqlite3.connect(log.path) as db:
        db.execute("DELETE FROM audit WHERE seq = 3")
    broken = [(e.seq, e.problem) for e in log.entries() if not e.ok]
    assert broken == [(4, "chain broken: the entry before it was changed or removed")]


def test_an_entry_signed_by_another_key_is_refused(tmp_path: Path) -> None:
    log = _log(tmp_path)
    forger = AuditLog(tmp_path / "audit.db", Identity.generate("attacker"))
    forger.append("owner", "revoke", "garden-9")  # chained correctly, signed by the attacker
    entries = list(log.entries())
    assert [e.ok for e in entries] == [True] * 5 + [False]
    assert "signature" in entries[-1].problem


def test_the_back_off_doubles_is_capped_and_expires() -> None:
    now = [1000.0]  # the back-off's clock, moved by the test (a loaded machine cannot stretch it)
    backoff = Backoff(first_s=0.05, max_wait_s=0.2, forget_s=0.5, clock=lambda: now[0])
    assert backoff.failed("addr:1", "account:owner") == pytest.approx(0.05)
    with pytest.raises(SlowDownError):
        backoff.check("addr:2", "account:owner")  # another address, the same account
    now[0] += 0.06
    backoff.check("addr:2", "account:owner")  # the wait is over
    assert backoff.failed("addr:1") == pytest.approx(0.1)
    assert backoff.failed("addr:1") == pytest.approx(0.2)
    assert backoff.failed("addr:1") == pytest.approx(0.2)  # capped
    with pytest.raises(SlowDownError):
        backoff.check("addr:1")
    now[0] += 0.6  # forgotten: never a permanent ban
    backoff.check("addr:1", "account:owner")
    assert backoff.failed("addr:1") == pytest.approx(0.05)


def test_sessions_expire_when_idle_and_absolutely_and_can_be_revoked() -> None:
    owner = Identity.generate()
    sessions = Sessions(idle_s=0.3, max_s=0.8)
    idle = sessions.create(owner, "127.0.0.1", "test")
    time.sleep(0.4)
    assert sessions.get(idle.id) is None
    busy = sessions.create(owner, "127.0.0.1", "test")
    for _ in range(5):
        time.sleep(0.2)
        if sessions.get(busy.id) is None:
            break
    assert sessions.get(busy.id) is None, "used all along, still ended by the absolute limit"
    other = sessions.create(owner, "127.0.0.1", "test")
    assert sessions.revoke(other.short)
    assert sessions.get(other.id) is None
    assert not sessions.revoke("")


def _scope(**headers: str) -> dict[str, object]:
    return {
        "scheme": "http",
        "headers": [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()],
    }


def test_only_same_origin_requests_pass() -> None:
    assert same_origin(_scope(host="pi:8088", sec_fetch_site="same-origin"))[0]
    assert not same_origin(_scope(host="pi:8088", sec_fetch_site="same-site"))[0]
    assert not same_origin(_scope(host="pi:8088", sec_fetch_site="cross-site"))[0]
    assert same_origin(_scope(host="pi:8088", origin="http://pi:8088"))[0]
    assert not same_origin(_scope(host="pi:8088", origin="http://pi:9999"))[0]
    assert not same_origin(_scope(host="pi:8088"))[0]  # neither header: refused


def _lines(proc: subprocess.Popen[str], want: int) -> list[str]:
    assert proc.stdout is not None
    found: list[str] = []
    deadline = time.monotonic() + 60
    while len(found) < want and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("console"):
            found.append(line.strip())
    return found


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    return err


def test_the_gateway_process_serves_the_console(tmp_path: Path) -> None:
    Identity.generate("owner").save(tmp_path / "owner.json")
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"""
[gateway]
store = "sqlite://{tmp_path}/vault.db"
registry = "{tmp_path}/gateway.db"
identity = "{tmp_path}/owner.json"
[mqtt]
enabled = false
[coap]
port = 0
[http]
port = 0
[console]
enabled = true
port = 0
state_dir = "{tmp_path}/console"
"""
    )
    config.chmod(0o600)
    proc = subprocess.Popen(
        [sys.executable, "-m", "safething", "gateway", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "SAFETHING_IDENTITY": str(tmp_path / "owner.json")},
    )
    try:
        address, no_login = _lines(proc, 2)
        url = address.split("console: ", 1)[1].rstrip("/")
        assert url.startswith("http://127.0.0.1:")
        # on loopback by default: no login, no setup code printed, the owner's pages at once
        assert no_login.startswith("console: no login on loopback")
        first = httpx.get(url + "/things")
        assert first.status_code == 200 and 'id="things-rows"' in first.text
        assert "default-src 'self'" in first.headers["content-security-policy"]
        # a page of another site whose name points at 127.0.0.1 (DNS rebinding) gets nothing
        rebound = httpx.get(url + "/things", headers={"host": "attacker.example:8088"})
        assert rebound.status_code == 421 and "things-rows" not in rebound.text
        # and a cross-site form is refused as always
        forged = httpx.post(url + "/provision", headers={"origin": "http://attacker.example"})
        assert forged.status_code == 403
    finally:
        err = _stop(proc)
    assert "setup code" not in err
    assert not (tmp_path / "console" / "owner.identity.json").exists()


def _console(tmp_path: Path, *extra: str) -> subprocess.Popen[str]:
    """``safething console`` alone on a SQLite store, on a free loopback port."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "safething",
            "console",
            "--store",
            f"sqlite://{tmp_path}/v.db",
            "--identity",
            str(tmp_path / "owner.json"),
            "--port",
            "0",
            "--state-dir",
            str(tmp_path / "console"),
            *([] if "--config" in extra else ["--registry", str(tmp_path / "gateway.db")]),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_safething_console_alone_with_tls(tmp_path: Path) -> None:
    """``safething console --store URL --login`` with the owner's certificate: the owner
    is bound with the setup code; under TLS the cookie is ``__Host-`` and Secure."""
    if not Path("/usr/bin/openssl").exists():
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-days",
            "2",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    Identity.generate("owner").save(tmp_path / "owner.json")
    proc = _console(tmp_path, "--tls-cert", str(cert), "--tls-key", str(key), "--login")
    try:
        address, code, printed = _lines(proc, 3)
        url = address.split("console: ", 1)[1].rstrip("/")
        assert url.startswith("https://")
        der = ssl.PEM_cert_to_DER_cert(cert.read_text())
        assert printed.replace(":", "").lower().endswith(hashlib.sha256(der).hexdigest())
        with httpx.Client(base_url=url, verify=False, headers={"origin": url}) as http:
            assert http.get("/things").headers["location"] == "/setup"
            http.post(
                "/setup",
                data={
                    "code": code.rsplit(": ", 1)[1],
                    "password": "pw-12345678",
                    "confirm": "pw-12345678",
                },
            )
            login = http.post("/login", data={"password": "pw-12345678"})
            cookie = login.headers["set-cookie"]
            assert cookie.startswith("__Host-st-session=")
            assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
            assert "Path=/" in cookie and "Domain" not in cookie
            assert http.get("/things").status_code == 200
            # the provisioning QR code carries the certificate's fingerprint
            page = http.post("/provision", data={"device_id": "bed-three-01", "transport": "coap"})
            doc = json.loads(
                html.unescape(page.text.split('id="config-json">')[1].split("</pre>")[0])
            )
            assert doc["console_tls_sha256"] == hashlib.sha256(der).hexdigest()
    finally:
        _stop(proc)


def test_a_self_signed_certificate_is_made_once_and_its_fingerprint_printed(
    tmp_path: Path,
) -> None:
    Identity.generate("owner").save(tmp_path / "owner.json")
    seen = []
    for _ in range(2):  # the second start keeps the first certificate
        proc = _console(tmp_path, "--self-signed", "--login")
        try:
            address, _code, printed = _lines(proc, 3)
            url = address.split("console: ", 1)[1].rstrip("/")
            assert url.startswith("https://127.0.0.1:")
            assert "self-signed" in printed
            port = int(url.rsplit(":", 1)[1])
            served = ssl.get_server_certificate(("127.0.0.1", port))
            fingerprint = hashlib.sha256(ssl.PEM_cert_to_DER_cert(served)).hexdigest()
            assert (
                printed.rsplit(": ", 1)[1]
                == ":".join(fingerprint[i : i + 2] for i in range(0, 64, 2)).upper()
            )
            seen.append(fingerprint)
        finally:
            _stop(proc)
    assert seen[0] == seen[1]
    key = tmp_path / "console" / "console-key.pem"
    assert key.stat().st_mode & 0o077 == 0, "the certificate's key is readable by others"


def test_beyond_loopback_login_and_tls_are_on_by_default(tmp_path: Path) -> None:
    from safething_gateway.console.console import ConsoleSettings

    lan = ConsoleSettings(tmp_path, bind="0.0.0.0")
    assert lan.login_required and lan.makes_certificate
    assert ConsoleSettings(tmp_path, bind="192.168.1.20", require_login=False).login_required
    here = ConsoleSettings(tmp_path, bind="127.0.0.1")
    assert not here.login_required and not here.makes_certificate
    assert ConsoleSettings(tmp_path, bind="::1").loopback
    own = ConsoleSettings(tmp_path, bind="0.0.0.0", tls_cert="c.pem", tls_key="k.pem")
    assert not own.makes_certificate


def test_chart_series_keeps_gaps_empty() -> None:
    from safething_gateway.console.data import _series

    points = [(0.0, 1.0), (10.0, 2.0), (20.0, None), (30.0, None), (40.0, 5.0), (100.0, 6.0)]
    series = _series(points, 10.0)
    assert series["v"] == [1.0, 2.0, None, 5.0, None, 6.0]
    assert series["t"] == sorted(series["t"])


def test_owner_disables_publishes_and_manages_the_group(tmp_path: Path) -> None:
    """The owner's commands over HTTP, as the pages send them: each signed by the owner."""
    from safething.net import Client
    from safething.things import ThingClient, ThingOwner
    from safething_gateway.console.testing import ConsoleSite

    with ConsoleSite(tmp_path) as site:
        assert site.store is not None and site.console is not None
        url, garden = site.url, site.garden_id
        with httpx.Client(base_url=url, headers={"origin": url}) as http:
            http.post(
                "/setup",
                data={"code": site.setup_code, "password": "pw-12345678", "confirm": "pw-12345678"},
            )
            assert http.post("/login", data={"password": "pw-12345678"}).status_code == 303

            async def status() -> str:
                async with ThingClient(Client(site.store)) as things:
                    return await things.status(garden)

            assert http.post(f"/things/{garden}/disable").status_code == 303
            assert site.call(status()) == "disabled"
            key = site.console.data.index.rows[garden].key
            assert (
                http.post(f"/things/{garden}/publish", data={"fingerprint": key}).status_code == 303
            )
            assert site.call(status()) == "published"

            member = Identity.generate("controller")
            added = http.post(
                f"/things/{garden}/members",
                data={
                    "sign": member.public_sign_key.hex(),
                    "enc": member.public_encryption_key.hex(),
                },
            )
            assert added.status_code == 303

            async def members() -> set[str]:
                found = await ThingOwner(Client(site.store, site.owner), garden).members()
                return {k.hex() for k in found}

            assert member.public_sign_key.hex() in site.call(members())
            assert member.public_sign_key.hex() in http.get(f"/things/{garden}").text
            http.post(f"/things/{garden}/members", data={"remove": member.public_sign_key.hex()})
            assert member.public_sign_key.hex() not in site.call(members())
        actions = [e.action for e in site.console.audit.entries() if e.ok]
        assert actions[-4:] == ["disable", "publish", "add-member", "remove-member"]


def test_a_silent_thing_turns_offline_in_the_list_at_its_heartbeat_deadline() -> None:
    """Nothing is written when a thing dies: the list must not keep saying online."""
    from safething_gateway.console.data import ThingIndex, ThingRow

    index = ThingIndex()
    now = time.time()
    args = ("Fan", "published", "ab" * 32, "cd" * 32, (), (), ())
    index.put(ThingRow("fan-01", *args, online=True, online_until=now - 1), "00")
    index.put(ThingRow("fan-02", *args, online=True, online_until=now + 60), "01")
    index.put(ThingRow("fan-03", *args, online=True), "02")  # no heartbeat: no deadline
    offline, _ = index.query(online="offline")
    online, _ = index.query(online="online")
    assert [r.id for r in offline] == ["fan-01"]
    assert [r.id for r in online] == ["fan-02", "fan-03"]
    row = index.get("fan-02", now + 61)
    assert row is not None and row.online is False
    assert index.deadlines == {"fan-01": now - 1, "fan-02": now + 60}


def test_the_devices_page_follows_the_things_availability(tmp_path: Path) -> None:
    """The gateway calls a silent device offline in its thing (signed), not in the
    registry's column: the devices page shows what the thing says."""
    from safething_gateway.console.testing import ConsoleSite
    from safething_gateway.demo import device_description
    from safething_gateway.device_clients.base import DeviceLink
    from safething_gateway.device_clients.http import HttpDevice
    from safething_gateway.testing import wait_until

    with ConsoleSite(tmp_path, with_garden=False) as site:
        assert site.console is not None and site.gateway is not None and site.site is not None
        data = site.console.data
        done = site.site.admin.provision("bed-three-01", "http")
        link = DeviceLink("bed-three-01", done.record.secret, device_description("bed-three-01"))
        http_url = site.console.endpoints.http_url

        def state() -> str:
            return next(d.state for d in data.devices() if d.id == "bed-three-01")

        async def run() -> None:
            async with HttpDevice(link, http_url) as device:
                await device.start()
                await device.reading({"moisture": 40.0})
                await wait_until(lambda: state() == "online")
                # the gateway's sweep finds it silent
                await site.gateway.liveness.mark("bed-three-01", False, "inactive")
                await wait_until(lambda: state() == "offline")
                assert site.registry.get("bed-three-01").online, "the registry still says online"

        site.call(run())
        with httpx.Client(base_url=site.url, headers={"origin": site.url}) as http:
            http.post(
                "/setup",
                data={"code": site.setup_code, "password": "pw-12345678", "confirm": "pw-12345678"},
            )
            assert http.post("/login", data={"password": "pw-12345678"}).status_code == 303
            page = http.get("/devices").text
            assert 'data-device-state="bed-three-01">offline<' in page


def test_on_loopback_without_login_commands_are_the_owners_and_audited(tmp_path: Path) -> None:
    from safething.net import Client
    from safething.things import ThingClient
    from safething_gateway.console.testing import ConsoleSite

    with ConsoleSite(tmp_path, login=False) as site:
        assert site.store is not None and site.console is not None
        assert site.console.binding.setup_code is None, "nothing to bind on loopback"
        url, garden = site.url, site.garden_id
        with httpx.Client(base_url=url, headers={"origin": url}) as http:
            assert http.get("/setup").headers["location"] == "/things"
            assert http.post(f"/things/{garden}/disable").status_code == 303

        async def status() -> str:
            async with ThingClient(Client(site.store)) as things:
                return await things.status(garden)

        assert site.call(status()) == "disabled"  # signed by the owner's key: accepted
        last = list(site.console.audit.entries())[-1]
        assert last.action == "disable" and last.ok
        assert last.actor.startswith("owner (no login, loopback) from 127.0.0.1")


def test_safething_console_alone_provisions_with_the_gateways_broker_logins(
    tmp_path: Path,
) -> None:
    """``safething console --config gateway.toml``: the gateway's registry and broker files,
    so a device provisioned there gets its broker login as with ``safething provision``."""
    passwd, acl = tmp_path / "mosquitto.passwd", tmp_path / "mosquitto.acl"
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[gateway]\nregistry = "{tmp_path}/gw.db"\n'
        f'[mqtt]\npassword_file = "{passwd}"\nacl_file = "{acl}"\nreload_command = "true"\n'
    )
    Identity.generate("owner").save(tmp_path / "owner.json")
    proc = _console(tmp_path, "--config", str(config))
    try:
        address, _ = _lines(proc, 2)
        url = address.split("console: ", 1)[1].rstrip("/")
        with httpx.Client(base_url=url, headers={"origin": url}) as http:
            page = http.post("/provision", data={"device_id": "pump-00001", "transport": "mqtt"})
            doc = json.loads(
                html.unescape(page.text.split('id="config-json">')[1].split("</pre>")[0])
            )
            assert doc["mqtt"]["username"] == "pump-00001" and doc["mqtt"]["password"]
            assert "pump-00001:$7$" in passwd.read_text()
            assert "topic write st/v1/pump-00001/up/#" in acl.read_text()
            http.post("/devices/pump-00001/revoke")
            assert "pump-00001" not in passwd.read_text()
    finally:
        _stop(proc)
    assert (tmp_path / "gw.db").exists()


def test_a_reading_written_by_a_key_granted_by_mistake_is_shown_refused(tmp_path: Path) -> None:
    """A key the owner granted write rights on a thing's MD by mistake writes a reading
    and an event: the thing's page shows the reading refused, not as a verified value,
    and no such event; it still loads."""
    from safething.net import Action, Client
    from safething.things import layout
    from safething.things.layout import ThingAddresses
    from safething.things.values import dumps
    from safething_gateway.console.testing import ConsoleSite

    with ConsoleSite(tmp_path, login=False) as site:
        assert site.store is not None and site.console is not None
        url, garden = site.url, site.garden_id
        address = ThingAddresses.of(garden).thing
        mistake = Identity.generate("mistake")
        owner_md = Client(site.store, site.owner).md(address.name, address.tag)
        rights = Action.UPDATE | Action.INSERT
        site.call(owner_md.set_permissions(mistake.public_sign_key, rights))
        forger = Client(site.store, mistake).md(address.name, address.tag)
        forged = dumps({"n": 1000, "t": time.time(), "v": 1.5})
        site.call(forger.put(layout.attr_key("moisture"), forged))
        site.call(forger.put(layout.event_key("VeryDryAlarm", 1000, size=8), forged))
        with httpx.Client(base_url=url, headers={"origin": url}) as http:
            page = http.get(f"/things/{garden}")
        assert page.status_code == 200
        assert "refused: not signed by the thing" in page.text
        assert mistake.public_sign_key.hex()[:8] not in page.text  # shown as no signer


def test_a_description_written_by_a_key_granted_by_mistake_is_not_listed(tmp_path: Path) -> None:
    """A key the owner granted update rights on a thing's MD by mistake rewrites its
    description (a title and an action of its choosing) and its status: the things list
    reads the thing again as its change feed says, refuses both (counted), and keeps
    showing what the thing and its owner signed; no forged title or action on any page."""
    from safething.net import Action, Client
    from safething.things import layout
    from safething.things.layout import ThingAddresses
    from safething.things.values import dumps
    from safething_gateway.console.testing import ConsoleSite

    with ConsoleSite(tmp_path, login=False) as site:
        assert site.store is not None and site.console is not None
        url, garden = site.url, site.garden_id
        data = site.console.data
        address = ThingAddresses.of(garden).thing
        mistake = Identity.generate("mistake")
        owner_md = Client(site.store, site.owner).md(address.name, address.tag)
        site.call(owner_md.set_permissions(mistake.public_sign_key, Action.UPDATE))
        forger = Client(site.store, mistake).md(address.name, address.tag)
        doc = site.call(data.view(garden)).description.to_dict()
        doc["title"] = "Forged garden"
        doc["actions"] = [{**doc["actions"][0], "name": "OpenGate"}]
        site.call(forger.put(layout.DESC, dumps(doc)))
        site.call(forger.put(layout.STATUS, dumps({"s": "disabled", "t": time.time()})))
        refused = data.reader.client.tampered_count
        assert site.call(data.learn(address.name.hex())) is None  # as the change feed does
        assert data.reader.client.tampered_count > refused
        with httpx.Client(base_url=url, headers={"origin": url}) as http:
            listed = http.get("/things")
        assert listed.status_code == 200
        assert garden in listed.text
        assert "Forged garden" not in listed.text and "OpenGate" not in listed.text
        assert data.index.rows[garden].status == "published"


def test_a_desired_value_with_a_time_no_float_holds_leaves_the_thing_page_working(
    tmp_path: Path,
) -> None:
    """Anyone allowed to ask a thing for a value writes a desired value into its inbox
    while it is down, with a time that is an integer too large for a float (CBOR carries
    any integer): the thing's page still loads and shows the reported value; that
    record is passed over."""
    from safething.net import Client
    from safething.things import Attribute, Thing, ThingDescription
    from safething.things.layout import ThingAddresses
    from safething.things.values import dumps
    from safething_gateway.console.testing import ConsoleSite

    with ConsoleSite(tmp_path, login=False, with_garden=False) as site:
        assert site.store is not None and site.console is not None
        url, lamp_id = site.url, "lamp-01"
        desc = ThingDescription(
            lamp_id, attributes=[Attribute("level", "number", dynamic=True, writable=True)]
        )
        lamp = Thing(desc, identity=Identity.generate(lamp_id), owner=site.owner, store=site.store)

        async def register_then_stop() -> None:
            async with lamp:
                await lamp.register(publish=True)
                await lamp.set("level", 40.0)

        site.call(register_then_stop())
        inbox = ThingAddresses.of(lamp_id).inbox
        asker = Client(site.store, Identity.generate("asker")).md(inbox.name, inbox.tag)
        site.call(asker.insert("d/level/0001", dumps({"t": 10**400, "v": 90.0})))
        site.call(site.wait_indexed(lamp_id))
        with httpx.Client(base_url=url, headers={"origin": url}) as http:
            page = http.get(f"/things/{lamp_id}")
        assert page.status_code == 200
        assert "lamp-01" in page.text and "40" in page.text


def test_requests_of_any_shape_get_answers_not_server_errors(tmp_path: Path) -> None:
    """The owner's own browser (or a script with its session) sends the console requests
    of any shape: unknown things, attributes and actions, form fields with wrong types,
    numbers no float holds, NaN, long and odd strings, odd query parameters. Each gets an
    answer below 500, and the console goes on serving its pages. Seeded (3 x 100)."""
    import random

    from safething_gateway.console.testing import ConsoleSite

    values = [
        "",
        "1",
        "-1",
        "1e400",
        "-1e400",
        "nan",
        "inf",
        "1" * 500,
        "true",
        "open",
        "[1, 2]",
        '{"a": 1}',
        "\u202e\x00",
        "x" * 5_000,
        "../../etc/passwd",
        "%00",
        "garden-01",
    ]
    with ConsoleSite(tmp_path, login=False) as site:
        url, garden = site.url, site.garden_id
        names = [garden, "nobody", "", "x" * 300, "%2e%2e"]
        parts = ["moisture", "valve", "OpenValve", "nothing", "x" * 300, "%00"]
        with httpx.Client(base_url=url, headers={"origin": url}, timeout=30) as http:
            for seed in (1, 2, 3):
                rng = random.Random(seed)
                for _ in range(100):
                    thing, part = rng.choice(names), rng.choice(parts)
                    form = {
                        rng.choice(
                            ["value", "psi", "remove", "add", "device_id", "transport", "x"]
                        ): rng.choice(values)
                        for _ in range(rng.randint(0, 3))
                    }
                    query = {rng.choice(["q", "status", "range", "keys"]): rng.choice(values)}
                    method, path = rng.choice(
                        [
                            ("GET", "/things"),
                            ("GET", f"/things/{thing}"),
                            ("GET", f"/things/{thing}/history/{part}"),
                            ("POST", f"/things/{thing}/actions/{part}"),
                            ("POST", f"/things/{thing}/desired/{part}"),
                            ("POST", f"/things/{thing}/members"),
                            ("POST", f"/things/{thing}/publish"),
                            ("POST", "/devices/nobody-01/revoke"),
                            ("POST", "/provision"),
                            ("GET", "/activity"),
                            ("POST", f"/sessions/{part}/revoke"),
                        ]
                    )
                    if method == "GET":
                        answer = http.get(path, params=query)
                    else:
                        answer = http.post(path, data=form, params=query)
                    assert answer.status_code < 500, (method, path, form, query, answer.text[:300])
            assert http.get("/things").status_code == 200
            assert http.get(f"/things/{garden}").status_code == 200
