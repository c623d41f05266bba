"""Start-up time of `leadflow up` and post -> assigned -> counted latency, with a same-run ceiling.

    .venv/bin/python bench/stack_latency.py [--leads 20]

1. Starts the stack exactly as `leadflow up` does (fresh data directory, loopback ports)
   and times it until every service answers /readyz.
2. Posts `--leads` leads one after another to intake and, for each, times until assignment
   shows it assigned and until analytics has counted the assignment.
3. Ceiling, measured in the same run on the same broker and database: one raw hop with no
   leadflow code (aiokafka produce -> an already-joined consumer -> one MongoDB insert).
   A lead's path to "counted" is three such hops (intake -> assignment -> analytics) plus
   the transactions around them, so the ratio says how much leadflow adds.

Machines are noisy: compare the ratios, not the absolute times.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from pipeline import raw_hop_s  # the same ceiling as the pipeline benchmark

from leadflow.config import SERVICES
from leadflow.localinfra import free_port

REPO = Path(__file__).resolve().parents[1]
DEADLINE_S = 120.0


def start_stack(data_dir: Path) -> tuple[subprocess.Popen[bytes], dict[str, Any], float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADFLOW_")}
    env |= {
        "LEADFLOW_DATA_DIR": str(data_dir),
        "LEADFLOW_KAFKA_PORT": str(free_port()),
        "LEADFLOW_MONGO_PORT": str(free_port()),
        "LEADFLOW_S3_PORT": str(free_port()),
    }
    env |= {f"LEADFLOW_{s.upper()}_PORT": str(free_port()) for s in SERVICES}
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "leadflow", "up"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    state_file = data_dir / "stack.json"
    while not state_file.exists():
        if process.poll() is not None or time.perf_counter() - started > DEADLINE_S:
            process.kill()
            raise SystemExit("leadflow up did not come up")
        time.sleep(0.05)
    return process, json.loads(state_file.read_text()), time.perf_counter() - started


def measure_leads(
    state: dict[str, Any], admin_key: str, count: int
) -> tuple[list[float], list[float]]:
    headers = {"X-API-Key": admin_key}
    urls = {name: s["url"] for name, s in state["services"].items()}
    with httpx.Client(headers=headers, timeout=10) as http:
        http.post(f"{urls['assignment']}/v1/reps", json={"rep_id": "bench-rep", "name": "Bench"})
        http.post(
            f"{urls['assignment']}/v1/pools",
            json={
                "pool_id": "bench",
                "name": "Bench",
                "rep_ids": ["bench-rep"],
                "is_default": True,
            },
        )
        to_assigned, to_counted = [], []
        for _ in range(count):
            started = time.perf_counter()
            posted = http.post(
                f"{urls['intake']}/v1/leads", json={"email": f"{uuid.uuid4().hex}@example.com"}
            )
            posted.raise_for_status()
            lead_id = posted.json()["lead_id"]
            assigned_at = counted_at = None
            while counted_at is None and time.perf_counter() - started < 30:
                if assigned_at is None:
                    lead = http.get(f"{urls['assignment']}/v1/leads/{lead_id}")
                    if lead.status_code == 200 and lead.json()["status"] == "assigned":
                        assigned_at = time.perf_counter()
                timeline = http.get(f"{urls['analytics']}/v1/events", params={"lead_id": lead_id})
                if timeline.status_code == 200 and any(
                    e["event_type"] == "lead-assigned" for e in timeline.json()["events"]
                ):
                    counted_at = time.perf_counter()
                    assigned_at = assigned_at or counted_at
                time.sleep(0.01)
            if counted_at is None or assigned_at is None:
                raise SystemExit(f"lead {lead_id} was not counted within 30 s")
            to_assigned.append(assigned_at - started)
            to_counted.append(counted_at - started)
        return to_assigned, to_counted


def describe(samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"median {statistics.median(ordered) * 1000:7.1f} ms  p95 {p95 * 1000:7.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--leads", type=int, default=20)
    args = parser.parse_args()
    count = max(1, min(args.leads, 500))
    data_dir = Path(tempfile.mkdtemp(prefix="leadflow-bench-")) / "data"
    process, state, startup_s = start_stack(data_dir)
    try:
        admin_key = Path(state["admin_key_file"]).read_text().strip()
        ceiling = asyncio.run(raw_hop_s(state["kafka_bootstrap"], state["mongo_url"], count))
        to_assigned, to_counted = measure_leads(state, admin_key, count)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
        shutil.rmtree(data_dir.parent, ignore_errors=True)
    raw = statistics.median(ceiling)
    print(
        f"start-up (leadflow up -> all ready):     {startup_s:6.1f} s"
        f"  = {startup_s / 90:.2f} of the 90 s budget"
    )
    print(f"ceiling: one raw hop (Kafka + 1 insert): {describe(ceiling)}")
    print(
        f"post -> assigned in assignment:          {describe(to_assigned)}"
        f"  = {statistics.median(to_assigned) / raw:5.1f} x raw hop"
    )
    print(
        f"post -> counted in analytics:            {describe(to_counted)}"
        f"  = {statistics.median(to_counted) / raw:5.1f} x raw hop"
        f" (path is 3 hops: {statistics.median(to_counted) / (3 * raw):.1f} x its floor)"
    )
    print(f"leads: {count}; storage: {state['kafka_storage']}")


if __name__ == "__main__":
    main()
