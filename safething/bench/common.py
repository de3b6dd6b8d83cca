"""What the benchmark modules share beyond the harness (:mod:`safething.bench.runner`).

- store URLs and settings, the delivery timeout, latency sizes and ``params``;
- targets next to metrics (:func:`with_target`, :func:`with_p_target`);
- stamped items received one at a time (:class:`Arrivals`, :func:`paced_latencies`)
  and tasks in the background (:func:`background`);
- child processes: their environment (:func:`child_env`), a child logging to a
  file (:func:`start_logged`, :func:`logged_child_error`), a child that sends
  stamped items to this process (:func:`run_stamping_child`) and, in that child,
  its command line and paced sends (:func:`stamping_parser`, :func:`stamping_main`,
  :func:`send_paced`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import operator
import os
import sys
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Sequence,
)
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Generic, TypeVar

import safething
from safething.bench.runner import Metric

__all__ = [
    "DELIVERY_TIMEOUT_S",
    "PERCENTILES",
    "STORE_SETTINGS",
    "Arrivals",
    "Sampling",
    "background",
    "by_name",
    "child_env",
    "latency_params",
    "logged_child_error",
    "paced_latencies",
    "run_stamping_child",
    "send_paced",
    "sqlite_url",
    "stamping_main",
    "stamping_parser",
    "start_logged",
    "with_p_target",
    "with_target",
]

STORE_SETTINGS = "sqlite WAL, synchronous=NORMAL"
"""The store's settings as ``params`` name them (the defaults of ``open_store``)."""
PERCENTILES = "nearest rank over every sample"
"""How :func:`~safething.bench.runner.latency_metrics` takes percentiles, for ``params``."""
DELIVERY_TIMEOUT_S = 10.0
"""A delivery (a change, a notification, a reading, an action result, a child's
report) that takes longer than this fails the run."""

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Sampling:
    """The sizes of a latency metric; each module's ``_Sizes`` adds its own."""

    samples: int
    """Latency samples kept per latency metric."""
    warmup: int
    """Latency samples taken first and left out (named in ``params``)."""

    @property
    def total(self) -> int:
        """Samples taken: the warm-up ones first, then the kept ones."""
        return self.warmup + self.samples


def latency_params(sizes: Sampling, gap_s: float, **extra: object) -> dict[str, object]:
    """The ``params`` of a latency metric whose samples are taken ``gap_s`` apart."""
    return {
        "warmup": sizes.warmup,
        "gap_ms": gap_s * 1000,
        "store": STORE_SETTINGS,
        "percentiles": PERCENTILES,
        **extra,
    }


def sqlite_url(path: Path) -> str:
    """The store URL of a SQLite file (``sqlite:///abs/path``)."""
    return f"sqlite://{path.resolve()}"


_TARGET_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">=": operator.ge,
}


def with_target(m: Metric, op: str, value: float) -> Metric:
    """``m`` with the issue's target next to it (reported, never asserted):
    ``target: {op, value}`` and ``meets_target``, ``op`` one of ``<``, ``<=``, ``>=``."""
    measured = m["value"]
    assert isinstance(measured, float)
    if op not in _TARGET_OPS:
        raise ValueError(f"unknown target operator {op!r}")
    return {
        **m,
        "target": {"op": op, "value": value},
        "meets_target": _TARGET_OPS[op](measured, value),
    }


def with_p_target(metrics: list[Metric], p: str, op: str, value: float) -> list[Metric]:
    """:func:`with_target` on the ``<base>_<p>_ms`` metric of ``metrics``; the others as given."""
    suffix = f"_{p}_ms"
    return [with_target(m, op, value) if str(m["name"]).endswith(suffix) else m for m in metrics]


def by_name(metrics: Sequence[Metric], name: str) -> Metric:
    """The one metric called ``name``."""
    (found,) = (m for m in metrics if m["name"] == name)
    return found


# --- stamped items, one at a time ------------------------------------------------------


class Arrivals(Generic[T]):
    """Latencies (ms) of stamped items by their number, recorded as a receiver takes them in."""

    def __init__(
        self,
        clock: Callable[[], int],
        stamp: Callable[[T], tuple[int, int]],
        *,
        item: str,
        source: str,
    ) -> None:
        """``clock`` is the receiver's, in ns (the one the sender stamps with);
        ``stamp(item)`` is ``(number, stamp in ns)``; ``item`` and ``source`` name
        an item and what delivers them in errors (``"change"``, ``"the watch"``)."""
        self.ms: dict[int, float] = {}
        """Latency in ms by item number; the first arrival of a number counts."""
        self._clock = clock
        self._stamp = stamp
        self._item = item
        self._source = source
        self._event = asyncio.Event()

    def record(self, item: T) -> None:
        """On receipt: the receiver's clock minus the stamp ``item`` carries."""
        now = self._clock()
        number, stamp_ns = self._stamp(item)
        self.ms.setdefault(number, (now - stamp_ns) / 1e6)
        self._event.set()

    async def receive(self, items: AsyncIterable[T], total: int) -> None:
        """Record every item of ``items`` until ``total`` have arrived."""
        try:
            async for item in items:
                self.record(item)
                if len(self.ms) >= total:
                    return
        finally:
            self._event.set()  # a waiter sees the end (or the error) at once

    async def wait_for(self, number: int, receiver: asyncio.Task[Any] | None = None) -> None:
        """Until item ``number`` has arrived; fails when ``receiver`` ends first, or after
        :data:`DELIVERY_TIMEOUT_S`."""
        try:
            async with asyncio.timeout(DELIVERY_TIMEOUT_S):
                while number not in self.ms:
                    if receiver is not None and receiver.done():
                        receiver.result()
                        raise RuntimeError(
                            f"{self._source} ended before {self._item} {number} arrived"
                        )
                    self._event.clear()
                    await self._event.wait()
        except TimeoutError:
            raise TimeoutError(
                f"{self._item} {number} was not delivered within {DELIVERY_TIMEOUT_S} s"
            ) from None


async def paced_latencies(
    send: Callable[[int], Awaitable[int]],
    arrivals: Arrivals[Any],
    sizes: Sampling,
    gap_s: float,
    receiver: asyncio.Task[Any] | None,
) -> list[float]:
    """``sizes.total`` items, one at a time: ``send(i)`` stamps and sends item ``i`` and
    returns its number, then its arrival is awaited, then a gap of ``gap_s``.

    The latencies (ms) of the items after the warm-up, in the order sent.
    """
    numbers: list[int] = []
    await asyncio.sleep(gap_s)  # the receiver now waits for an item
    for i in range(sizes.total):
        number = await send(i)
        numbers.append(number)
        await arrivals.wait_for(number, receiver)
        await asyncio.sleep(gap_s)
    return [arrivals.ms[n] for n in numbers[sizes.warmup :]]


@contextlib.asynccontextmanager
async def background(coro: Coroutine[Any, Any, T], name: str) -> AsyncIterator[asyncio.Task[T]]:
    """``coro`` running as a task named ``name`` during the ``async with`` block; at its
    end the task is cancelled and awaited (what it raised, but its cancellation, goes on)."""
    task = asyncio.create_task(coro, name=name)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# --- child processes ----------------------------------------------------------------


def child_env(*packages: ModuleType) -> dict[str, str]:
    """This process's environment, with these copies of ``packages`` importable in a child
    (the directory each is loaded from goes first on ``PYTHONPATH``)."""
    env = dict(os.environ)
    roots = [str(Path(package.__file__ or "").resolve().parent.parent) for package in packages]
    env["PYTHONPATH"] = os.pathsep.join(
        dict.fromkeys(p for p in (*roots, env.get("PYTHONPATH", "")) if p)
    )
    return env


async def start_logged(
    args: Sequence[str], log: Path, *, stdin: int, env: dict[str, str] | None = None
) -> asyncio.subprocess.Process:
    """``python <args>`` started, its stdout a pipe, its stderr written to ``log`` (a new
    file); ``env`` its environment (default: this process's)."""
    err = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            *args,
            stdin=stdin,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            env=env,
        )
    finally:
        os.close(err)  # the child has its own copy


def logged_child_error(
    label: str, what: str, proc: asyncio.subprocess.Process | None, log: Path, log_name: str
) -> RuntimeError:
    """``"<label>: <what> (exit status <code>); <log_name>: <the end of log>"``."""
    code = proc.returncode if proc is not None else None
    try:
        text = log.read_text(errors="replace").strip()[-2000:]
    except OSError:
        text = ""
    return RuntimeError(f"{label}: {what} (exit status {code}); {log_name}: {text or '(empty)'}")


async def run_stamping_child(
    module: str,
    args: Sequence[str],
    receive: Callable[[], Coroutine[Any, Any, object]],
    *,
    received: Callable[[], int],
    total: int,
    gap_s: float,
    what: str,
    sender: str,
    items: str,
    name: str,
) -> None:
    """Run ``python -m <module> --count <total> --gap-ms <gap_s in ms> <args>``, a child
    that sends ``total`` stamped items ``gap_s`` apart, while ``receive()`` takes them in
    here (it returns once all ``total`` have arrived).

    Fails with a ``RuntimeError`` that names ``what`` (the benchmark), quotes the
    child's stderr and says what went wrong: ``sender`` (``"the writer process"``)
    failed or did not finish cleanly, or only ``received()`` of ``total`` ``items``
    arrived (within :data:`DELIVERY_TIMEOUT_S` of the child's end). The child is
    killed on the way out, ``receive()`` cancelled; ``name`` prefixes their tasks.
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        "--count",
        str(total),
        "--gap-ms",
        str(gap_s * 1000),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=child_env(safething),
    )
    receiver = asyncio.create_task(receive(), name=f"{name}-receiver")
    child = asyncio.create_task(proc.communicate(), name=f"{name}-child")
    timeout = total * gap_s + 30 + DELIVERY_TIMEOUT_S

    def failed(problem: str) -> RuntimeError:
        stderr = child.result()[1] if child.done() and not child.cancelled() else b""
        return RuntimeError(
            f"{what}: {problem} (child exit status {proc.returncode}); "
            f"child stderr: {stderr.decode(errors='replace').strip() or '(empty)'}"
        )

    try:
        await asyncio.wait({receiver, child}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if child.done() and not receiver.done():
            if proc.returncode != 0:
                raise failed(f"{sender} failed")
            # The child sent everything; give the last items time to arrive.
            await asyncio.wait({receiver}, timeout=DELIVERY_TIMEOUT_S)
        if not receiver.done():
            raise failed(f"only {received()} of {total} {items} arrived")
        receiver.result()
        await asyncio.wait({child}, timeout=DELIVERY_TIMEOUT_S)
        if not child.done() or proc.returncode != 0:
            raise failed(f"{sender} did not finish cleanly")
    finally:
        receiver.cancel()
        if proc.returncode is None:
            proc.kill()
        for task in (receiver, child):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


# --- in the child -------------------------------------------------------------------


def stamping_parser(
    module: str, description: str, *, count_help: str, gap_help: str
) -> argparse.ArgumentParser:
    """The command line of a child that :func:`run_stamping_child` starts: ``--url``
    (its own store on the parent's file), ``--count`` and ``--gap-ms``; add the rest."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=description)
    parser.add_argument("--url", required=True, help="store URL, sqlite:///path/file.db")
    parser.add_argument("--count", type=int, required=True, help=count_help)
    parser.add_argument("--gap-ms", type=float, required=True, help=gap_help)
    return parser


def stamping_main(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    send_all: Callable[[argparse.Namespace], Coroutine[Any, Any, None]],
) -> int:
    """Parse ``argv`` with ``parser`` (from :func:`stamping_parser`), run
    ``send_all(args)``, return the exit status."""
    args = parser.parse_args(argv)
    if args.count < 1 or args.gap_ms < 0:
        parser.error("--count must be positive and --gap-ms not negative")
    asyncio.run(send_all(args))
    return 0


async def send_paced(count: int, gap_ms: float, send: Callable[[int], Awaitable[object]]) -> None:
    """``await send(i)`` for ``i`` in ``range(count)``, ``gap_ms`` apart (``send`` stamps)."""
    for i in range(count):
        if i:
            await asyncio.sleep(gap_ms / 1000)
        await send(i)
