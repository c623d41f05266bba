"""Kafka killed with SIGKILL while leads pour in: every accepted lead is still assigned once
and counted once.

The stack is started as a person starts it (`python -m leadflow up`, free ports, a temporary
data directory, the default persistent Kafka log in SeaweedFS). Leads are posted a few at a
time; a third of the way in the Tansu broker is killed with SIGKILL, `up` starts it again on
the same log, and the posting goes on. Every lead intake answered 201 for must end up
assigned in assignment and counted exactly once by analytics, within a bound, and `up` must
still be running.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_stack import (
    Stack,
    eventually,
    process_exists,
    set_up_routing,
    stack_environment,
    start_stack,
    summary,
)
from tests.e2e.test_up_restarts_infra import infra_pid

pytestmark = pytest.mark.e2e

LEADS = 150
CONCURRENCY = 4
PACE_S = 0.25  # each poster waits this long before its next lead: ~15 leads/s in all
KILL_AFTER = LEADS // 3
CONVERGE_WITHIN_S = 120.0
BACK_WITHIN_S = 45.0


@dataclass(frozen=True)
class Posted:
    status: int
    lead_id: str | None
    answered_at: float  # time.monotonic()
    detail: str


def post_lead(stack: Stack, number: int) -> Posted:
    time.sleep(PACE_S)
    email = f"crash-{number}-{uuid.uuid4().hex[:8]}@example.com"
    try:
        with stack.client("intake") as intake:
            response = intake.post("/v1/leads", json={"name": f"Crash {number}", "email": email})
    except httpx.HTTPError as error:
        return Posted(0, None, time.monotonic(), f"{type(error).__name__}: {error}")
    lead_id = response.json().get("lead_id") if response.status_code == 201 else None
    return Posted(response.status_code, lead_id, time.monotonic(), response.text[:200])


def unassigned(stack: Stack, lead_ids: set[str]) -> dict[str, str]:
    """The leads assignment does not show as assigned, with what it shows instead."""
    missing: dict[str, str] = {}
    with stack.client("assignment") as assignment:
        for lead_id in sorted(lead_ids):
            response = assignment.get(f"/v1/leads/{lead_id}")
            if response.status_code != 200:
                missing[lead_id] = f"HTTP {response.status_code}"
            elif response.json()["status"] != "assigned":
                missing[lead_id] = str(response.json()["status"])
    return missing


def wait_for_convergence(
    stack: Stack, accepted: set[str], before: dict[str, Any], deadline: float
) -> tuple[dict[str, str], dict[str, Any]]:
    """Poll until every accepted lead is assigned and counted, or the deadline passes;
    what is still missing and the last summary."""
    pending = set(accepted)
    counts = summary(stack)
    while True:
        pending = set(unassigned(stack, pending))
        counts = summary(stack)
        counted = all(
            counts[field] - before[field] == len(accepted)
            for field in ("leads_received", "leads_assigned")
        )
        if (not pending and counted) or time.monotonic() > deadline:
            return unassigned(stack, pending), counts
        time.sleep(1.0)


@pytest.mark.timeout(480)
def test_leads_posted_while_kafka_is_killed_are_each_assigned_and_counted_once(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    env = stack_environment(data_dir)
    stack = start_stack(env, data_dir, run=1)
    try:
        assert stack.state["kafka_storage"] == "seaweedfs", stack.state
        set_up_routing(stack)
        before = summary(stack)
        old_kafka = infra_pid(stack.state, "kafka")

        with ThreadPoolExecutor(CONCURRENCY) as pool:
            futures: list[Future[Posted]] = [pool.submit(post_lead, stack, n) for n in range(LEADS)]
            eventually(lambda: sum(f.done() for f in futures), lambda n: n >= KILL_AFTER, 120)
            os.kill(old_kafka, signal.SIGKILL)
            killed_at = time.monotonic()
            stack.state = eventually(
                lambda: json.loads((data_dir / "stack.json").read_text()),
                lambda s: infra_pid(s, "kafka") != old_kafka,
                timeout_s=BACK_WITHIN_S,
            )
            restarted_at = time.monotonic()
            posted = [f.result(timeout=120) for f in futures]

        accepted = {p.lead_id for p in posted if p.status == 201 and p.lead_id}
        refused = [(p.status, p.detail) for p in posted if p.status != 201]
        after_restart = [p for p in posted if p.status == 201 and p.answered_at > restarted_at]
        during_outage = [p for p in posted if killed_at < p.answered_at <= restarted_at]
        assert len(accepted) == sum(p.status == 201 for p in posted), "a lead id twice"
        assert any(p.answered_at < killed_at for p in posted if p.status == 201)
        assert after_restart, "no lead was accepted after Kafka came back; post slower"

        missing, counts = wait_for_convergence(
            stack, accepted, before, time.monotonic() + CONVERGE_WITHIN_S
        )
        context = (
            f"{len(accepted)} accepted ({len(during_outage)} answered while Kafka was down, "
            f"{len(after_restart)} after it was back), refused: {refused[:5]}; "
            f"logs in {data_dir / 'logs'}"
        )
        assert missing == {}, f"accepted leads not assigned: {missing}; {context}"
        assert counts["leads_received"] - before["leads_received"] == len(accepted), context
        assert counts["leads_assigned"] - before["leads_assigned"] == len(accepted), context

        assert stack.process.poll() is None, "up stopped instead of restarting Kafka"
        assert process_exists(infra_pid(stack.state, "kafka"))
        assert stack.interrupt() == 0
    finally:
        if stack.process.poll() is None:
            stack.process.kill()
    leftovers = [pid for pid in stack.pids() if process_exists(pid)]
    assert leftovers == [], f"processes left behind: {leftovers}"
