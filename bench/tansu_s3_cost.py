"""What Kafka clients cost in S3 requests when Tansu keeps its log in s3rver.

    npm install --prefix /tmp/s3rver s3rver@3.7.1
    .venv/bin/python bench/tansu_s3_cost.py --s3rver /tmp/s3rver/node_modules/.bin/s3rver \
        [--records 5000] [--idle-s 10]

1. long poll: a consumer on an empty partition with fetch_max_wait_ms 100 / 500 / 5000;
   if Tansu honoured the wait, the fetch rate (S3 requests per second) would fall with it;
2. an idle consumer group on a 100-partition topic: S3 requests per second and CPU of
   s3rver and Tansu, with the default fetch_max_wait_ms (500) and with 5000;
3. producer linger_ms / max_batch_size and consumer fetch_max_wait_ms / fetch_min_bytes:
   S3 requests and rate to produce, then consume, `--records` x 500 B records.

s3rver logs one line per request, which is what is counted (leadflow itself now keeps the
log in SeaweedFS, which does not log requests; the request counts are about Tansu and its
clients, not about the server). Bounded: fixed durations and counts; every process listens
on 127.0.0.1 and is stopped by its pid.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from tansu_lab import (
    LOOPBACK,
    Proc,
    create_topic,
    producer,
    s3rver,
    s3rver_requests,
    stopped_at_exit,
    tansu,
)

PRODUCER_SETTINGS = [
    {"linger_ms": 0, "max_batch_size": 16384},
    {"linger_ms": 5, "max_batch_size": 65536},
    {"linger_ms": 20, "max_batch_size": 262144},
]
CONSUMER_SETTINGS = [
    {"fetch_max_wait_ms": 100, "fetch_min_bytes": 1},
    {"fetch_max_wait_ms": 500, "fetch_min_bytes": 1},
    {"fetch_max_wait_ms": 500, "fetch_min_bytes": 65536},
]


class Meter:
    """S3 requests and CPU seconds of s3rver and Tansu over one measured step."""

    def __init__(self, s3: Proc, broker: Proc, log_path: Path) -> None:
        self.s3, self.broker, self.log_path = s3, broker, log_path

    def __enter__(self) -> Meter:
        self.started = time.perf_counter()
        self.requests = s3rver_requests(self.log_path)
        self.cpu = (self.s3.cpu(), self.broker.cpu())
        self.result: dict[str, float] = {}
        return self

    def __exit__(self, *_: object) -> None:
        seconds = time.perf_counter() - self.started
        requests = s3rver_requests(self.log_path) - self.requests
        self.result = {
            "seconds": round(seconds, 2),
            "s3_requests": requests,
            "s3_requests_per_s": round(requests / seconds, 1),
            "s3rver_cpu_pct": round(100 * (self.s3.cpu() - self.cpu[0]) / seconds, 1),
            "tansu_cpu_pct": round(100 * (self.broker.cpu() - self.cpu[1]) / seconds, 1),
        }


async def idle_consumer(
    bootstrap: str, topic: str, partitions: int, seconds: float, meter: Meter, **options: Any
) -> dict[str, float]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, auto_offset_reset="earliest", **options
    )
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        await consumer.getmany(timeout_ms=1000)  # settle: positions known, fetching
        with meter:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                await consumer.getmany(timeout_ms=200)
        return meter.result
    finally:
        await consumer.stop()


async def idle_group(
    bootstrap: str, topic: str, seconds: float, meter: Meter, **options: Any
) -> dict[str, float]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"idle-{time.monotonic_ns()}",
        auto_offset_reset="earliest",
        **options,
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + 30
        while not consumer.assignment() and time.monotonic() < deadline:
            await consumer.getmany(timeout_ms=500)
        await consumer.getmany(timeout_ms=1000)
        with meter:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                await consumer.getmany(timeout_ms=200)
        return meter.result | {"partitions_assigned": len(consumer.assignment())}
    finally:
        await consumer.stop()


async def produce_consume(
    bootstrap: str, records: int, meter: Meter, prod: dict[str, int], cons: dict[str, int]
) -> dict[str, Any]:
    topic = f"sweep-{time.monotonic_ns()}"
    await create_topic(bootstrap, topic, 6)
    client = producer(bootstrap, **prod)
    await client.start()
    payload = b"x" * 500
    try:
        with meter:
            futures = [
                await client.send(topic, payload, key=f"lead-{i % 97}".encode())
                for i in range(records)
            ]
            await asyncio.wait_for(asyncio.gather(*futures), timeout=300)
        produced = meter.result
    finally:
        await client.stop()
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", **cons
    )
    await consumer.start()
    count = 0
    try:
        with meter:  # includes joining: a warm-up fetch would already hold the records
            deadline = time.monotonic() + 60
            while count < records and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=1000)
                count += sum(len(r) for r in batch.values())
        consumed = meter.result
    finally:
        await consumer.stop()
    return {
        "producer": prod,
        "consumer": cons,
        "produce_per_s": round(records / produced["seconds"]),
        "produce_s3_requests": produced["s3_requests"],
        "consume_per_s": round(count / consumed["seconds"]),
        "consume_s3_requests": consumed["s3_requests"],
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--idle-s", type=float, default=10.0)
    parser.add_argument("--s3rver", type=Path, required=True, help="s3rver's binary (npm)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tansu-s3-cost-"))
    store = s3rver(args.s3rver, work / "s3", work / "s3.log")
    s3 = store.proc
    s3.start()
    broker = tansu("s3://tansu/", work / "tansu.log", store.tansu_env())
    results: dict[str, Any] = {}
    with stopped_at_exit(s3, broker):
        broker.start()
        bootstrap = f"{LOOPBACK}:{broker.port}"
        meter = Meter(s3, broker, work / "s3.log")
        with meter:
            await asyncio.sleep(args.idle_s / 2)
        results["nothing connected"] = meter.result
        await create_topic(bootstrap, "empty", 1)
        for wait in (100, 500, 5000):
            results[f"empty partition, fetch_max_wait_ms={wait}"] = await idle_consumer(
                bootstrap, "empty", 1, args.idle_s, meter, fetch_max_wait_ms=wait
            )
        await create_topic(bootstrap, "hundred", 100)
        for wait in (500, 5000):
            results[f"idle group on 100 partitions, fetch_max_wait_ms={wait}"] = await idle_group(
                bootstrap, "hundred", args.idle_s, meter, fetch_max_wait_ms=wait
            )
        for label, result in results.items():
            print(f"{label}: {json.dumps(result)}", flush=True)
        sweep = []
        for prod in PRODUCER_SETTINGS:
            for cons in CONSUMER_SETTINGS:
                row = await produce_consume(bootstrap, args.records, meter, prod, cons)
                print(json.dumps(row), flush=True)
                sweep.append(row)
        results["sweep"] = sweep
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
