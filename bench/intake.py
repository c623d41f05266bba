"""Intake's accept paths against ceilings measured in the same run, on the same servers.

    .venv/bin/python bench/intake.py                          # every scenario
    .venv/bin/python bench/intake.py --scenario single --leads 3000
    .venv/bin/python bench/intake.py --scenario batch --batches 20

Each run starts its own Kafka-wire broker and MongoDB-wire server (log in memory) and one
intake process configured as `leadflow up` configures it, then:

- single: N leads posted one per request to `POST /v1/leads`, `--concurrency` at a time
          (intake groups concurrent requests into one transaction); leads/s as a ratio to
          raw `insert_one`/s of the same server with as many concurrent writers; p50/p99 of
          each request.
- batch:  `--batches` requests of 1,000 leads to `POST /v1/leads/batch`, two at a time;
          leads/s as a ratio to raw `insert_many` documents/s (500 a call); p50/p99 of each
          request.
- csv:    a `--rows` (100,000) row CSV file streamed to `POST /v1/imports` (never held
          whole, on either side); rows/s as a ratio to the batch path's leads/s measured
          just before on the same stack (10 requests of 1,000), the intake process's peak
          RSS and its growth during the import, and p50/p99 of each chunk (one transaction
          of 500 rows plus its progress record) as the server reports them.

Every lead has a fresh phone or email (no merges: the costliest case, one lead document and
its contact keys written per lead). Ceilings are the best of three runs. Every loop is
bounded in count and time; every server listens on 127.0.0.1. Machines are noisy: compare
the ratios, not the absolute figures. (Scenarios of other intake channels add themselves to
`SCENARIOS`.)
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any

import httpx
from pipeline import (
    RssSampler,
    Stack,
    percentile,
    raw_insert_many_docs_per_s,
    resident_kb,
    stack,
)
from pymongo import AsyncMongoClient

BATCH = 1000
DOCS_PER_LEAD = 4
"""What accepting one new lead with a phone and an email writes: the lead, two contact keys
(the unique directory de-duplication relies on) and its event in the outbox."""
TIMEOUT_S = 120.0
CSV_TIMEOUT_S = 1800.0
CSV_RESUMES = 5


async def raw_insert_one_per_s(
    mongo_url: str, docs: int = 2000, concurrency: int = 32, runs: int = 3
) -> float:
    """The best of `runs`: `docs` documents, one `insert_one` each, `concurrency` writers."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url)
    try:
        best = 0.0
        for _ in range(runs):
            collection = client["bench_ceiling"][f"one_{uuid.uuid4().hex[:6]}"]
            numbers = iter(range(docs))
            started = time.perf_counter()
            await asyncio.gather(*(_insert_each(collection, numbers) for _ in range(concurrency)))
            best = max(best, docs / (time.perf_counter() - started))
        return best
    finally:
        await client.close()


PHONES = itertools.count()
"""Every lead of a run gets its own phone, whichever scenario posts it."""


async def _insert_each(collection: Any, numbers: Iterator[int]) -> None:
    for n in numbers:
        await collection.insert_one({"n": n, "pad": "x" * 600})


def lead(tag: str, n: int) -> dict[str, Any]:
    p = next(PHONES)
    return {
        "name": f"Lead {n}",
        "phone": f"+1415{(p // 10_000) % 800 + 200:03d}{p % 10_000:04d}",
        "email": f"{tag}-{n}-{uuid.uuid4().hex[:8]}@example.com",
        "source": "bench",
        "utm": {"source": "google", "medium": "cpc"},
        "profile": {"industry": "fitness", "company_size": 40, "country": "US"},
        "consent": {"email": True, "wording": "Send me offers"},
    }


async def single(bench: Stack, leads: int, concurrency: int) -> dict[str, Any]:
    ceiling = await raw_insert_one_per_s(bench.infra.mongo_url, concurrency=concurrency)
    one_writer = await raw_insert_one_per_s(bench.infra.mongo_url, docs=500, concurrency=1)
    tag = uuid.uuid4().hex[:6]
    numbers = iter(range(leads))
    latencies: list[float] = []
    async with httpx.AsyncClient(
        base_url=bench.url("intake"), headers=bench.headers, timeout=TIMEOUT_S
    ) as client:

        async def lane() -> None:
            for n in numbers:
                started = time.perf_counter()
                response = await client.post("/v1/leads", json=lead(tag, n))
                latencies.append(time.perf_counter() - started)
                response.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    rate = leads / elapsed
    return {
        "leads": leads,
        "concurrency": concurrency,
        "leads_per_s": round(rate, 1),
        "raw_insert_one_per_s": round(ceiling, 1),
        "ratio": round(rate / ceiling, 2),
        "raw_insert_one_per_s_one_writer": round(one_writer, 1),
        "ratio_to_one_writer": round(rate / one_writer, 2),
        "goal": 0.5,
        "p50_ms": round(percentile(latencies, 0.5) * 1000, 1),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
    }


async def batch(bench: Stack, batches: int, concurrency: int = 2) -> dict[str, Any]:
    ceiling = await raw_insert_many_docs_per_s(bench.infra.mongo_url)
    tag = uuid.uuid4().hex[:6]
    numbers = iter(range(batches))
    latencies: list[float] = []
    async with httpx.AsyncClient(
        base_url=bench.url("intake"), headers=bench.headers, timeout=TIMEOUT_S
    ) as client:

        async def lane() -> None:
            for b in numbers:
                body = {"leads": [lead(tag, b * BATCH + i) for i in range(BATCH)]}
                started = time.perf_counter()
                response = await client.post("/v1/leads/batch", json=body)
                latencies.append(time.perf_counter() - started)
                if response.status_code != 200:
                    raise SystemExit(f"batch {b}: {response.status_code} {response.text}")
                if response.json()["created"] != BATCH:
                    raise SystemExit(f"batch {b}: {response.json()['results'][:3]}")

        started = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    rate = batches * BATCH / elapsed
    return {
        "leads": batches * BATCH,
        "requests": batches,
        "concurrency": concurrency,
        "leads_per_s": round(rate, 1),
        "raw_insert_many_docs_per_s": round(ceiling, 1),
        "ratio": round(rate / ceiling, 3),
        "goal": 0.5,
        "docs_written_per_lead": DOCS_PER_LEAD,
        "docs_ratio": round(rate * DOCS_PER_LEAD / ceiling, 3),
        "p50_ms": round(percentile(latencies, 0.5) * 1000, 1),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
    }


CSV_HEADER = "name,phone,email,source,industry,company size,country,意向程度\n"


async def csv_file(tag: str, rows: int) -> AsyncIterator[bytes]:
    """The rows of `lead()` as CSV, produced 64 KB at a time."""
    buffer: list[str] = [CSV_HEADER]
    size = 0
    for n in range(rows):
        one = lead(tag, n)
        line = f"{one['name']},{one['phone']},{one['email']},bench-csv,fitness,40,US,high\n"
        buffer.append(line)
        size += len(line)
        if size > 64 * 1024:
            yield "".join(buffer).encode()
            buffer, size = [], 0
    yield "".join(buffer).encode()


async def csv_import(bench: Stack, rows: int) -> dict[str, Any]:
    ceiling = await batch(bench, 10)
    intake_pid = next(
        r.child.process.pid for r in bench.replicas.of("intake") if r.child.process is not None
    )
    before_kb = resident_kb(intake_pid)
    tag = uuid.uuid4().hex[:6]
    async with (
        RssSampler(bench).sampling() as rss,
        httpx.AsyncClient(
            base_url=bench.url("intake"), headers=bench.headers, timeout=CSV_TIMEOUT_S
        ) as client,
    ):
        started = time.perf_counter()
        resumes = -1
        # A 503 (the database did not commit even a small chunk in time) is what a user
        # answers by running the import again: it resumes after its last chunk.
        for resumes in range(CSV_RESUMES + 1):  # noqa: B007 - reported below
            response = await client.post(
                "/v1/imports",
                params={"import_id": f"bench-{tag}", "source": "bench-csv"},
                content=csv_file(tag, rows),
                headers={"content-type": "text/csv"},
            )
            if response.status_code != httpx.codes.SERVICE_UNAVAILABLE:
                break
        elapsed = time.perf_counter() - started
    response.raise_for_status()
    summary = response.json()
    # A chunk whose commit answer was lost (a timeout after the commit) is accepted again
    # and comes back as duplicates: accepted once, not counted twice.
    if summary["created"] + summary["duplicates"] != rows:
        raise SystemExit(f"csv: {summary}")
    rate = rows / elapsed
    chunks = summary["chunk_ms"]
    return {
        "rows": rows,
        "rows_per_s": round(rate, 1),
        "batch_path_leads_per_s": ceiling["leads_per_s"],
        "ratio": round(rate / ceiling["leads_per_s"], 2),
        "intake_rss_before_mb": round(before_kb / 1024, 1),
        "intake_peak_rss_mb": round(rss.peak_kb.get("intake", 0) / 1024, 1),
        "chunks": chunks["chunks"],
        "rows_per_chunk": chunks["rows_per_chunk"],
        "duplicates": summary["duplicates"],
        "resumes_after_503": resumes,
        "chunk_p50_ms": chunks["p50"],
        "chunk_p99_ms": chunks["p99"],
    }


SCENARIOS: dict[str, Callable[[Stack, argparse.Namespace], Coroutine[Any, Any, dict[str, Any]]]] = {
    "single": lambda bench, args: single(bench, args.leads, args.concurrency),
    "batch": lambda bench, args: batch(bench, args.batches),
    "csv": lambda bench, args: csv_import(bench, args.rows),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", choices=["all", *SCENARIOS], default="all")
    parser.add_argument("--leads", type=int, default=3000, help="single: leads posted")
    parser.add_argument("--concurrency", type=int, default=32, help="single: requests at once")
    parser.add_argument("--batches", type=int, default=20, help="batch: requests of 1,000")
    parser.add_argument("--rows", type=int, default=100_000, help="csv: rows in the file")
    args = parser.parse_args()
    args.leads = max(1, min(args.leads, 50_000))
    args.concurrency = max(1, min(args.concurrency, 256))
    args.batches = max(1, min(args.batches, 100))
    args.rows = max(1, min(args.rows, 1_000_000))
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    # One stack for every scenario: the same servers for the paths and their ceilings.
    with stack("memory", services=("intake",)) as bench:
        for name in names:
            started = time.perf_counter()
            result = asyncio.run(SCENARIOS[name](bench, args))
            result["scenario_s"] = round(time.perf_counter() - started, 1)
            print(json.dumps({name: result}), flush=True)


if __name__ == "__main__":
    main()
