"""A console with real parts for tests and benchmarks: the gateway test site
(:func:`safething_gateway.testing.open_site`: a SQLite store, a registry, a broker with
logins, so a device provisioned in the console logs in with what the page shows)
with a gateway on its HTTP bridge, the demo's gardening device, on free loopback ports.

It runs in its own thread and event loop so a synchronous browser driver
(Playwright's sync API) can use it from the test's thread::

    with ConsoleSite(tmp_path) as site:
        site.url, site.setup_code, site.garden_id
        site.call(site.garden.set("moisture", 42.0))
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from safething.net import Identity
from safething.store import Store
from safething.things import ActionRequest, Thing
from safething_gateway.console.console import Console, ConsoleSettings
from safething_gateway.provisioning import DeviceEndpoints

__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "ConsoleSite", "launch_chromium"]

T = TypeVar("T")

CHROMIUM = "/usr/bin/chromium"
"""Debian's Chromium (``apt-get install chromium``); Playwright never downloads a browser here."""
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def launch_chromium(playwright: Any) -> Any:
    """Debian's Chromium through Playwright (sync or async API object)."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


class ConsoleSite:
    """Store, registry, gateway (HTTP bridge), gardening device and console, all real."""

    def __init__(self, root: Path, *, with_garden: bool = True, login: bool = True) -> None:
        self.root = root
        self.with_garden = with_garden
        self.login = login
        """Log in on loopback too (the owner is bound with the setup code first)."""
        self.owner = Identity.generate("owner")
        """Replaced by the gateway site's owner once started."""
        self._stack = contextlib.AsyncExitStack()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="console-site", daemon=True
        )
        self.store: Store | None = None
        self.site: Any = None
        """The :class:`~safething_gateway.testing.GatewaySite`: its broker has logins."""
        self.registry: Any = None
        """The gateway's :class:`~safething_gateway.registry.Registry`."""
        self.gateway: Any = None
        """The :class:`~safething_gateway.core.Gateway` (its HTTP bridge only)."""
        self.console: Console | None = None
        self.garden: Thing | None = None
        self.garden_id = ""
        self.valve_requests: list[dict[str, Any]] = []

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Run ``coro`` on the site's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self) -> ConsoleSite:
        self._thread.start()
        try:
            self.call(self._start())
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._thread.is_alive():
            self.call(self._stop())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
        self.loop.close()

    @property
    def url(self) -> str:
        assert self.console is not None
        return self.console.url.rstrip("/")

    @property
    def setup_code(self) -> str:
        assert self.console is not None and self.console.binding.setup_code is not None
        return self.console.binding.setup_code

    async def _start(self) -> None:
        # the gateway extra: imported when a site starts, so the console extra alone imports
        from safething_gateway.testing import open_site

        site = await self._stack.enter_async_context(open_site(self.root))
        self.site = site
        self.store, self.registry, self.owner = site.store, site.registry, site.owner
        self.gateway = await self._stack.enter_async_context(site.gateway("http"))
        http = site.bridges["http"]
        if self.with_garden:
            await self._start_garden()
        self.console = Console(
            store=self.store,
            owner=self.owner,
            settings=ConsoleSettings(self.root / "console", port=0, require_login=self.login),
            gateway=self.gateway,
            admin=site.admin,
            endpoints=DeviceEndpoints(
                mqtt_port=site.broker.port, http_url=f"http://127.0.0.1:{getattr(http, 'port', 0)}"
            ),
        )
        await self.console.start()
        await self.console.serve()
        await self.wait_indexed()

    async def _start_garden(self) -> None:
        from safething.demo.garden import device_description

        device = Identity.generate("garden-device")
        self.garden_id = f"garden-device-{device.public_sign_key.hex()[:8]}"
        assert self.store is not None
        self.garden = Thing(
            device_description(self.garden_id), identity=device, owner=self.owner, store=self.store
        )
        await self.garden.start()

        async def open_valve(request: ActionRequest) -> dict[str, Any]:
            self.valve_requests.append(dict(request.args))
            await request.progress(50, "opening")
            await asyncio.sleep(0.3)
            return {"valve": "open", "psi": request.args.get("psi")}

        self.garden.on_action("OpenValve", open_valve)
        await self.garden.register()
        await self.garden.publish()
        await self.garden.set("moisture", 31.5)
        await self.garden.set("valve", "closed")

    async def wait_indexed(self, thing_id: str | None = None, timeout: float = 30) -> None:
        """Until the console's index is loaded (and holds ``thing_id``)."""
        assert self.console is not None
        index = self.console.data.index
        async with asyncio.timeout(timeout):
            await index.wait_for(lambda i: i.loaded and (thing_id is None or thing_id in i.rows))

    async def _stop(self) -> None:
        if self.console is not None:
            await self.console.close()
        if self.garden is not None:
            await self.garden.close()
        await self._stack.aclose()
