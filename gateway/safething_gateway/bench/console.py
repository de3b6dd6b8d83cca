"""Benchmarks of the web console (``safething bench --only console``).

The console runs as ``safething console`` in a child process on a SQLite store
(WAL, ``synchronous=NORMAL``) in the group's temporary directory, on a free
loopback port; the bench binds its owner with the printed setup code and logs in
over HTTP, as a browser would.

``console_index_load_s``
    From the console's start until its things page counts every registered thing
    (each description, key list and status read and verified once).
``console_things_page_render_ms`` (first) and ``console_things_page_render_p50_ms``
    Server time to render the things page (its ``Server-Timing: render`` header)
    with 10,000 registered things (``--quick``: 200): the first request after the
    index is loaded, then the median of 20; ``..._response_p50_ms`` is the whole
    HTTP exchange over loopback. Target: <= 300 ms.
``console_set_to_page_latency_*``
    A thing in the bench process calls ``set("moisture", v)``; Debian's Chromium
    (Playwright) shows the thing page, where a ``MutationObserver`` stamps the
    moment the new value is in the page (``Date.now()``, the same clock as the
    bench's ``time.time()``). Target: p50 <= 100 ms.
``console_rss_1_client_mb``, ``console_rss_10_clients_mb``
    The child's resident set (``VmRSS``) with 1, then 10 tabs open on the thing
    page, each with its event stream, while the thing writes twice a second.

Without Debian's Chromium (``/usr/bin/chromium``) or Playwright (the dev extra),
only the render and index metrics are measured, and the run says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import statistics
import time
from pathlib import Path
from typing import Any

from safething.bench.common import (
    STORE_SETTINGS,
    logged_child_error,
    sqlite_url,
    start_logged,
    with_p_target,
    with_target,
)
from safething.bench.runner import BenchContext, GroupFunc, Metric, latency_metrics, metric
from safething.net import Identity
from safething.store import open_store
from safething.things import Attribute, Thing, ThingDescription

__all__ = ["GROUPS"]

PASSWORD = "bench password 1"
RENDER_SAMPLES = 20


async def _register(store: Any, owner: Identity, count: int) -> None:
    async def one(i: int) -> None:
        desc = ThingDescription(
            f"sensor-{i:05d}",
            title=f"Soil sensor {i}",
            attributes=[Attribute("moisture", "number", unit="%", dynamic=True)],
        )
        async with Thing(desc, identity=Identity.generate(), owner=owner, store=store) as t:
            await t.register()
            if i % 2 == 0:
                await t.publish()

    for start in range(0, count, 50):
        await asyncio.gather(*(one(i) for i in range(start, min(count, start + 50))))


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def _read_lines(proc: asyncio.subprocess.Process, want: int, log: Path) -> list[str]:
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(120):
            while len(lines) < want:
                raw = await proc.stdout.readline()
                if not raw:
                    break
                lines.append(raw.decode().strip())
    except TimeoutError:
        pass
    if len(lines) < want:
        raise logged_child_error("console bench", "the console did not start", proc, log, "log")
    return lines


async def console_group(ctx: BenchContext) -> list[Metric]:
    import httpx

    count = ctx.size(10_000, 200)
    store_path = ctx.workdir / "vault.db"
    owner = Identity.generate("bench-owner")
    owner_path = ctx.workdir / "owner.json"
    owner.save(owner_path)
    metrics: list[Metric] = []
    async with await open_store(sqlite_url(store_path)) as store:
        started = time.perf_counter()
        await _register(store, owner, count)
        setup_s = time.perf_counter() - started
        garden = Thing(
            ThingDescription(
                "bench-garden",
                title="Gardening device",
                attributes=[Attribute("moisture", "number", unit="%", dynamic=True)],
            ),
            identity=Identity.generate(),
            owner=owner,
            store=store,
        )
        async with garden:
            await garden.register()
            await garden.publish()
            await garden.set("moisture", 1.0)
            log = ctx.workdir / "console.log"
            launched = time.perf_counter()
            proc = await start_logged(
                [
                    "-m",
                    "safething",
                    "console",
                    "--store",
                    sqlite_url(store_path),
                    "--identity",
                    str(owner_path),
                    "--port",
                    "0",
                    "--state-dir",
                    str(ctx.workdir / "console"),
                    "--login",
                ],
                log,
                stdin=asyncio.subprocess.DEVNULL,
            )
            try:
                lines = await _read_lines(proc, 2, log)
                url = lines[0].split("console: ", 1)[1].rstrip("/")
                code = lines[1].rsplit(": ", 1)[1]
                async with httpx.AsyncClient(
                    base_url=url, headers={"origin": url}, timeout=300
                ) as http:
                    await http.post(
                        "/setup", data={"code": code, "password": PASSWORD, "confirm": PASSWORD}
                    )
                    r = await http.post("/login", data={"password": PASSWORD})
                    if r.status_code != 303:
                        raise RuntimeError(f"console bench: login refused ({r.status_code})")
                    cookie = http.cookies.get("st-session")
                    total = count + 1
                    async with asyncio.timeout(1800):
                        while True:
                            body = (await http.get("/things")).text
                            found = re.search(r"(\d+) things?(?! \(still)", body)
                            if (
                                found
                                and int(found.group(1)) >= total
                                and "still reading" not in body
                            ):
                                break
                            await asyncio.sleep(1.0)
                    load_s = time.perf_counter() - launched
                    renders: list[float] = []
                    responses: list[float] = []
                    for _ in range(RENDER_SAMPLES + 1):
                        t0 = time.perf_counter()
                        r = await http.get("/things")
                        responses.append((time.perf_counter() - t0) * 1000)
                        timing = r.headers.get("server-timing", "")
                        renders.append(float(timing.split("dur=")[1]))
                    params = {
                        "things": total,
                        "store": STORE_SETTINGS,
                        "page_size": 50,
                        "samples": RENDER_SAMPLES,
                        "register_s": round(setup_s, 1),
                    }
                    metrics.append(
                        metric("console_index_load_s", round(load_s, 2), "s", params=params)
                    )
                    metrics.append(
                        with_target(
                            metric(
                                "console_things_page_render_ms",
                                round(renders[0], 2),
                                "ms",
                                samples=1,
                                params={**params, "which": "first request after the index loaded"},
                            ),
                            "<=",
                            300.0,
                        )
                    )
                    metrics.append(
                        with_target(
                            metric(
                                "console_things_page_render_p50_ms",
                                round(statistics.median(renders[1:]), 2),
                                "ms",
                                samples=RENDER_SAMPLES,
                                params=params,
                            ),
                            "<=",
                            300.0,
                        )
                    )
                    metrics.append(
                        metric(
                            "console_things_page_response_p50_ms",
                            round(statistics.median(responses[1:]), 2),
                            "ms",
                            samples=RENDER_SAMPLES,
                            params={**params, "what": "HTTP exchange over loopback"},
                        )
                    )
                metrics += await _browser_metrics(ctx, url, str(cookie), garden, proc.pid)
            finally:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(15):
                        await proc.wait()
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
    return metrics


def _installed(path: str) -> bool:
    return os.path.exists(path)


OBSERVE = """el => {
    window.__seen = [];
    new MutationObserver(() => window.__seen.push([el.textContent, Date.now()]))
        .observe(el, {childList: true, characterData: true, subtree: true});
}"""


async def _browser_metrics(
    ctx: BenchContext, url: str, cookie: str, garden: Thing, pid: int
) -> list[Metric]:
    from safething_gateway.console.testing import CHROMIUM, CHROMIUM_ARGS

    if not _installed(CHROMIUM):
        return [metric("console_browser_metrics_skipped", 1.0, "flag", reason="no chromium")]
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        return [metric("console_browser_metrics_skipped", 1.0, "flag", reason="no playwright")]
    samples = ctx.size(60, 10)
    host = url.split("//", 1)[1].split(":")[0]
    thing_url = f"{url}/things/bench-garden"
    out: list[Metric] = []
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        contexts = []
        try:

            async def tab() -> Any:
                context = await browser.new_context()
                await context.add_cookies(
                    [{"name": "st-session", "value": cookie, "domain": host, "path": "/"}]
                )
                contexts.append(context)
                page = await context.new_page()
                await page.goto(thing_url)
                await page.wait_for_selector("body[data-stream='open']")
                return page

            page = await tab()
            value = await page.query_selector("[data-value='bench-garden|moisture']")
            await page.evaluate(OBSERVE, value)
            latencies = []
            for i in range(samples + 3):
                shown = f"{100 + i}.5"
                sent = time.time()
                await garden.set("moisture", 100 + i + 0.5)
                seen_at = None
                async with asyncio.timeout(10):
                    while seen_at is None:
                        seen = await page.evaluate("() => window.__seen")
                        seen_at = next((t for text, t in seen if text == shown), None)
                        if seen_at is None:
                            await asyncio.sleep(0.005)
                if i >= 3:  # warm-up
                    latencies.append(seen_at - sent * 1000)
                await asyncio.sleep(0.1)
            out += with_p_target(
                latency_metrics(
                    "console_set_to_page_latency",
                    latencies,
                    params={"samples": samples, "warmup": 3, "browser": "Debian chromium"},
                ),
                "p50",
                "<=",
                100.0,
            )

            async def rss_with(clients: int) -> float:
                while len(contexts) < clients:
                    await tab()
                stop = time.monotonic() + 5
                n = 0
                while time.monotonic() < stop:
                    n += 1
                    await garden.set("moisture", float(n % 100))
                    await asyncio.sleep(0.5)
                return _rss_mb(pid)

            for clients in (1, 10):
                out.append(
                    metric(
                        f"console_rss_{clients}_client{'s' if clients > 1 else ''}_mb",
                        round(await rss_with(clients), 1),
                        "MB",
                        params={"tabs": clients, "writes_per_s": 2, "things": "see index"},
                    )
                )
        finally:
            for context in contexts:
                await context.close()
            await browser.close()
    return out


GROUPS: dict[str, GroupFunc] = {"console": console_group}
"""Metric groups of this module (registered in ``runner.GROUP_MODULES``)."""
