"""The SAFEthing API: things that register, publish, notify, subscribe and act.

``safething.things.Action`` is an action a thing offers; the MD permission
flags of the same name live in ``safething.net``.
"""

from safething.things.admin import set_status
from safething.things.availability import Availability, AvailabilityWatch
from safething.things.client import (
    ActionHandle,
    ActionStatus,
    Subscription,
    ThingClient,
)
from safething.things.description import (
    AccessType,
    Action,
    Attribute,
    DescriptionError,
    MissingParamError,
    Param,
    Schema,
    ThingDescription,
    Topic,
    UnknownFieldError,
    ValueType,
    ValueTypeError,
)
from safething.things.discovery import ThingSummary, list_things
from safething.things.filters import Filter, FilterError, FilterKind, FilterState
from safething.things.history import Bucket
from safething.things.owner import ThingOwner
from safething.things.shared import SharedWatches
from safething.things.states import FINAL_STATES, ActionState
from safething.things.thing import ActionRequest, StoredSubscription, Thing
from safething.things.values import Notification, Reading
from safething.things.wot import to_thing_description

__all__ = [
    "FINAL_STATES",
    "AccessType",
    "Action",
    "ActionHandle",
    "ActionRequest",
    "ActionState",
    "ActionStatus",
    "Attribute",
    "Availability",
    "AvailabilityWatch",
    "Bucket",
    "DescriptionError",
    "Filter",
    "FilterError",
    "FilterKind",
    "FilterState",
    "MissingParamError",
    "Notification",
    "Param",
    "Reading",
    "Schema",
    "SharedWatches",
    "StoredSubscription",
    "Subscription",
    "Thing",
    "ThingClient",
    "ThingDescription",
    "ThingOwner",
    "ThingSummary",
    "Topic",
    "UnknownFieldError",
    "ValueType",
    "ValueTypeError",
    "list_things",
    "set_status",
    "to_thing_description",
]
