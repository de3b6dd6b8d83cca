"""A synchronous facade for scripts and gpiozero code.

::

    from gpiozero import MCP3008, OutputDevice
    from safething.things.sync import SyncThing

    sensor, valve = MCP3008(channel=0), OutputDevice(17)
    garden = SyncThing(description, identity=Identity.load("device.json"))
    garden.on_action("OpenValve", lambda request: valve.on())
    while True:
        garden.set("moisture", round(sensor.value * 100, 1))
        sleep(5)

An event loop runs in a background thread; every method blocks until the
work is done and raises the same errors as the async API. Handlers and
callbacks run in a worker thread, so a slow GPIO call never stalls the
network side, and they may be plain functions.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar

from safething.net import Identity, PublicIdentity
from safething.store import Store
from safething.things.description import ThingDescription
from safething.things.filters import Filter
from safething.things.thing import ActionRequest, StoredSubscription, Thing
from safething.things.values import Notification, Reading

__all__ = ["SyncThing"]

T = TypeVar("T")


class SyncThing:
    """A :class:`Thing` for code without ``async``: registered and published on creation."""

    def __init__(
        self,
        description: ThingDescription,
        *,
        identity: Identity,
        owner: PublicIdentity | Identity | None = None,
        store: Store | str | None = None,
        publish: bool = True,
        timeout: float = 30.0,
    ) -> None:
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"safething-{description.id}", daemon=True
        )
        self._thread.start()
        self._workers = concurrent.futures.ThreadPoolExecutor(
            max_workers=4, thread_name_prefix=f"safething-{description.id}-handler"
        )
        self.thing = Thing(description, identity=identity, owner=owner, store=store)
        """The async :class:`Thing` underneath."""
        try:
            self._run(self.thing.start())
            self._run(self.thing.register())
            if publish:
                self._run(self.thing.publish())
        except BaseException:
            self.close()
            raise

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        if not self._thread.is_alive():
            coro.close()
            raise RuntimeError("this SyncThing is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout if timeout is not None else self.timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError("SAFEthing did not answer in time") from None

    def _in_worker(self, fn: Callable[..., T]) -> Callable[..., Coroutine[Any, Any, T]]:
        async def call(*args: Any) -> T:
            result = await self._loop.run_in_executor(self._workers, fn, *args)
            if asyncio.iscoroutine(result):
                return await result  # type: ignore[no-any-return]
            return result

        return call

    # --- the thing's own data -----------------------------------------------------------

    @property
    def id(self) -> str:
        return self.thing.id

    @property
    def status(self) -> str:
        return self.thing.status

    def set(self, attribute: str, value: Any) -> int:
        """Publish a new value of a dynamic attribute (type-checked); returns its seq."""
        return self._run(self.thing.set(attribute, value))

    def set_many(self, values: Mapping[str, Any]) -> dict[str, int]:
        """Publish several dynamic attributes in one signed commit; their seqs."""
        return self._run(self.thing.set_many(values))

    def notify(self, topic: str, data: Any = None) -> int:
        """Raise an event on ``topic``; returns its seq."""
        return self._run(self.thing.notify(topic, data))

    def publish(self) -> None:
        self._run(self.thing.publish())

    def disable(self) -> None:
        self._run(self.thing.disable())

    def on_action(self, name: str, handler: Callable[[ActionRequest], Any]) -> None:
        """Run ``handler(request)`` (in a worker thread) for each accepted request.

        ``request.args`` holds the validated arguments; the return value is
        the result; an exception makes the action *failed* with its message.
        """
        self.thing.on_action(name, self._in_worker(handler))

    def on_desired(self, attribute: str, handler: Callable[[Any], Any]) -> None:
        """Called (in a worker thread) with a desired value; raise to refuse it."""
        self.thing.on_desired(attribute, self._in_worker(handler))

    # --- other things -------------------------------------------------------------------

    def subscribe(
        self,
        thing_id: str,
        *,
        topic: str | None = None,
        attribute: str | None = None,
        filter: Filter | str | None = None,
        callback: Callable[[Notification], Any],
    ) -> StoredSubscription:
        """Stored subscription; ``callback(notification)`` runs in a worker thread."""
        return self._run(
            self.thing.subscribe(
                thing_id,
                topic=topic,
                attribute=attribute,
                filter=filter,
                callback=self._in_worker(callback),
            )
        )

    def request(
        self, thing_id: str, action: str, /, *, timeout: float | None = None, **args: Any
    ) -> Any:
        """Request an action and wait for its result (``ActionFailedError`` otherwise)."""

        async def go() -> Any:
            handle = await self.thing.request(thing_id, action, timeout=timeout, **args)
            return await handle.result()

        limit = (timeout or self.timeout) + 5.0
        return self._run(go(), timeout=limit)

    def read(self, thing_id: str, attribute: str) -> Reading:
        """Latest verified value of another thing's attribute."""
        return self._run(self.thing.things.read(thing_id, attribute))

    # --- lifetime -----------------------------------------------------------------------

    def close(self) -> None:
        """Stop the thing, its tasks, the worker threads and the loop. Idempotent."""
        if self._thread.is_alive():
            with _suppress():
                asyncio.run_coroutine_threadsafe(self.thing.close(), self._loop).result(
                    self.timeout
                )
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(self.timeout)
        self._workers.shutdown(wait=False, cancel_futures=True)
        if not self._loop.is_running() and not self._loop.is_closed():
            self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _suppress:
    """Ignore errors while shutting down (the loop may already be gone)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return True
