"""What the MQTT connection alone costs per message: QoS 1 through a private Mosquitto,
received and acknowledged by hand (as the bridge does), in this process.

    .venv/bin/python scripts/ab_mqtt_connection.py [--messages 20000] [--inflight 100]
        [--one-by-one 300] [--receiver-only]

A sender ``MqttConnection`` publishes ``--messages`` 88-byte messages (a framed
reading's size) with ``--inflight`` unacknowledged at most; a receiver with
``manual_ack`` acknowledges each on the event loop when it arrives. Prints one JSON
object: messages per second, CPU microseconds per message of the process (every
thread, both connections; Mosquitto is another process) and of the event loop's
thread, the threads the process ran, and the load average. Then ``--one-by-one``
messages one at a time (each sent 2 ms after the last arrived): the p50 and p99 from
just before ``publish`` to the receiver's callback, the hop of an idle device. Run it
with the checkout to measure first on ``PYTHONPATH``; alternate two checkouts on a
shared machine (the module measured is the one ``PYTHONPATH`` finds, so this script
can measure an older checkout's).

With ``--receiver-only`` the sender is a plain paho client (its own network thread) in
a child process, and the figures are those of the receiving side alone, as the
gateway's bridge receives readings: ``cpu_us_per_message`` from the first message to
the last (no one-by-one hops).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt

from safething_gateway.broker import mosquitto
from safething_gateway.mqtt_client import MqttConnection


def _receiver(port: int, on_message: Callable[[mqtt.MQTTMessage, int], None]) -> MqttConnection:
    """The measured receiving side: QoS 1 on ``ab/#``, acknowledged by hand, as the
    gateway's bridge receives readings."""
    return MqttConnection(
        "127.0.0.1",
        port,
        client_id=f"ab-rx-{os.getpid()}",
        clean_session=False,
        manual_ack=True,
        subscriptions=[("ab/#", 1)],
        on_message=on_message,
        label="ab receiver",
    )


async def run(messages: int, inflight: int, one_by_one: int, port: int) -> dict[str, float]:
    done = asyncio.Event()
    got = 0
    arrived = asyncio.Event()
    arrival = 0

    def on_message(message: mqtt.MQTTMessage, generation: int) -> None:
        nonlocal got, arrival
        arrival = time.perf_counter_ns()
        receiver.ack(message, generation)
        got += 1
        if got == messages:
            done.set()
        arrived.set()

    receiver = _receiver(port, on_message)
    sender = MqttConnection(
        "127.0.0.1", port, client_id=f"ab-tx-{os.getpid()}", max_inflight=inflight, label="ab tx"
    )
    for connection in (receiver, sender):
        await connection.start()
        assert await connection.wait_connected(10)
    payload = bytes(88)
    slots = asyncio.Semaphore(inflight)
    threads = threading.active_count()
    wall, cpu, loop_cpu = time.perf_counter(), time.process_time(), time.thread_time()
    for i in range(messages):
        await slots.acquire()
        _, future = sender.publish(f"ab/{i % 100}", payload, 1)
        future.add_done_callback(lambda _: slots.release())
    await asyncio.wait_for(done.wait(), 120)
    wall = time.perf_counter() - wall
    cpu = time.process_time() - cpu
    loop_cpu = time.thread_time() - loop_cpu
    threads = max(threads, threading.active_count())
    hops: list[float] = []
    for i in range(one_by_one):
        await asyncio.sleep(0.002)
        arrived.clear()
        sent = time.perf_counter_ns()
        sender.publish(f"ab/{i % 100}", payload, 1)
        await asyncio.wait_for(arrived.wait(), 10)
        hops.append((arrival - sent) / 1e6)
    hops.sort()
    for connection in (sender, receiver):
        await connection.close()
    out = {
        "messages_per_s": round(messages / wall, 1),
        "cpu_us_per_message": round(cpu / messages * 1e6, 1),
        "loop_cpu_us_per_message": round(loop_cpu / messages * 1e6, 1),
        "threads": threads,
    }
    if hops:  # nearest rank
        out["hop_p50_ms"] = round(hops[max(0, -(-len(hops) * 50 // 100) - 1)], 3)
        out["hop_p99_ms"] = round(hops[max(0, -(-len(hops) * 99 // 100) - 1)], 3)
    return out


_SENDER = """
import sys
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
port, messages, inflight = (int(a) for a in sys.argv[1:4])
client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"ab-tx-paho-{port}")
client.max_inflight_messages_set(inflight)
client.connect("127.0.0.1", port)
client.loop_start()
infos = [client.publish(f"ab/{i % 100}", bytes(88), qos=1) for i in range(messages)]
infos[-1].wait_for_publish(120)
client.disconnect()
client.loop_stop()
"""


async def receive_only(messages: int, inflight: int, port: int) -> dict[str, float]:
    """The receiving side alone: a paho sender in a child process."""
    done = asyncio.Event()
    got = 0
    first = (0.0, 0.0)

    def on_message(message: mqtt.MQTTMessage, generation: int) -> None:
        nonlocal got, first
        if not got:
            first = (time.process_time(), time.perf_counter())
        receiver.ack(message, generation)
        got += 1
        if got == messages:
            done.set()

    receiver = _receiver(port, on_message)
    await receiver.start()
    assert await receiver.wait_connected(10)
    sender = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _SENDER, str(port), str(messages), str(inflight)
    )
    await asyncio.wait_for(done.wait(), 300)
    cpu, wall = time.process_time() - first[0], time.perf_counter() - first[1]
    await sender.wait()
    await receiver.close()
    return {
        "messages_per_s": round((messages - 1) / wall, 1),
        "cpu_us_per_message": round(cpu / (messages - 1) * 1e6, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--inflight", type=int, default=100)
    parser.add_argument("--one-by-one", type=int, default=300)
    parser.add_argument("--receiver-only", action="store_true")
    args = parser.parse_args()
    with mosquitto() as broker:
        out: dict[str, object] = {"module": sys.modules[MqttConnection.__module__].__file__}
        if args.receiver_only:
            out["receiver_only"] = True
            out.update(asyncio.run(receive_only(args.messages, args.inflight, broker.port)))
        else:
            out.update(asyncio.run(run(args.messages, args.inflight, args.one_by_one, broker.port)))
    out["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
