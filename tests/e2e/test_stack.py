"""The whole stack started the way `leadflow up` starts it, driven over HTTP.

A lead posted to intake is assigned by assignment, lost to nurture, and counted by
analytics; Ctrl-C leaves no process behind; a second `up` on the same data finds every lead
and counts nothing twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from leadflow.config import SERVICES
from leadflow.localinfra import free_port
from tests.support.services import quick_join_environment

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


@dataclass
class Stack:
    process: subprocess.Popen[bytes]
    state: dict[str, Any]
    admin_key: str
    output_path: Path
    env: dict[str, str] = field(default_factory=dict)
    """The environment `up` was started with (ports, data directory)."""

    def url(self, service: str) -> str:
        return str(self.state["services"][service]["url"])

    def pids(self) -> list[int]:
        services = [s["pid"] for s in self.state["services"].values()]
        return [self.process.pid, *services, *self.state["infra"].values()]

    def client(self, service: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.url(service), headers={"X-API-Key": self.admin_key}, timeout=10
        )

    def interrupt(self, timeout_s: float = 60) -> int:
        """Ctrl-C, as a person at the terminal would."""
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout=timeout_s)


def stack_environment(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADFLOW_")}
    env.update(
        {
            "LEADFLOW_DATA_DIR": str(data_dir),
            "LEADFLOW_KAFKA_PORT": str(free_port()),
            "LEADFLOW_MONGO_PORT": str(free_port()),
            "LEADFLOW_S3_PORT": str(free_port()),
            "LEADFLOW_MAIL_SINK_PORT": str(free_port()),
            "LEADFLOW_SINKS_HTTP_PORT": str(free_port()),
        }
    )
    for service in SERVICES:
        env[f"LEADFLOW_{service.upper()}_PORT"] = str(free_port())
    env.update(quick_join_environment(*SERVICES))
    return env


def start_stack(env: dict[str, str], data_dir: Path, run: int) -> Stack:
    output_path = data_dir.parent / f"up-{run}.log"
    with output_path.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "leadflow", "up"],
            cwd=REPO,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    state_file = data_dir / "stack.json"
    deadline = time.monotonic() + 150
    while not state_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"`leadflow up` did not come up:\n{output_path.read_text()[-4000:]}")
        time.sleep(0.2)
    state = json.loads(state_file.read_text())
    admin_key = Path(state["admin_key_file"]).read_text().strip()
    return Stack(process, state, admin_key, output_path, env)


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited; only its parent has not read its status yet.
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "State:\tZ" not in status.read_text()


def eventually(probe: Callable[[], T], accept: Callable[[T], bool], timeout_s: float = 30) -> T:
    deadline = time.monotonic() + timeout_s
    value = probe()
    while not accept(value):
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {timeout_s}s; last: {value!r}")
        time.sleep(0.1)
        value = probe()
    return value


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "data"
    yield path


def ready(client: httpx.Client) -> bool:
    try:
        return client.get("/readyz").status_code == 200
    except httpx.TransportError:
        return False


def summary(stack: Stack) -> dict[str, Any]:
    with stack.client("analytics") as analytics:
        response = analytics.get("/v1/reports/summary")
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body


def set_up_routing(stack: Stack) -> None:
    """Two reps and a default pool holding both."""
    with stack.client("assignment") as assignment:
        for rep_id in ("rep-a", "rep-b"):
            created = assignment.post("/v1/reps", json={"rep_id": rep_id, "name": rep_id})
            assert created.status_code == 201, created.text
        pool = assignment.post(
            "/v1/pools",
            json={
                "pool_id": "everyone",
                "name": "Everyone",
                "rep_ids": ["rep-a", "rep-b"],
                "is_default": True,
                "priority": 0,
            },
        )
        assert pool.status_code == 201, pool.text


def test_a_lead_flows_through_all_four_services_and_survives_a_restart(data_dir: Path) -> None:
    env = stack_environment(data_dir)
    stack = start_stack(env, data_dir, run=1)
    try:
        assert stack.state["kafka_storage"] in {"seaweedfs", "memory"}
        set_up_routing(stack)

        # A service that dies is restarted by the supervisor.
        killed = stack.state["services"]["nurture"]["pid"]
        os.kill(killed, signal.SIGKILL)
        stack.state = eventually(
            lambda: json.loads((data_dir / "stack.json").read_text()),
            lambda state: state["services"]["nurture"]["pid"] != killed,
        )
        with stack.client("nurture") as nurture:
            eventually(lambda: ready(nurture), bool)

        before = summary(stack)
        with stack.client("intake") as intake:
            posted = intake.post(
                "/v1/leads",
                json={
                    "name": "Dana Kim",
                    "phone": f"+1415555{uuid.uuid4().int % 10_000:04d}",
                    "channel": "web_form",
                    "consent": {"email": True},
                },
            )
        assert posted.status_code == 201, posted.text
        lead_id = posted.json()["lead_id"]

        with stack.client("assignment") as assignment:
            lead = eventually(
                lambda: assignment.get(f"/v1/leads/{lead_id}"),
                lambda r: r.status_code == 200 and r.json()["status"] == "assigned",
            ).json()
            assert lead["rep_id"] in {"rep-a", "rep-b"}
        # Analytics reads each topic in order but not the topics in step with each other,
        # so the two counts may land in either order.
        eventually(
            lambda: summary(stack),
            lambda s: (
                s["leads_assigned"] == before["leads_assigned"] + 1
                and s["leads_received"] == before["leads_received"] + 1
            ),
        )

        with stack.client("assignment") as assignment:
            lost = assignment.post(
                f"/v1/leads/{lead_id}/lost", json={"level": 2, "reason": "bought elsewhere"}
            )
            assert lost.status_code == 200, lost.text
        with stack.client("nurture") as nurture:
            enrollment = eventually(
                lambda: nurture.get(f"/v1/enrollments/{lead_id}"),
                lambda r: r.status_code == 200,
            ).json()
            assert enrollment["sequence_id"] == "loss-level-2"
        after_loss = eventually(
            lambda: summary(stack),
            lambda s: (
                s["leads_enrolled"] == before["leads_enrolled"] + 1
                and s["leads_lost"] == before["leads_lost"] + 1
            ),
        )

        stack.state = json.loads((data_dir / "stack.json").read_text())
        assert stack.interrupt() == 0
    finally:
        if stack.process.poll() is None:
            stack.process.kill()
    leftovers = [pid for pid in stack.pids() if process_exists(pid)]
    assert leftovers == [], f"processes left behind: {leftovers}"

    again = start_stack(env, data_dir, run=2)
    try:
        assert again.admin_key == stack.admin_key
        with again.client("intake") as intake:
            assert intake.get(f"/v1/leads/{lead_id}").status_code == 200
        with again.client("assignment") as assignment:
            assert assignment.get(f"/v1/leads/{lead_id}").json()["status"] == "nurturing"
        # Nothing is counted twice after the restart, and new leads still flow.
        with again.client("intake") as intake:
            second = intake.post("/v1/leads", json={"email": f"{uuid.uuid4().hex}@example.com"})
        assert second.status_code == 201
        final = eventually(
            lambda: summary(again),
            lambda s: (
                s["leads_assigned"] == after_loss["leads_assigned"] + 1
                and s["leads_received"] == after_loss["leads_received"] + 1
            ),
        )
        assert final["leads_enrolled"] == after_loss["leads_enrolled"]
        assert final["leads_lost"] == after_loss["leads_lost"]
        assert again.interrupt() == 0
    finally:
        if again.process.poll() is None:
            again.process.kill()
    leftovers = [pid for pid in again.pids() if process_exists(pid)]
    assert leftovers == [], f"processes left behind: {leftovers}"
