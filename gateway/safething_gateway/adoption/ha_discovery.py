"""The Home Assistant MQTT discovery format: abbreviated keys, ``~`` bases.

What a discovery config says, independent of what the adopter makes of it
(:mod:`safething_gateway.adoption.homeassistant`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from safething.errors import SafeThingError

__all__ = [
    "ABBREVIATIONS",
    "PUBLISHER_ORIGIN",
    "DiscoveryConfigError",
    "apply_base",
    "expand_config",
]


class DiscoveryConfigError(SafeThingError, ValueError):
    """A discovery config (or announcement) cannot be adopted; it is skipped."""


ABBREVIATIONS: Final[Mapping[str, str]] = {
    "act_t": "action_topic",
    "act_tpl": "action_template",
    "avty": "availability",
    "avty_mode": "availability_mode",
    "avty_t": "availability_topic",
    "avty_tpl": "availability_template",
    "bri_cmd_t": "brightness_command_topic",
    "bri_cmd_tpl": "brightness_command_template",
    "bri_scl": "brightness_scale",
    "bri_stat_t": "brightness_state_topic",
    "bri_val_tpl": "brightness_value_template",
    "cmd_off_tpl": "command_off_template",
    "cmd_on_tpl": "command_on_template",
    "cmd_t": "command_topic",
    "cmd_tpl": "command_template",
    "cmps": "components",
    "def_ent_id": "default_entity_id",
    "dev": "device",
    "dev_cla": "device_class",
    "e": "encoding",
    "en": "enabled_by_default",
    "ent_cat": "entity_category",
    "ent_pic": "entity_picture",
    "exp_aft": "expire_after",
    "frc_upd": "force_update",
    "ic": "icon",
    "json_attr": "json_attributes",
    "json_attr_t": "json_attributes_topic",
    "json_attr_tpl": "json_attributes_template",
    "max": "max",
    "min": "min",
    "mode": "mode",
    "name": "name",
    "o": "origin",
    "obj_id": "object_id",
    "off_dly": "off_delay",
    "on_cmd_type": "on_command_type",
    "ops": "options",
    "opt": "optimistic",
    "p": "platform",
    "pl": "payload",
    "pl_avail": "payload_available",
    "pl_not_avail": "payload_not_available",
    "pl_off": "payload_off",
    "pl_on": "payload_on",
    "pl_prs": "payload_press",
    "qos": "qos",
    "ret": "retain",
    "stat_cla": "state_class",
    "stat_off": "state_off",
    "stat_on": "state_on",
    "stat_t": "state_topic",
    "stat_tpl": "state_template",
    "stat_val_tpl": "state_value_template",
    "step": "step",
    "sug_dsp_prc": "suggested_display_precision",
    "t": "topic",
    "uniq_id": "unique_id",
    "unit_of_meas": "unit_of_measurement",
    "val_tpl": "value_template",
}
"""Short keys of discovery configs (the subset that matters for adoption, plus common ones)."""

_DEVICE_ABBREVIATIONS: Final[Mapping[str, str]] = {
    "cu": "configuration_url",
    "cns": "connections",
    "ids": "identifiers",
    "mf": "manufacturer",
    "mdl": "model",
    "mdl_id": "model_id",
    "hw": "hw_version",
    "sw": "sw_version",
    "sa": "suggested_area",
    "sn": "serial_number",
}
PUBLISHER_ORIGIN: Final = "safething-gateway"
"""The ``origin`` name of the discovery configs the gateway publishes for its SAFEthings
(:mod:`~safething_gateway.adoption.publish`); adoption skips them."""

_ORIGIN_ABBREVIATIONS: Final[Mapping[str, str]] = {"sw": "sw_version", "url": "support_url"}

_SHARED: Final = (
    "~",
    "state_topic",
    "command_topic",
    "qos",
    "encoding",
    "availability",
    "availability_topic",
    "availability_mode",
    "availability_template",
    "payload_available",
    "payload_not_available",
)
"""Options a device-based config may give once for all its components."""


def _long_keys(doc: Mapping[str, Any], table: Mapping[str, str]) -> dict[str, Any]:
    return {table.get(k, k): v for k, v in doc.items()}


def expand_config(doc: Mapping[str, Any]) -> dict[str, Any]:
    """Long keys for a discovery config, its ``device``, ``origin`` and ``availability``
    items. Components (``cmps``) are left as they are; ``~`` is not substituted yet
    (see :func:`apply_base`)."""
    out = _long_keys(doc, ABBREVIATIONS)
    if isinstance(out.get("device"), Mapping):
        out["device"] = _long_keys(out["device"], _DEVICE_ABBREVIATIONS)
    if isinstance(out.get("origin"), Mapping):
        out["origin"] = _long_keys(out["origin"], _ORIGIN_ABBREVIATIONS)
    if isinstance(out.get("availability"), list):
        out["availability"] = [
            _long_keys(item, ABBREVIATIONS) if isinstance(item, Mapping) else item
            for item in out["availability"]
        ]
    return out


def apply_base(config: dict[str, Any]) -> dict[str, Any]:
    """Replace a leading or trailing ``~`` in every ``*_topic`` (and availability ``topic``)."""
    base = config.get("~")
    if not isinstance(base, str):
        return config

    def sub(value: Any) -> Any:
        if isinstance(value, str):
            if value.startswith("~"):
                return base + value[1:]
            if value.endswith("~"):
                return value[:-1] + base
        return value

    for key in list(config):
        if key.endswith("_topic"):
            config[key] = sub(config[key])
    if isinstance(config.get("availability"), list):
        config["availability"] = [
            {**item, "topic": sub(item.get("topic"))} if isinstance(item, Mapping) else item
            for item in config["availability"]
        ]
    return config
