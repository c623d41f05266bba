"""`leadflow up` restarts the S3 server that keeps Kafka's log when it dies.

SeaweedFS is killed with SIGKILL under a running stack: `up` starts it again on the same
port and data (its S3 API answering for the bucket again), records the new pid, leaves the
broker running, and a lead posted afterwards is assigned and counted.
"""

from __future__ import annotations

import json
import os
import signal
import uuid
from functools import partial
from pathlib import Path

import pytest

from leadflow.localinfra import s3_bucket_answers
from tests.e2e.test_stack import (
    eventually,
    process_exists,
    set_up_routing,
    stack_environment,
    start_stack,
    summary,
)
from tests.e2e.test_up_restarts_infra import infra_pid

pytestmark = pytest.mark.e2e

BACK_WITHIN_S = 60


def test_a_killed_s3_server_is_restarted_and_leads_still_flow(tmp_path: Path) -> None:
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
        assert stack.process.poll() is None, "up stopped instead of restarting SeaweedFS"
        assert "infrastructure restarted" in stack.output_path.read_text()
        assert stack.interrupt() == 0
    finally:
        if stack.process.poll() is None:
            stack.process.kill()
    leftovers = [pid for pid in stack.pids() if process_exists(pid)]
    assert leftovers == [], f"processes left behind: {leftovers}"
