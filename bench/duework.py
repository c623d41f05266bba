"""Due work (the chassis' timers): lateness with 10,000 pending timers and fires/s, against the
same MongoDB-wire server's raw claim+delete round trips measured in the same run.

    .venv/bin/python bench/duework.py                                  # every scenario
    .venv/bin/python bench/duework.py --scenario spread --timers 10000 --window 20 --runners 2
    .venv/bin/python bench/duework.py --storage memory                 # SecantusDB in memory

Scenarios (each on its own SecantusDB process started here, on 127.0.0.1, durable on disk
with `--sync-on-commit` as `leadflow up` runs it, unless `--storage memory`):

- steady:  N timers pending (due in an hour, as a service holds them) and `--firing` F
           more due evenly over a window of W seconds: lateness at a steady rate with the
           collection full.
- spread:  N timers due evenly over a window of W seconds (scheduled, in batches of 500,
           while the runners are already running). Each runner (its own client, as a
           replica) fires batches the way services do: one transaction writes an effect
           document per item and finishes the items. Lateness = commit time - due time,
           p50/p99/max; every effect is counted exactly once at the end.
- backlog: N timers all already due when the runners start (a service back after
           downtime): time to catch up and fires/s.

The ceiling: one item claimed and deleted the cheapest way a store can, an `update_one`
by `_id` then a `delete_one` (two round trips), in a loop on the same server: items/s.
The ratio says how far batching takes the runner past one-at-a-time. A second ceiling does
the same in batches (one `update_many` and one `delete_many` per batch, by index range, no
transaction, no effect): the server's cost of writing each item twice, which the runner
cannot beat; its ratio says what claims, transactions and effects cost on top.
Every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from local_mongo import run_on_local_mongo  # one local SecantusDB per run, as the other benches

from leadflow.chassis.duework import ClaimedWork, DueWork, DueWorkRunner
from leadflow.chassis.store import Database, EventLedger, MongoDueWork, Session, connect
from shared.events import Event, utc_now

DEADLINE_S = 300.0
"""No scenario waits longer than this for its timers to fire."""
KIND = "sla"


@dataclass
class Fired:
    lateness_s: list[float] = field(default_factory=list)
    first_at: float | None = None
    last_at: float = 0.0
    batches: list[int] = field(default_factory=list)
    transaction_s: list[float] = field(default_factory=list)
    late_due_at: list[float] = field(default_factory=list)
    """Due times (seconds after the first) of the items fired over a second late."""
    expected: int = 0
    first_due: datetime = field(default_factory=utc_now)
    all_fired: asyncio.Event = field(default_factory=asyncio.Event)


async def ceiling(url: str, seconds: float = 5.0, max_items: int = 2000) -> float:
    """Raw claim+delete, one item at a time: items/s."""
    client = connect(url, app_name="duework-bench-ceiling")
    items = client[f"ceiling_{uuid.uuid4().hex[:8]}"]["due_work"]
    now = utc_now()
    await items.insert_many(
        [{"_id": f"c{i}", "status": "pending", "ready_at": now} for i in range(max_items)]
    )
    done = 0
    started = time.perf_counter()
    while done < max_items and time.perf_counter() - started < seconds:
        token = uuid.uuid4().hex
        # By `_id` alone, the cheapest look-up SecantusDB has; an `update_one`, as its
        # `find_one_and_update` is several times slower.
        claimed = await items.update_one({"_id": f"c{done}"}, {"$set": {"token": token}})
        if claimed.modified_count != 1:
            raise RuntimeError(f"c{done} vanished")
        await items.delete_one({"_id": f"c{done}"})
        done += 1
    rate = done / (time.perf_counter() - started)
    await client.drop_database(items.database.name)
    await client.close()
    return rate


async def batched_ceiling(url: str, batch: int, rounds: int = 10) -> float:
    """Raw claim+delete in batches: one `update_many` and one `delete_many` per `batch`
    items, each picked by an index range, no transaction, no effect: items/s."""
    client = connect(url, app_name="duework-bench-ceiling")
    items = client[f"ceiling_{uuid.uuid4().hex[:8]}"]["due_work"]
    await items.create_index([("status", 1), ("kind", 1), ("ready_at", 1)])
    start = utc_now()
    await items.insert_many(
        [
            {
                "_id": f"c{i}",
                "status": "pending",
                "kind": KIND,
                "ready_at": start + timedelta(milliseconds=i),
            }
            for i in range(batch * rounds)
        ]
    )
    began = time.perf_counter()
    for n in range(rounds):
        window = {
            "$gte": start + timedelta(milliseconds=n * batch),
            "$lt": start + timedelta(milliseconds=(n + 1) * batch),
        }
        claimed = await items.update_many(
            {"status": "pending", "kind": KIND, "ready_at": window}, {"$set": {"token": f"t{n}"}}
        )
        deleted = await items.delete_many({"status": "pending", "kind": KIND, "ready_at": window})
        if claimed.modified_count != batch or deleted.deleted_count != batch:
            raise RuntimeError("the ceiling's batches missed items")
    rate = batch * rounds / (time.perf_counter() - began)
    await client.drop_database(items.database.name)
    await client.close()
    return rate


@dataclass
class Replica:
    name: str
    runner: DueWorkRunner
    close: Any


def replica(url: str, database_name: str, name: str, fired: Fired, batch_size: int) -> Replica:
    client = connect(url, app_name=f"duework-bench-{name}")
    database: Database = client[database_name]
    store = MongoDueWork(database)
    ledger = EventLedger(client, database, handled_retention=timedelta(days=8), clock=utc_now)
    effects = database["effects"]

    async def fire(batch: list[ClaimedWork]) -> None:
        began = time.perf_counter()

        async def work(session: Session) -> tuple[None, Sequence[Event]]:
            await effects.insert_many(
                [{"key": c.work.key, "replica": name} for c in batch], session=session
            )
            await store.finish(batch, session=session)
            return None, []

        await ledger.commit(work)
        committed = utc_now()
        now = time.perf_counter()
        fired.first_at = now if fired.first_at is None else fired.first_at
        fired.last_at = now
        fired.batches.append(len(batch))
        fired.transaction_s.append(now - began)
        fired.lateness_s.extend((committed - c.work.due_at).total_seconds() for c in batch)
        fired.late_due_at.extend(
            (c.work.due_at - fired.first_due).total_seconds()
            for c in batch
            if committed - c.work.due_at > timedelta(seconds=1)
        )
        if len(fired.lateness_s) >= fired.expected:
            fired.all_fired.set()

    runner = DueWorkRunner(
        store, kinds={KIND}, fire=fire, clock=utc_now, batch_size=batch_size, idle_poll_s=1.0
    )
    return Replica(name, runner, client.close)


async def schedule(url: str, database_name: str, items: list[DueWork]) -> float:
    client = connect(url, app_name="duework-bench-scheduler")
    store = MongoDueWork(client[database_name])
    await store.ensure_indexes()
    started = time.perf_counter()
    for start in range(0, len(items), 500):
        await store.schedule(items[start : start + 500])
    took = time.perf_counter() - started
    await client.close()
    return took


async def scenario(
    url: str,
    name: str,
    *,
    timers: int,
    window_s: float,
    runners: int,
    batch_size: int,
    pending: int = 0,
) -> dict[str, Any]:
    database_name = f"duework_{name}_{uuid.uuid4().hex[:8]}"
    setup = connect(url, app_name="duework-bench-setup")
    await MongoDueWork(setup[database_name]).ensure_indexes()
    fired = Fired(expected=timers)
    replicas = [replica(url, database_name, f"r{n}", fired, batch_size) for n in range(runners)]
    now = utc_now()
    if name in ("spread", "steady"):
        # The first is due once scheduling is surely done (≈ 600 timers/s on a busy machine),
        # so the figure is firing with every timer pending, not firing while scheduling.
        first_due = now + timedelta(seconds=max(5.0, (timers + pending) / 250))
        step = window_s / timers
        due = [first_due + timedelta(seconds=i * step) for i in range(timers)]
    else:
        due = [now - timedelta(seconds=window_s * (1 - i / timers)) for i in range(timers)]
    fired.first_due = min(due)
    items = [
        DueWork(f"{KIND}:L{i:06}:1", KIND, at, {"lead_id": f"L{i}"}) for i, at in enumerate(due)
    ]
    # Pending beside them, due long after the run (steady: what a service holds at any time).
    items += [
        DueWork(f"{KIND}:P{i:06}:1", KIND, now + timedelta(hours=1), {"lead_id": f"P{i}"})
        for i in range(pending)
    ]
    items.sort(key=lambda item: item.due_at)
    tasks: list[asyncio.Task[None]] = []
    if name != "backlog":
        tasks = [asyncio.create_task(r.runner.run()) for r in replicas]
    scheduled_in = await schedule(url, database_name, items)
    scheduled_by = utc_now()
    started = time.perf_counter()
    if name == "backlog":
        tasks = [asyncio.create_task(r.runner.run()) for r in replicas]
    with contextlib.suppress(TimeoutError):  # reported: "fired" < "timers"
        await asyncio.wait_for(fired.all_fired.wait(), timeout=window_s + DEADLINE_S)
    await asyncio.gather(*(r.runner.stop() for r in replicas))
    await asyncio.gather(*tasks)
    effects = setup[database_name]["effects"]
    counted = await effects.aggregate(
        [{"$group": {"_id": "$key", "n": {"$sum": 1}}}, {"$match": {"n": {"$gt": 1}}}]
    )
    doubled = len(await counted.to_list())
    total = await effects.count_documents({})
    await setup.drop_database(database_name)
    await setup.close()
    for r in replicas:
        await r.close()
    late = sorted(fired.lateness_s)
    span = (fired.last_at - (fired.first_at or fired.last_at)) or 1e-9
    result: dict[str, Any] = {
        "scenario": name,
        "timers": timers,
        "pending_beside": pending,
        "runners": runners,
        "fired": len(late),
        "effects": total,
        "doubled": doubled,
        "scheduled_in_s": round(scheduled_in, 2),
        "scheduled_before_first_due": name != "spread" or scheduled_by < due[0],
        "batches": len(fired.batches),
        "mean_batch": round(statistics.fmean(fired.batches), 1) if fired.batches else 0,
    }
    result |= _where_time_went(fired)
    if late:
        result |= {
            "lateness_p50_s": round(_quantile(late, 0.50), 3),
            "lateness_p99_s": round(_quantile(late, 0.99), 3),
            "lateness_max_s": round(late[-1], 3),
        }
    if name == "backlog":
        result["catch_up_s"] = round(fired.last_at - started, 2)
        result["fires_per_s"] = round(len(late) / (fired.last_at - started), 1)
    else:
        result["offered_per_s"] = round(timers / window_s, 1)
        result["fires_per_s_while_busy"] = round(len(late) / span, 1)
    return result


def _where_time_went(fired: Fired) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if fired.transaction_s:
        spans = sorted(fired.transaction_s)
        found["transaction_p50_s"] = round(_quantile(spans, 0.5), 3)
        found["transaction_p99_s"] = round(_quantile(spans, 0.99), 3)
    if fired.late_due_at:
        # When (seconds after the first due time) the items more than 1 s late were due.
        found["over_1s_late"] = len(fired.late_due_at)
        found["over_1s_late_due_between_s"] = (
            round(min(fired.late_due_at), 1),
            round(max(fired.late_due_at), 1),
        )
    return found


def _quantile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def bench(url: str, args: argparse.Namespace) -> None:
    raw = await ceiling(url)
    batched = await batched_ceiling(url, args.batch)
    print(f"ceiling: raw claim+delete, one item at a time: {raw:.0f} items/s")
    print(f"ceiling: raw claim+delete, {args.batch} at a time: {batched:.0f} items/s")
    scenarios = ["steady", "spread", "backlog"] if args.scenario == "all" else [args.scenario]
    for name in scenarios:
        result = await scenario(
            url,
            name,
            timers=args.firing if name == "steady" else args.timers,
            window_s=args.window,
            runners=args.runners,
            batch_size=args.batch,
            pending=args.timers if name == "steady" else 0,
        )
        rate = result.get("fires_per_s") or result.get("fires_per_s_while_busy") or 0.0
        result["ratio_to_raw_one_at_a_time"] = round(rate / raw, 2)
        result["ratio_to_raw_batched"] = round(rate / batched, 2)
        print(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", choices=["all", "steady", "spread", "backlog"], default="all")
    parser.add_argument("--timers", type=int, default=10_000)
    parser.add_argument(
        "--firing", type=int, default=1_000, help="steady: timers due in the window"
    )
    parser.add_argument("--window", type=float, default=20.0, help="seconds the timers span")
    parser.add_argument("--runners", type=int, default=1, choices=[1, 2, 3])
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--storage", choices=["disk", "memory"], default="disk")
    args = parser.parse_args()
    if not 0 < args.timers <= 100_000 or not 0 < args.firing <= 100_000:
        raise SystemExit("--timers, --firing: 1 to 100,000")
    run_on_local_mongo("duework", args, bench)


if __name__ == "__main__":
    main()
