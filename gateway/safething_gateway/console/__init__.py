"""The web console: an owner manages things and devices from a browser.

FastAPI + Jinja2 + htmx + uPlot (vendored in ``static/vendor``), live updates
over one server-sent-event stream per tab. See ``docs/console.md``.
"""

from safething_gateway.console.audit import AuditEntry, AuditLog
from safething_gateway.console.auth import Backoff, OwnerBinding, Sessions, SlowDownError
from safething_gateway.console.console import Console, ConsoleSettings
from safething_gateway.console.data import ConsoleData, ThingIndex

__all__ = [
    "AuditEntry",
    "AuditLog",
    "Backoff",
    "Console",
    "ConsoleData",
    "ConsoleSettings",
    "OwnerBinding",
    "Sessions",
    "SlowDownError",
    "ThingIndex",
]
