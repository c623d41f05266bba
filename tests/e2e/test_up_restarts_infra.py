"""`leadflow up` restarts its MongoDB and its Kafka when they die, instead of stopping.

The stack is started the way a person starts it (`python -m leadflow up`, here on free
ports and a temporary data directory); the MongoDB-wire server and the Kafka-wire broker are
killed with SIGKILL; `up` starts them again on the same ports and data, records their new
pids in stack.json, every service is ready again, and Ctrl-C still stops everything.
"""

from __future__ import annotations

import json
import os
import signal
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from leadflow.config import SERVICES
from leadflow.localinfra import port_open
from tests.e2e.test_stack import eventually, process_exists, ready, stack_environment, start_stack

pytestmark = pytest.mark.e2e

BACK_WITHIN_S = 45


def infra_pid(state: dict[str, Any], prefix: str) -> int:
    [pid] = [pid for name, pid in state["infra"].items() if name.startswith(prefix)]
    return int(pid)


def test_killed_mongodb_and_kafka_are_restarted_and_the_stack_keeps_running(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    env = stack_environment(data_dir)
    stack = start_stack(env, data_dir, run=1)
    try:
        old_mongo, old_kafka = infra_pid(stack.state, "mongodb"), infra_pid(stack.state, "kafka")
        os.kill(old_mongo, signal.SIGKILL)
        os.kill(old_kafka, signal.SIGKILL)

        state = eventually(
            lambda: json.loads((data_dir / "stack.json").read_text()),
            lambda s: infra_pid(s, "mongodb") != old_mongo and infra_pid(s, "kafka") != old_kafka,
            timeout_s=BACK_WITHIN_S,
        )
        stack.state = state
        for name in ("mongodb", "kafka"):
            assert process_exists(infra_pid(state, name))
        for variable in ("LEADFLOW_MONGO_PORT", "LEADFLOW_KAFKA_PORT"):
            port = int(env[variable])
            eventually(partial(port_open, port), bool, timeout_s=BACK_WITHIN_S)
        for service in SERVICES:
            with httpx.Client(base_url=stack.url(service), timeout=5) as client:
                eventually(partial(ready, client), bool, timeout_s=BACK_WITHIN_S)

        assert stack.process.poll() is None, "up stopped instead of restarting"
        output = stack.output_path.read_text()
        assert "infrastructure restarted" in output
        assert stack.interrupt() == 0
    finally:
        if stack.process.poll() is None:
            stack.process.kill()
    leftovers = [pid for pid in stack.pids() if process_exists(pid)]
    assert leftovers == [], f"processes left behind: {leftovers}"
