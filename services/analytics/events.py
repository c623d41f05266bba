"""What analytics reads off Kafka: any contract event, or, for a type or version it does
not know (a newer producer), the event kept raw, so it is stored and counted rather than
parked on a dead-letter topic.

The chassis validates each record against the type a service consumes; the contract's
`AnyEvent` is a union discriminated by `event_type`, which rejects an unknown type. Here
the discriminator is a function: a known `event_type` at `schema_version` 1 selects its
model (and a record that breaks that model is still poison), anything else `RawEvent`.
"""

from __future__ import annotations

from typing import Annotated, Any, Union, get_args

from pydantic import ConfigDict, Discriminator, Tag, TypeAdapter

from shared.events import AnyEvent, Event

RAW = "raw"


class RawEvent(Event):
    """An event of a type or version analytics does not know: every field kept."""

    model_config = ConfigDict(frozen=True, extra="allow")


_KNOWN: dict[str, type[Event]] = {
    model.model_fields["event_type"].default: model for model in get_args(get_args(AnyEvent)[0])
}


def _tag(value: Any) -> str:
    if isinstance(value, dict):
        event_type, version = value.get("event_type"), value.get("schema_version", 1)
    else:
        event_type, version = (
            getattr(value, "event_type", None),
            getattr(value, "schema_version", 1),
        )
    if isinstance(event_type, str) and event_type in _KNOWN and version == 1:
        return event_type
    return RAW


# Each contract model under its `event_type`, then the raw fallback: a Union built from the
# contract's own list, so a model added to `AnyEvent` is parsed here without a change.
_MEMBERS: tuple[Any, ...] = (
    *(Annotated[model, Tag(name)] for name, model in _KNOWN.items()),
    Annotated[RawEvent, Tag(RAW)],
)
AnalyticsEvent: Any = Annotated[Union[_MEMBERS], Discriminator(_tag)]  # noqa: UP007

PARSER: TypeAdapter[Event] = TypeAdapter(AnalyticsEvent)
KNOWN_TYPES = frozenset(_KNOWN)
