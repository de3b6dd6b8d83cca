"""``gateway.toml``: every setting with a sensible default.

::

    [gateway]
    store = ""                 # "" = $SAFETHING_STORE or the default SQLite vault
    registry = ""              # "" = <user data dir>/safething/gateway.db
    identity = ""              # owner identity; "" = the safething default identity
    rate_limit = 50.0          # messages per second per device
    burst = 100
    log_format = "text"        # or "json"
    offline_after = 600.0      # seconds of silence before a device is called offline
    max_things = 2000          # custodial things running at once, at most: the quiet longest close
    close_after = 60.0         # seconds a thing must be quiet before it may be closed
    close_births = false       # true: things quiet since their birth close over max_things at once
    tokens = ""                # WoT HTTP tokens directory; "" = <registry dir>/http-tokens

    [mqtt]
    enabled = true
    host = "127.0.0.1"
    port = 1883                # 0 with start_broker = true: any free port
    username = ""              # the gateway's broker login ("" = anonymous)
    password = ""
    start_broker = false       # start a private Mosquitto (demo, development)
    prefix = "st/v1"
    password_file = ""         # Mosquitto password_file managed by `safething provision`
    acl_file = ""              # Mosquitto acl_file managed by `safething provision`
    files_group = ""           # e.g. "mosquitto": both files mode 0640, readable by the broker
    reload_command = ""        # e.g. "sudo systemctl reload mosquitto"

    [coap]
    enabled = true
    bind = "127.0.0.1"
    port = 5683

    [http]
    enabled = true
    bind = "127.0.0.1"
    port = 8080
    wot = false                # serve the WoT HTTP binding (/wot/...) with bearer tokens

    [adoption]
    homeassistant = false
    homie = false
    discovery_prefix = "homeassistant"

    [homeassistant]
    publish = false

    [console]
    enabled = false            # the web console in the gateway process
    bind = "127.0.0.1"         # beyond loopback: login (setup code first) and HTTPS
    port = 8088
    state_dir = ""             # "" = <user data dir>/safething/console (owner binding, audit log)
    session_idle_s = 1800.0
    session_max_s = 43200.0
    tls_cert = ""              # PEM; its SHA-256 goes into provisioning QR codes
    tls_key = ""
    self_signed = "auto"       # no tls_cert: make one (auto: when bind is beyond loopback)
    require_login = false      # log in on loopback too (beyond loopback: always)

    [mirror]                   # plain-JSON copy of verified public readings (read-only)
    enabled = false
    prefix = "safething-json"
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

from safething.errors import SafeThingError

__all__ = [
    "DEFAULT_CONFIG",
    "ENV_CONFIG",
    "AdoptionConfig",
    "CoapConfig",
    "ConfigError",
    "ConsoleConfig",
    "GatewayConfig",
    "GatewaySection",
    "HttpConfig",
    "MqttConfig",
    "default_registry_path",
    "load_config",
]

ENV_CONFIG = "SAFETHING_GATEWAY_CONFIG"
DEFAULT_CONFIG = Path("/etc/safething/gateway.toml")


class ConfigError(SafeThingError, ValueError):
    """The configuration file is missing, not TOML, or has a wrong key or value."""


def default_registry_path() -> Path:
    return Path(platformdirs.user_data_dir("safething", appauthor=False)) / "gateway.db"


@dataclass(frozen=True)
class GatewaySection:
    store: str = ""
    registry: str = ""
    identity: str = ""
    rate_limit: float = 50.0
    burst: int = 100
    log_format: str = "text"
    offline_after: float = 600.0
    max_things: int = 2000
    close_after: float = 60.0
    close_births: bool = False
    tokens: str = ""
    secrets: str = ""

    def __post_init__(self) -> None:
        if not self.offline_after > 0:
            raise ConfigError("gateway.offline_after must be > 0 seconds")
        if self.max_things < 1:
            raise ConfigError(
                f"gateway.max_things must be >= 1 (custodial things running at once), "
                f"got {self.max_things}"
            )
        if not 0 < self.close_after < float("inf"):
            raise ConfigError(
                f"gateway.close_after must be > 0 seconds (a thing quiet that long may be "
                f"closed), got {self.close_after}"
            )
        if self.rate_limit <= 0 or self.burst < 1:
            raise ConfigError("gateway.rate_limit must be > 0 and gateway.burst >= 1")
        if self.log_format not in ("text", "json"):
            raise ConfigError("gateway.log_format is 'text' or 'json'")

    @property
    def registry_path(self) -> Path:
        return Path(self.registry).expanduser() if self.registry else default_registry_path()

    @property
    def tokens_path(self) -> Path:
        """Where the WoT HTTP binding's bearer tokens live."""
        if self.tokens:
            return Path(self.tokens).expanduser()
        return self.registry_path.parent / "http-tokens"


@dataclass(frozen=True)
class MqttConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 1883
    username: str = ""
    password: str = ""
    start_broker: bool = False
    prefix: str = "st/v1"
    password_file: str = ""
    acl_file: str = ""
    files_group: str = ""
    reload_command: str = ""


@dataclass(frozen=True)
class CoapConfig:
    enabled: bool = True
    bind: str = "127.0.0.1"
    port: int = 5683


@dataclass(frozen=True)
class HttpConfig:
    enabled: bool = True
    bind: str = "127.0.0.1"
    port: int = 8080
    wot: bool = False


@dataclass(frozen=True)
class AdoptionConfig:
    homeassistant: bool = False
    homie: bool = False
    discovery_prefix: str = "homeassistant"


@dataclass(frozen=True)
class HomeAssistantConfig:
    publish: bool = False


@dataclass(frozen=True)
class ConsoleConfig:
    enabled: bool = False
    bind: str = "127.0.0.1"
    port: int = 8088
    state_dir: str = ""
    session_idle_s: float = 1800.0
    session_max_s: float = 43200.0
    tls_cert: str = ""
    tls_key: str = ""
    self_signed: str = "auto"
    require_login: bool = False

    def __post_init__(self) -> None:
        self.self_signed_flag  # noqa: B018 (a wrong word is an error at load)

    @property
    def self_signed_flag(self) -> bool | None:
        """``auto`` (beyond loopback), ``true`` or ``false``."""
        value = str(self.self_signed).lower()
        if value not in ("auto", "true", "false"):
            raise ValueError("[console] self_signed is auto, true or false")
        return None if value == "auto" else value == "true"

    @property
    def state_path(self) -> Path:
        if self.state_dir:
            return Path(self.state_dir).expanduser()
        return Path(platformdirs.user_data_dir("safething", appauthor=False)) / "console"


@dataclass(frozen=True)
class MirrorConfig:
    enabled: bool = False
    prefix: str = "safething-json"


@dataclass(frozen=True)
class LeafConfig:
    """``[leaf]``: the site's own nats-server, run by the gateway as a leaf node of a hub
    (docs/scaling.md, "Several sites with a hub")."""

    enabled: bool = False
    hub: str = ""
    """The hub's leaf-node listener: ``nats-leaf://hub-host:7422`` (``tls://`` for TLS)."""
    domain: str = "site"
    """This site's JetStream domain; every site its own. The hub reaches the site's
    streams through ``$JS.<domain>.API``."""
    listen: str = "127.0.0.1"
    port: int = 4222
    """Client port of the site's server (0: a free one)."""
    store_dir: str = ""
    """JetStream storage; "" = ``nats`` next to the registry."""
    bucket: str = ""
    """The store's bucket when ``[gateway] store`` is "": "" = the domain."""

    def __post_init__(self) -> None:
        if not self.enabled:
            return
        if not self.hub.startswith(("nats-leaf://", "tls://")):
            raise ConfigError("[leaf] hub is the hub's leaf-node URL: nats-leaf://host:7422")
        if not re.fullmatch(r"[A-Za-z0-9_-]+", self.domain):
            raise ConfigError("[leaf] domain uses only [A-Za-z0-9_-]")
        if not 0 <= self.port <= 65535:
            raise ConfigError("[leaf] port is 0 to 65535")

    def directory(self, registry_path: Path) -> Path:
        """Where the site's server keeps its configuration, log and JetStream data."""
        return (
            Path(self.store_dir).expanduser() if self.store_dir else registry_path.parent / "nats"
        )

    def store_url(self, server_url: str) -> str:
        """The store URL on the site's server."""
        return f"{server_url}?bucket={self.bucket or self.domain}"


@dataclass(frozen=True)
class GatewayConfig:
    gateway: GatewaySection = field(default_factory=GatewaySection)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    coap: CoapConfig = field(default_factory=CoapConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    adoption: AdoptionConfig = field(default_factory=AdoptionConfig)
    homeassistant: HomeAssistantConfig = field(default_factory=HomeAssistantConfig)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    mirror: MirrorConfig = field(default_factory=MirrorConfig)
    leaf: LeafConfig = field(default_factory=LeafConfig)
    source: str = "defaults"

    def with_overrides(self, **sections: dict[str, Any]) -> GatewayConfig:
        """A copy with some values replaced: ``with_overrides(http={"port": 0})``."""
        changed: dict[str, Any] = {}
        for name, values in sections.items():
            changed[name] = _section(
                type(getattr(self, name)), values, name, base=getattr(self, name)
            )
        return dataclasses.replace(self, **changed)


_SECTIONS = {
    "gateway": GatewaySection,
    "mqtt": MqttConfig,
    "coap": CoapConfig,
    "http": HttpConfig,
    "adoption": AdoptionConfig,
    "homeassistant": HomeAssistantConfig,
    "console": ConsoleConfig,
    "mirror": MirrorConfig,
    "leaf": LeafConfig,
}


def _section(cls: type, values: Any, name: str, *, base: Any = None) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"[{name}] must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(fields)
    if unknown:
        raise ConfigError(
            f"unknown setting(s) in [{name}]: {', '.join(sorted(unknown))} "
            f"(known: {', '.join(fields)})"
        )
    current = dataclasses.asdict(base) if base is not None else {}
    for key, value in values.items():
        default = getattr(cls(), key)
        expected: type = type(default)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ConfigError(
                f"[{name}] {key} must be a {expected.__name__}, got {type(value).__name__}"
            )
        current[key] = value
    try:
        return cls(**current)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"[{name}]: {e}") from e


def _check_mode(target: Path, mode: int, data: dict[str, Any]) -> None:
    """Refuse a file others may change, or one holding a secret that others may read
    (group read is allowed: ``root:safething`` mode 0640 is how the unit reads it)."""
    if mode & 0o022:
        raise ConfigError(
            f"{target} has mode {mode:04o}: others may change it (and so where the gateway "
            f"connects and as whom); run: chmod go-w {target}"
        )
    mqtt = data.get("mqtt")
    secret = isinstance(mqtt, dict) and bool(mqtt.get("password"))
    if secret and mode & 0o037:
        raise ConfigError(
            f"{target} holds the broker password ([mqtt] password) and has mode {mode:04o}: "
            f"readable by other users; run: chmod 600 {target} (or 640 with the gateway's "
            "group)"
        )


ENV_MQTT_PASSWORD = "SAFETHING_MQTT_PASSWORD"
SECRET_KEYS = {"mqtt": ("password",)}
"""What a secrets file may set (the rest belongs in the config)."""


def _merge_secrets(config: Path, data: dict[str, Any]) -> None:
    """Secrets kept out of the config: ``$SAFETHING_MQTT_PASSWORD``, else a TOML file of
    the same shape (``[mqtt] password = "..."``) that others may not read: ``[gateway]
    secrets``, else ``secrets.toml`` next to the config when it exists."""
    section = data.get("gateway", {})
    named = section.get("secrets", "") if isinstance(section, dict) else ""
    if not isinstance(named, str):
        raise ConfigError("[gateway] secrets must be a str (a file path)")
    path = Path(named).expanduser() if named else config.with_name("secrets.toml")
    if named or path.exists():
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
            secrets = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"no secrets file at {path} ([gateway] secrets)") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path} is not valid TOML: {e}") from e
        if mode & 0o037:
            raise ConfigError(
                f"{path} holds secrets and has mode {mode:04o}: readable by other users; "
                f"run: chmod 600 {path} (or 640 with the gateway's group)"
            )
        for name, values in secrets.items():
            allowed = SECRET_KEYS.get(name, ())
            extra = set(values) - set(allowed) if isinstance(values, dict) else {name}
            if extra:
                raise ConfigError(
                    f"{path}: only secrets belong here ([mqtt] password), not "
                    f"{', '.join(sorted(extra))}"
                )
            target = data.setdefault(name, {})
            if not isinstance(target, dict):
                raise ConfigError(f"[{name}] must be a table")
            target.update(values)
    env = os.environ.get(ENV_MQTT_PASSWORD)
    if env:
        mqtt = data.setdefault("mqtt", {})
        if isinstance(mqtt, dict):
            mqtt["password"] = env


def load_config(path: str | os.PathLike[str] | None = None) -> GatewayConfig:
    """Read ``path``, else ``$SAFETHING_GATEWAY_CONFIG``, else ``/etc/safething/gateway.toml``
    when it exists; the built-in defaults when there is none of them."""
    source = path or os.environ.get(ENV_CONFIG, "").strip() or None
    if source is None:
        if not DEFAULT_CONFIG.exists():
            return GatewayConfig()
        source = DEFAULT_CONFIG
    target = Path(source).expanduser()
    try:
        text = target.read_text()
        mode = stat.S_IMODE(target.stat().st_mode)
        data = tomllib.loads(text)
    except FileNotFoundError:
        raise ConfigError(f"no configuration file at {target}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{target} is not valid TOML: {e}") from e
    _check_mode(target, mode, data)
    _merge_secrets(target, data)
    unknown = set(data) - set(_SECTIONS)
    if unknown:
        raise ConfigError(
            f"{target}: unknown section(s) {', '.join(sorted(unknown))} "
            f"(known: {', '.join(_SECTIONS)})"
        )
    sections = {name: _section(cls, data.get(name, {}), name) for name, cls in _SECTIONS.items()}
    return GatewayConfig(**sections, source=str(target))
