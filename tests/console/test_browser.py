"""The console end to end in Debian's Chromium: what an owner does, and what an attacker tries."""

from __future__ import annotations

import http.server
import io
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from safething.net import Client, Identity
from safething.things import Attribute, Thing, ThingClient, ThingDescription
from safething_gateway.console.testing import ConsoleSite
from tests.console.conftest import PASSWORD, bind_and_login

SET_VISIBILITY = """state => {
    Object.defineProperty(document, 'visibilityState', {value: state, configurable: true});
    document.dispatchEvent(new Event('visibilitychange'));
}"""


def status_of(site: ConsoleSite, thing_id: str) -> str:
    assert site.store is not None

    async def read() -> str:
        async with ThingClient(Client(site.store)) as things:
            return await things.status(thing_id)

    return site.call(read())


def register_new_thing(site: ConsoleSite, thing_id: str) -> Identity:
    """A thing that registers itself (plugged in) and waits to be published by its owner."""
    identity = Identity.generate(thing_id)

    async def register() -> None:
        desc = ThingDescription(
            thing_id,
            title="Greenhouse fan",
            attributes=[Attribute("speed", "number", unit="rpm", dynamic=True)],
        )
        async with Thing(desc, identity=identity, owner=site.owner, store=site.store) as thing:
            await thing.register()

    site.call(register())
    return identity


def test_bind_owner_with_the_setup_code_then_log_in(browser: Any, fresh_site: ConsoleSite) -> None:
    site = fresh_site
    page = browser.new_page()
    page.goto(site.url + "/things")
    assert page.url.endswith("/setup"), "nothing is shown before the owner is bound"
    page.fill("input[name=code]", "not-the-code")
    page.fill("input[name=password]", PASSWORD)
    page.fill("input[name=confirm]", PASSWORD)
    page.click("button[type=submit]")
    assert "wrong setup code" in page.inner_text("[role=alert]")
    assert not (site.root / "console" / "owner.identity.json").exists()
    time.sleep(0.6)  # the back-off after one wrong code
    code = site.setup_code
    page.fill("input[name=code]", code)
    page.fill("input[name=password]", PASSWORD)
    page.fill("input[name=confirm]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/login")
    # the code is spent: nobody binds a second owner with it
    assert site.console is not None and site.console.binding.setup_code is None
    page.goto(site.url + "/setup")
    assert page.url.endswith("/login")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/things")
    cookie = next(c for c in page.context.cookies() if c["name"] == "st-session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    page.goto(site.url + "/sessions")
    assert page.locator("ul.sessions li").count() == 1
    page.close()


def test_wrong_password_is_refused_and_slowed(browser: Any, fresh_site: ConsoleSite) -> None:
    site = fresh_site
    assert site.console is not None
    site.console.backoff.first_s = 2.0  # wide enough that "at once" holds on a loaded machine
    page = browser.new_page()
    bind_and_login(page, site)
    page.context.clear_cookies()
    page.goto(site.url + "/login")
    page.fill("input[name=password]", "wrong password")
    page.click("button[type=submit]")
    assert "wrong password; wait 2 s" in page.inner_text("#login-error")
    # at once, even the right password waits: the failure slowed this address and account
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    assert "too many failed attempts" in page.inner_text("#login-error")
    assert page.url.endswith("/login")
    time.sleep(2.1)
    page.fill("input[name=password]", "wrong again")
    page.click("button[type=submit]")
    assert "wait 4 s" in page.inner_text("#login-error"), "the wait doubles"
    time.sleep(4.1)  # the back-off expires: never a permanent ban
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/things")
    failed = [e for e in site.console.audit.entries() if e.action == "login-failed"]
    assert len(failed) == 2 and all(e.ok for e in failed)
    page.close()


def test_find_the_gardening_device(page: Any, site: ConsoleSite, shots: Path) -> None:
    page.fill("#q", "gardening")
    row = page.locator(f"li.thing-row[data-thing='{site.garden_id}']")
    row.wait_for()
    page.select_option("select[name=status]", "disabled")
    page.locator("li.thing-row").first.wait_for(state="detached")
    page.select_option("select[name=status]", "published")
    row.wait_for()
    page.screenshot(path=shots / "console-things.png", full_page=True)
    row.locator("a.thing-id").click()
    page.wait_for_url(f"**/things/{site.garden_id}")
    assert "OpenValve" in page.inner_text("main")
    assert "GD-" in page.inner_text("main") or "model" in page.inner_text("main")


def test_publish_a_new_thing_after_comparing_its_fingerprint(page: Any, site: ConsoleSite) -> None:
    page.goto(site.url + "/things?status=registered")
    page.wait_for_selector("body[data-stream='open']")
    identity = register_new_thing(site, "greenhouse-fan-01")
    row = page.locator("li.thing-row[data-thing='greenhouse-fan-01']")
    row.wait_for()  # the list follows the store: the new thing appears without a reload
    assert "new" in row.inner_text()
    row.locator("a.thing-id").click()
    shown = page.inner_text("#thing-fingerprint").replace(" ", "")
    assert shown == identity.public_sign_key.hex()
    page.fill("#publish input[name=fingerprint]", "00" * 32)
    page.click("#publish button")
    assert "confirm the thing's key fingerprint" in page.inner_text("[role=alert]")
    assert status_of(site, "greenhouse-fan-01") == "registered"
    page.go_back()
    page.fill("#publish input[name=fingerprint]", page.inner_text("#thing-fingerprint"))
    page.click("#publish button")
    page.wait_for_selector("[data-status='greenhouse-fan-01'].published")
    assert status_of(site, "greenhouse-fan-01") == "published"


def test_a_dynamic_attribute_changes_live_and_its_chart_gains_a_point(
    page: Any, site: ConsoleSite, shots: Path
) -> None:
    page.goto(f"{site.url}/things/{site.garden_id}")
    chart = page.locator(".chart[data-attr='moisture']")
    page.wait_for_selector(".chart[data-attr='moisture'][data-ready='1']")
    page.wait_for_selector("body[data-stream='open']")
    before = int(chart.get_attribute("data-points") or 0)
    assert site.garden is not None
    site.call(site.garden.set("moisture", 77.5))
    value = page.locator(f"[data-value='{site.garden_id}|moisture']")
    expect(value).to_have_text("77.5")
    expect(chart).to_have_attribute("data-points", str(before + 1))
    assert site.garden.identity.public_sign_key.hex().startswith(
        page.get_attribute(f"[data-signer='{site.garden_id}|moisture']", "title")[:16]
    )
    page.screenshot(path=shots / "console-thing.png", full_page=True)


def test_desired_against_reported_and_subscriptions_of_and_to_a_thing(
    page: Any, site: ConsoleSite, shots: Path
) -> None:
    """A window whose opening the owner sets (sealed for the thing: Owner access), and
    which subscribes to the garden's moisture."""
    import asyncio

    window_id = "greenhouse-window-01"
    desc = ThingDescription(
        window_id,
        title="Greenhouse window",
        attributes=[
            Attribute("opening", "number", unit="%", dynamic=True, writable=True, access="owner")
        ],
    )
    window = Thing(desc, identity=Identity.generate(window_id), owner=site.owner, store=site.store)
    release: list[asyncio.Event] = []

    async def start() -> None:
        release.append(asyncio.Event())
        window.on_desired("opening", lambda value: release[0].wait())  # held until released
        await window.start()
        await window.register()
        await window.publish()
        await window.set("opening", 10.0)
        await window.subscribe(
            site.garden_id, attribute="moisture", filter="gt:70", callback=lambda note: None
        )

    site.call(start())
    try:
        assert site.console is not None
        index = site.console.data.index
        site.call(index.wait_for(lambda i: bool(i.subscriptions_of(window_id))))
        page.goto(f"{site.url}/things/{window_id}")
        page.wait_for_selector("body[data-stream='open']")
        state = page.locator(f"[data-desired-state='{window_id}|opening']")
        expect(state).to_have_text("none")
        page.fill("form.desired input[name=value]", "55")
        page.click("form.desired button[type=submit]")
        expect(state).to_have_text("pending")  # in the inbox; the thing has not applied it
        # sealed for the thing, yet shown: the console knows what it asked for
        expect(page.locator(f"[data-desired='{window_id}|opening']")).to_have_text("55")
        expect(page.locator(f"[data-value='{window_id}|opening']")).to_have_text("10")
        site.loop.call_soon_threadsafe(release[0].set)
        expect(state).to_have_text("applied")
        expect(page.locator(f"[data-value='{window_id}|opening']")).to_have_text("55")
        of = page.inner_text("#subscriptions-of")
        assert site.garden_id in of and "moisture" in of and "gt:70" in of
        page.goto(f"{site.url}/things/{site.garden_id}")
        to = page.locator("#subscriptions-to")
        assert window_id in to.inner_text() and "gt:70" in to.inner_text()
        to.get_by_role("link", name=window_id).click()
        page.wait_for_url(f"**/things/{window_id}")
        # a fresh page reads the state back: applied
        expect(page.locator(f"[data-desired-state='{window_id}|opening']")).to_have_text("applied")
        page.screenshot(path=shots / "console-thing-writable.png", full_page=True)
    finally:
        site.call(window.close())


def test_request_open_valve_with_a_parameter_and_follow_it_to_done(
    page: Any, site: ConsoleSite
) -> None:
    page.goto(f"{site.url}/things/{site.garden_id}")
    form = page.locator("form[data-action='OpenValve']")
    form.locator("input[name=psi]").fill("42")
    form.locator("button[type=submit]").click()
    request = form.locator("li.request")
    request.wait_for()
    page.wait_for_selector("form[data-action='OpenValve'] li.request[data-state='done']")
    assert '"psi":42' in request.inner_text()
    assert {"psi": 42.0} in site.valve_requests
    assert site.console is not None
    kinds = [(e.action, e.ok) for e in site.console.audit.entries()]
    assert ("request", True) in kinds and ("result", True) in kinds


def test_provision_a_device_decode_its_qr_code_then_revoke_it(
    page: Any, site: ConsoleSite, shots: Path
) -> None:
    import zxingcpp
    from PIL import Image

    page.goto(site.url + "/provision")
    page.fill("input[name=device_id]", "bed-two-01")
    page.select_option("select[name=transport]", "mqtt")
    page.fill("input[name=wifi_ssid]", "garden-wifi")
    page.click("main form button[type=submit]")
    qr = page.locator("#qr svg")
    qr.wait_for()
    page.screenshot(path=shots / "console-provision.png", full_page=True)
    image = Image.open(io.BytesIO(qr.screenshot()))
    found = zxingcpp.read_barcodes(image)
    assert len(found) == 1
    doc = json.loads(found[0].text)
    assert site.registry is not None and site.site is not None
    record = site.registry.get("bed-two-01")
    assert doc["device_id"] == "bed-two-01" and doc["transport"] == "mqtt"
    assert doc["secret"] == record.secret.hex()
    assert doc["wifi"]["ssid"] == "garden-wifi"
    mqtt = doc["mqtt"]
    assert (mqtt["host"], mqtt["port"]) == ("127.0.0.1", site.site.broker.port)
    # the broker (real Mosquitto with logins) takes the login the page showed, no other
    assert mqtt["username"] == "bed-two-01"
    site.call(site.site.login_works("bed-two-01", mqtt["password"], True))
    site.call(site.site.login_works("bed-two-01", "not-" + mqtt["password"], False))

    page.goto(site.url + "/devices")
    device = page.locator("li.device[data-device='bed-two-01']")
    assert "offline" in device.inner_text()
    page.screenshot(path=shots / "console-devices.png", full_page=True)
    device.locator("button", has_text="Revoke").click()
    page.wait_for_selector("[data-device-state='bed-two-01']:text('revoked')")
    assert "its broker login and ACL were removed" in page.inner_text("main")
    assert site.registry.get("bed-two-01", allow_revoked=True).revoked
    # revoked: the broker refuses the login from now on
    site.call(site.site.login_works("bed-two-01", mqtt["password"], False))
    assert site.site.auth is not None and "bed-two-01" not in site.site.auth.users()


@pytest.fixture
def attacker_site() -> Iterator[tuple[str, list[str]]]:
    """Another origin (another port of this host) whose page posts to the console."""
    page_html: list[str] = [""]
    served: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            served.append(self.path)
            body = page_html[0].encode()
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", page_html
    finally:
        server.shutdown()
        server.server_close()


def test_a_cross_site_post_is_refused(
    page: Any, site: ConsoleSite, attacker_site: tuple[str, list[str]]
) -> None:
    url, html = attacker_site
    html[0] = (
        f"<form id=f method=post action='{site.url}/things/{site.garden_id}/disable'>"
        "<input name=x value=1></form><script>document.getElementById('f').submit()</script>"
    )
    assert status_of(site, site.garden_id) == "published"
    page.goto(url + "/prize")
    expect(page.locator("body")).to_contain_text("refused")
    # the forged request reached the console (the owner's cookie went with it: same site)...
    assert "cross-site request refused" in page.inner_text("body")
    # ...and did nothing
    assert status_of(site, site.garden_id) == "published"


def test_a_tampered_audit_entry_is_shown_broken(page: Any, site: ConsoleSite, shots: Path) -> None:
    assert site.console is not None
    page.goto(site.url + "/activity")
    assert page.locator("#chain-ok").count() == 1
    page.screenshot(path=shots / "console-activity.png", full_page=True)
    log = site.console.audit
    seq = len(log)
    # the attacker can write the file: it rewrites what the newest entry says
    db = sqlite3.connect(log.path)
    with db:
        (doc,) = db.execute("SELECT doc FROM audit WHERE seq = ?", (seq,)).fetchone()
        changed = json.loads(doc)
        changed["detail"] = "nothing happened here"
        db.execute(
            "UPDATE audit SET doc = ? WHERE seq = ?",
            (json.dumps(changed, sort_keys=True, separators=(",", ":")), seq),
        )
    db.close()
    page.reload()
    assert f"breaks at entry {seq}" in page.inner_text("#chain-broken")
    entry = page.locator(f"ol.audit li[data-seq='{seq}']")
    assert "broken" in (entry.get_attribute("class") or "")
    assert "nothing happened here" in entry.inner_text()
    assert page.locator("ol.audit li.broken").count() == 1
    # put it back: the rest of the module sees an intact log
    db = sqlite3.connect(log.path)
    with db:
        db.execute("UPDATE audit SET doc = ? WHERE seq = ?", (doc, seq))
    db.close()


def test_the_stream_closes_while_the_tab_is_hidden(page: Any, site: ConsoleSite) -> None:
    assert site.console is not None
    hub = site.console.hub
    page.goto(f"{site.url}/things/{site.garden_id}")
    page.wait_for_selector("body[data-stream='open']")
    key = f"thing:{site.garden_id}"
    deadline = time.monotonic() + 10
    while not hub.watching(key) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert hub.watching(key)
    page.evaluate(SET_VISIBILITY, "hidden")
    while hub.watching(key) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not hub.watching(key), "the server dropped the hidden tab's stream"
    page.evaluate(SET_VISIBILITY, "visible")
    page.wait_for_selector("body[data-stream='open']")


@pytest.mark.parametrize(
    "path", ["/things", "/thing", "/devices", "/provision", "/activity", "/sessions"]
)
def test_every_page_is_usable_at_375_px(
    browser: Any, site: ConsoleSite, shots: Path, path: str
) -> None:
    context = browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True)
    page = context.new_page()
    bind_and_login(page, site)
    target = f"/things/{site.garden_id}" if path == "/thing" else path
    page.goto(site.url + target)
    page.wait_for_load_state("networkidle") if path != "/thing" else page.wait_for_selector(
        ".chart[data-ready='1']"
    )
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, f"{target} scrolls sideways at 375 px ({width} px wide)"
    for link in ("Things", "Devices", "Provision", "Activity"):
        assert page.locator("header nav").get_by_role("link", name=link, exact=True).is_visible()
    for button in page.locator("main button:visible").all():
        box = button.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 375
    if path in ("/things", "/thing"):
        page.screenshot(path=shots / f"console-phone-{path.strip('/')}.png", full_page=True)
    context.close()
