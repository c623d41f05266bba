"""Assignment's notifications: planning events into deliveries, and delivering emails,
against ceilings measured on the same servers in the same run.

    .venv/bin/python bench/assignment_notifications.py
    .venv/bin/python bench/assignment_notifications.py --events 5000 --emails 1000 --storage memory

On a SecantusDB started here (127.0.0.1, on disk with `--sync-on-commit` as `leadflow up`
runs it, unless `--storage memory`) and the local mail sink (`leadflow.sinks.MailSink`):

- plan: `--events` LeadAssignedV1 over 100 reps who chose email and webhook, handed to the
  Kafka handler's share in batches of 500 (`queued_per_s`: what it costs the consumer that
  routes leads, one due-work item per batch), then planned by the planner's runner
  (`planned_per_s`). Per event the planner writes its inbox record, one stream entry, two
  delivery documents and two due-work items.
  Ceiling: plain `insert_many` of 500 documents of like size, no transaction: documents/s.
  Ratio = (planned/s x documents per event) / ceiling.
- deliver: `--emails` deliveries (reps who chose email only) already due, sent by one
  replica's delivery runner (claim, send, record and finish in one transaction per batch)
  into the sink. Ceilings: plain aiosmtplib, one SMTP session per message as the sender
  opens them (and, for reference, messages over kept-open connections), with the same
  concurrency: messages/s. Ratio = deliveries/s / per-message-session ceiling.

Every figure is the best of three runs where a ceiling is concerned; loops are bounded by
count and by a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections import Counter
from typing import Any

import aiosmtplib
from local_mongo import run_on_local_mongo  # one local SecantusDB per run, as the other benches
from nurture_sinks import raw_smtp_per_s  # the kept-open ceiling, as 9A measures it

from leadflow.chassis.app import ServiceChassis
from leadflow.chassis.clock import system_clock
from leadflow.chassis.store import connect
from leadflow.localinfra import LOOPBACK, free_port
from leadflow.sinks import MailSink
from services.assignment.notifications.runtime import NotificationRuntime
from services.assignment.notifications.store import NotificationQuery
from services.assignment.settings import Settings
from shared.events import Event, LeadAssignedV1
from shared.logging import configure_logging

BATCH = 500
DEADLINE_S = 300.0
DOCS_PER_EVENT = 6  # inbox, stream entry, 2 delivery documents, 2 due-work items


def settings(mongo_url: str, sink: MailSink, database: str, **overrides: Any) -> Settings:
    return Settings(
        mongo_url=mongo_url,
        database=database,
        smtp_host=sink.host,
        smtp_port=sink.port,
        notify_poll_s=0.05,
        log_json=False,
        log_level="WARNING",
        **overrides,
    )


async def raw_insert_docs_per_s(mongo_url: str, *, batches: int = 10, runs: int = 3) -> float:
    client = connect(mongo_url, app_name="bench-ceiling")
    collection = client["bench_ceiling"][f"raw_{uuid.uuid4().hex[:6]}"]
    document = {
        "kind": "lead-assigned",
        "person_id": "rep-000",
        "lead_id": "lead-00000000",
        "text": "New lead lead-00000000 is yours. First response due by 2026-05-04 09:30 UTC.",
        "details": {"pool_id": "pool-1", "how": "routed"},
        "status": "pending",
        "attempts": 0,
    }
    best = 0.0
    try:
        for _ in range(runs):
            started = time.perf_counter()
            for _ in range(batches):
                await collection.insert_many([dict(document) for _ in range(BATCH)])
            best = max(best, batches * BATCH / (time.perf_counter() - started))
    finally:
        await client.drop_database("bench_ceiling")
        await client.close()
    return best


async def raw_smtp_session_per_s(
    host: str, port: int, *, messages: int, concurrency: int, runs: int = 3
) -> float:
    """One SMTP session per message (connect, send, quit), as `EmailSender` does."""
    best = 0.0
    slots = asyncio.Semaphore(concurrency)

    async def send(i: int) -> None:
        async with slots:
            await aiosmtplib.send(
                f"Subject: ceiling {i}\n\n{'x' * 300}\n",
                sender="bench@leadflow.example",
                recipients=["ceiling@example.com"],
                hostname=host,
                port=port,
                start_tls=False,
            )

    for _ in range(runs):
        started = time.perf_counter()
        await asyncio.gather(*(send(i) for i in range(messages)))
        best = max(best, messages / (time.perf_counter() - started))
    return best


async def add_reps(mongo_url: str, database: str, count: int, *, webhook: bool) -> list[str]:
    client = connect(mongo_url, app_name="bench-setup")
    rep_ids = [f"rep-{i:03d}" for i in range(count)]
    channels = ["email", "webhook", "sse"] if webhook else ["email"]
    await client[database]["reps"].insert_many(
        [
            {
                "_id": rep_id,
                "name": rep_id,
                "notify": {
                    "email": f"{rep_id}@example.com",
                    # Nothing listens there: planning only, the runner is stopped.
                    "webhook_url": f"http://{LOOPBACK}:9/hook",
                    "webhook_secret": "bench-secret-0123456789",
                    "channels": channels,
                },
            }
            for rep_id in rep_ids
        ]
    )
    await client.close()
    return rep_ids


def assigned(rep_ids: list[str], count: int) -> list[Event]:
    return [
        LeadAssignedV1(
            lead_id=f"lead-{uuid.uuid4().hex[:12]}",
            rep_id=rep_ids[i % len(rep_ids)],
            pool_id="pool-1",
            strategy="round_robin",
        )
        for i in range(count)
    ]


async def bench_plan(mongo_url: str, sink: MailSink, events: int) -> dict[str, Any]:
    """The Kafka handler's share (queueing each batch), then the planner working the
    queue off (its runner only: nothing is sent)."""
    database = f"bench_notify_plan_{uuid.uuid4().hex[:6]}"
    rep_ids = await add_reps(mongo_url, database, 100, webhook=True)
    config = settings(mongo_url, sink, database)
    chassis = ServiceChassis("assignment", config, clock=system_clock)
    runtime = NotificationRuntime(chassis, config, clock=system_clock)
    await chassis.ledger.ensure_indexes()
    await runtime.store.ensure_indexes()
    batch_events = assigned(rep_ids, events)
    started = time.perf_counter()
    for start in range(0, events, BATCH):
        await runtime.handle(batch_events[start : start + BATCH])
    queued_s = time.perf_counter() - started
    deliveries = chassis.database["notifications"]
    started = time.perf_counter()
    planner = asyncio.create_task(runtime.planner.run())
    try:
        while await deliveries.count_documents({}) < 2 * events:
            if time.perf_counter() - started > DEADLINE_S:
                raise SystemExit("planning did not finish in time")
            await asyncio.sleep(0.25)
        planned_s = time.perf_counter() - started
    finally:
        await runtime.planner.stop()
        await planner
    await chassis.mongo.drop_database(database)
    await chassis.mongo.close()
    return {
        "events": events,
        "queued_per_s": events / queued_s,
        "planned_per_s": events / planned_s,
    }


async def bench_deliver(mongo_url: str, sink: MailSink, emails: int) -> dict[str, Any]:
    database = f"bench_notify_send_{uuid.uuid4().hex[:6]}"
    rep_ids = await add_reps(mongo_url, database, 100, webhook=False)
    config = settings(mongo_url, sink, database, notify_batch_size=100)
    chassis = ServiceChassis("assignment", config, clock=system_clock)
    runtime = NotificationRuntime(chassis, config, clock=system_clock)
    await chassis.ledger.ensure_indexes()
    await runtime.store.ensure_indexes()
    batch_events = assigned(rep_ids, emails)
    for start in range(0, emails, BATCH):  # all due before the runner starts
        await runtime.plan(batch_events[start : start + BATCH])
    before = len(sink.messages)
    started = time.perf_counter()
    await runtime.start()
    try:
        while len(sink.messages) - before < emails:
            if time.perf_counter() - started > DEADLINE_S:
                raise SystemExit(f"only {len(sink.messages) - before} of {emails} delivered")
            await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - started
        # Recorded too (the effect a manager sees), not only sent.
        while True:
            found = await runtime.store.list_notifications(NotificationQuery(limit=emails + 1))
            statuses = Counter(doc["status"] for doc in found)
            if statuses["sent"] == emails or time.perf_counter() - started > DEADLINE_S:
                break
            await asyncio.sleep(0.05)
        recorded = time.perf_counter() - started
    finally:
        await runtime.stop()
        await chassis.mongo.drop_database(database)
        await chassis.mongo.close()
    arrived = Counter(m.header("Message-ID") for m in sink.messages[before:])
    return {
        "emails": emails,
        "delivered_per_s": emails / elapsed,
        "recorded_per_s": emails / recorded,
        "statuses": dict(statuses),
        "duplicates": sum(n - 1 for n in arrived.values() if n > 1),
    }


async def bench(mongo_url: str, args: argparse.Namespace) -> None:
    configure_logging("assignment", level="WARNING", json=False)
    with MailSink(port=free_port()) as sink:
        raw_docs = await raw_insert_docs_per_s(mongo_url)
        print(f"ceiling: raw insert_many of {BATCH} documents: {raw_docs:.0f} docs/s")
        plan = await bench_plan(mongo_url, sink, args.events)
        plan["docs_per_event"] = DOCS_PER_EVENT
        plan["ratio_to_raw"] = round(plan["planned_per_s"] * DOCS_PER_EVENT / raw_docs, 2)
        print("plan:", {k: round(v, 1) if isinstance(v, float) else v for k, v in plan.items()})

        sessions = await raw_smtp_session_per_s(
            sink.host, sink.port, messages=min(args.emails, 500), concurrency=20
        )
        kept_open = await raw_smtp_per_s(
            sink.host, sink.port, messages=min(args.emails, 1000), concurrency=8
        )
        sink.clear()
        print(
            f"ceiling: plain aiosmtplib, one session per message (20 at once): "
            f"{sessions:.0f} msg/s; kept-open connections (8): {kept_open:.0f} msg/s"
        )
        deliver = await bench_deliver(mongo_url, sink, args.emails)
        deliver["ratio_to_session_ceiling"] = round(deliver["delivered_per_s"] / sessions, 2)
        print(
            "deliver:", {k: round(v, 1) if isinstance(v, float) else v for k, v in deliver.items()}
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--emails", type=int, default=500)
    parser.add_argument("--storage", choices=["disk", "memory"], default="disk")
    args = parser.parse_args()
    if not (0 < args.events <= 50_000 and 0 < args.emails <= 10_000):
        raise SystemExit("--events: 1 to 50,000; --emails: 1 to 10,000")
    run_on_local_mongo("notify", args, bench)


if __name__ == "__main__":
    main()
