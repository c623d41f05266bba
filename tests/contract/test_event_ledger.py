"""The chassis' MongoDB ledger on a real MongoDB-wire server: outbox order, the relay's
position, refilling a lost log, the inbox, and chunked `$in` look-ups."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from pymongo.errors import ExecutionTimeout

from leadflow.chassis.store import (
    Document,
    EventLedger,
    LogPosition,
    OutboxRecord,
    Session,
    find_in,
)
from shared.events import Attribution, Contact, Event, LeadReceivedV1
from tests.contract.conftest import NOW, MongoParts

pytestmark = pytest.mark.integration


def received(lead_id: str) -> LeadReceivedV1:
    return LeadReceivedV1(
        lead_id=lead_id,
        occurred_at=NOW,
        contact=Contact(name="x"),
        attribution=Attribution(source="s", channel="web_form"),
    )


async def commit(parts: MongoParts, *events: Event) -> None:
    async def work(session: Session) -> tuple[None, list[Event]]:
        return None, list(events)

    await parts.ledger.commit(work)


def published(
    records: list[OutboxRecord], first_offset: int = 0
) -> list[tuple[OutboxRecord, LogPosition | None]]:
    return [
        (r, LogPosition(r.topic, 0, first_offset + i, r.event_id)) for i, r in enumerate(records)
    ]


async def test_records_are_pending_in_commit_order_until_the_relay_moves_past_them(
    parts: MongoParts,
) -> None:
    await commit(parts, received("a"), received("b"))
    await commit(parts, received("c"))
    pending = await parts.ledger.pending(10)
    assert [r.key for r in pending] == ["a", "b", "c"]
    assert [r.sequence for r in pending] == [1, 2, 3]
    await parts.ledger.mark_published(published(pending[:2]), NOW)
    assert [r.key for r in await parts.ledger.pending(10)] == ["c"]
    assert await parts.ledger.backlog() == 1


async def test_concurrent_commits_get_distinct_sequence_numbers_in_commit_order(
    parts: MongoParts,
) -> None:
    await asyncio.gather(*(commit(parts, received(f"L{i}"), received(f"L{i}")) for i in range(20)))
    pending = await parts.ledger.pending(100)
    assert [r.sequence for r in pending] == list(range(1, 41))
    # Each transaction's two records are next to each other: nothing interleaved.
    assert all(pending[i].key == pending[i + 1].key for i in range(0, 40, 2))


async def test_a_replicas_concurrent_commits_take_turns_and_none_is_redone(
    parts: MongoParts,
) -> None:
    """Eight requests at once on one replica, each writing its own document and publishing:
    they take turns, so none conflicts on the outbox sequence and has its work run again."""
    runs: list[str] = []

    async def request(name: str) -> None:
        async def work(session: Session) -> tuple[None, list[Event]]:
            runs.append(name)
            await parts.database["notes"].insert_one({"_id": name}, session=session)
            await asyncio.sleep(0.01)  # the request's own reads and decisions
            return None, [received(name)]

        await parts.ledger.commit(work)

    names = [f"request-{n}" for n in range(8)]
    await asyncio.gather(*(request(name) for name in names))
    assert sorted(runs) == names  # each work ran once: no transaction was redone
    assert await parts.database["notes"].count_documents({}) == 8
    assert [r.sequence for r in await parts.ledger.pending(100)] == list(range(1, 9))


async def test_a_commit_that_publishes_nothing_need_not_wait_for_the_turn(
    parts: MongoParts,
) -> None:
    """Analytics' transactions publish nothing: they run while a publishing one holds the
    replica's turn (the parts of a consumed batch commit at once)."""
    stuck = asyncio.Event()

    async def slow(session: Session) -> tuple[None, list[Event]]:
        await stuck.wait()
        return None, [received("slow")]

    async def note(session: Session) -> tuple[str, list[Event]]:
        await parts.database["notes"].insert_one({"_id": "n"}, session=session)
        return "noted", []

    holder = asyncio.create_task(parts.ledger.commit(slow))
    await asyncio.sleep(0.05)
    assert await asyncio.wait_for(parts.ledger.commit(note, publishes=False), 10) == "noted"
    assert not holder.done()
    stuck.set()
    await holder
    assert await parts.database["notes"].count_documents({}) == 1
    assert [r.key for r in await parts.ledger.pending(10)] == ["slow"]


async def test_a_commit_said_to_publish_nothing_that_returns_events_writes_nothing(
    parts: MongoParts,
) -> None:
    async def publishing(session: Session) -> tuple[None, list[Event]]:
        await parts.database["notes"].insert_one({"_id": "x"}, session=session)
        return None, [received("x")]

    with pytest.raises(ValueError, match="publishes=False"):
        await parts.ledger.commit(publishing, publishes=False)
    assert await parts.database["notes"].count_documents({}) == 0
    assert await parts.ledger.pending(10) == []


async def test_a_commit_that_gets_no_turn_in_time_is_an_outage_and_writes_nothing(
    parts: MongoParts,
) -> None:
    """The wait for the replica's turn counts against TRANSACTION_TIMEOUT_S: a request
    behind a stuck one answers 503 (ExecutionTimeout) instead of waiting without end."""
    ledger = EventLedger(
        parts.client,
        parts.database,
        handled_retention=timedelta(days=8),
        clock=lambda: NOW,
        transaction_timeout_s=0.5,
    )
    stuck = asyncio.Event()

    async def slow(session: Session) -> tuple[None, list[Event]]:
        await stuck.wait()
        return None, []

    async def quick(session: Session) -> tuple[None, list[Event]]:
        return None, [received("behind")]

    holder = asyncio.create_task(ledger.commit(slow))
    await asyncio.sleep(0.05)
    with pytest.raises(ExecutionTimeout, match="no turn"):
        await ledger.commit(quick)
    stuck.set()
    await asyncio.gather(holder, return_exceptions=True)
    assert await ledger.pending(10) == []
    await ledger.commit(quick)  # the turn is free again
    assert [r.key for r in await ledger.pending(10)] == ["behind"]


async def test_a_lost_log_moves_the_relay_back_to_the_batch_that_held_the_offset(
    parts: MongoParts,
) -> None:
    for lead in ("a", "b", "c", "d", "e", "f"):
        await commit(parts, received(lead))
    first = await parts.ledger.pending(3)
    await parts.ledger.mark_published(published(first, 0), NOW)
    second = await parts.ledger.pending(3)
    await parts.ledger.mark_published(published(second, 3), NOW)
    [furthest] = await parts.ledger.log_positions()
    assert (furthest.offset, furthest.event_id, furthest.sequence) == (5, second[-1].event_id, 6)
    assert await parts.ledger.republish_from(furthest.topic, 0, 4) == 3
    assert [r.key for r in await parts.ledger.pending(10)] == ["d", "e", "f"]


async def test_a_batch_is_handled_once_and_its_repeats_dropped(parts: MongoParts) -> None:
    seen: list[list[str]] = []

    async def work(session: Session, fresh: list[Event]) -> tuple[int, list[Event]]:
        seen.append([e.lead_id for e in fresh])
        return len(fresh), []

    a, b = received("a"), received("b")
    batch: list[Event] = [a, b, a]
    assert await parts.ledger.commit_batch(batch, work) == 2
    assert await parts.ledger.commit_batch(batch[1::-1], work) is None
    assert seen == [["a", "b"]]


async def test_an_event_store_can_serve_as_the_inbox(parts: MongoParts) -> None:
    store = parts.database["events"]

    async def work(session: Session, fresh: list[Event]) -> tuple[int, list[Event]]:
        await store.insert_many([{"_id": str(e.event_id)} for e in fresh], session=session)
        return len(fresh), []

    batch: list[Event] = [received("a")]
    assert await parts.ledger.commit_batch(batch, work, recorded_in=store) == 1
    assert await parts.ledger.commit_batch(batch, work, recorded_in=store) is None
    assert await parts.database["inbox"].count_documents({}) == 0


async def test_find_in_reads_every_match_across_chunks(parts: MongoParts) -> None:
    collection = parts.database["things"]
    await collection.insert_many([{"_id": f"t{i}", "even": i % 2 == 0} for i in range(130)])
    wanted = [f"t{i}" for i in range(0, 130, 2)] + ["missing"]
    found: list[Document] = await find_in(collection, "_id", wanted, also={"even": True})
    assert sorted(doc["_id"] for doc in found) == sorted(wanted[:-1])


async def test_published_records_are_forgotten_after_the_window_not_before(
    parts: MongoParts,
) -> None:
    await commit(parts, received("old"))
    await commit(parts, received("waiting"))
    [old] = await parts.ledger.pending(1)
    await parts.ledger.mark_published(published([old]), NOW)
    assert await parts.ledger.forget_published(NOW + timedelta(days=8)) == 1
    assert [r.key for r in await parts.ledger.pending(10)] == ["waiting"]
