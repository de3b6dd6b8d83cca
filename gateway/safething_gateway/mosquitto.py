"""Mosquitto logins and ACLs for provisioned devices and the gateway.

Each device logs in to the broker with its device id as user name and a
random password, and may only touch its own topics::

    user <device>
    topic write st/v1/<device>/up/#
    topic read st/v1/<device>/down/#
    topic read st/v1/<device>/err

The gateway user reads every device's uplinks and writes their downlinks and
error reports::

    user <gateway>
    topic read st/v1/+/up/#
    topic write st/v1/+/down/#
    topic write st/v1/+/err

Each further MQTT connection of the gateway has a login of its own, with the
same password (the broker binds a client id to its login, so two connections
sharing one would throw each other off), written only when the feature is on
in the gateway config (run ``safething broker-login`` again after turning one
on): ``<gateway>-ha-adopt`` reads and writes every topic (``topic readwrite
#``), because an adopted device's state and command topics can be anything
(``tele/...``, ``cmnd/...``, ``zigbee2mqtt/...``); ``<gateway>-homie-adopt``
reads and writes ``homie/#``; ``<gateway>-ha-publish`` reads and writes
Home Assistant discovery and the state, availability and command topics it
publishes under (``safething/#``); ``<gateway>-json-mirror`` may only write
the plain-JSON mirror's tree (``topic write safething-json/#``: it reads
nothing, so it can take no command). None of that gives the gateway power over
SAFEthing devices it does not already have (it holds their secrets); a
device's own login stays confined to its topics.

Other clients get a login with the topics they need: Home Assistant
(:meth:`MosquittoAuth.add_homeassistant_user`) and devices that are not
SAFEthing devices, such as a Tasmota plug to adopt
(:meth:`MosquittoAuth.add_client_user` with their topics).

Passwords are stored the way ``mosquitto_passwd`` (Mosquitto 2.x) stores them:
``<user>:$7$<iterations>$<base64 salt>$<base64 PBKDF2-HMAC-SHA512>``. They are
hashed here rather than by running ``mosquitto_passwd -b``, which would put
the password on a command line that every local user can read in ``ps``.

Both files are rewritten atomically (temporary file, ``fsync``, rename) with
mode 0600. The broker reads them at start and on ``SIGHUP``: reloading it is
the caller's job (``systemctl reload mosquitto``; ``Mosquitto.reload()`` in
tests). A broker started as root runs as the ``mosquitto`` user, which must be
able to read them: give them to it (``owner="mosquitto"`` when the gateway
runs as root) or use ``mode=0o640, group="mosquitto"`` with the gateway's user
in that group (see ``gateway/mosquitto-safething.conf``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
import secrets
from pathlib import Path

from safething.files import write_private
from safething_gateway.bridges.mqtt import Topics
from safething_gateway.protocol import check_device_id

__all__ = ["MosquittoAuth", "hash_password"]

ITERATIONS = 101
"""PBKDF2 rounds; Mosquitto 2.0's default (``mosquitto_passwd -I`` changes it)."""

_USER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_MARK = "# safething:"


GATEWAY_LOGIN_ROLES = ("ha-adopt", "homie-adopt", "ha-publish", "json-mirror")
"""Suffixes of the gateway's further logins: ``<gateway login>-<role>``."""


def _topic(text: str) -> str:
    """A topic or filter fit for an ACL line: no spaces, no line breaks, no NUL."""
    clean = text.strip().rstrip("/")
    if not clean or any(c.isspace() or c == "\0" for c in clean):
        raise ValueError(f"not an MQTT topic: {text!r}")
    return clean


def hash_password(password: str, *, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """The ``$7$`` (PBKDF2-SHA512) form Mosquitto 2.x reads from a password file."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, 64)
    b64 = base64.b64encode
    return f"$7${iterations}${b64(salt).decode()}${b64(digest).decode()}"


def _check_user(name: str) -> None:
    # fullmatch: a trailing newline would otherwise slip into the files' line syntax
    if not isinstance(name, str) or not _USER.fullmatch(name):
        raise ValueError(f"invalid broker user name {name!r}: 1-64 letters, digits, '.', '-', '_'")


class MosquittoAuth:
    """The broker's password file and ACL file, as the gateway provisions devices."""

    def __init__(
        self,
        password_file: Path,
        acl_file: Path,
        *,
        prefix: str = "st/v1",
        mode: int = 0o600,
        owner: str | int | None = None,
        group: str | int | None = None,
    ) -> None:
        self.password_file = Path(password_file)
        self.acl_file = Path(acl_file)
        self.topics = Topics(prefix)
        self.mode = mode
        """File mode of both files."""
        self.owner = owner
        """Give the files to this user (e.g. ``"mosquitto"`` when the gateway runs as root)."""
        self.group = group
        """Give the files to this group (with ``mode=0o640``: a gateway running as its own
        user in the ``mosquitto`` group)."""

    # --- public API ----------------------------------------------------------------

    def add_device(self, device_id: str) -> str:
        """Create (or replace) the device's login; returns its new random password."""
        _check_user(device_id)
        check_device_id(device_id)
        t = self.topics
        rules = [
            f"topic write {t.up(device_id, '#')}",
            f"topic read {t.down(device_id, '#')}",
            f"topic read {t.err(device_id)}",
        ]
        return self._add(device_id, "device", rules)

    def add_gateway_user(
        self,
        username: str,
        *,
        publish: bool = False,
        adopt_homeassistant: bool = False,
        adopt_homie: bool = False,
        mirror: bool = False,
        discovery_prefix: str = "homeassistant",
        state_prefix: str = "safething",
        mirror_prefix: str = "safething-json",
    ) -> str:
        """Create (or replace) the gateway's logins; returns their new random password.

        ``publish``: Home Assistant publishing is on; ``adopt_*``: adoption is on
        (see the module docstring for what each login may do)."""
        prefix = self.topics.prefix
        password = secrets.token_urlsafe(24)
        users: dict[str, tuple[str, list[str]]] = {
            username: (
                "gateway",
                [
                    f"topic read {prefix}/+/up/#",
                    f"topic write {prefix}/+/down/#",
                    f"topic write {prefix}/+/err",
                ],
            )
        }
        dp, sp = _topic(discovery_prefix), _topic(state_prefix)
        ha_adopt, homie_adopt, ha_publish, json_mirror = (
            f"{username}-{r}" for r in GATEWAY_LOGIN_ROLES
        )
        if adopt_homeassistant:
            users[ha_adopt] = ("gateway", ["topic readwrite #"])
        if adopt_homie:
            users[homie_adopt] = ("gateway", ["topic readwrite homie/#"])
        if publish:
            users[ha_publish] = ("gateway", [f"topic readwrite {dp}/#", f"topic readwrite {sp}/#"])
        if mirror:  # publishes only: it may write its tree and read nothing
            users[json_mirror] = ("gateway", [f"topic write {_topic(mirror_prefix)}/#"])
        for name in (ha_adopt, homie_adopt, ha_publish, json_mirror):
            if name not in users:
                self.remove_device(name)  # a feature turned off: its login goes
        for name, (kind, rules) in users.items():
            self._add(name, kind, rules, password=password)
        return password

    def add_homeassistant_user(
        self,
        username: str,
        *,
        discovery_prefix: str = "homeassistant",
        state_prefix: str = "safething",
    ) -> str:
        """Home Assistant's login: discovery, the states the gateway publishes (read) and
        the commands it takes (write). Adopted devices' topics: add them with
        :meth:`add_client_user` if Home Assistant should use those devices too."""
        sp = _topic(state_prefix)
        rules = [
            f"topic readwrite {_topic(discovery_prefix)}/#",
            f"topic read {sp}/#",
            f"topic write {sp}/+/+/set",
            f"topic write {sp}/+/$action/+",
        ]
        return self._add(username, "homeassistant", rules)

    def add_client_user(self, username: str, topics: list[str]) -> str:
        """A login for another client (e.g. a Tasmota plug to adopt) that may read and
        write exactly ``topics`` (MQTT filters such as ``tele/plug-1/#``)."""
        if not topics:
            raise ValueError("give the topics this login may use (e.g. --topic 'tele/plug/#')")
        return self._add(username, "client", [f"topic readwrite {_topic(t)}" for t in topics])

    def remove_device(self, device_id: str) -> bool:
        """Delete the device's login and ACL; False if it had none."""
        passwords = self._read_passwords()
        blocks = self._read_acl()
        found = passwords.pop(device_id, None) is not None
        found = blocks.pop(device_id, None) is not None or found
        if found:
            self._write_passwords(passwords)
            self._write_acl(blocks)
        return found

    def users(self) -> list[str]:
        """User names in the password file."""
        return list(self._read_passwords())

    # --- files ---------------------------------------------------------------------

    def _add(
        self, username: str, kind: str, rules: list[str], *, password: str | None = None
    ) -> str:
        _check_user(username)
        password = password or secrets.token_urlsafe(24)
        passwords = self._read_passwords()
        passwords[username] = hash_password(password)
        blocks = self._read_acl()
        blocks[username] = (kind, rules)
        self._write_acl(blocks)
        self._write_passwords(passwords)
        return password

    def _read_passwords(self) -> dict[str, str]:
        result: dict[str, str] = {}
        with contextlib.suppress(FileNotFoundError):
            for line in self.password_file.read_text().splitlines():
                user, sep, hashed = line.strip().partition(":")
                if sep and user and not user.startswith("#"):
                    result[user] = hashed
        return result

    def _write_passwords(self, passwords: dict[str, str]) -> None:
        text = "".join(f"{user}:{hashed}\n" for user, hashed in sorted(passwords.items()))
        self._write(self.password_file, text)

    def _read_acl(self) -> dict[str, tuple[str, list[str]]]:
        """User blocks this class wrote: ``user -> (kind, rules)``, in file order."""
        blocks: dict[str, tuple[str, list[str]]] = {}
        kind = ""
        current: list[str] | None = None
        with contextlib.suppress(FileNotFoundError):
            for raw in self.acl_file.read_text().splitlines():
                line = raw.strip()
                if line.startswith(_MARK):
                    kind = line[len(_MARK) :].strip()
                elif line.startswith("user "):
                    current = []
                    blocks[line[5:].strip()] = (kind or "device", current)
                    kind = ""
                elif line.startswith("topic ") and current is not None:
                    current.append(line)
        return blocks

    def _write_acl(self, blocks: dict[str, tuple[str, list[str]]]) -> None:
        lines = [
            "# Written by the SAFEthing gateway (safething_gateway.mosquitto); edits are lost.",
            "# Users without a block here may publish and subscribe to nothing.",
            "",
        ]
        for user, (kind, rules) in sorted(blocks.items(), key=lambda kv: (kv[1][0], kv[0])):
            lines += [f"{_MARK} {kind}", f"user {user}", *rules, ""]
        self._write(self.acl_file, "\n".join(lines))

    def _write(self, path: Path, text: str) -> None:
        write_private(path, text, mode=self.mode, owner=self.owner, group=self.group)
