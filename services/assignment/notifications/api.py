"""HTTP routes of notifications: a rep's live stream and the record of deliveries."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from leadflow.chassis.auth import Principal, Role, require
from leadflow.chassis.http import from_state, unprocessable
from services.assignment.notifications.rules import DeliveryStatus, FeedEntry
from services.assignment.notifications.runtime import NotificationRuntime
from services.assignment.notifications.store import NotificationQuery, notification_view
from services.assignment.notifications.usecases import StreamOverflowError

router = APIRouter(prefix="/v1", tags=["notifications"])

SalesStaff = Annotated[Principal, Depends(require(Role.MANAGER, Role.REP))]
NotificationsDep = Annotated[NotificationRuntime, Depends(from_state("notifications"))]

RECONNECT_MS = 2000
"""What the stream tells a client to wait before reconnecting (`retry:`)."""

_RepId = Annotated[str | None, Query(min_length=1, max_length=64)]


async def _person(
    principal: Principal, rep_id: str | None, notifications: NotificationRuntime
) -> str:
    """Whose stream or deliveries: a rep's own, or a rep of their team (reps who name
    them as manager); a manager names the rep."""
    if principal.role is Role.REP:
        if principal.rep_id is None:
            raise HTTPException(status.HTTP_403_FORBIDDEN, detail="this rep key names no rep")
        if rep_id is None or rep_id == principal.rep_id:
            return principal.rep_id
        person = (await notifications.store.people([rep_id])).get(rep_id)
        if person is None or person.manager_id != principal.rep_id:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                detail=f"'{rep_id}' is not you or a rep of your team",
            )
        return rep_id
    if rep_id is None:
        raise unprocessable((("query", "rep_id"), "a manager names the rep whose queue to follow"))
    return rep_id


@router.get(
    "/me/stream",
    summary="Live stream (server-sent events) of the rep's queue and notices",
    description="`text/event-stream`: one event per change to the rep's queue (lead assigned, "
    "reassigned away, returned, lost, converted, activity, SLA breach) and per notice "
    "(SLA warning, help requested, ...). Each event's `id` is its place in the feed: "
    "reconnect with `Last-Event-ID` to get what was missed. Idle streams carry a comment "
    "line every few seconds. Works on any replica, whichever replica the change happened on. "
    "A rep key follows its own queue (or, with `rep_id`, a rep of their team); a manager "
    "passes `rep_id`.",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def my_stream(
    request: Request,
    principal: SalesStaff,
    notifications: NotificationsDep,
    rep_id: _RepId = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=20)] = None,
) -> StreamingResponse:
    person_id = await _person(principal, rep_id, notifications)
    after: int | None = None
    if last_event_id:
        if not last_event_id.isdigit():
            raise unprocessable(
                (("header", "Last-Event-ID"), "must be the id of an event this stream sent")
            )
        after = int(last_event_id)
    return StreamingResponse(
        _events(notifications, person_id, after),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _events(
    notifications: NotificationRuntime, person_id: str, after: int | None
) -> AsyncIterator[str]:
    yield f"retry: {RECONNECT_MS}\n: following {person_id}\n\n"
    entries = notifications.feed.follow(person_id, after=after)
    pending: asyncio.Task[tuple[int, FeedEntry]] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(entries))
            # Waiting on the task, not the generator: a heartbeat must not cancel the read.
            done, _ = await asyncio.wait({pending}, timeout=notifications.heartbeat_s)
            if not done:
                yield ": heartbeat\n\n"
                continue
            try:
                number, entry = pending.result()
            except StopAsyncIteration:
                return
            except StreamOverflowError:
                yield ": too far behind; reconnect with Last-Event-ID\n\n"
                return
            finally:
                pending = None
            yield sse_event(number, entry)
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await pending
        await entries.aclose()


def sse_event(number: int, entry: FeedEntry) -> str:
    data = {"lead_id": entry.lead_id, "at": entry.at.isoformat(), **entry.data}
    return f"id: {number}\nevent: {entry.kind}\ndata: {json.dumps(data, default=str)}\n\n"


class NotificationPublic(BaseModel):
    delivery_id: str
    channel: Literal["email", "webhook", "sse"]
    kind: str
    person_id: str
    lead_id: str
    text: str
    status: DeliveryStatus
    attempts: int
    last_error: str | None
    due_at: datetime
    sent_at: datetime | None
    updated_at: datetime


@router.get(
    "/notifications",
    summary="Notification deliveries and how they went (e.g. `status=failed`)",
    description="Managers see everyone's (or one rep's with `rep_id`); a rep sees their own. "
    "A delivery is `failed` once its last attempt failed or the receiver refused it for good; "
    "`last_error` says why.",
)
async def list_notifications(  # noqa: PLR0917 - FastAPI parameters
    principal: SalesStaff,
    notifications: NotificationsDep,
    status_: Annotated[DeliveryStatus | None, Query(alias="status")] = None,
    rep_id: _RepId = None,
    lead_id: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[NotificationPublic]:
    person_ids: list[str] | None = None
    if principal.role is Role.REP or rep_id is not None:
        person_ids = [await _person(principal, rep_id, notifications)]
    documents = await notifications.store.list_notifications(
        NotificationQuery(status=status_, person_ids=person_ids, lead_id=lead_id, limit=limit)
    )
    return [NotificationPublic.model_validate(notification_view(doc)) for doc in documents]
