"""`leadflow up` restarts its infrastructure when it dies, instead of stopping.

The stack is started the way a person starts it (`python -m leadflow up`, here on free
ports and a temporary data directory). First SeaweedFS, which keeps Kafka's log, is killed
with SIGKILL: `up` starts it again on the same port and data (its S3 API answering for the
bucket again), records the new pid and leaves the broker running. Then the MongoDB-wire
server and the Kafka-wire broker are killed: `up` starts them again on the same ports and
data and records their pids, and every service is ready again. After each, a lead posted is
assigned and counted, and Ctrl-C still stops everything.
"""

from __future__ import annotations

import json
import os
import signal
import uuid
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from leadflow.config import SERVICES
from leadflow.localinfra import port_open, s3_bucket_answers
from tests.e2e.test_stack import (
    Stack,
    eventually,
    process_exists,
    ready,
    set_up_routing,
    stack_environment,
    start_stack,
    summary,
)

pytestmark = pytest.mark.e2e

BACK_WITHIN_S = 60


def infra_pid(state: dict[str, Any], prefix: str) -> int:
    [pid] = [pid for name, pid in state["infra"].items() if name.startswith(prefix)]
    return int(pid)


def a_lead_is_assigned_and_counted(stack: Stack) -> None:
    before = summary(stack)
    with stack.client("intake") as intake:
        posted = intake.post("/v1/leads", json={"email": f"{uuid.uuid4().hex}@example.com"})
    assert posted.status_code == 201, posted.text
    lead_id = posted.json()["lead_id"]
    with stack.client("assignment") as assignment:
        eventually(
            lambda: assignment.get(f"/v1/leads/{lead_id}"),
            lambda r: r.status_code == 200 and r.json()["status"] == "assigned",
            timeout_s=BACK_WITHIN_S,
        )
    eventually(
        lambda: summary(stack),
        lambda s: (
            s["leads_received"] == before["leads_received"] + 1
            and s["leads_assigned"] == before["leads_assigned"] + 1
        ),
        timeout_s=BACK_WITHIN_S,
    )


def test_killed_s3_then_mongodb_and_kafka_are_restarted_and_leads_still_flow(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    env = stack_environment(data_dir)
    stack = start_stack(env, data_dir, run=1)
    try:
        assert stack.state["kafka_storage"] == "seaweedfs", stack.state
        set_up_routing(stack)

        old_s3, kafka = infra_pid(stack.state, "s3"), infra_pid(stack.state, "kafka")
        os.kill(old_s3, signal.SIGKILL)
        stack.state = eventually(
            lambda: json.loads((data_dir / "stack.json").read_text()),
            lambda s: infra_pid(s, "s3") != old_s3,
            timeout_s=BACK_WITHIN_S,
        )
        assert process_exists(infra_pid(stack.state, "s3"))
        s3_port = int(env["LEADFLOW_S3_PORT"])
        eventually(partial(s3_bucket_answers, s3_port), bool, timeout_s=BACK_WITHIN_S)
        assert infra_pid(stack.state, "kafka") == kafka, "the broker did not need a restart"
        a_lead_is_assigned_and_counted(stack)

        old_mongo, old_kafka = infra_pid(stack.state, "mongodb"), infra_pid(stack.state, "kafka")
        os.kill(old_mongo, signal.SIGKILL)
        os.kill(old_kafka, signal.SIGKILL)
        stack.state = eventually(
            lambda: json.loads((data_dir / "stack.json").read_text()),
            lambda s: infra_pid(s, "mongodb") != old_mongo and infra_pid(s, "kafka") != old_kafka,
            timeout_s=BACK_WITHIN_S,
        )
        for name in ("mongodb", "kafka"):
            assert process_exists(infra_pid(stack.state, name))
        for variable in ("LEADFLOW_MONGO_PORT", "LEADFLOW_KAFKA_PORT"):
            eventually(partial(port_open, int(env[variable])), bool, timeout_s=BACK_WITHIN_S)
        for service in SERVICES:
            with httpx.Client(base_url=stack.url(service), timeout=5) as client:
                eventually(partial(ready, client), bool, timeout_s=BACK_WITHIN_S)
        a_lead_is_assigned_and_counted(stack)

        assert stack.process.poll() is None, "up stopped instead of restarting"
        assert "infrastructure restarted" in stack.output_path.read_text()
        assert stack.interrupt() == 0
    finally:
        if stack.process.poll() is None:
            stack.process.kill()
    leftovers = [pid for pid in stack.pids() if process_exists(pid)]
    assert leftovers == [], f"processes left behind: {leftovers}"
