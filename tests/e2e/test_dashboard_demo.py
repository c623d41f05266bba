"""`leadflow up` as a new user meets it: the mail and SMS sinks it starts answer a text
through nurture's signed webhook, and `leadflow demo` against the running stack has every
lead it posts counted by analytics, the sales floor's work in the reports and the dashboard
page served. One stack (in memory) for the module."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_stack import (
    REPO,
    Stack,
    eventually,
    process_exists,
    stack_environment,
    start_stack,
)

pytestmark = pytest.mark.e2e

LEADS = 40


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("up") / "data"
    env = stack_environment(data_dir)
    env["LEADFLOW_PERSISTENT"] = "false"
    running = start_stack(env, data_dir, run=1)
    try:
        yield running
    finally:
        if running.process.poll() is None:
            assert running.interrupt() == 0
    assert not any(process_exists(pid) for pid in running.pids())


def test_up_starts_the_sinks_and_nurture_answers_a_text_through_them(stack: Stack) -> None:
    page_url = stack.state["sinks_page"]
    assert page_url == f"http://127.0.0.1:{stack.env['LEADFLOW_SINKS_HTTP_PORT']}/"
    assert "sinks (mail + SMS)" in stack.state["infra"]
    with httpx.Client(base_url=page_url, timeout=20) as sinks:
        assert "Messages leadflow" in sinks.get("/").text
        # A lead texts HELP: the fake provider signs it with the auth token nurture was
        # given and posts it to nurture's public URL; nurture verifies and answers.
        answered = sinks.post(
            "/sink/sms/inbound",
            data={"From": "+821012345678", "Body": "HELP"},
            headers={"Accept": "application/json"},
        )
        assert answered.status_code == 200, answered.text
        body = answered.json()
        assert body["webhook_status"] == 200
        assert body["replies"] and "STOP" in body["replies"][0]
        listed = sinks.get("/sink/sms").json()
    assert [(m["direction"], m["body"]) for m in listed][-2:] == [
        ("inbound", "HELP"),
        ("reply", body["replies"][0]),
    ]
    assert "emails and texts nurture" in stack.output_path.read_text()


def test_demo_fills_the_dashboard_through_the_running_stack(stack: Stack, tmp_path: Path) -> None:
    demo = subprocess.run(
        [sys.executable, "-m", "leadflow", "demo", "--leads", str(LEADS)],
        cwd=REPO,
        env={**stack.env, "COLUMNS": "120"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    (tmp_path / "demo.txt").write_text(demo.stdout + demo.stderr)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "leads posted" in demo.stdout
    assert "/dashboard#key=" in demo.stdout

    with stack.client("analytics") as analytics:

        def monthly() -> dict[str, int]:
            figures: dict[str, int] = analytics.get("/v1/reports/monthly").json()["figures"]
            return figures

        # Every lead the demo posted is a new lead this month (repeats are merged).
        figures = eventually(monthly, lambda f: f["new_leads"] >= LEADS * 0.9, timeout_s=60)
        assert figures["phone_inquiries"] > 0 and figures["online_inquiries"] > 0
        reps = analytics.get("/v1/reports/reps").json()["tables"]["reps"]["rows"]
        assert sum(row["calls"] for row in reps) > 0
        work = eventually(
            lambda: analytics.get("/v1/reports/summary").json(),
            lambda s: s["leads_converted"] > 0 and s["leads_lost"] > 0,
            timeout_s=60,
        )
        assert work["leads_assigned"] >= LEADS * 0.9
        page = analytics.get("/dashboard")
        assert page.status_code == 200 and "chart.umd.min.js" in page.text
        assert httpx.get(f"{stack.url('analytics')}/dashboard/chart.umd.min.js").is_success
