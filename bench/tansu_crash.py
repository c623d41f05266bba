"""What a kill -9 of Tansu or of its S3 server does to the log (and what a clean stop does).

    .venv/bin/python bench/tansu_crash.py [--scenario NAME|no-crash|all] [--json out.json]
        [--store seaweedfs|s3rver --s3rver PATH]

Each scenario, on a fresh bucket of the S3 server (`--store`: SeaweedFS started as
`leadflow up` starts it, the default; or s3rver from npm at `--s3rver PATH`, which ignores
conditional writes: see docs/LOCAL_INFRA_FINDINGS.md) and a fresh Tansu (s3 engine):

1. creates a 6-partition topic; a consumer group (auto_offset_reset="earliest", commits
   after every batch) reads it the whole time;
2. phase 1: an acks=all producer sends keyed records at a steady rate for a few seconds;
3. Tansu is stopped: `midstream` kill -9 while records are in flight, `idle` kill -9 after
   everything was acked and consumed and the broker sat idle, `sigterm` a clean SIGTERM
   when idle; the `*-produce-first` variants start producing again right after the
   restart, before anything reads the partitions. `s3-midstream` kill -9 of the S3 server
   instead, Tansu left running; `both-midstream` kill -9 of both (S3 server restarted
   first);
4. what was killed is restarted 1 s later on the same data; the bench prints, per
   partition, the earliest
   offset (ListOffsets earliest = `beginning_offsets`), the latest (`end_offsets`) and the
   group's committed offset, and the S3 objects of the bucket before and after;
5. phase 2: the producer goes on producing for a few seconds more;
6. a group-less consumer reads every partition twice, from `seek_to_beginning` and from
   offset 0, and the bench says which acked records are readable, which are lost, which
   offsets were handed out twice, and what the consumer group received after the restart.

`no-crash`: creating an existing topic again, and two producers writing to one partition at
the same moment (s3rver ignores If-None-Match / If-Match, so both get the same offsets).

Bounded: every phase has a fixed duration and count; every server listens on 127.0.0.1 and
is stopped by its own pid.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from tansu_lab import (
    Proc,
    S3Store,
    create_topic,
    producer,
    read_everything,
    s3rver,
    seaweedfs,
    stopped_at_exit,
    tansu,
    watermarks,
)

TOPIC = "leads"
PARTITIONS = 6
GROUP = "crash-group"
RATE_PER_S = 40
PHASE_S = 3.0
RACE_RECORDS = 100


@dataclass
class Ledger:
    """What the producer sent and what the broker acknowledged."""

    sent: list[str] = field(default_factory=list)
    acked: dict[str, tuple[int, int]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    acked_after_restart: dict[str, tuple[int, int]] = field(default_factory=dict)


@dataclass
class GroupLog:
    """What the consumer group received, and the errors it saw."""

    received: list[tuple[float, int, int, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


async def produce(
    bootstrap: str, ledger: Ledger, phase: str, seconds: float, restarted: asyncio.Event
) -> None:
    """Send keyed records at a steady rate; each ack (or failure) is written to the ledger."""
    client = producer(bootstrap, request_timeout_ms=15_000, retry_backoff_ms=200)
    await client.start()
    pending = []
    try:
        count = int(seconds * RATE_PER_S)
        for i in range(count):
            value = f"{phase}-{i:04d}"
            key = f"lead-{i % 17}".encode()
            ledger.sent.append(value)
            future = await client.send(TOPIC, value.encode(), key=key)

            def settled(done: asyncio.Future[Any], value: str = value) -> None:
                if done.exception() is not None:
                    ledger.failed[value] = repr(done.exception())
                else:
                    meta = done.result()
                    ledger.acked[value] = (meta.partition, meta.offset)
                    if restarted.is_set():
                        ledger.acked_after_restart[value] = (meta.partition, meta.offset)

            future.add_done_callback(settled)
            pending.append(future)
            await asyncio.sleep(1 / RATE_PER_S)
        with contextlib.suppress(KafkaError):
            await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), timeout=40)
    finally:
        await client.stop()


async def consume_as_group(bootstrap: str, log: GroupLog, stop: asyncio.Event) -> None:
    consumer = AIOKafkaConsumer(
        TOPIC,
        bootstrap_servers=bootstrap,
        group_id=GROUP,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=200,
    )
    await consumer.start()
    try:
        while not stop.is_set():
            try:
                batch = await consumer.getmany(timeout_ms=300)
                for tp, records in batch.items():
                    for record in records:
                        value = record.value.decode() if record.value else ""
                        log.received.append((time.time(), tp.partition, record.offset, value))
                if batch:
                    await consumer.commit()
            except KafkaError as error:
                log.errors.append(f"{time.strftime('%X')} {type(error).__name__}: {error}")
                await asyncio.sleep(0.5)
    finally:
        with contextlib.suppress(KafkaError):
            await asyncio.wait_for(consumer.stop(), timeout=10)


def describe_watermarks(title: str, marks: dict[int, tuple[int, int, int | None]]) -> list[str]:
    lines = [f"{title}:", "  partition  earliest  latest  committed"]
    for partition, (begin, end, committed) in sorted(marks.items()):
        flag = "  <-- earliest > latest" if begin > end else ""
        if committed is not None and committed > end:
            flag += "  <-- committed past the log"
        lines.append(f"  {partition:>9}  {begin:>8}  {end:>6}  {committed!s:>9}{flag}")
    return lines


def object_summary(keys: list[str]) -> dict[str, int]:
    kinds: Counter[str] = Counter()
    for key in keys:
        if key.endswith(".batch"):
            kinds["record batches"] += 1
        elif key.endswith("watermark.json"):
            kinds["watermark.json"] += 1
        elif "/groups/" in key:
            kinds["group objects"] += 1
        else:
            kinds["other"] += 1
    return dict(kinds)


@dataclass(frozen=True)
class Scenario:
    name: str
    signal: str  # "kill -9" or "SIGTERM"
    midstream: bool  # stop while records are in flight, or after an idle pause
    produce_first: bool  # after the restart, produce before anything reads the partitions
    target: str = "tansu"  # what is stopped: "tansu", "s3" (its S3 server) or "both"


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("midstream", "kill -9", midstream=True, produce_first=False),
        Scenario("idle", "kill -9", midstream=False, produce_first=False),
        Scenario("sigterm", "SIGTERM", midstream=False, produce_first=False),
        Scenario("idle-produce-first", "kill -9", midstream=False, produce_first=True),
        Scenario("sigterm-produce-first", "SIGTERM", midstream=False, produce_first=True),
        Scenario("s3-midstream", "kill -9", midstream=True, produce_first=False, target="s3"),
        Scenario("both-midstream", "kill -9", midstream=True, produce_first=False, target="both"),
    )
}

StoreFactory = Callable[[Path, Path], S3Store]


def stop_and_restart(plan: Scenario, store: S3Store, broker: Proc) -> None:
    """Stop what the scenario stops, wait 1 s, start it again on the same data."""
    procs = {"tansu": [broker], "s3": [store.proc], "both": [broker, store.proc]}[plan.target]
    for proc in procs:
        if plan.signal == "SIGTERM":
            proc.stop()
        else:
            proc.kill9()
    time.sleep(1)
    for proc in reversed(procs):  # the S3 server before Tansu
        proc.process = None
        proc.start(timeout_s=60)


async def scenario(  # noqa: PLR0915 - one story
    plan: Scenario, work: Path, new_store: StoreFactory
) -> dict[str, Any]:
    store = new_store(work / "s3", work / "s3.log")
    store.proc.start(timeout_s=60)
    broker: Proc = tansu("s3://tansu/", work / "tansu.log", store.tansu_env())
    report: dict[str, Any] = {"scenario": plan.name, "store": store.kind}
    lines: list[str] = [f"=== scenario: {plan.name} on {store.kind} ({plan}) ==="]
    with stopped_at_exit(store.proc, broker):
        broker.start()
        bootstrap = f"127.0.0.1:{broker.port}"
        await create_topic(bootstrap, TOPIC, PARTITIONS)
        ledger, group, stop_group = Ledger(), GroupLog(), asyncio.Event()
        restarted = asyncio.Event()
        group_task = asyncio.create_task(consume_as_group(bootstrap, group, stop_group))
        await asyncio.sleep(6)  # the group's first assignment takes ~5 s on Tansu

        phase1 = asyncio.create_task(produce(bootstrap, ledger, "p1", PHASE_S * 2, restarted))
        if plan.midstream:
            await asyncio.sleep(PHASE_S)  # half of phase 1 sent; the rest goes on being sent
        else:
            await phase1
            await asyncio.sleep(3)  # idle: everything acked, consumed and committed
        before = store.objects()
        marks_before = await watermarks(bootstrap, TOPIC, PARTITIONS, GROUP)
        lines += describe_watermarks("before the stop", marks_before)
        acked_before_stop = dict(ledger.acked)
        stopped_at = time.time()
        # In a thread: the producer and the group go on meanwhile, as they would in life.
        await asyncio.to_thread(stop_and_restart, plan, store, broker)
        lines.append(
            f"stopped {plan.target} ({plan.signal}) with {len(ledger.sent)} sent, "
            f"{len(acked_before_stop)} acked; restarted"
        )
        restarted.set()
        if plan.produce_first:
            phase2 = asyncio.create_task(produce(bootstrap, ledger, "p2", PHASE_S, restarted))
            await asyncio.sleep(1)
        after = store.objects()
        marks_after = await watermarks(bootstrap, TOPIC, PARTITIONS, GROUP)
        lines += describe_watermarks(
            "after the restart" + (" (1 s into phase 2)" if plan.produce_first else ""),
            marks_after,
        )
        lines.append(f"objects before the stop: {object_summary(before)}")
        lines.append(f"objects after the restart: {object_summary(after)}")
        watermark_files = {key: store.read(key) for key in after if key.endswith("watermark.json")}
        lines += [
            f"  {key.split('/partitions/')[1]}: {value}"
            for key, value in sorted(watermark_files.items())
        ]
        batches_per_partition = Counter(
            int(key.split("/partitions/")[1][:10]) for key in after if key.endswith(".batch")
        )
        lines.append(
            f"record-batch objects per partition: {dict(sorted(batches_per_partition.items()))}"
        )

        await phase1
        if not plan.produce_first:
            phase2 = asyncio.create_task(produce(bootstrap, ledger, "p2", PHASE_S, restarted))
        await phase2
        await asyncio.sleep(6)
        stop_group.set()
        await group_task
        marks_end = await watermarks(bootstrap, TOPIC, PARTITIONS, GROUP)
        lines += describe_watermarks(
            "after phase 2 (producing went on after the restart)", marks_end
        )

        from_begin = await read_everything(bootstrap, TOPIC, PARTITIONS, from_zero=False)
        from_zero = await read_everything(bootstrap, TOPIC, PARTITIONS, from_zero=True)
        first_after: dict[int, int] = {}
        for partition, offset in ledger.acked_after_restart.values():
            first_after[partition] = min(offset, first_after.get(partition, offset))
        lines.append(
            "lowest offset acked after the restart per partition (latest before the stop): "
            + ", ".join(
                f"{p}: {first_after.get(p)} ({marks_before[p][1]})" for p in range(PARTITIONS)
            )
        )
        lines += readability(ledger, from_begin, from_zero)
        lines += group_summary(group, stopped_at, ledger)
        report |= {
            "sent": len(ledger.sent),
            "acked": len(ledger.acked),
            "failed": len(ledger.failed),
            "marks_before": marks_before,
            "marks_after_restart": marks_after,
            "marks_end": marks_end,
            "objects_before": object_summary(before),
            "objects_after": object_summary(after),
            "s3_requests": store.requests(),
            "tansu_log_errors": [
                line
                for line in (work / "tansu.log").read_text(errors="replace").splitlines()
                if "ERROR" in line
            ][:10],
        }
    lines.append(f"Tansu log errors (first 5): {report['tansu_log_errors'][:5]}")
    report["lines"] = lines
    return report


async def recreate_and_race(work: Path, new_store: StoreFactory) -> list[str]:
    """Two checks with no crash at all: creating an existing topic again, and two producers
    writing to the same partition at the same time."""
    store = new_store(work / "s3", work / "s3.log")
    store.proc.start(timeout_s=60)
    broker = tansu("s3://tansu/", work / "tansu.log", store.tansu_env())
    lines = [
        f"=== no crash, {store.kind}: create an existing topic again; "
        "two producers on one partition ==="
    ]
    with stopped_at_exit(store.proc, broker):
        broker.start()
        bootstrap = f"127.0.0.1:{broker.port}"
        await create_topic(bootstrap, TOPIC, PARTITIONS)
        ledger, restarted = Ledger(), asyncio.Event()
        await produce(bootstrap, ledger, "a", 1.0, restarted)
        marks = await watermarks(bootstrap, TOPIC, PARTITIONS)
        try:
            await create_topic(bootstrap, TOPIC, PARTITIONS)
            outcome = "accepted (no TopicAlreadyExists)"
        except KafkaError as error:
            outcome = f"refused: {type(error).__name__}"
        after = await watermarks(bootstrap, TOPIC, PARTITIONS)
        lines.append(
            f"create_topics on an existing topic with {len(ledger.acked)} records: {outcome}; "
            f"latest per partition before {[m[1] for m in marks.values()]}, "
            f"after {[m[1] for m in after.values()]}"
        )

        race = Ledger()
        clients = [producer(bootstrap, linger_ms=0) for _ in range(2)]
        for client in clients:
            await client.start()
        try:
            futures = []
            for i in range(RACE_RECORDS):
                for n, client in enumerate(clients):
                    value = f"race-{n}-{i:04d}"
                    race.sent.append(value)
                    futures.append((value, await client.send(TOPIC, value.encode(), partition=0)))
            for value, future in futures:
                try:
                    meta = await future
                    race.acked[value] = (meta.partition, meta.offset)
                except KafkaError as error:
                    race.failed[value] = repr(error)
        finally:
            for client in clients:
                await client.stop()
        seen = await read_everything(bootstrap, TOPIC, PARTITIONS, from_zero=True, timeout_s=3)
        readable = {value for _, value in seen[0]}
        slots = Counter(race.acked.values())
        lines.append(
            f"two producers, {RACE_RECORDS} records each, same partition at once: "
            f"{len(race.acked)} acked, {sum(1 for n in slots.values() if n > 1)} offsets acked "
            f"twice, {len(set(race.acked) - readable)} acked records unreadable"
        )
    return lines


def readability(
    ledger: Ledger,
    from_begin: dict[int, list[tuple[int, str]]],
    from_zero: dict[int, list[tuple[int, str]]],
) -> list[str]:
    lines = []
    slots: defaultdict[tuple[int, int], list[str]] = defaultdict(list)
    for value, slot in ledger.acked.items():
        slots[slot].append(value)
    doubled = {slot: values for slot, values in slots.items() if len(values) > 1}
    lines.append(
        f"producer: {len(ledger.sent)} sent, {len(ledger.acked)} acked, {len(ledger.failed)} "
        f"failed ({sorted(set(ledger.failed.values()))[:2]}); acked offsets handed out twice: "
        f"{len(doubled)} {sorted(doubled.items())[:4]}"
    )
    for title, seen in (("seek_to_beginning", from_begin), ("seek(tp, 0)", from_zero)):
        errors = seen.pop(-1, [])
        values = {value for records in seen.values() for _, value in records}
        acked = set(ledger.acked)
        lost = sorted(acked - values)
        lines.append(
            f"readable from {title}: {len(acked & values)} of {len(acked)} acked records "
            f"({len(lost)} unreadable, e.g. {lost[:5]}); "
            f"records per partition {[len(seen[p]) for p in sorted(seen)]}; "
            f"client errors {len(errors)} {errors[:1]}"
        )
        first = {p: (records[0][0] if records else None) for p, records in sorted(seen.items())}
        lines.append(f"  first offset returned per partition: {first}")
    return lines


def group_summary(group: GroupLog, stopped_at: float, ledger: Ledger) -> list[str]:
    after = [r for r in group.received if r[0] > stopped_at]
    values = [r[3] for r in group.received]
    repeats = [v for v, n in Counter(values).items() if n > 1]
    never = sorted(set(ledger.acked) - set(values))
    return [
        f"consumer group: received {len(group.received)} records, {len(after)} after the stop; "
        f"{len(repeats)} received twice; {len(never)} acked records never received "
        f"(e.g. {never[:5]}); errors {len(group.errors)} {group.errors[:3]}"
    ]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--scenario", choices=[*SCENARIOS, "no-crash", "all"], default="all")
    parser.add_argument("--store", choices=["seaweedfs", "s3rver"], default="seaweedfs")
    parser.add_argument("--s3rver", type=Path, help="s3rver's binary (npm), for --store s3rver")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    new_store: StoreFactory = seaweedfs
    if args.store == "s3rver":
        if args.s3rver is None:
            parser.error("--store s3rver needs --s3rver PATH (npm install s3rver@3.7.1)")
        binary: Path = args.s3rver

        def new_store(data: Path, log: Path) -> S3Store:
            return s3rver(binary, data, log)

    names = [*SCENARIOS, "no-crash"] if args.scenario == "all" else [args.scenario]
    reports: list[dict[str, Any]] = []
    for name in names:
        work = Path(tempfile.mkdtemp(prefix=f"tansu-crash-{name}-"))
        if name == "no-crash":
            lines = await recreate_and_race(work, new_store)
            report: dict[str, Any] = {"scenario": name, "store": args.store, "lines": lines}
        else:
            report = await scenario(SCENARIOS[name], work, new_store)
        report["work_dir"] = str(work)
        print("\n".join(report["lines"]), flush=True)
        print(f"(files in {work})\n", flush=True)
        reports.append(report)
    if args.json:
        args.json.write_text(json.dumps(reports, indent=2, default=str))


if __name__ == "__main__":
    asyncio.run(main())
