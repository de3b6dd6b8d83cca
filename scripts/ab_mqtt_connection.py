"""What the MQTT connection alone costs per message: QoS 1 through a private Mosquitto,
received and acknowledged by hand (as the bridge does), in this process.

    .venv/bin/python scripts/ab_mqtt_connection.py [--messages 20000] [--inflight 100]

A sender ``MqttConnection`` publishes ``--messages`` 88-byte messages (a framed
reading's size) with ``--inflight`` unacknowledged at most; a receiver with
``manual_ack`` acknowledges each on the event loop when it arrives. Prints one JSON
object: messages per second, CPU microseconds per message of the process (every
thread, both connections; Mosquitto is another process) and of the event loop's
thread, the threads the process ran, and the load average. Run it with the checkout
to measure first on ``PYTHONPATH``; alternate two checkouts on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import threading
import time

import paho.mqtt.client as mqtt

from safething_gateway.broker import mosquitto
from safething_gateway.mqtt_client import MqttConnection


async def run(messages: int, inflight: int, port: int) -> dict[str, float | int]:
    done = asyncio.Event()
    got = 0

    def on_message(message: mqtt.MQTTMessage, generation: int) -> None:
        nonlocal got
        receiver.ack(message, generation)
        got += 1
        if got == messages:
            done.set()

    receiver = MqttConnection(
        "127.0.0.1",
        port,
        client_id=f"ab-rx-{os.getpid()}",
        clean_session=False,
        manual_ack=True,
        subscriptions=[("ab/#", 1)],
        on_message=on_message,
        label="ab receiver",
    )
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
    for connection in (sender, receiver):
        await connection.close()
    return {
        "messages_per_s": round(messages / wall, 1),
        "cpu_us_per_message": round(cpu / messages * 1e6, 1),
        "loop_cpu_us_per_message": round(loop_cpu / messages * 1e6, 1),
        "threads": threads,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--inflight", type=int, default=100)
    args = parser.parse_args()
    with mosquitto() as broker:
        out: dict[str, object] = {"module": MqttConnection.__module__}
        out.update(asyncio.run(run(args.messages, args.inflight, broker.port)))
    out["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
