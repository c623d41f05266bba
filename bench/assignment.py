"""Assignment with a realistic configuration (100 reps, 20 pools, 50 territory rules):
routing throughput against the database's raw ceiling, the routing decision's cost, and the
lateness of first-response SLA timers with 10,000 pending.

    .venv/bin/python bench/assignment.py                       # every part
    .venv/bin/python bench/assignment.py --part route --leads 5000
    .venv/bin/python bench/assignment.py --part decide --decisions 20000
    .venv/bin/python bench/assignment.py --part sla --timers 10000 --window 60
    .venv/bin/python bench/assignment.py --storage memory      # SecantusDB in memory

Each run starts its own SecantusDB (127.0.0.1, durable on disk with `--sync-on-commit` as
`leadflow up` runs it, unless `--storage memory`). No Kafka: the use cases are driven as
the consumer and the timer runner drive them, batch by batch.

- route:  N `lead-received` events in batches of 500 through `RouteLeads` (one transaction
          per batch, as the consumer runs it). routed/s x documents written per lead / the
          raw ceiling: unordered `bulk_write` upserts, 500 a call, best of three, on the
          same server in the same run (`bench/pipeline.py`'s).
- decide: `rules.route_lead` alone on random leads (warm holiday calendars): p50/p99/max
          of wall time and of the thread's CPU time (on a shared machine the wall tail is
          the process waiting for a core, not the decision).
- sla:    N leads routed into SLA pools, their SLA timers re-set due evenly over W seconds
          (with the follow-up timers of the same leads also pending); one replica's
          `DueWorkRunner` fires them with `FireTimers`. Lateness = commit - due, p50/p99;
          every lead must be reported breached exactly once.
Every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import statistics
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta
from datetime import time as clock_time
from typing import Any

from local_mongo import run_on_local_mongo  # one local SecantusDB per run, as the other benches
from pipeline import raw_bulk_write_docs_per_s  # the same ceiling as the pipeline benchmark

from leadflow.chassis.clock import Clock
from leadflow.chassis.duework import ClaimedWork, DueWork, DueWorkRunner
from leadflow.chassis.store import EventLedger, connect
from services.assignment.rules import (
    LastAssignment,
    Pool,
    PoolMatch,
    Rep,
    RoutingConfig,
    RoutingSettings,
    Strategy,
    TerritoryRule,
    route_lead,
)
from services.assignment.shifts import Shift
from services.assignment.store import ConfigurationInTransaction, MongoAssignmentStore
from services.assignment.timers import TIMER_KINDS, FireTimers
from services.assignment.usecases import RouteLeads, configuration_cache
from services.assignment.workflow import WorkLeads
from shared.events import Attribution, Contact, FitScore, LeadReceivedV1, Profile, utc_now
from shared.logging import configure_logging

DEADLINE_S = 300.0
COUNTRIES = ("KR", "US", "CN", "DE", "JP")
REGIONS = tuple(f"region-{n}" for n in range(10))
INDUSTRIES = ("fitness", "saas", "retail", "auto", "health")
STRATEGIES = tuple(s for s in Strategy if s is not Strategy.CLAIM)


def configuration(*, sla_minutes: int | None = None) -> RoutingConfig:
    """100 reps (a third with office hours, some with holiday calendars and capacity), 20
    pools of 5 with every strategy, 50 territory rules, a fallback pool."""
    rng = random.Random(11)
    reps = {}
    for n in range(100):
        hours = (
            tuple(Shift(d, clock_time(0), clock_time(23, 59)) for d in range(7))
            if n % 3 == 0
            else ()
        )
        reps[f"rep-{n:03}"] = Rep(
            f"rep-{n:03}",
            f"Rep {n}",
            timezone=rng.choice(("Asia/Seoul", "America/New_York", "Europe/Berlin", "UTC")),
            languages=(rng.choice(("ko", "en", "de")),),
            product_lines=(rng.choice(("pt", "gym", "crm")),),
            max_open=None if n % 4 else 100_000,
            daily_quota=None if n % 5 else 100_000,
            working_hours=hours,
            holiday_country=None if n % 7 else "KR",
        )
    ids = sorted(reps)
    pools = tuple(
        Pool(
            f"pool-{p:02}",
            f"Pool {p}",
            tuple(ids[p * 5 : p * 5 + 5]),
            match=PoolMatch(region=REGIONS[p % 10], industry=INDUSTRIES[p % 5]),
            priority=p,
            is_default=p == 0,
            strategy=STRATEGIES[p % len(STRATEGIES)],
            weights={ids[p * 5]: 3},
            sla_minutes=sla_minutes,
        )
        for p in range(20)
    )
    rules = tuple(
        TerritoryRule(
            f"rule-{r:02}",
            priority=r,
            countries=(COUNTRIES[r % 5],),
            postal_prefixes=(f"{r % 10}",) if r % 2 else (),
            industries=(INDUSTRIES[r % 5],) if r % 3 else (),
            min_company_size=10 if r % 4 == 0 else None,
            fit_grades=("A", "B") if r % 5 == 0 else (),
            pool_id=f"pool-{r % 20:02}",
        )
        for r in range(50)
    )
    return RoutingConfig(reps, pools, rules, RoutingSettings(fallback_pool_id="pool-00"))


def a_lead(rng: random.Random, n: int) -> LeadReceivedV1:
    return LeadReceivedV1(
        lead_id=f"bench-{uuid.uuid4().hex[:12]}-{n}",
        contact=Contact(name=f"Lead {n}", email=f"b{n}@example.com"),
        attribution=Attribution(source=rng.choice(("web", "ads", "desk")), channel="web_form"),
        profile=Profile(
            country=rng.choice(COUNTRIES),
            region=rng.choice(REGIONS),
            industry=rng.choice(INDUSTRIES),
            postal_code=f"{rng.randrange(100000):05}",
            company_size=rng.randrange(1, 500),
            language=rng.choice(("ko", "en", "de")),
        ),
        fit=FitScore(score=50, grade=rng.choice(("A", "B", "C", "D"))),
    )


async def configure(store: MongoAssignmentStore, config: RoutingConfig) -> None:
    async def add(team: ConfigurationInTransaction) -> None:
        now = utc_now()
        for rep in config.reps.values():
            await team.add_rep(rep, now)
        for pool in config.pools:
            await team.add_pool(pool, now)
        for rule in config.rules:
            await team.add_rule(rule, now)
        await team.save_settings(config.settings, now)

    await store.change_configuration(add)


class Parts:
    def __init__(self, url: str, name: str, clock: Clock = utc_now) -> None:
        self.client = connect(url, app_name=f"assignment-bench-{name}")
        self.database = self.client[f"bench_assignment_{name}_{uuid.uuid4().hex[:6]}"]
        self.ledger = EventLedger(
            self.client, self.database, handled_retention=timedelta(days=8), clock=clock
        )
        self.store = MongoAssignmentStore(self.database, self.ledger)
        self.cache = configuration_cache(self.store, max_age_s=60)

    async def start(self, config: RoutingConfig) -> None:
        await self.ledger.ensure_indexes()
        await self.store.ensure_indexes()
        await configure(self.store, config)

    async def close(self) -> None:
        await self.client.drop_database(self.database.name)
        await self.client.close()


async def route_part(url: str, leads: int) -> dict[str, Any]:
    ceiling = await raw_bulk_write_docs_per_s(url)
    parts = Parts(url, "route")
    try:
        await parts.start(configuration())
        rng = random.Random(3)
        events = [a_lead(rng, n) for n in range(leads)]
        route = RouteLeads(parts.store, parts.cache, clock=utc_now)
        started = time.perf_counter()
        for start in range(0, leads, 500):
            await route(events[start : start + 500])
            if time.perf_counter() - started > DEADLINE_S:
                raise SystemExit("routing took longer than the deadline")
        elapsed = time.perf_counter() - started
        counts = {
            name: await parts.database[name].count_documents({})
            for name in ("leads", "inbox", "outbox", "due_work", "last_assignments")
        }
        outcomes = Counter(
            [doc["status"] async for doc in parts.database["leads"].find({}, {"status": 1})]
        )
    finally:
        await parts.close()
    written = sum(counts.values())
    per_lead = written / leads
    routed_per_s = leads / elapsed
    return {
        "part": "route",
        "leads": leads,
        "outcomes": dict(outcomes),
        "routed_per_s": round(routed_per_s, 1),
        "docs_written_per_lead": round(per_lead, 2),
        "docs": counts,
        "raw_bulk_write_docs_per_s": round(ceiling),
        "ratio": round(routed_per_s * per_lead / ceiling, 3),
        "goal": ">= 0.5",
    }


def decide_part(decisions: int) -> dict[str, Any]:
    config = configuration()
    rng = random.Random(5)
    leads = [a_lead(rng, n) for n in range(min(decisions, 2000))]
    loads = {
        rep_id: LastAssignment(rep_id, rng.randrange(1000), utc_now(), None, open=rng.randrange(20))
        for rep_id in config.reps
    }
    now = utc_now()
    for lead in leads[:200]:  # warm the holiday calendars and zone caches
        route_lead(lead.profile, lead.attribution, "B", config, loads, turn=1, now=now)
    took: list[float] = []
    cpu: list[float] = []
    outcomes: Counter[str] = Counter()
    for n in range(decisions):
        lead = leads[n % len(leads)]
        grade = lead.fit.grade if lead.fit else None
        started, started_cpu = time.perf_counter(), time.thread_time()
        routing = route_lead(lead.profile, lead.attribution, grade, config, loads, turn=n, now=now)
        cpu.append(time.thread_time() - started_cpu)
        took.append(time.perf_counter() - started)
        outcomes["assigned" if routing.rep else "queued" if routing.pool else "none"] += 1
    took.sort()
    cpu.sort()

    def ms(values: list[float], q: float) -> float:
        return round(values[min(len(values) - 1, int(len(values) * q))] * 1000, 3)

    return {
        "part": "decide",
        "decisions": decisions,
        "outcomes": dict(outcomes),
        "wall_p50_ms": ms(took, 0.5),
        "wall_p99_ms": ms(took, 0.99),
        "wall_max_ms": round(took[-1] * 1000, 3),
        "cpu_p50_ms": ms(cpu, 0.5),
        "cpu_p99_ms": ms(cpu, 0.99),
        "cpu_max_ms": round(cpu[-1] * 1000, 3),
        "mean_ms": round(statistics.fmean(took) * 1000, 3),
        "goal": "p99 < 1 ms",
    }


async def sla_part(url: str, timers: int, window_s: float) -> dict[str, Any]:
    parts = Parts(url, "sla")
    try:
        await parts.start(configuration(sla_minutes=60 * 24))
        rng = random.Random(9)
        events = [a_lead(rng, n) for n in range(timers)]
        route = RouteLeads(parts.store, parts.cache, clock=utc_now)
        for start in range(0, timers, 500):
            await route(events[start : start + 500])
        # Every assigned lead has an SLA timer (due in a day) and a forgotten-lead timer:
        # bring the SLA ones forward, due evenly over the window, starting once re-set.
        sla_items = [
            doc async for doc in parts.database["due_work"].find({"kind": "sla"}, {"payload": 1})
        ]
        pending = await parts.database["due_work"].count_documents({})
        # Re-setting thousands of timers takes a while on a busy machine: the first is due
        # once that is surely done.
        first_due = utc_now() + timedelta(seconds=max(10.0, len(sla_items) / 200))
        step = window_s / max(1, len(sla_items))
        items = [
            DueWork(doc["_id"], "sla", first_due + timedelta(seconds=i * step), doc["payload"])
            for i, doc in enumerate(sla_items)
        ]
        lateness: list[float] = []
        own_lateness: list[float] = []
        scheduled_at: dict[str, datetime] = {}
        done = asyncio.Event()
        fire_timers = FireTimers(
            parts.store, parts.cache, WorkLeads(parts.store, parts.cache), clock=utc_now
        )

        busy: list[float] = []

        async def fire(batch: list[ClaimedWork]) -> None:
            started = time.perf_counter()
            await fire_timers(batch)
            busy.append(time.perf_counter() - started)
            committed = utc_now()
            lateness.extend((committed - c.work.due_at).total_seconds() for c in batch)
            # A timer due before the bench finished re-setting it was not the runner's to
            # fire yet: its lateness counts from when it was re-set.
            own_lateness.extend(
                (
                    committed - max(c.work.due_at, scheduled_at.get(c.work.key, committed))
                ).total_seconds()
                for c in batch
            )
            if len(lateness) >= len(items):
                done.set()

        runner = DueWorkRunner(
            parts.store.due_work,
            kinds=TIMER_KINDS,
            fire=fire,
            clock=utc_now,
            batch_size=200,
            idle_poll_s=0.5,
        )
        task = asyncio.create_task(runner.run())
        for start in range(0, len(items), 500):
            await parts.store.due_work.schedule(items[start : start + 500])
            for item in items[start : start + 500]:
                scheduled_at[item.key] = utc_now()
        scheduled_before_first_due = utc_now() < first_due
        with contextlib.suppress(TimeoutError):  # reported: "fired" < "timers"
            await asyncio.wait_for(done.wait(), timeout=window_s + DEADLINE_S)
        await runner.stop()
        await task
        breached = Counter(
            r.key for r in await parts.ledger.pending(timers * 4) if r.event_type == "sla-breached"
        )
    finally:
        await parts.close()
    lateness.sort()
    own_lateness.sort()
    return {
        "part": "sla",
        "lateness_since_due_and_set_p50_s": _at(own_lateness, 0.5),
        "lateness_since_due_and_set_p99_s": _at(own_lateness, 0.99),
        "timers": len(items),
        "pending_at_start": pending,
        "window_s": window_s,
        "scheduled_before_first_due": scheduled_before_first_due,
        "fired": len(lateness),
        "breached_leads": len(breached),
        "breached_twice": sum(1 for n in breached.values() if n > 1),
        "lateness_p50_s": round(lateness[len(lateness) // 2], 3) if lateness else None,
        "lateness_p99_s": round(lateness[int(len(lateness) * 0.99)], 3) if lateness else None,
        "lateness_max_s": round(lateness[-1], 3) if lateness else None,
        "batches": len(busy),
        "fired_per_busy_s": round(len(lateness) / sum(busy), 1) if busy else None,
        "needed_per_s": round(len(items) / window_s, 1),
        "load_average_1m": round(os.getloadavg()[0], 1),
        "goal": "p99 <= 1 s",
    }


def _at(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))], 3)


async def bench(url: str, args: argparse.Namespace) -> None:
    configure_logging("assignment-bench", level="WARNING", json=False)
    if args.part in ("all", "route"):
        print(await route_part(url, args.leads), f"load {os.getloadavg()[0]:.1f}", flush=True)
    if args.part in ("all", "decide"):
        print(decide_part(args.decisions), flush=True)
    if args.part in ("all", "sla"):
        print(await sla_part(url, args.timers, args.window), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["all", "route", "decide", "sla"], default="all")
    parser.add_argument("--leads", type=int, default=5000)
    parser.add_argument("--decisions", type=int, default=20_000)
    parser.add_argument("--timers", type=int, default=10_000)
    parser.add_argument("--window", type=float, default=60.0, help="seconds the SLA timers span")
    parser.add_argument("--storage", choices=["disk", "memory"], default="disk")
    args = parser.parse_args()
    if not 0 < args.leads <= 100_000 or not 0 < args.timers <= 100_000:
        raise SystemExit("--leads and --timers: 1 to 100,000")
    if args.part == "decide":
        configure_logging("assignment-bench", level="WARNING", json=False)
        print(decide_part(args.decisions))
        return
    run_on_local_mongo("assignment", args, bench)


if __name__ == "__main__":
    main()
