"""Export a thing description as a W3C WoT Thing Description 1.1 (JSON-LD).

:func:`to_thing_description` maps a :class:`~safething.things.description.ThingDescription`
onto the WoT vocabulary so that WoT tools (directories, the TD playground,
node-wot consumers) can read what a SAFEthing offers:

======================= ==============================================
SAFEthing               WoT TD 1.1
======================= ==============================================
attribute               property (``observable`` when dynamic,
                        ``readOnly`` unless writable, ``const`` when static)
topic                   event (``data`` is the payload schema)
action                  action (``input`` is an object of the params,
                        ``output`` the result; ``synchronous: false``)
access type, history... ``safething:access``, ``safething:history``...
======================= ==============================================

Forms point at ``safe://`` URLs: ``safe://<thing id>/properties/<name>``,
``.../actions/<name>``, ``.../events/<name>`` (the id is percent-encoded where
a URL needs it). Give ``base`` (e.g. the thing's public name,
``safe://garden.alice``) to get relative hrefs under that base instead.
Payloads travel as CBOR, hence ``contentType: application/cbor``.

Security: there is no transport credential to describe. Every record is
signed by its writer and checked by every reader; Owner, Group and Thing data
is encrypted to those keys; action requests are signed by the requester and
checked against the action's access type. The document says so with one
additional security scheme, ``safething:SignedRecords``, as the TD spec
allows for schemes it does not define (a prefixed name declared in
``@context``).

SAFEthing-specific terms use the ``safething:`` prefix, declared in
``@context`` as :data:`SAFETHING_VOCAB`, so the document stays valid JSON-LD:

* ``safething:thingId`` - the SAFEthing id (the TD ``id`` is a URN built from it);
* ``safething:access`` - who may read / request: thing, owner, group or all;
* ``safething:dynamic``, ``safething:history`` - attribute kind and ring size;
* ``safething:timeout_s`` - seconds before an action request times out.
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import quote

from safething.things.description import (
    Action,
    Attribute,
    Schema,
    ThingDescription,
    Topic,
    ValueType,
)

__all__ = [
    "CONTENT_TYPE",
    "SAFETHING_PREFIX",
    "SAFETHING_VOCAB",
    "SECURITY_SCHEME",
    "TD_CONTEXT",
    "to_thing_description",
]

TD_CONTEXT: Final = "https://www.w3.org/2022/wot/td/v1.1"
"""The WoT Thing Description 1.1 JSON-LD context."""
SAFETHING_PREFIX: Final = "safething"
"""JSON-LD prefix of SAFEthing's own terms."""
SAFETHING_VOCAB: Final = "urn:safething:vocab#"
"""IRI the prefix stands for. A URN: it names the vocabulary, which this
module's docstring documents; it is not meant to be fetched."""
CONTENT_TYPE: Final = "application/cbor"
"""Media type of payloads on the data network."""
SECURITY_SCHEME: Final = "safething:SignedRecords"
"""The additional security scheme that describes SAFEthing's signed records."""
_SECURITY_NAME: Final = "safething_sc"
_BEARER_NAME: Final = "bearer_sc"

_TD_TYPES: Final = {
    ValueType.NUMBER: "number",
    ValueType.INTEGER: "integer",
    ValueType.BOOLEAN: "boolean",
    ValueType.STRING: "string",
    ValueType.ENUM: "string",
    ValueType.OBJECT: "object",
    ValueType.ARRAY: "array",
}


def _data_schema(schema: Schema) -> dict[str, Any]:
    """A WoT DataSchema for ``schema``."""
    out: dict[str, Any] = {"type": _TD_TYPES[schema.type]}
    if schema.unit is not None:
        out["unit"] = schema.unit
    if schema.minimum is not None:
        out["minimum"] = schema.minimum
    if schema.maximum is not None:
        out["maximum"] = schema.maximum
    if schema.choices is not None:
        out["enum"] = list(schema.choices)
    if schema.type is ValueType.STRING and schema.max_length is not None:
        out["maxLength"] = schema.max_length
    if schema.type is ValueType.ARRAY:
        if schema.max_length is not None:
            out["maxItems"] = schema.max_length
        if schema.items is not None:
            out["items"] = _data_schema(schema.items)
    if schema.properties is not None:
        out["properties"] = {k: _data_schema(v) for k, v in schema.properties.items()}
        required = [k for k, v in schema.properties.items() if v.default is None]
        if required:
            out["required"] = required
    if schema.default is not None:
        out["default"] = schema.to_dict()["default"]
    return out


def _href(prefix: str, kind: str, name: str) -> str:
    return f"{prefix}{kind}/{quote(name, safe='')}"


def _form(href: str, ops: list[str]) -> dict[str, Any]:
    return {"href": href, "op": ops, "contentType": CONTENT_TYPE}


def _http_form(href: str, ops: list[str], **extra: Any) -> dict[str, Any]:
    return {"href": href, "op": ops, "contentType": "application/json", **extra}


def _http_forms(td: dict[str, Any], desc: ThingDescription, http: str) -> None:
    """Add the gateway's WoT HTTP binding forms (JSON, bearer token) beside the safe:// ones."""
    root = f"{http.rstrip('/')}/wot/{quote(desc.id, safe='-_.')}/"
    for attr in desc.attributes:
        forms = td["properties"][attr.name]["forms"]
        href = _href(root, "properties", attr.name)
        ops = ["readproperty"] + (["writeproperty"] if attr.writable else [])
        forms.append(_http_form(href, ops))
        if attr.dynamic:
            forms.append(
                _http_form(
                    href + "/observe",
                    ["observeproperty", "unobserveproperty"],
                    subprotocol="longpoll",
                )
            )
    for action in desc.actions:
        href = _href(root, "actions", action.name)
        td["actions"][action.name]["forms"].append(_http_form(href, ["invokeaction"]))
    for topic in desc.topics:
        href = _href(root, "events", topic.name)
        td["events"][topic.name]["forms"].append(
            _http_form(href, ["subscribeevent", "unsubscribeevent"], subprotocol="longpoll")
        )
    for section in ("properties", "actions", "events"):
        for interaction in td[section].values():
            for form in interaction["forms"]:
                if not form["href"].startswith(("http://", "https://")):
                    form.setdefault("security", [_SECURITY_NAME])
    td["securityDefinitions"][_BEARER_NAME] = {
        "scheme": "bearer",
        "in": "header",
        "name": "Authorization",
        "format": "opaque",
        "description": (
            "HTTP forms: a token the owner issued to one identity (safething gateway token "
            "add); the gateway turns each request into a request signed by that identity "
            "and serves only values it verified."
        ),
    }
    td["security"] = [_BEARER_NAME]


def _property(attr: Attribute, prefix: str) -> dict[str, Any]:
    out = _data_schema(attr.schema)
    if attr.description:
        out["description"] = attr.description
    if not attr.dynamic:
        out["const"] = attr.to_dict()["value"]
    out["readOnly"] = not attr.writable
    out["writeOnly"] = False
    out["observable"] = attr.dynamic
    ops = ["readproperty"]
    if attr.writable:
        ops.append("writeproperty")
    if attr.dynamic:
        ops += ["observeproperty", "unobserveproperty"]
    out["forms"] = [_form(_href(prefix, "properties", attr.name), ops)]
    out["safething:access"] = attr.access.value
    out["safething:dynamic"] = attr.dynamic
    if attr.dynamic:
        out["safething:history"] = attr.history
    return out


def _action(action: Action, prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if action.description:
        out["description"] = action.description
    if action.params:
        props: dict[str, Any] = {}
        for p in action.params:
            props[p.name] = _data_schema(p.schema)
            if p.description:
                props[p.name]["description"] = p.description
        out["input"] = {"type": "object", "properties": props}
        required = [p.name for p in action.params if p.required]
        if required:
            out["input"]["required"] = required
    if action.output is not None:
        out["output"] = _data_schema(action.output)
    # Requests run in the background and are followed by their state.
    out.update(safe=False, idempotent=False, synchronous=False)
    out["forms"] = [_form(_href(prefix, "actions", action.name), ["invokeaction", "queryaction"])]
    out["safething:access"] = action.access.value
    out["safething:timeout_s"] = action.timeout_s
    return out


def _event(topic: Topic, prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if topic.description:
        out["description"] = topic.description
    if topic.payload is not None:
        out["data"] = _data_schema(topic.payload)
    out["forms"] = [
        _form(_href(prefix, "events", topic.name), ["subscribeevent", "unsubscribeevent"])
    ]
    out["safething:access"] = topic.access.value
    out["safething:history"] = topic.history
    return out


def to_thing_description(
    desc: ThingDescription, *, base: str | None = None, http: str | None = None
) -> dict[str, Any]:
    """A WoT Thing Description 1.1 document (a JSON-compatible dict) for ``desc``.

    Without ``base``, hrefs are absolute: ``safe://<thing id>/properties/<name>``.
    With ``base`` (a URL such as ``safe://garden.alice``), the document
    carries ``base`` (with a ``/`` added if missing) and relative hrefs
    (``properties/<name>``). With ``http`` (a gateway's URL, e.g.
    ``http://pi.local:8080``), each interaction also gets the forms of the
    gateway's WoT HTTP binding (JSON; observe and events by long-poll), secured
    by a bearer token; the ``safe://`` forms keep ``safething_sc``.
    """
    if not isinstance(desc, ThingDescription):
        raise TypeError(f"expected a ThingDescription, got {type(desc).__name__}")
    if base is None:
        prefix = f"safe://{quote(desc.id, safe='-_.')}/"
    else:
        if not isinstance(base, str) or "://" not in base:
            raise ValueError(
                f"base must be an absolute URL like 'safe://garden.alice', got {base!r}"
            )
        base = base if base.endswith("/") else base + "/"
        prefix = ""
    td: dict[str, Any] = {
        "@context": [TD_CONTEXT, {SAFETHING_PREFIX: SAFETHING_VOCAB}],
        "id": f"urn:safething:thing:{desc.id}",
        "title": desc.title,
    }
    if desc.description:
        td["description"] = desc.description
    if base is not None:
        td["base"] = base
    td["securityDefinitions"] = {
        _SECURITY_NAME: {
            "scheme": SECURITY_SCHEME,
            "description": (
                "No transport credentials: every record is signed by its writer and "
                "verified by every reader against the thing's permissions; owner, group "
                "and thing data is encrypted to those keys; action requests are signed "
                "by the requester and checked against the action's safething:access."
            ),
        }
    }
    td["security"] = [_SECURITY_NAME]
    td["safething:thingId"] = desc.id
    td["properties"] = {a.name: _property(a, prefix) for a in desc.attributes}
    td["actions"] = {a.name: _action(a, prefix) for a in desc.actions}
    td["events"] = {t.name: _event(t, prefix) for t in desc.topics}
    if http is not None:
        if not isinstance(http, str) or not http.startswith(("http://", "https://")):
            raise ValueError(f"http must be the gateway's http(s):// URL, got {http!r}")
        _http_forms(td, desc, http)
    return td
