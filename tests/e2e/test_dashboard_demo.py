"""`leadflow demo` against a stack started as `leadflow up` starts it: every lead it posts
is counted by analytics, the sales floor's work shows in the reports, and the dashboard
page is served."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_stack import REPO, eventually, stack_environment, start_stack

pytestmark = pytest.mark.e2e

LEADS = 40


def test_demo_fills_the_dashboard_through_the_running_stack(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = stack_environment(data_dir)
    stack = start_stack(env, data_dir, run=1)
    try:
        demo = subprocess.run(
            [sys.executable, "-m", "leadflow", "demo", "--leads", str(LEADS)],
            cwd=REPO,
            env={**env, "COLUMNS": "120"},
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
    finally:
        assert stack.interrupt() == 0
