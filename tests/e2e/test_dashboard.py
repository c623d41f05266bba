"""The dashboard in a real headless Chromium (Debian's `chromium`, driven by Playwright):
the scripted month is published to Kafka, analytics serves `/dashboard` over HTTP, and the
page must draw every chart with the scenario's numbers, show them in its tables, download
a table as CSV, and fetch nothing from anywhere but analytics itself (Chart.js is vendored).

`./dev test` installs `chromium` when /usr/bin/chromium is missing; this test never skips.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from playwright.async_api import Page, async_playwright

from leadflow.chassis.auth import Role
from leadflow.localinfra import free_port
from services.analytics.app import create_app
from services.analytics.settings import Settings
from tests.conftest import Keys
from tests.support.analytics_scenario import Scenario, build, expected, publish_all
from tests.support.infra import Infra
from tests.support.services import eventually, settings_for

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
MONTH = date(2026, 5, 1)
"""A month (and the month before it) no other test publishes events in: this analytics
reads every topic of the session's broker from the start."""
CHARTS = ("monthly", "channels", "campaigns", "reps", "speed", "losses", "walk-ins", "nurture")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
async def dashboard_url(infra: Infra, run_id: str) -> AsyncIterator[str]:
    """Analytics on a real port (a browser needs one), its own database and group."""
    fresh = uuid.uuid4().hex[:6]
    settings = settings_for(
        Settings,
        infra,
        run_id,
        database=f"leadflow_analytics_dash_{fresh}",
        consumer_group=f"leadflow-analytics-dash-{fresh}",
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    serving = asyncio.create_task(server.serve())
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url) as client:

            async def ready() -> int:
                with contextlib.suppress(httpx.HTTPError):
                    return (await client.get("/readyz")).status_code
                return 0

            await eventually(ready, lambda status: status == 200, timeout_s=60)
        yield url
    finally:
        server.should_exit = True
        await serving


async def wait_counted(url: str, key: str, scenario: Scenario) -> None:
    want = expected(scenario, datetime.now(UTC))["monthly"]
    async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": key}) as client:

        async def monthly() -> dict[str, Any]:
            response = await client.get("/v1/reports/monthly", params={"month": "2026-05"})
            figures: dict[str, Any] = response.json()["figures"]
            return figures

        await eventually(
            monthly,
            lambda f: f["inquiries"] == want["inquiries"] and f["sales"] == want["sales"],
            timeout_s=90,
            interval_s=1.0,
        )
        # Losses and nurture messages come on other topics: wait for them too.
        losses = expected(scenario, datetime.now(UTC))["losses"]["total"]

        async def lost() -> int:
            response = await client.get("/v1/reports/losses", params={"month": "2026-05"})
            return int(response.json()["figures"]["losses"])

        await eventually(lost, lambda n: n == losses, timeout_s=60, interval_s=1.0)


async def chart(page: Page, name: str) -> dict[str, Any]:
    drawn: dict[str, Any] = await page.evaluate(f"window.leadflow.charts[{name!r}]")
    return drawn


@pytest.fixture
def chromium() -> Path:
    assert CHROMIUM.exists(), "no /usr/bin/chromium: `./dev test` installs Debian's chromium"
    return CHROMIUM


async def test_the_dashboard_draws_the_month_in_a_real_browser(
    infra: Infra, keys: Keys, dashboard_url: str, chromium: Path, tmp_path: Path
) -> None:
    scenario = build(MONTH, f"d{uuid.uuid4().hex[:6]}")
    await publish_all(infra.kafka_bootstrap, scenario.events())
    key = await keys.for_role(Role.MANAGER)
    await wait_counted(dashboard_url, key, scenario)
    want = expected(scenario, datetime.now(UTC))

    requested: list[str] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(chromium), args=CHROMIUM_ARGS, headless=True
        )
        try:
            context = await browser.new_context(
                viewport={"width": 1400, "height": 1000}, accept_downloads=True
            )
            page = await context.new_page()
            page.on("request", lambda request: requested.append(request.url))
            await page.goto(f"{dashboard_url}/dashboard#key={key}&month=2026-05")
            await page.wait_for_function("window.leadflow.ready === true", timeout=30_000)
            assert await page.evaluate("window.leadflow.errors") == []

            # Every chart drew on its canvas.
            for name in CHARTS:
                painted = await page.evaluate(
                    """(name) => {
                        const canvas = document.getElementById(`chart-${name}`);
                        const data = canvas.getContext("2d")
                            .getImageData(0, 0, canvas.width, canvas.height).data;
                        let inked = 0;
                        for (let i = 3; i < data.length; i += 4) if (data[i] > 0) inked++;
                        return {width: canvas.width, inked};
                    }""",
                    name,
                )
                assert painted["width"] > 100 and painted["inked"] > 500, (name, painted)

            # ... with the scenario's numbers.
            monthly = await chart(page, "monthly")
            assert monthly["labels"][:3] == [
                "phone_inquiries",
                "online_inquiries",
                "walk_in_inquiries",
            ]
            this_month = dict(zip(monthly["labels"], monthly["datasets"][0]["data"], strict=True))
            for label, value in this_month.items():
                assert value == want["monthly"][label], label
            before = dict(zip(monthly["labels"], monthly["datasets"][1]["data"], strict=True))
            for label, value in before.items():
                assert value == want["monthly_previous"][label], label

            channels = await chart(page, "channels")
            inquiries = dict(zip(channels["labels"], channels["datasets"][0]["data"], strict=True))
            assert inquiries == {ch: f["inquiries"] for ch, f in want["channels"].items()}

            losses = await chart(page, "losses")
            assert losses["type"] == "doughnut"
            assert losses["datasets"][0]["data"] == [want["losses"]["by_level"][lv] for lv in "123"]

            funnel = await chart(page, "forecast")
            assert funnel["datasets"][0]["data"] == list(want["forecast"]["reached"].values())

            speed = await chart(page, "speed")
            by_bucket = dict(zip(speed["labels"], speed["datasets"][0]["data"], strict=True))
            assert {k: v for k, v in by_bucket.items() if v} == want["speed"]["distribution"]

            reps = await chart(page, "reps")
            calls = dict(zip(reps["labels"], reps["datasets"][0]["data"], strict=True))
            assert calls == {rep: f["calls"] for rep, f in want["reps"].items()}

            # The tables say the same.
            cell = page.locator(
                'table[data-table="monthly.figures"] tr:has(td:text-is("phone_inquiries")) '
                'td[data-column="this_period"]'
            )
            assert await cell.inner_text() == str(want["monthly"]["phone_inquiries"])
            retention = page.locator(
                'table[data-table="walk-ins.retention"] td[data-column="walk_in_leads"]'
            )
            assert await retention.inner_text() == str(want["walk_ins"]["walk_in_leads"])

            # Every table has a CSV download; the channels one holds the channels.
            buttons = page.locator("button.csv")
            tables = await page.locator("table[data-table]").count()
            in_reports = await page.evaluate(
                "Object.values(window.leadflow.reports)"
                ".reduce((n, r) => n + Object.keys(r.tables).length, 0)"
            )
            assert await buttons.count() == tables == in_reports >= 19
            async with page.expect_download() as download_info:
                await page.click('button.csv[data-report="channels"][data-table="channels"]')
            download = await download_info.value
            saved = tmp_path / "channels.csv"
            await download.save_as(saved)
            rows = {r["channel"]: r for r in csv.DictReader(io.StringIO(saved.read_text()))}
            for ch, figures in want["channels"].items():
                assert int(rows[ch]["inquiries"]) == figures["inquiries"], ch

            # A filter narrows the page: one rep.
            rep = scenario.reps[0]
            await page.fill("#rep", rep)
            await page.click("#load")
            await page.wait_for_function("window.leadflow.ready === true", timeout=30_000)
            narrowed = await chart(page, "reps")
            assert narrowed["labels"] == [rep]
            assert narrowed["datasets"][0]["data"] == [want["reps"][rep]["calls"]]

            await page.fill("#rep", "")
            await page.click("#load")
            await page.wait_for_function("window.leadflow.ready === true", timeout=30_000)
            screenshot = tmp_path / "dashboard.png"
            await page.screenshot(path=str(screenshot), full_page=True)
            assert screenshot.stat().st_size > 50_000
        finally:
            await browser.close()

    # Offline: nothing was fetched from anywhere but analytics (no CDN).
    outside = [
        url
        for url in requested
        if not url.startswith((dashboard_url, "blob:", "data:"))  # a blob: is the CSV itself
    ]
    assert outside == [], outside
    assert any(url.endswith("/dashboard/chart.umd.min.js") for url in requested)
