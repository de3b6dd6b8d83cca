"""The helpers the benchmark modules share (``safething.bench.common``)."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path

import pytest

from safething.bench import common
from safething.bench.common import (
    Arrivals,
    Sampling,
    background,
    by_name,
    logged_child_error,
    paced_latencies,
    run_stamping_child,
    sqlite_url,
    start_logged,
    with_p_target,
    with_target,
)
from safething.bench.runner import group_names, latency_metrics, metric


@pytest.mark.parametrize(
    ("op", "value", "meets"),
    [
        ("<", 2.0, False),
        ("<", 2.5, True),
        ("<=", 2.0, True),
        ("<=", 1.5, False),
        (">=", 2.0, True),
        (">=", 2.5, False),
    ],
)
def test_with_target_notes_the_target_and_whether_it_is_met(
    op: str, value: float, meets: bool
) -> None:
    m = metric("x_rate", 2.0, "ops/s", params={"n": 1})
    targeted = with_target(m, op, value)
    assert targeted == {**m, "target": {"op": op, "value": value}, "meets_target": meets}
    assert list(targeted) == ["name", "value", "unit", "params", "target", "meets_target"]
    assert "target" not in m  # the metric given is left alone


def test_with_target_refuses_an_unknown_operator() -> None:
    with pytest.raises(ValueError, match="unknown target operator '>'"):
        with_target(metric("x", 1.0, "ms"), ">", 1.0)


def test_with_p_target_marks_only_that_percentile() -> None:
    metrics = latency_metrics("x_latency", [1.0, 2.0, 3.0], params={})
    marked = with_p_target(metrics, "p99", "<", 5.0)
    assert [m["name"] for m in marked] == [f"x_latency_{p}_ms" for p in ("p50", "p99", "max")]
    assert [m.get("meets_target") for m in marked] == [None, True, None]
    assert by_name(marked, "x_latency_p99_ms")["target"] == {"op": "<", "value": 5.0}
    with pytest.raises(ValueError, match="not enough values to unpack"):
        by_name(marked, "x_latency_p90_ms")


def test_sqlite_url_is_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert sqlite_url(Path("a.db")) == f"sqlite://{tmp_path.resolve()}/a.db"


async def _never() -> None:
    await asyncio.Event().wait()


async def test_run_stamping_child_reports_a_failing_child_with_its_stderr() -> None:
    with pytest.raises(RuntimeError) as failure:
        await run_stamping_child(
            "safething.bench._xproc_writer",
            ["--url", "nosuchscheme://x", "store", "--prefix", "bench.test."],
            _never,
            received=lambda: 0,
            total=3,
            gap_s=0.001,
            what="test watch",
            sender="the writer process",
            items="changes",
            name="safething-bench-test",
        )
    message = str(failure.value)
    assert message.startswith("test watch: the writer process failed (child exit status 1)")
    assert "child stderr: " in message and "(empty)" not in message


async def test_run_stamping_child_says_how_many_items_arrived(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(common, "DELIVERY_TIMEOUT_S", 0.2)
    url = sqlite_url(tmp_path / "child.db")
    with pytest.raises(RuntimeError, match=r"^test watch: only 0 of 3 changes arrived \(child"):
        await run_stamping_child(
            "safething.bench._xproc_writer",
            ["--url", url, "store", "--prefix", "bench.test."],
            _never,
            received=lambda: 0,
            total=3,
            gap_s=0.001,
            what="test watch",
            sender="the writer process",
            items="changes",
            name="safething-bench-test",
        )


_NOW_NS = 100_000_000


async def test_paced_latencies_take_one_item_at_a_time_after_the_warmup() -> None:
    queue: asyncio.Queue[tuple[int, int]] = asyncio.Queue()

    async def items() -> AsyncGenerator[tuple[int, int], None]:
        while True:
            yield await queue.get()

    async def send(i: int) -> int:
        assert queue.empty()  # the one before has arrived
        queue.put_nowait((i, _NOW_NS - i * 1_000_000))  # item i: a latency of i ms
        return i

    arrivals = Arrivals(lambda: _NOW_NS, lambda item: item, item="change", source="the test")
    async with (
        contextlib.aclosing(items()) as stream,
        background(arrivals.receive(stream, 5), "safething-bench-test") as receiver,
    ):
        latencies = await paced_latencies(
            send, arrivals, Sampling(samples=3, warmup=2), 0, receiver
        )
        await receiver
    assert latencies == [2.0, 3.0, 4.0]
    assert arrivals.ms == {i: float(i) for i in range(5)}


async def test_arrivals_say_when_the_receiver_ended_first() -> None:
    async def one() -> AsyncIterator[tuple[int, int]]:
        yield (0, _NOW_NS)

    arrivals = Arrivals(lambda: _NOW_NS, lambda item: item, item="change", source="the test")
    async with background(arrivals.receive(one(), 2), "safething-bench-test") as receiver:
        await arrivals.wait_for(0, receiver)
        with pytest.raises(RuntimeError, match=r"^the test ended before change 1 arrived$"):
            await arrivals.wait_for(1, receiver)


async def test_background_cancels_its_task_at_the_end() -> None:
    async with background(_never(), "safething-bench-test") as task:
        await asyncio.sleep(0)
    assert task.cancelled()


async def test_a_logged_child_fails_with_the_end_of_its_log(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    code = "import sys; print('out'); sys.stderr.write('boom\\n'); sys.exit(3)"
    proc = await start_logged(["-c", code], log, stdin=asyncio.subprocess.DEVNULL)
    out, _ = await proc.communicate()
    assert out == b"out\n"
    error = logged_child_error("test child", "ended", proc, log, "its log")
    assert str(error) == "test child: ended (exit status 3); its log: boom"
    missing = logged_child_error("test child", "never ran", None, tmp_path / "no.log", "its log")
    assert str(missing) == "test child: never ran (exit status None); its log: (empty)"


def test_the_groups_docs_benchmarks_lists_are_the_groups_a_full_run_runs() -> None:
    """docs/benchmarks.md names every group of a full run, in its order."""
    text = (Path(__file__).parents[2] / "docs" / "benchmarks.md").read_text()
    start = text.index("Groups, run in this order:")
    listed = re.findall(r"`([a-z0-9_.]+)`", text[start : text.index("(`safething", start)])
    assert listed == group_names()
