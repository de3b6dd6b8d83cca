"""The MQTT connection driven by the event loop (no paho network thread): against a real
Mosquitto, a broker that restarts, one that never answers and one that refuses."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shutil
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from safething_gateway.broker import Mosquitto
from safething_gateway.mqtt_client import MqttConnection
from safething_gateway.testing import free_port, mosquitto
from safething_gateway.testing import unique_id as uid
from safething_gateway.testing import wait_until as until

needs_mosquitto = pytest.mark.skipif(
    shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists(),
    reason="mosquitto is not installed",
)


@pytest.fixture
def broker() -> Iterator[Mosquitto]:
    with mosquitto() as running:
        yield running


@asynccontextmanager
async def connected(connection: MqttConnection) -> AsyncIterator[MqttConnection]:
    await connection.start()
    try:
        assert await connection.wait_connected(10)
        yield connection
    finally:
        await connection.close()


def _waited_for_a_cpu() -> float:
    """Seconds this thread has spent runnable but not running, waiting for a CPU (Linux's
    per-thread ``schedstat``; 0 where there is none)."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


class Lag:
    """How late the event loop runs a 10 ms timer, at worst, while it is watched, less the
    time its thread waited for a CPU meanwhile: a call that blocks the loop (a socket
    call, a sleep, a long computation) counts in full; a machine too busy to run it at
    once does not (a nice-0 busy loop per core made a 10 ms timer of a nice-19 test
    0.3 to 0.45 s late, nearly all of it waiting for a CPU)."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.worst_wall = 0.0
        """The worst lateness with the waits for a CPU counted too (shown, not asserted)."""
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"Lag(worst={self.worst:.3f} s, with the waits for a CPU {self.worst_wall:.3f} s)"

    async def _tick(self) -> None:
        while True:
            before, waited = time.monotonic(), _waited_for_a_cpu()
            await asyncio.sleep(0.01)
            late = time.monotonic() - before - 0.01
            self.worst_wall = max(self.worst_wall, late)
            self.worst = max(self.worst, late - (_waited_for_a_cpu() - waited))

    def __enter__(self) -> Lag:
        self._task = asyncio.get_running_loop().create_task(self._tick())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


def own_tasks(connection: MqttConnection) -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith(connection.label)]


def watched(connection: MqttConnection, sock: socket.socket) -> bool:
    """Whether the loop still watches ``sock`` (reader or writer registered)."""
    loop = asyncio.get_running_loop()
    selector = loop._selector  # type: ignore[attr-defined]
    return sock.fileno() != -1 and sock.fileno() in selector.get_map()


# --- no thread ----------------------------------------------------------------------------


@needs_mosquitto
async def test_pubacks_and_publishes_are_written_by_the_loop_without_a_network_thread(
    broker: Mosquitto,
) -> None:
    """Every byte paho writes (CONNECT, SUBSCRIBE, PUBLISH, PUBACK, DISCONNECT) is written
    on the event loop's thread, and connecting starts no thread that stays: a stream of
    QoS 1 messages, each acknowledged by hand (as the bridge does), goes through with the
    number of threads unchanged and none of paho's."""
    writers: set[int] = set()
    got: list[bytes] = []

    def spy(connection: MqttConnection) -> MqttConnection:
        send = connection.client._sock_send

        def recorded(buf: bytes | bytearray) -> int:
            writers.add(threading.get_ident())
            return send(buf)

        connection.client._sock_send = recorded  # type: ignore[method-assign]
        return connection

    def on_message(message: mqtt.MQTTMessage, generation: int) -> None:
        got.append(bytes(message.payload))
        receiver.ack(message, generation)

    receiver = spy(
        MqttConnection(
            "127.0.0.1",
            broker.port,
            client_id=uid("rx"),
            clean_session=False,
            manual_ack=True,
            subscriptions=[("loop/#", 1)],
            on_message=on_message,
            label="receiver",
        )
    )
    sender = spy(MqttConnection("127.0.0.1", broker.port, client_id=uid("tx"), label="sender"))
    async with connected(receiver), connected(sender):
        threads = threading.active_count()
        futures = [sender.publish(f"loop/{i % 7}", b"%d" % i, 1)[1] for i in range(500)]
        assert all(await asyncio.gather(*futures))
        # the broker holds at most 20 unacknowledged messages per client: all 500 came only
        # because the receiver's PUBACKs went out
        await until(lambda: len(got) == 500)
        assert threading.active_count() == threads
        assert not [t.name for t in threading.enumerate() if t.name.startswith("paho")]
    assert sorted(got) == sorted(b"%d" % i for i in range(500))
    assert writers == {threading.get_ident()}


# --- reconnecting -------------------------------------------------------------------------


@needs_mosquitto
async def test_after_the_broker_restarts_it_reconnects_renews_subscriptions_and_the_will(
    broker: Mosquitto,
) -> None:
    wills: list[float] = []
    events: list[str] = []
    got: list[str] = []
    routed: list[str] = []

    def will() -> tuple[str, bytes]:
        wills.append(time.monotonic())
        return "loop/will", b"gone %d" % len(wills)

    connection = MqttConnection(
        "127.0.0.1",
        broker.port,
        client_id=uid("re"),
        subscriptions=[("loop/a/#", 1)],
        on_connect=lambda generation: events.append(f"up {generation}"),
        on_disconnect=lambda: events.append("down"),
        on_message=lambda message, generation: got.append(message.topic),
        will=will,
        reconnect_delay=(0.2, 1),
        label="restarting",
    )
    async with (
        connected(connection),
        connected(
            MqttConnection("127.0.0.1", broker.port, client_id=uid("tx"), label="sender")
        ) as sender,
    ):
        connection.route(["loop/b/#"], lambda message: routed.append(message.topic))
        await asyncio.to_thread(broker.restart)
        await until(lambda: connection.connects == 2, timeout=15)
        assert await connection.wait_connected(10)
        assert await sender.wait_connected(15)
        assert events == ["up 1", "down", "up 2"]
        assert len(wills) >= 2  # computed again before the attempt that succeeded
        for topic in ("loop/a/1", "loop/b/1"):
            _, delivered = sender.publish(topic, b"x", 1)
            assert await delivered
        await until(lambda: got == ["loop/a/1"] and routed == ["loop/b/1"])
    assert own_tasks(connection) == []


async def test_a_refusing_broker_is_retried_with_doubling_back_off_and_no_blocking() -> None:
    """Nothing listens on the port: every attempt fails at once, the next one comes after
    the minimum delay, then twice the last, up to the maximum (no jitter), and the loop
    stays free throughout. Each gap may be longer by the time the loop's thread waited for
    a CPU meanwhile (a busy machine), never shorter."""
    attempts: list[tuple[float, float]] = []  # when, and the loop's waits for a CPU by then

    def will() -> tuple[str, bytes]:
        attempts.append((time.monotonic(), _waited_for_a_cpu()))
        return "loop/will", b"x"

    connection = MqttConnection(
        "127.0.0.1",
        free_port(),
        client_id=uid("refused"),
        will=will,
        reconnect_delay=(0.1, 0.4),
        label="refused",
    )
    with Lag() as lag:
        await connection.start()
        # five attempts take 1.1 s of back-off; a loaded machine adds its own waits
        await until(lambda: len(attempts) >= 5, timeout=10.0)
        assert not connection.connected
        await connection.close()
    gaps = [
        (b - a, b_waited - a_waited)
        for (a, a_waited), (b, b_waited) in itertools.pairwise(attempts)
    ]
    for (gap, waited), wanted in zip(gaps, [0.1, 0.2, 0.4, 0.4, 0.4], strict=False):
        assert wanted - 0.005 <= gap <= wanted + 0.25 + waited, gaps
    assert "refused" in connection.last_error
    assert lag.worst < 0.25, lag
    assert own_tasks(connection) == []


# --- brokers that do not answer -------------------------------------------------------------


@contextlib.contextmanager
def unanswered_syn() -> Iterator[int]:
    """A port whose SYNs go unanswered, like a host that is down: a listener with a full
    accept queue (backlog 0, one connection held, never accepted)."""
    with socket.socket() as server, socket.socket() as filler:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        filler.connect(("127.0.0.1", port))
        yield port


@contextlib.contextmanager
def silent_broker() -> Iterator[tuple[int, list[socket.socket]]]:
    """A port that accepts TCP connections and never answers CONNECT."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        accepted: list[socket.socket] = []
        stop = threading.Event()

        def serve() -> None:
            server.settimeout(0.05)
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    accepted.append(server.accept()[0])

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            yield server.getsockname()[1], accepted
        finally:
            stop.set()
            thread.join()
            for sock in accepted:
                sock.close()


async def test_a_host_that_does_not_answer_the_syn_does_not_freeze_the_loop() -> None:
    """The TCP connect blocks until paho's connect timeout: on a worker thread, so the
    loop keeps running its timers; close() waits for that attempt and leaves nothing."""
    with unanswered_syn() as port:
        connection = MqttConnection(
            "127.0.0.1", port, client_id=uid("syn"), reconnect_delay=(0.1, 0.1), label="syn"
        )
        connection.client.connect_timeout = 1.0
        with Lag() as lag:
            await connection.start()
            assert not await connection.wait_connected(1.5)
            # the attempt ends when paho's connect times out (1 s; later on a busy machine)
            await until(lambda: "timed out" in connection.last_error)
            started = time.monotonic()
            await connection.close()
            closing = time.monotonic() - started
    assert lag.worst < 0.25, lag
    assert closing < 1.5  # at most the attempt under way
    assert connection.client.socket() is None
    assert own_tasks(connection) == []


async def test_a_broker_that_accepts_but_never_answers_connect_does_not_block_the_loop() -> None:
    with silent_broker() as (port, accepted):
        connection = MqttConnection("127.0.0.1", port, client_id=uid("mute"), label="mute")
        with Lag() as lag:
            await connection.start()
            assert not await connection.wait_connected(1.0)
            await until(lambda: accepted)
            sock = connection.client.socket()
            assert isinstance(sock, socket.socket)
            assert watched(connection, sock)  # waiting for CONNACK on the loop
            await connection.close()
        assert accepted[0].recv(64)[:1] == b"\x10"  # the CONNECT came
    assert lag.worst < 0.25, lag
    assert connection.client.socket() is None and not watched(connection, sock)
    assert own_tasks(connection) == []


# --- keep-alive, callbacks, close ------------------------------------------------------------


@needs_mosquitto
async def test_keep_alive_pings_go_out_from_the_loop(broker: Mosquitto) -> None:
    """With a 1 s keep-alive the broker drops a client silent for 1.5 s (Mosquitto
    2.0 notices within about 6 s): an idle connection stays up for 8 s only because the
    loop sends PINGREQs."""
    downs: list[str] = []
    connection = MqttConnection(
        "127.0.0.1",
        broker.port,
        client_id=uid("idle"),
        keepalive=1,
        on_disconnect=lambda: downs.append("down"),
        label="idle",
    )
    async with connected(connection):
        await asyncio.sleep(8)
        assert connection.connected and connection.connects == 1 and downs == []


@needs_mosquitto
async def test_an_owner_callback_that_fails_is_logged_and_each_message_comes_once(
    broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    """Callbacks run inside paho's read: an exception must not reach paho (which would
    handle the same packet again) nor stop the messages after it."""
    got: list[bytes] = []

    def on_message(message: mqtt.MQTTMessage, generation: int) -> None:
        got.append(bytes(message.payload))
        if message.payload == b"3":
            raise RuntimeError("message 3 has a bug")

    receiver = MqttConnection(
        "127.0.0.1",
        broker.port,
        client_id=uid("rx"),
        subscriptions=[("loop/bug", 1)],
        on_message=on_message,
        label="buggy",
    )
    async with (
        connected(receiver),
        connected(
            MqttConnection("127.0.0.1", broker.port, client_id=uid("tx"), label="sender")
        ) as sender,
    ):
        for i in range(10):
            assert await sender.publish("loop/bug", b"%d" % i, 1)[1]
        await until(lambda: len(got) >= 10)
        await asyncio.sleep(0.2)
    assert got == [b"%d" % i for i in range(10)]
    assert "message 3 has a bug" in caplog.text


@needs_mosquitto
async def test_after_close_no_callback_task_timer_or_socket_is_left(broker: Mosquitto) -> None:
    got: list[str] = []
    events: list[str] = []
    receiver = MqttConnection(
        "127.0.0.1",
        broker.port,
        client_id=uid("rx"),
        clean_session=False,
        subscriptions=[("loop/after", 1)],
        on_message=lambda message, generation: got.append(message.topic),
        on_disconnect=lambda: events.append("down"),
        label="closing",
    )
    async with connected(
        MqttConnection("127.0.0.1", broker.port, client_id=uid("tx"), label="sender")
    ) as sender:
        await receiver.start()
        assert await receiver.wait_connected(10)
        sock = receiver.client.socket()
        assert isinstance(sock, socket.socket) and watched(receiver, sock)
        await receiver.close()
        assert events == ["down"]  # the clean disconnect, told once
        assert receiver.client.socket() is None and sock.fileno() == -1
        assert receiver._misc is None and own_tasks(receiver) == []
        # the broker keeps the session's messages; nothing reaches the closed connection
        assert await sender.publish("loop/after", b"late", 1)[1]
        await asyncio.sleep(0.3)
        assert got == [] and events == ["down"]
        await receiver.close()  # twice is fine
        # started again, it gets what the broker kept for it
        await receiver.start()
        assert await receiver.wait_connected(10)
        await until(lambda: got == ["loop/after"])
        await receiver.abort()  # no DISCONNECT: the socket is gone all the same
        assert receiver.client.socket() is None and own_tasks(receiver) == []


@needs_mosquitto
async def test_a_busy_loop_reads_what_the_socket_holds_in_one_go(broker: Mosquitto) -> None:
    """paho's ``loop_read`` takes one packet when nothing of ours is in flight; a loop
    whose turns are long (here 2 ms each) would then take one message per turn. The
    reader takes what the socket holds instead: far fewer reads than messages."""
    got: list[bytes] = []

    def on_message(message: mqtt.MQTTMessage, generation: int) -> None:
        got.append(bytes(message.payload))
        receiver.ack(message, generation)

    receiver = MqttConnection(
        "127.0.0.1",
        broker.port,
        client_id=uid("rx"),
        manual_ack=True,
        subscriptions=[("loop/busy", 1)],
        on_message=on_message,
        label="busy",
    )
    reads = 0
    readable = receiver._readable

    def counted() -> None:
        nonlocal reads
        reads += 1
        readable()

    receiver._readable = counted  # type: ignore[method-assign]

    async def busy() -> None:
        while True:
            time.sleep(0.002)  # noqa: ASYNC251 (a turn of the loop with work in it)
            await asyncio.sleep(0)

    async with (
        connected(receiver),
        connected(
            MqttConnection("127.0.0.1", broker.port, client_id=uid("tx"), label="sender")
        ) as sender,
    ):
        reads = 0
        worker = asyncio.get_running_loop().create_task(busy())
        try:
            futures = [sender.publish("loop/busy", b"%d" % i, 1)[1] for i in range(300)]
            assert all(await asyncio.gather(*futures))
            await until(lambda: len(got) == 300)
        finally:
            worker.cancel()
    assert got == [b"%d" % i for i in range(300)]
    assert reads < 100, reads


async def test_close_during_a_connect_closes_the_socket_that_connect_makes() -> None:
    """close() while the TCP connect hangs on a worker thread: the connect completes
    meanwhile (the accept queue frees up), and its socket is closed before close()
    returns, not left open by the thread afterwards."""
    with socket.socket() as server, socket.socket() as filler:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        filler.connect(("127.0.0.1", port))
        connection = MqttConnection("127.0.0.1", port, client_id=uid("late"), label="late")
        connection.client.connect_timeout = 5.0
        await connection.start()
        await asyncio.sleep(0.3)  # the SYN is unanswered: the connect hangs
        closing = asyncio.get_running_loop().create_task(connection.close())
        await asyncio.sleep(0.1)
        server.accept()[0].close()  # room in the queue: the next SYN is answered
        await closing
        assert connection.client.socket() is None
        server.settimeout(5)
        late, _ = server.accept()  # the connection the worker thread made
        with late:
            late.settimeout(5)
            while late.recv(64):  # its CONNECT, perhaps a DISCONNECT, then the end
                pass
        await asyncio.sleep(0.2)
        assert connection.client.socket() is None
    assert own_tasks(connection) == []
