"""Provisioning and revoking a device, in one place: its registry entry and, for MQTT on a
broker with logins, its broker login and ACL.

``safething provision`` / ``safething device revoke`` and the console's Provision
page and *Revoke* button all go through :class:`DeviceAdmin`, so a device provisioned
either way can log in to the broker, and a device revoked either way can no longer:

* **provision** refuses an id the registry has already (before touching the broker's
  files, so an existing device's login is never replaced), creates the broker login
  (MQTT with ``[mqtt] password_file`` and ``acl_file``), then the registry entry (the
  login is removed again if that fails), and reloads the broker;
* **revoke** marks the device revoked in the registry (the gateway refuses it from
  then on and its queued downlinks are dropped), removes its broker login and ACL,
  and reloads the broker, which then refuses the login.

Its methods are synchronous (SQLite, files, a reload command): async callers run them
off the event loop (the console uses the registry's worker thread, :meth:`Registry.call`).
"""

from __future__ import annotations

import shlex
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safething.errors import SafeThingError
from safething_gateway.mosquitto import MosquittoAuth
from safething_gateway.protocol import VERSION
from safething_gateway.registry import DeviceRecord, Registry

__all__ = [
    "BrokerReloadError",
    "DeviceAdmin",
    "Provisioned",
    "broker_auth",
    "reload_command",
]


class BrokerReloadError(SafeThingError):
    """The broker was not reloaded: the message says what to run (nothing is undone)."""


def broker_auth(config: Any) -> MosquittoAuth | None:
    """The broker's password and ACL files named in the gateway config (``[mqtt]``),
    None when the config names none (an anonymous broker: no logins to manage)."""
    mqtt = config.mqtt
    if not (mqtt.password_file and mqtt.acl_file):
        return None
    group = mqtt.files_group or None
    return MosquittoAuth(
        Path(mqtt.password_file),
        Path(mqtt.acl_file),
        prefix=mqtt.prefix,
        mode=0o640 if group else 0o600,
        group=group,
    )


def reload_command(command: str) -> Callable[[], None]:
    """A reload that runs ``command`` (e.g. ``sudo systemctl reload mosquitto``);
    :class:`BrokerReloadError` saying what to do when there is none or it fails."""

    def reload() -> None:
        if not command:
            raise BrokerReloadError(
                "reload the broker so the change takes effect "
                "(e.g. sudo systemctl reload mosquitto)"
            )
        try:
            result = subprocess.run(
                shlex.split(command), capture_output=True, text=True, timeout=30
            )
            ok, failed = (
                result.returncode == 0,
                (result.stderr.strip() or f"exit code {result.returncode}"),
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            ok, failed = False, str(e)
        if not ok:
            raise BrokerReloadError(
                f"warning: '{command}' failed ({failed}); run it yourself so the change "
                "takes effect"
            )

    return reload


@dataclass(frozen=True, slots=True)
class Provisioned:
    """A device just provisioned."""

    record: DeviceRecord
    mqtt_login: dict[str, str] = field(default_factory=dict)
    """``{"username", "password"}`` of its broker login; empty when none was made."""
    notes: tuple[str, ...] = ()
    """What the owner still has to do (a broker reload that did not happen)."""


class DeviceAdmin:
    """Provision and revoke devices: registry entry and broker login together."""

    def __init__(
        self,
        registry: Registry,
        *,
        auth: MosquittoAuth | None = None,
        reload: Callable[[], None] | None = None,
    ) -> None:
        self.registry = registry
        self.auth = auth
        """The broker's password and ACL files; None: a broker without logins."""
        self.reload = reload or reload_command("")
        """Makes the broker re-read its files; raises :class:`BrokerReloadError`."""

    @classmethod
    def from_config(cls, config: Any, registry: Registry) -> DeviceAdmin:
        """As the gateway config says: ``[mqtt] password_file``, ``acl_file``,
        ``files_group``, ``reload_command``."""
        return cls(
            registry, auth=broker_auth(config), reload=reload_command(config.mqtt.reload_command)
        )

    def provision(
        self,
        device_id: str,
        transport: str,
        *,
        secret: bytes | None = None,
        protocol: int = VERSION,
        meta: dict[str, Any] | None = None,
    ) -> Provisioned:
        """A new device; ``ValueError`` if the id is taken or invalid."""
        if self.registry.find(device_id) is not None:
            raise ValueError(f"device {device_id!r} is already provisioned")
        login: dict[str, str] = {}
        if transport == "mqtt" and self.auth is not None:
            login = {"username": device_id, "password": self.auth.add_device(device_id)}
        try:
            record = self.registry.add(
                device_id,
                transport,
                secret=secret,
                meta={"provisioned": time.time(), **(meta or {})},
                protocol=protocol,
            )
        except BaseException:
            if login and self.auth is not None:
                self.auth.remove_device(device_id)
            raise
        return Provisioned(record, login, self._reload() if login else ())

    def revoke(self, device_id: str) -> tuple[str, ...]:
        """Refuse the device from now on; its broker login goes too. Returns notes
        (as :attr:`Provisioned.notes`); ``UnknownDeviceError`` for an unknown id."""
        record = self.registry.get(device_id, allow_revoked=True)
        self.registry.revoke(device_id)
        if record.transport != "mqtt" or self.auth is None:
            return ()
        if not self.auth.remove_device(device_id):
            return ()
        return ("its broker login and ACL were removed", *self._reload())

    def _reload(self) -> tuple[str, ...]:
        try:
            self.reload()
        except BrokerReloadError as e:
            return (str(e),)
        return ()
