"""Browser tests of the console: Playwright for Python driving Debian's Chromium.

Browsers are never downloaded (`playwright install` is not used): set-up installs the
`chromium` package and the tests launch /usr/bin/chromium. Screenshots go to
``$SAFETHING_SCREENSHOTS`` when set (``docs/images`` to refresh the README's), else to a
temporary directory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from safething_gateway.console.testing import CHROMIUM, ConsoleSite, launch_chromium

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")  # sync Playwright keeps a loop running: never past this module
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (./scripts/test installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch_chromium(p)
        yield browser
        browser.close()


def bind_and_login(page: Any, site: ConsoleSite) -> None:
    """Bind the owner with the setup code (if not yet) and log in, through the pages."""
    page.goto(site.url + "/")
    if page.url.endswith("/setup"):
        page.fill("input[name=code]", site.setup_code)
        page.fill("input[name=password]", PASSWORD)
        page.fill("input[name=confirm]", PASSWORD)
        page.click("button[type=submit]")
    page.wait_for_url("**/login")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/things")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleSite]:
    with ConsoleSite(tmp_path_factory.mktemp("console-site")) as s:
        yield s


@pytest.fixture
def fresh_site(tmp_path: Path) -> Iterator[ConsoleSite]:
    with ConsoleSite(tmp_path, with_garden=False) as s:
        yield s


@pytest.fixture
def page(browser: Any, site: ConsoleSite) -> Iterator[Any]:
    """A logged-in owner's tab, desktop size."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    context.set_default_timeout(15_000)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    bind_and_login(tab, site)
    yield tab
    context.close()
    csp = [e for e in errors if "Content Security Policy" in e]
    assert not csp, f"the page broke its own CSP: {csp}"


@pytest.fixture(scope="session")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = os.environ.get("SAFETHING_SCREENSHOTS")
    path = Path(target) if target else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path
