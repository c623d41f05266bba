"""Analytics: ingest throughput against the same server's raw `insert_many`, and report
latency at 10k and at 1M events (report cost must not grow with the number of events).

    .venv/bin/python bench/analytics.py                          # ingest 20k, reports 10k/1M
    .venv/bin/python bench/analytics.py --ingest 20000 --small 10000 --large 1000000

- ingest:  N events of a realistic mix (lead received, assigned, calls, visits, sales,
           losses, satisfaction) recorded by analytics' own use case (`RecordEvents` on the
           MongoDB store: event store in groups, lead documents with facts and inbox,
           counter and gauge deltas, batches of 500, each in `RECORD_PARTS` lead-disjoint
           transactions at once), as events/s,
           then the compaction of those deltas (`--order time`: the events sorted by time,
           as topics deliver them), by each setup of `--replicas` (default `1 2`: one and
           two replica processes, a transaction a batch; `2x2`: two replicas recording
           in 2 parts; deployed: 2 replicas), each replica consuming the leads of its
           partitions. The ceiling is raw
           `insert_many` of the same events as documents, one an event (`event_document`:
           the fields the event store keeps, as the store wrote them before it grouped
           them), 500 a call, by as many processes. Ceiling and ingest take turns,
           `--rounds` times, each on a server started for it alone (the server slows as
           its history grows); a ratio is the ingest against the round's best ceiling,
           and its median over the rounds is reported. The CPU the server and the
           processes spend per document and per event is read from /proc around each
           phase, and turned into what each side alone would allow (`ingest_part`).
- reports: every report over the month, `--runs` times each, p50/p95 per report, at `--small`
           events and at `--large` events, both sets loaded at once (two databases) and
           their requests interleaved (each report on one set, then on the other, the
           order turned every round), so both meet the same machine load. The large set
           is not pushed through the consumer (about an hour on this server): its events
           are tallied by the same pure rules the consumer runs (`rules.tally_batch`, in
           memory) and the resulting roll-ups (hourly and month counters, roll-up sets,
           open-lead gauge: all a report reads) are inserted.
           The small set is loaded the same way so the two are comparable, and checked
           against the ingest path: the same events recorded by `RecordEvents` give the same
           monthly report.

One MongoDB-wire server process of its own (SecantusDB, `--storage memory` by default, on
127.0.0.1) for the whole run; bounded loops; the machine is shared, so compare ratios.
The 1M report set needs `--storage disk`: in memory, WiredTiger's cache fills while it
loads (WT_CACHE_FULL, seen on 2026-12-04).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import multiprocessing
import random
import statistics
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from local_mongo import (  # one local SecantusDB per run, as the other benches
    local_mongo,
    run_on_local_mongo,
)
from procstat import cpu_seconds
from pymongo.errors import BulkWriteError

from services.analytics.reports import ReportQuery
from services.analytics.rules import (
    Increment,
    LeadFacts,
    OpenKey,
    open_leads_at,
    past_due_before,
    tally_batch,
)
from services.analytics.store import (
    MongoAnalyticsStore,
    counter_documents,
    event_key,
    gauge_document,
    gauge_set_documents,
    month_documents,
)
from services.analytics.usecases import COMPACTION_BATCHES, REPORTS, BuildReport, RecordEvents
from shared.events import (
    ActivityLoggedV1,
    Attribution,
    Contact,
    Event,
    LeadAssignedV1,
    LeadConvertedV1,
    LeadLostV1,
    LeadReceivedV1,
    SatisfactionRecordedV1,
    VisitCheckedInV1,
    VisitScheduledV1,
)

DUPLICATE_KEY = 11000
MONTH = date(2026, 5, 1)
NOW = datetime(2026, 6, 2, 9, tzinfo=UTC)
CHANNELS = ("phone", "web_form", "ad", "walk_in", "referral", "import")
REPS = tuple(f"rep-{i}" for i in range(12))
POOLS = ("north", "south", "online")
CAMPAIGNS = (None, "spring", "flyers", "meta-june")
BATCH = 500


def events_for(count: int, seed: int = 1) -> Iterator[Event]:
    """About `count` events: leads spread over the month, each with a realistic life."""
    rng = random.Random(seed)
    start = datetime.combine(MONTH, datetime.min.time(), UTC)
    made = 0
    n = 0
    while made < count:
        n += 1
        lead = f"lead-{n}"
        at = start + timedelta(seconds=rng.randrange(30 * 86_400))
        channel = rng.choice(CHANNELS)
        rep, pool = rng.choice(REPS), rng.choice(POOLS)
        life: list[Event] = [
            LeadReceivedV1(
                lead_id=lead,
                occurred_at=at,
                contact=Contact(phone="+821012345678"),
                attribution=Attribution(
                    source=f"{channel}-src", channel=channel, campaign_id=rng.choice(CAMPAIGNS)
                ),
            ),
            LeadAssignedV1(
                lead_id=lead,
                occurred_at=at + timedelta(seconds=2),
                rep_id=rep,
                pool_id=pool,
                strategy="round_robin",
                sla_due_at=at + timedelta(hours=1),
            ),
        ]
        if rng.random() < 0.85:
            contacted = at + timedelta(minutes=rng.choice((1, 3, 20, 90, 600)))
            life.append(
                ActivityLoggedV1(
                    lead_id=lead,
                    occurred_at=contacted,
                    rep_id=rep,
                    activity="call",
                    outcome="reached",
                    first_contact=True,
                    received_at=at,
                )
            )
            if rng.random() < 0.5:
                visit = contacted + timedelta(days=1)
                life.append(
                    VisitScheduledV1(
                        lead_id=lead,
                        occurred_at=contacted + timedelta(minutes=5),
                        rep_id=rep,
                        visit_id=f"v-{n}",
                        scheduled_for=visit,
                    )
                )
                life.append(
                    VisitCheckedInV1(lead_id=lead, occurred_at=visit, rep_id=rep, visit_id=f"v-{n}")
                )
                life.append(
                    SatisfactionRecordedV1(
                        lead_id=lead,
                        occurred_at=visit + timedelta(days=1),
                        rep_id=rep,
                        score=rng.randrange(5, 11),
                    )
                )
                if rng.random() < 0.5:
                    life.append(
                        LeadConvertedV1(
                            lead_id=lead,
                            occurred_at=visit + timedelta(hours=1),
                            rep_id=rep,
                            revenue=float(rng.choice((399, 699, 990))),
                        )
                    )
            elif rng.random() < 0.5:
                life.append(
                    LeadLostV1(
                        lead_id=lead,
                        occurred_at=contacted + timedelta(hours=2),
                        rep_id=rep,
                        level=rng.choice((1, 2, 3)),
                        reason="busy",
                    )
                )
        made += len(life)
        yield from life


def event_document(event: Event) -> dict[str, Any]:
    return {
        "_id": event_key(event.lead_id, event.event_id),
        "event_id": str(event.event_id),
        "event_type": event.event_type,
        "lead_id": event.lead_id,
        "occurred_at": event.occurred_at,
        "recorded_at": NOW,
        "known": True,
        "payload": event.model_dump(mode="json"),
    }


def bench_ledger(client: Any, database: Any) -> Any:
    """The ledger the bench's store commits through. Transactions may last 60 s (the
    rebuild command's limit; the service's is 15 s): on a machine loaded by others a fold
    of `COMPACTION_BATCHES` deltas was seen to pass 15 s, where the service would go on
    with smaller folds but this bench's loop would stop."""
    from leadflow.chassis.store import EventLedger  # noqa: PLC0415

    return EventLedger(
        client,
        database,
        handled_retention=timedelta(days=8),
        clock=lambda: NOW,
        transaction_timeout_s=60.0,
    )


@dataclass(frozen=True)
class Phase:
    """One timed phase: units (documents or events) a second, and the CPU the database
    server and the client (this process, or all the phase's replica processes together)
    spent per unit, in microseconds."""

    rate: float
    server_us: float
    client_us: float


async def recorded_store(client: Any, events: list[Event]) -> MongoAnalyticsStore:
    """A store into which the consumer's use case recorded `events` (an empty database
    first), its deltas folded into the roll-ups."""
    database = client[f"ingest_{uuid.uuid4().hex[:6]}"]
    ledger = bench_ledger(client, database)
    await ledger.ensure_indexes()
    store = MongoAnalyticsStore(database, ledger, clock=lambda: NOW)
    await store.ensure_indexes()
    record = RecordEvents(store, clock=lambda: NOW)
    for i in range(0, len(events), BATCH):
        await record(events[i : i + BATCH])
    while await store.compact(max_batches=COMPACTION_BATCHES):
        pass
    return store


async def bulk_loaded(client: Any, count: int) -> tuple[MongoAnalyticsStore, float]:
    """A store whose roll-ups are those of `count` events, tallied in memory by the
    consumer's own rules and bulk-inserted (the event store itself is not written)."""
    database = client[f"reports_{count}_{uuid.uuid4().hex[:6]}"]
    ledger = bench_ledger(client, database)
    store = MongoAnalyticsStore(database, ledger, clock=lambda: NOW)
    await store.ensure_indexes()
    started = time.perf_counter()
    facts: dict[str, LeadFacts] = {}
    totals: dict[tuple[Any, ...], list[float]] = {}
    gauge: dict[OpenKey, int] = {}
    chunk: list[Event] = []

    def tally(events: list[Event]) -> None:
        known = {e.lead_id: facts[e.lead_id] for e in events if e.lead_id in facts}
        result = tally_batch(events, known, recorded_at=NOW)
        facts.update((f.lead_id, f) for f in result.facts)
        for inc in result.increments:
            total = totals.setdefault((inc.hour, inc.metric, inc.dimensions), [0, 0.0])
            total[0] += inc.count
            total[1] += inc.amount
        for move in result.gauge:
            gauge[move.key] = gauge.get(move.key, 0) + move.count

    for event in events_for(count):
        chunk.append(event)
        if len(chunk) == 5000:
            tally(chunk)
            chunk = []
    if chunk:
        tally(chunk)
    documents = counter_documents(
        Increment(hour, metric, dims, int(n), amount)
        for (hour, metric, dims), (n, amount) in totals.items()
        if n or amount
    )
    await insert_all(database["counters"], documents)
    # What `compact` folds beside the hourly documents: the month roll-ups of the store's
    # report time zone (UTC here, the zone the reports below are asked in).
    months = month_documents(documents, ZoneInfo("UTC"))
    await insert_all(database["month_counters"], months)
    places = open_leads_at(gauge.items())
    # As compaction at NOW folds them: deadlines long past kept per received day.
    past_due = past_due_before(NOW)
    open_docs = [
        gauge_document(place, past_due_before=past_due) for place in places
    ] + gauge_set_documents(places, past_due_before=past_due)
    await insert_all(database["open_leads"], open_docs)
    may = [d for d in months if d["month"] == "2026-05"]
    print(
        f"  {count:>9,} events -> {len(documents):,} hourly counter documents, "
        f"{len(months):,} month documents ({sum('set' not in d for d in may):,} for May by "
        f"dimension combination, {sum('set' in d for d in may):,} in roll-up sets), "
        f"{len(places):,} gauge places ({len(open_docs) - len(places):,} documents in roll-up "
        f"sets), {len(facts):,} leads; loaded in {time.perf_counter() - started:.0f} s"
    )
    return store, time.perf_counter() - started


async def insert_all(collection: Any, documents: list[dict[str, Any]]) -> None:
    """Insert in chunks; a chunk the driver sent again after a timeout on a loaded machine
    (its first attempt had landed) fails on duplicate keys only, which is not a loss."""
    for i in range(0, len(documents), 1000):
        try:
            await collection.insert_many(documents[i : i + 1000], ordered=False)
        except BulkWriteError as error:
            if any(e["code"] != DUPLICATE_KEY for e in error.details["writeErrors"]):
                raise


async def report_latencies(
    stores: dict[str, MongoAnalyticsStore], runs: int
) -> dict[str, dict[str, tuple[float, float]]]:
    """p50 and p95 of every report on each store, the stores' requests interleaved (each
    report on one store, then on the next, `runs` rounds, the order turned every round),
    so every set is measured at the same moments of the machine's load."""
    query = ReportQuery(MONTH, date(2026, 5, 31), ZoneInfo("UTC"), {}, now=NOW)
    builds = {name: BuildReport(store) for name, store in stores.items()}
    times: dict[str, dict[str, list[float]]] = {name: {} for name in stores}
    order = list(builds.items())
    for _ in range(runs):
        for report in REPORTS:
            if report == "ingest":
                continue
            for name, build in order:
                started = time.perf_counter()
                await build(report, query)
                times[name].setdefault(report, []).append(time.perf_counter() - started)
        order.reverse()
    return {
        name: {r: _p50_p95(t) for r, t in by_report.items()} for name, by_report in times.items()
    }


def _p50_p95(times: list[float]) -> tuple[float, float]:
    times = sorted(times)
    return statistics.median(times), times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]


async def bench(mongo_url: str, args: argparse.Namespace) -> None:
    from leadflow.chassis.store import connect  # noqa: PLC0415

    client = connect(mongo_url, app_name="bench")
    try:
        if args.only != "reports":
            await ingest_part(args.ingest, args.order, args.rounds, args.storage, args.replicas)
        if args.only != "ingest":
            await reports_part(client, args)
    finally:
        await client.close()


def replica_share(events: list[Event], replicas: int, index: int) -> list[Event]:
    """The events replica `index` of `replicas` consumes: Kafka keys them by lead, so a
    lead's events are on one partition, and the partitions are shared among replicas."""
    return [e for e in events if zlib.crc32(e.lead_id.encode()) % replicas == index]


def bench_events(count: int, order: str) -> list[Event]:
    events = list(events_for(count))
    if order == "time":
        # As the topics deliver them: each lead's events spread over many batches.
        events.sort(key=lambda event: event.occurred_at)
    return events


@dataclass(frozen=True)
class Job:
    """What one process of a phase does: `kind` "raw" (its share of the event-store
    documents, plain `insert_many`) or "ingest" (its share recorded by `RecordEvents`)."""

    kind: str
    mongo_url: str
    count: int
    order: str
    replicas: int
    index: int
    parts: int = 1


def replica_process(job: Job, start: Any, results: Any) -> None:
    """A process of a phase: waits at `start` (a barrier) so that all begin together, and
    puts (began, ended, its CPU seconds, events) on `results`."""
    asyncio.run(_replica(job, start, results))


async def _replica(job: Job, start: Any, results: Any) -> None:
    from leadflow.chassis.store import connect  # noqa: PLC0415

    mine = replica_share(bench_events(job.count, job.order), job.replicas, job.index)
    client = connect(job.mongo_url, app_name=f"bench-{job.kind}-{job.index}")
    try:
        database = client[job.kind]
        if job.kind == "raw":
            documents = [event_document(e) for e in mine]

            async def work() -> None:
                for i in range(0, len(documents), BATCH):
                    await database["raw"].insert_many(documents[i : i + BATCH], ordered=False)

        else:
            store = MongoAnalyticsStore(database, bench_ledger(client, database), clock=lambda: NOW)
            record = RecordEvents(store, clock=lambda: NOW, parts=job.parts)

            async def work() -> None:
                for i in range(0, len(mine), BATCH):
                    await record(mine[i : i + BATCH])

        await client.admin.command("ping")  # connected before the clock starts
        await asyncio.to_thread(start.wait, PHASE_TIMEOUT_S)
        cpu, began = time.process_time(), time.perf_counter()
        await work()
        results.put((began, time.perf_counter(), time.process_time() - cpu, len(mine)))
    finally:
        await client.close()


PHASE_TIMEOUT_S = 600.0


def run_replicas(job: Job, server_pid: int | None) -> Phase:
    """`job.replicas` processes of `job` at once; perf_counter is the system's monotonic
    clock, the same in every process, so the phase lasts from the first start to the
    last end."""
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(job.replicas + 1), context.Queue()
    processes = [
        context.Process(
            target=replica_process,
            args=(dataclasses.replace(job, index=index), start, results),
        )
        for index in range(job.replicas)
    ]
    for process in processes:
        process.start()
    try:
        start.wait(PHASE_TIMEOUT_S)
        server = cpu_seconds(server_pid)
        done = [results.get(timeout=PHASE_TIMEOUT_S) for _ in processes]
        server = cpu_seconds(server_pid) - server
    finally:
        for process in processes:
            process.join(timeout=PHASE_TIMEOUT_S)
            if process.is_alive():
                process.kill()
    events = sum(d[3] for d in done)
    wall = max(d[1] for d in done) - min(d[0] for d in done)
    return Phase(
        rate=events / wall,
        server_us=1e6 * server / events,
        client_us=1e6 * sum(d[2] for d in done) / events,
    )


async def phase_on_fresh_server(job: Job, storage: str) -> tuple[Phase, float]:
    """`job` on a SecantusDB started for it alone: the server slows as its history grows
    (over eight identical ceiling rounds on one server, 22.9k -> 12.3k docs/s; a ceiling
    right after an ingest, at a third of the one before it), so every phase meets a
    server as new as the others'. With the ingest, the events/s of folding its deltas
    into the roll-ups after it (what the background compaction does; else 0)."""
    from leadflow.chassis.store import connect  # noqa: PLC0415

    with local_mongo("analytics-ingest", storage) as infra:
        pid = infra.mongo.pid if infra.mongo else None
        job = dataclasses.replace(job, mongo_url=infra.mongo_url)
        if job.kind != "ingest":
            return await asyncio.to_thread(run_replicas, job, pid), 0.0
        client = connect(infra.mongo_url, app_name="bench")
        try:
            database = client[job.kind]
            ledger = bench_ledger(client, database)
            store = MongoAnalyticsStore(database, ledger, clock=lambda: NOW)
            await ledger.ensure_indexes()
            await store.ensure_indexes()
            phase = await asyncio.to_thread(run_replicas, job, pid)
            started = time.perf_counter()
            while await store.compact(max_batches=COMPACTION_BATCHES):
                pass
            return phase, job.count / (time.perf_counter() - started)
        finally:
            await client.close()


@dataclass(frozen=True)
class Setup:
    """How the ingest is deployed for a measurement: replica processes, and the parts
    (transactions at once) each records a batch in (`RECORD_PARTS`)."""

    replicas: int
    parts: int = 1

    @classmethod
    def parse(cls, text: str) -> Setup:
        replicas, _, parts = text.partition("x")
        return cls(int(replicas), int(parts or 1))

    def __str__(self) -> str:
        return f"{self.replicas}x{self.parts}"


async def ingest_part(
    count: int, order: str, rounds: int, storage: str, setups: list[Setup]
) -> None:
    print(
        f"ingest: {count:,} events, batches of {BATCH}, in {order} order, {rounds} rounds, "
        f"replica processes x parts: {' '.join(map(str, setups))}"
    )
    # Ceiling and ingest take turns, round after round (which goes first turning every
    # round), so both meet the same machine: a phase varies by half from one minute to
    # the next on this shared machine. The ceiling runs with as many processes as the
    # ingest it is compared with, and each ratio is taken against the round's best
    # ceiling, whichever number of processes gave it.
    results: dict[Setup, list[tuple[Phase, Phase, float]]] = {s: [] for s in setups}
    foldings: list[float] = []
    print(
        "  round  setup  ceiling docs/s  ingest events/s  ratio   server CPU µs: a doc / "
        "an event   client CPU µs an event"
    )
    for number in range(1, rounds + 1):
        ceilings: dict[int, Phase] = {}
        ingests: dict[Setup, Phase] = {}
        for setup in setups if number % 2 else setups[::-1]:
            raw = setup.replicas not in ceilings
            kinds = ("raw", "ingest") if number % 2 else ("ingest", "raw")
            for kind in kinds if raw else ("ingest",):
                job = Job(kind, "", count, order, setup.replicas, 0, setup.parts)
                phase, folding = await phase_on_fresh_server(job, storage)
                if kind == "raw":
                    ceilings[setup.replicas] = phase
                else:
                    ingests[setup] = phase
                if folding:
                    foldings.append(folding)
        best = max(c.rate for c in ceilings.values())
        for setup in setups:
            ceiling, ingest = ceilings[setup.replicas], ingests[setup]
            results[setup].append((ceiling, ingest, ingest.rate / best))
            print(
                f"  {number:>5}  {setup!s:>5}  {ceiling.rate:>14,.0f}  {ingest.rate:>15,.0f}  "
                f"{ingest.rate / best:>5.2f}   {ceiling.server_us:>12.0f} / "
                f"{ingest.server_us:<8.0f}   {ingest.client_us:>10.0f}"
            )
    folding = max(foldings)
    for setup, rows in results.items():
        ratio = statistics.median(r for _, _, r in rows)
        best_ingest = max(i.rate for _, i, _ in rows)
        # What each side alone would allow. The server: a ceiling keeps it busy, so an
        # ingest bound by the server alone would reach ceiling x (its CPU a doc / its CPU
        # an event). The client (one replica): one event's CPU of the replica against
        # one document's time at the ceiling. One after the other they add up (one waits
        # for the other); fully overlapped, the smaller bound is the ratio.
        server_bound = statistics.median(c.server_us / i.server_us for c, i, _ in rows)
        line = (
            f"  {setup.replicas} replica(s), {setup.parts} part(s): ingest {best_ingest:,.0f} "
            f"events/s (best round), ratio, median of the rounds {ratio:.2f} (goal >= 0.6); "
            f"the server alone would allow {server_bound:.2f}"
        )
        if setup.replicas == 1:
            client_bound = statistics.median(1e6 / c.rate / i.client_us for c, i, _ in rows)
            both = 1 / (1 / server_bound + 1 / client_bound)
            line += f", the client alone {client_bound:.2f}, one after the other {both:.2f}"
            sustained = 1 / (1 / best_ingest + 1 / folding)
            line += (
                f"\n  compaction of those batches {folding:,.0f} events/s; ingest and "
                f"compaction back to back on one replica {sustained:,.0f} events/s"
            )
        print(line)


async def reports_part(client: Any, args: argparse.Namespace) -> None:
    print(f"reports: roll-ups of the month, every report {args.runs} times")
    small, _ = await bulk_loaded(client, args.small)
    if args.check:
        check = ReportQuery(MONTH, date(2026, 5, 31), ZoneInfo("UTC"), {}, now=NOW)
        same_events = await recorded_store(client, list(events_for(args.small)))
        via_ingest = (await BuildReport(same_events)("monthly", check)).figures
        via_bulk = (await BuildReport(small)("monthly", check)).figures
        assert via_ingest == via_bulk, (via_ingest, via_bulk)
        print("  the bulk-loaded roll-ups equal those the ingest path records")
    large, _ = await bulk_loaded(client, args.large)
    latency = await report_latencies({"small": small, "large": large}, args.runs)
    small_latency, large_latency = latency["small"], latency["large"]
    print(
        f"  {'report':<10} {'p50 @small':>11} {'p50 @large':>11} {'ratio':>6} "
        f"{'p95 @small':>11} {'p95 @large':>11} {'ratio':>6}"
    )
    worst = 0.0
    for name, (p50_small, p95_small) in small_latency.items():
        p50_large, p95_large = large_latency[name]
        worst = max(worst, p95_large / p95_small)
        print(
            f"  {name:<10} {p50_small * 1000:>9.1f}ms {p50_large * 1000:>9.1f}ms "
            f"{p50_large / p50_small:>6.2f} {p95_small * 1000:>9.1f}ms "
            f"{p95_large * 1000:>9.1f}ms {p95_large / p95_small:>6.2f}"
        )
    print(f"  worst large/small p95 ratio {worst:.2f} (goal <= 2)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ingest", type=int, default=20_000, help="events through ingest")
    parser.add_argument(
        "--rounds", type=int, default=4, help="ingest rounds (a ceiling and an ingest each)"
    )
    parser.add_argument(
        "--replicas",
        type=Setup.parse,
        nargs="+",
        default=[Setup(1), Setup(2)],
        help="ingest setups to measure, each R (replica processes, and as many ceiling "
        "processes) or RxP (and P parts a batch, RECORD_PARTS; default 1); deployed: 2",
    )
    parser.add_argument("--small", type=int, default=10_000, help="events, small report set")
    parser.add_argument("--large", type=int, default=1_000_000, help="events, large report set")
    parser.add_argument("--runs", type=int, default=15, help="runs of each report")
    parser.add_argument(
        "--no-check",
        dest="check",
        action="store_false",
        help="skip checking the bulk-loaded roll-ups against the ingest path",
    )
    parser.add_argument(
        "--only", choices=("ingest", "reports"), default=None, help="one half of the benchmark"
    )
    parser.add_argument(
        "--order",
        choices=("lead", "time"),
        default="lead",
        help="ingest order: each lead's life in turn (lead), or every event by time (time)",
    )
    parser.add_argument("--storage", choices=("disk", "memory"), default="memory")
    run_on_local_mongo("analytics", parser.parse_args(), bench)
