"""``safething console``: the web console alone, against any store URL.

Inside the gateway, turn it on with ``[console] enabled = true`` instead;
alone it shows and manages things, and the devices of a gateway registry
when given ``--registry``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Any

from safething.cli.common import add_identity_option, add_store_option, load_identity, out
from safething.errors import SafeThingError

__all__ = ["register"]


class ConsoleMissingError(SafeThingError, ImportError):
    """The console extra is not installed."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    c = sub.add_parser("console", help="run the web console alone (things, devices, activity)")
    add_store_option(c)
    add_identity_option(c)
    c.add_argument("--bind", default="127.0.0.1", help="listen address (default: loopback)")
    c.add_argument("--port", type=int, default=8088, help="listen port (0: any free port)")
    c.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="owner binding and audit log (default: <user data dir>/safething/console)",
    )
    c.add_argument("--registry", type=Path, default=None, help="a gateway registry to show")
    c.add_argument(
        "--config",
        metavar="TOML",
        default=None,
        help="a gateway's config: its registry, broker logins (password_file, acl_file, "
        "reload_command) and device endpoints, so Provision and Revoke manage broker logins",
    )
    c.add_argument("--tls-cert", default="", help="PEM certificate (HTTPS)")
    c.add_argument("--tls-key", default="", help="PEM private key")
    c.add_argument(
        "--self-signed",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="HTTPS with a certificate the console makes and keeps in its state directory "
        "(default: when listening beyond loopback)",
    )
    c.add_argument(
        "--login",
        action="store_true",
        help="log in on loopback too (beyond loopback login is always required)",
    )
    c.set_defaults(func=cmd_console)


def cmd_console(args: argparse.Namespace) -> int:
    try:
        from safething_gateway.config import ConsoleConfig
        from safething_gateway.console import Console, ConsoleSettings
    except ImportError as e:
        raise ConsoleMissingError(
            f"the console is not installed ({e.name} missing): pip install 'safething[console]'"
        ) from e
    owner = load_identity(args.identity)
    settings = ConsoleSettings(
        args.state_dir or ConsoleConfig().state_path,
        bind=args.bind,
        port=args.port,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        self_signed=args.self_signed,
        require_login=args.login,
    )
    asyncio.run(_run(Console, settings, owner, args.store, args.registry, args.config))
    return 0


async def _run(
    console_cls: Any,
    settings: Any,
    owner: Any,
    url: str | None,
    registry: Path | None,
    config_path: str | None,
) -> None:
    from safething.store import open_store

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    reg = admin = endpoints = None
    if config_path is not None:
        from safething_gateway.config import load_config
        from safething_gateway.device_admin import DeviceAdmin
        from safething_gateway.provisioning import DeviceEndpoints
        from safething_gateway.registry import Registry

        config = load_config(config_path)
        reg = Registry(registry or config.gateway.registry_path)
        admin = DeviceAdmin.from_config(config, reg)
        endpoints = DeviceEndpoints.from_config(config)
    elif registry is not None:
        from safething_gateway.registry import Registry

        reg = Registry(registry)
    try:
        async with (
            await open_store(url) as store,
            console_cls(
                store=store,
                owner=owner,
                settings=settings,
                registry=reg,
                admin=admin,
                endpoints=endpoints,
            ) as console,
        ):
            await console.serve()
            for line in console.announce():
                out(line)
            await stop.wait()
    finally:
        if reg is not None:
            reg.close()
