"""``safething demo``: the gardening pair through the gateway, on the embedded SQLite store.

By default: the gateway with its MQTT (a private Mosquitto), CoAP and HTTP
bridges, one simulated gardening device per transport, and a controller
SAFEthing that waters each of them; one line per alarm and the action it led
to (``--verbose``: every reading and action state). The demo keeps its own
vault and owner identity under the user's data directory
(``~/.local/share/safething/demo/``) unless ``--store``/``$SAFETHING_STORE``
or ``--identity``/``$SAFETHING_IDENTITY`` name others, and says where.
``--local`` runs the gardening device and controller as two SAFEthings in
this process, without the gateway. ``--net`` walks through the data network
underneath (signed MDs, private MDs, blobs, the change feed, public names, a
lying store being caught). All stop cleanly on Ctrl-C or after ``--seconds``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import platformdirs

from safething.cli.common import (
    ENV_IDENTITY,
    add_identity_option,
    add_store_option,
    load_identity,
    open_cli_store,
    out,
)
from safething.cli.thing import stop_on_interrupt
from safething.demo import GardenDemo, garden_ids, run_network_demo
from safething.demo.garden import CLOSE_ABOVE, DRY_BELOW
from safething.net import Identity
from safething.store import ENV_VAR as ENV_STORE
from safething.store import Store

__all__ = ["register"]


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected seconds above 0, got {text}")
    return value


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo", help="run the gardening demo on the embedded store (--net: the data network)"
    )
    p.add_argument(
        "--seconds",
        type=_seconds,
        default=None,
        metavar="N",
        help="stop after N seconds (default: run until Ctrl-C)",
    )
    p.add_argument(
        "--net", action="store_true", help="walk through the data network instead (and exit)"
    )
    p.add_argument(
        "--local",
        action="store_true",
        help="the gardening pair as two SAFEthings in this process, without the gateway",
    )
    p.add_argument(
        "-v",
        "--verbose",
        dest="every_event",
        action="store_true",
        help="print every reading and every action state (default: one line per alarm and "
        "the action it led to)",
    )
    add_store_option(p)
    add_identity_option(p)
    p.set_defaults(func=cmd_demo, is_async=True)


def demo_dir() -> Path:
    """Where the demo keeps its own vault and identities unless told otherwise."""
    return Path(platformdirs.user_data_dir("safething", appauthor=False)) / "demo"


def _places(args: argparse.Namespace) -> tuple[str, Path]:
    """The demo's store URL and owner identity file: given, from the environment, or its own."""
    url = args.store or os.environ.get(ENV_STORE, "").strip()
    env_identity = os.environ.get(ENV_IDENTITY, "").strip()
    identity = args.identity or (Path(env_identity) if env_identity else None)
    if not url or identity is None:
        demo_dir().mkdir(parents=True, exist_ok=True, mode=0o700)
    url = url or f"sqlite://{demo_dir() / 'vault.db'}"
    identity = identity or demo_dir() / "owner.json"
    return url, identity.expanduser()


def _owner(path: Path) -> Identity:
    if path.exists():
        identity = load_identity(path)
        out(f"owner: the identity in {path}")
    else:
        identity = Identity.generate("demo")
        identity.save(path)
        out(f"owner: a new identity in {path} (mode 0600)")
    out(f"  public sign key {identity.public_sign_key.hex()}")
    return identity


def _thing_identity(owner_path: Path, role: str) -> Identity:
    """The demo thing's own identity, kept next to the owner's (reused on the next run)."""
    path = owner_path.with_name(f"{owner_path.stem}.{role}.json")
    if path.exists():
        return Identity.load(path)
    identity = Identity.generate(role)
    identity.save(path)
    return identity


async def cmd_demo(args: argparse.Namespace) -> int:
    url, path = _places(args)
    owner = _owner(path)
    async with await open_cli_store(url, create=True) as store:
        out(f"vault: {store.url}")
        args.store = url
        if args.net:
            await run_network_demo(store, owner, echo=out)
            out()
            out(f"done. Inspect it with: safething md ls --store {url}")
            return 0
        if args.local:
            return await _garden(args, store, owner, path)
        return await _gateway(args, store, owner, path)


async def _gateway(args: argparse.Namespace, store: Store, owner: Identity, path: Path) -> int:
    from safething.cli.gateway import _need_gateway

    _need_gateway()
    from safething_gateway.demo import GatewayDemo

    state_dir = path.with_name(f"{path.stem}.gateway-demo")
    out(f"gateway state (registry, device counters, broker files): {state_dir}/")
    if path.parent == demo_dir():
        out(f"to start afresh: rm -r {demo_dir()}")
    store_flag = f" --store {args.store}"
    until = f"for {args.seconds:g} s or until Ctrl-C" if args.seconds else "until Ctrl-C"
    async with (
        stop_on_interrupt() as stop,
        GatewayDemo(store, owner, state_dir, echo=out, verbose=args.every_event) as demo,
    ):
        started = time.monotonic()
        out(f"running {until}. From a second terminal: safething thing list{store_flag}")
        out(f"  safething thing watch {demo.devices[0].link.device_id}{store_flag}")
        out(f"  mosquitto_sub -p {demo.broker.port if demo.broker else 1883} -t 'st/v1/#' -v")
        out(f"  curl http://127.0.0.1:{demo.http_port}/metrics")
        out()
        await demo.run(seconds=args.seconds, stop=stop)
    out()
    out(f"stopped after {time.monotonic() - started:.1f} s: {demo.summary()}")
    return 0


async def _garden(args: argparse.Namespace, store: Store, owner: Identity, path: Path) -> int:
    device = _thing_identity(path, "garden-device")
    controller = _thing_identity(path, "garden-controller")
    device_id, controller_id = garden_ids(device, controller)
    store_flag = f" --store {args.store}"
    out(f"device:     {device_id}  (moisture sensor and valve; its own identity)")
    out(
        f"controller: {controller_id}  (opens the valve below {DRY_BELOW:g} %, "
        f"closes it above {CLOSE_ABOVE:g} %)"
    )
    until = f"for {args.seconds:g} s or until Ctrl-C" if args.seconds else "until Ctrl-C"
    out(
        f"running {until}. From a second terminal: safething thing watch {device_id}{store_flag}"
        f"   (or: safething thing list{store_flag})"
    )
    out()
    started = time.monotonic()
    async with (
        stop_on_interrupt() as stop,
        GardenDemo(
            store,
            owner=owner,
            device=device,
            controller=controller,
            echo=out,
            verbose=args.every_event,
        ) as demo,
    ):
        await demo.run(seconds=args.seconds, stop=stop)
    out()
    out(f"stopped after {time.monotonic() - started:.1f} s: {demo.summary()}")
    return 0
