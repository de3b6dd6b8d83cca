"""``safething gateway``, ``safething provision``, ``safething device list|revoke``.

The gateway lives in the ``safething_gateway`` package (``pip install
'safething[gateway]'``); it is imported only when one of these runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from safething.cli import tokens
from safething.cli.common import out
from safething.errors import SafeThingError
from safething.files import write_private

__all__ = ["register"]

CONFIG_HELP = (
    "gateway.toml (default: $SAFETHING_GATEWAY_CONFIG, else /etc/safething/gateway.toml "
    "when it exists, else the built-in defaults)"
)


class GatewayMissingError(SafeThingError, ImportError):
    """The gateway extra is not installed."""


def _need_gateway() -> None:
    try:
        import safething_gateway.config  # noqa: F401
    except ImportError as e:
        raise GatewayMissingError(
            f"the gateway is not installed ({e.name} missing): pip install 'safething[gateway]'"
        ) from e


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    g = sub.add_parser("gateway", help="run the Raspberry Pi gateway (MQTT, CoAP, HTTP bridges)")
    g.add_argument(
        "--config",
        metavar="TOML",
        default=None,
        help=CONFIG_HELP,
    )
    g.set_defaults(func=cmd_gateway)

    p = sub.add_parser("provision", help="provision a device: secret, custodial thing, config file")
    p.add_argument("device_id", help="5-64 characters: letters, digits, '-' and '_'")
    p.add_argument("--transport", choices=("mqtt", "coap", "http"), required=True)
    p.add_argument("--config", metavar="TOML", default=None, help=CONFIG_HELP)
    p.add_argument(
        "--host",
        default=None,
        help="address the device uses to reach the gateway (default: from the config, "
        "unless that is a loopback or wildcard address a board cannot reach)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="device config file to write (default: ./<device_id>.json, mode 0600)",
    )
    p.add_argument("--wifi-ssid", default=None, help="Wi-Fi network for the device's config")
    p.add_argument("--wifi-password", default="", help="Wi-Fi password for the device's config")
    p.add_argument("--no-qr", action="store_true", help="do not print the QR code")
    p.add_argument(
        "--link",
        choices=("ST2", "ST1"),
        default="ST2",
        help="link version: ST2 (default; bodies encrypted) or ST1 (bodies in clear, for a "
        "device whose firmware predates ST2; the gateway logs a warning for it)",
    )
    p.set_defaults(func=cmd_provision)

    b = sub.add_parser(
        "broker-login",
        help="create a Mosquitto login: the gateway's own (default), Home Assistant's, or "
        "another client's such as a device to adopt",
    )
    b.add_argument("--config", metavar="TOML", default=None, help=CONFIG_HELP)
    b.add_argument(
        "--for",
        dest="role",
        choices=("gateway", "homeassistant", "client"),
        default="gateway",
        help="gateway: its topics, plus safething/# with [homeassistant] publish and every "
        "topic with [adoption] on; homeassistant: discovery and the published states; "
        "client: only the --topic filters given",
    )
    b.add_argument(
        "--topic",
        action="append",
        default=[],
        metavar="FILTER",
        help="with --for client (repeatable), e.g. 'tele/plug-1/#'",
    )
    b.add_argument(
        "--username",
        default=None,
        help="default: [mqtt] username or safething-gateway; homeassistant for Home Assistant",
    )
    b.set_defaults(func=cmd_broker_login)

    d = sub.add_parser("device", help="list or revoke provisioned devices")
    dsub = d.add_subparsers(dest="device_command", required=True, metavar="COMMAND")
    ls = dsub.add_parser("list", help="devices in the gateway's registry")
    ls.add_argument("--config", metavar="TOML", default=None, help=CONFIG_HELP)
    ls.add_argument("--json", action="store_true", help="print JSON lines")
    ls.set_defaults(func=cmd_device_list)
    rv = dsub.add_parser("revoke", help="refuse a device from now on (and remove its broker login)")
    rv.add_argument("device_id")
    rv.add_argument("--config", metavar="TOML", default=None, help=CONFIG_HELP)
    rv.set_defaults(func=cmd_device_revoke)

    tokens.register(sub)


def cmd_gateway(args: argparse.Namespace) -> int:
    _need_gateway()
    from safething_gateway.app import configure_logging, serve
    from safething_gateway.config import load_config

    config = load_config(args.config)
    configure_logging(config.gateway.log_format, verbose=args.verbose)

    def ready(app: Any) -> None:
        for endpoint in app.endpoints():
            out(f"serving {endpoint}")
        if app.console is not None:
            for line in app.console.announce():
                out(line)

    asyncio.run(serve(config, on_ready=ready))
    return 0


def _device_config(
    config: Any,
    device_id: str,
    transport: str,
    secret: bytes,
    host: str,
    extra: dict[str, Any],
    wifi: dict[str, str],
    protocol: int = 2,
) -> dict[str, Any]:
    from safething_gateway.provisioning import DeviceEndpoints, device_config

    return device_config(
        DeviceEndpoints.from_config(config, host),
        device_id,
        transport,
        secret,
        wifi=wifi,
        mqtt_login=extra,
        protocol=protocol,
    )


def lan_address() -> str | None:
    """This machine's address on the network its default route leads to (no packet is sent:
    connecting a UDP socket only picks the route), None when there is none."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: never answered, only routed
            address: str = s.getsockname()[0]
        except OSError:
            return None
    return None if _unreachable(address) else address


def _unreachable(host: str) -> bool:
    """Loopback or wildcard: an address that names no machine a board could reach."""
    import ipaddress

    if host.strip().lower() in ("", "localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified


def _device_host(config: Any, transport: str, given: str | None) -> str:
    """The address written into the device's config: ``--host``, else the gateway's own
    address from its config, refused when that is one a device cannot reach."""
    if given is not None:
        if not given.strip():
            raise ValueError("--host is empty")
        return given.strip()
    section = {"mqtt": config.mqtt, "coap": config.coap, "http": config.http}[transport]
    host: str = section.host if transport == "mqtt" else section.bind
    if _unreachable(host):
        detected = lan_address()
        hint = (
            f"this machine's LAN address looks like {detected}: --host {detected}"
            if detected
            else "this machine's LAN address could not be detected (see: ip -brief address)"
        )
        raise ValueError(
            f"the {transport} address in the gateway config is {host!r}, which a device "
            f"cannot reach; give the address it should use with --host ({hint})"
        )
    return host


def _wifi(ssid: str | None, password: str) -> dict[str, str]:
    if ssid is None:
        if password:
            raise ValueError("--wifi-password without --wifi-ssid")
        out("note: no --wifi-ssid, so the config joins no Wi-Fi network (a board needs one)")
        return {}
    if not ssid.strip():
        raise ValueError("--wifi-ssid is empty: give the name of the Wi-Fi network")
    if len(ssid.encode()) > 32:
        raise ValueError("--wifi-ssid is longer than 32 bytes, the most a Wi-Fi name can be")
    return {"ssid": ssid, "password": password}


def cmd_provision(args: argparse.Namespace) -> int:
    _need_gateway()
    from safething_gateway.config import load_config
    from safething_gateway.device_admin import DeviceAdmin
    from safething_gateway.registry import Registry

    config = load_config(args.config)
    host = _device_host(config, args.transport, args.host)
    wifi = _wifi(args.wifi_ssid, args.wifi_password)
    registry = Registry(config.gateway.registry_path)
    try:
        done = DeviceAdmin.from_config(config, registry).provision(
            args.device_id,
            args.transport,
            secret=secrets.token_bytes(32),
            protocol=int(args.link[2:]),
        )
    finally:
        registry.close()
    record = done.record
    doc = _device_config(
        config,
        args.device_id,
        args.transport,
        record.secret,
        host,
        done.mqtt_login,
        wifi,
        record.protocol,
    )
    text = json.dumps(doc, indent=2) + "\n"
    target = args.out or Path(f"{args.device_id}.json")
    write_private(target, text)
    out(
        f"provisioned {args.device_id} ({args.transport}); thing key "
        f"{record.identity.public_sign_key.hex()[:16]}..."
    )
    out(f"device config written to {target} (mode 0600): copy it to the device as config.json")
    if record.protocol == 1:
        out("warning: ST1 sends bodies in clear; the broker and the LAN can read them")
    for note in done.notes:
        out(note)
    if not args.no_qr:
        import segno

        qr = segno.make(json.dumps(doc, separators=(",", ":")), error="l")
        out("scan this with the SAFEthing console or a phone to configure the device:")
        qr.terminal(compact=True)
    return 0


def _auth(config: Any) -> Any:
    from safething_gateway.device_admin import broker_auth

    auth = broker_auth(config)
    if auth is None:
        raise ValueError("set [mqtt] password_file and acl_file in the gateway config first")
    return auth


def _reload_broker(config: Any) -> None:
    from safething_gateway.device_admin import BrokerReloadError, reload_command

    try:
        reload_command(config.mqtt.reload_command)()
    except BrokerReloadError as e:
        out(str(e))


def cmd_broker_login(args: argparse.Namespace) -> int:
    _need_gateway()
    from safething_gateway.config import load_config
    from safething_gateway.mosquitto import GATEWAY_LOGIN_ROLES

    config = load_config(args.config)
    auth = _auth(config)
    prefix = config.adoption.discovery_prefix
    if args.topic and args.role != "client":
        raise ValueError("--topic goes with --for client")
    if args.role == "client":
        if not args.username:
            raise ValueError("--for client needs --username (the login the device will use)")
        password = auth.add_client_user(args.username, args.topic)
        username = args.username
    elif args.role == "homeassistant":
        username = args.username or "homeassistant"
        password = auth.add_homeassistant_user(username, discovery_prefix=prefix)
    else:
        username = args.username or config.mqtt.username or "safething-gateway"
        password = auth.add_gateway_user(
            username,
            publish=config.homeassistant.publish,
            adopt_homeassistant=config.adoption.homeassistant,
            adopt_homie=config.adoption.homie,
            mirror=config.mirror.enabled,
            discovery_prefix=prefix,
            mirror_prefix=config.mirror.prefix,
        )
    _reload_broker(config)
    if args.role == "gateway":
        more = [
            f"{username}-{role}"
            for role, on in zip(
                GATEWAY_LOGIN_ROLES,
                (
                    config.adoption.homeassistant,
                    config.adoption.homie,
                    config.homeassistant.publish,
                    config.mirror.enabled,
                ),
                strict=True,
            )
            if on
        ]
        also = f" (and {', '.join(more)} for adoption/publishing/the mirror)" if more else ""
        out(f"created the broker login {username!r}{also}.")
        out("Put the user name in [mqtt] of the gateway config and the password in")
        out("secrets.toml next to it (mode 0600), or in $SAFETHING_MQTT_PASSWORD:")
        out(f'username = "{username}"')
        out(f'password = "{password}"')
    else:
        out(f"created the broker login {username!r} ({args.role}):")
        out(f"username: {username}")
        out(f"password: {password}")
    return 0


def _existing_registry(config: Any) -> Path:
    """The registry a read or revoke works on: it must exist (nothing is created here)."""
    path: Path = config.gateway.registry_path
    if not path.exists():
        where = "the built-in defaults" if config.source == "defaults" else config.source
        raise SafeThingError(
            f"no gateway registry at {path} (from {where}); name the gateway's config with "
            "--config /etc/safething/gateway.toml (or $SAFETHING_GATEWAY_CONFIG), or provision "
            "a device first"
        )
    if not os.access(path, os.R_OK | os.W_OK):
        raise SafeThingError(
            f"cannot open the gateway registry {path}: permission denied; run as the gateway's "
            "user, e.g. sudo -u safething safething device list --config ..."
        )
    return path


def cmd_device_list(args: argparse.Namespace) -> int:
    _need_gateway()
    from safething_gateway.config import load_config
    from safething_gateway.registry import Registry

    config = load_config(args.config)
    registry = Registry(_existing_registry(config))
    try:
        records = registry.devices()
    finally:
        registry.close()
    for r in records:
        row = {
            "device_id": r.device_id,
            "transport": r.transport,
            "link": f"ST{r.protocol}",
            "state": "revoked" if r.revoked else ("online" if r.online else "offline"),
            "described": r.description is not None,
            "last_seen": r.last_seen,
            "counter": r.rx_counter,
        }
        if args.json:
            out(json.dumps(row))
        else:
            seen = (
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.last_seen))
                if r.last_seen
                else "never"
            )
            out(
                f"{r.device_id:24s} {r.transport:6s} {row['link']} {row['state']:8s} "
                f"last seen {seen}"
            )
    if not args.json:
        out(f"{len(records)} device(s) in {config.gateway.registry_path}")
    return 0


def cmd_device_revoke(args: argparse.Namespace) -> int:
    _need_gateway()
    from safething_gateway.config import load_config
    from safething_gateway.device_admin import DeviceAdmin
    from safething_gateway.registry import Registry

    config = load_config(args.config)
    registry = Registry(_existing_registry(config))
    try:
        notes = DeviceAdmin.from_config(config, registry).revoke(args.device_id)
    finally:
        registry.close()
    out(f"revoked {args.device_id}: the gateway refuses it from now on")
    for note in notes:
        out(note)
    return 0
