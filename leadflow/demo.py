"""`leadflow demo`: a month of a sales floor driven through the running stack over HTTP.

Reps and pools are set up in assignment, campaigns in intake (when its API has them), then
leads arrive on every channel through intake's `POST /v1/leads`; once assignment has routed
each one, reps call, book and check in visits (reserved and walk-in), record next-day
satisfaction, sell (two currencies, some with an opportunity) or mark leads lost at each
level. Only public HTTP endpoints are used: what a user could do with curl. The services
stamp everything with the time it happens, so the "month" lands in today's report.

Endpoints are looked up in each service's `/openapi.json` first: a step whose endpoint a
service does not have (yet) is skipped and said so, and every refused request is counted
and shown at the end rather than stopping the run.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import structlog
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

log = structlog.get_logger(__name__)

REPS = (("rita", "Rita Park"), ("minho", "Minho Lee"), ("jun", "Jun Choi"), ("sora", "Sora Kim"))
POOLS = (
    ("front-desk", "Front desk", ("rita", "minho"), True),
    ("online", "Online", ("jun", "sora", "rita"), False),
)
CHANNELS = (
    ("phone", "flyer", 0.25),
    ("web_form", "blog", 0.25),
    ("ad", "instagram", 0.2),
    ("walk_in", "banner", 0.15),
    ("referral", "member referral", 0.1),
    ("import", "fitness fair", 0.05),
)
CAMPAIGNS = (
    ("spring-promo", "Spring promo", "instagram", 900.0, "USD"),
    ("flyers-june", "June flyers", "flyer", 450000.0, "KRW"),
)
LOSS_REASONS = {1: "wrong number", 2: "joined another gym", 3: "busy, call in autumn"}
RETRIES = 5


@dataclass
class DemoConfig:
    intake_url: str
    assignment_url: str
    analytics_url: str
    nurture_url: str
    api_key: str
    leads: int = 120
    seed: int = 2026
    concurrency: int = 8
    assign_timeout_s: float = 60.0


@dataclass
class DemoResult:
    leads_posted: int = 0
    leads_assigned: int = 0
    actions: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    skipped: list[str] = field(default_factory=list)


@dataclass
class _Lead:
    lead_id: str
    channel: str
    rep_id: str | None = None


class _Api:
    """One service's HTTP API: calls counted, refusals recorded, never raised."""

    def __init__(self, client: httpx.AsyncClient, name: str, result: DemoResult) -> None:
        self.client = client
        self.name = name
        self.result = result
        self.paths: set[str] = set()

    async def load_paths(self) -> None:
        response = await self.client.get("/openapi.json")
        if response.status_code == 200:
            self.paths = set(response.json().get("paths", {}))

    def has(self, path: str) -> bool:
        return path in self.paths

    async def call(
        self, method: str, path: str, what: str, *, ok: tuple[int, ...] = (200, 201, 202), **kw: Any
    ) -> httpx.Response | None:
        for attempt in range(1, RETRIES + 1):
            try:
                response = await self.client.request(method, path, **kw)
            except httpx.HTTPError as error:
                self.result.refused[f"{self.name} {what}: {type(error).__name__}"] += 1
                return None
            if response.status_code in ok:
                self.result.actions[what] += 1
                return response
            if response.status_code != 503 or attempt == RETRIES:
                break
            # Busy or briefly without its database: the service says when to come back.
            await asyncio.sleep(min(float(response.headers.get("retry-after", 1)), 2.0))
        self.result.refused[f"{self.name} {what}: {response.status_code}"] += 1
        log.debug("demo request refused", service=self.name, what=what, body=response.text[:300])
        return None


async def wait_ready(clients: dict[str, httpx.AsyncClient], timeout_s: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    for name, client in clients.items():
        while True:
            try:
                if (await client.get("/readyz")).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(
                    f"{name} at {client.base_url} is not ready; is `leadflow up` running?"
                )
            await asyncio.sleep(0.5)


async def run_demo(  # noqa: PLR0915 - the demo's phases, one after another
    config: DemoConfig, progress: Progress | None = None
) -> DemoResult:
    rng = random.Random(config.seed)  # noqa: S311 - demo data, not secrets
    result = DemoResult()
    headers = {"X-API-Key": config.api_key}
    timeout = httpx.Timeout(30.0)
    async with (
        httpx.AsyncClient(base_url=config.intake_url, headers=headers, timeout=timeout) as i_c,
        httpx.AsyncClient(base_url=config.assignment_url, headers=headers, timeout=timeout) as a_c,
        httpx.AsyncClient(base_url=config.analytics_url, headers=headers, timeout=timeout) as r_c,
    ):
        await wait_ready({"intake": i_c, "assignment": a_c, "analytics": r_c})
        intake = _Api(i_c, "intake", result)
        assignment = _Api(a_c, "assignment", result)
        await intake.load_paths()
        await assignment.load_paths()
        gate = asyncio.Semaphore(config.concurrency)

        def task(label: str, total: int) -> Callable[[], None]:
            if progress is None:
                return lambda: None
            handle = progress.add_task(label, total=total)
            return lambda: progress.advance(handle)

        # 1. reps, pools, campaigns
        setup = task("reps, pools, campaigns", len(REPS) + len(POOLS) + len(CAMPAIGNS))
        for rep_id, name in REPS:
            await assignment.call(
                "POST", "/v1/reps", "rep", json={"rep_id": rep_id, "name": name}, ok=(200, 201, 409)
            )
            setup()
        for pool_id, name, rep_ids, default in POOLS:
            body = {
                "pool_id": pool_id,
                "name": name,
                "rep_ids": list(rep_ids),
                "is_default": default,
            }
            await assignment.call("POST", "/v1/pools", "pool", json=body, ok=(200, 201, 409))
            setup()
        for campaign_id, name, channel, cost, currency in CAMPAIGNS:
            today = datetime.now(UTC).date()
            body = {
                "campaign_id": campaign_id,
                "name": name,
                "channel": channel,
                "cost": cost,
                "currency": currency,
                "starts_on": today.replace(day=1).isoformat(),
                "ends_on": (today.replace(day=1) + timedelta(days=40)).isoformat(),
            }
            await _save_campaign(intake, campaign_id, body, result)
            setup()

        # 2. leads from every channel
        arrive = task("leads arriving", config.leads)
        leads: list[_Lead] = []

        async def post_lead(n: int) -> None:
            channel, source = _pick_channel(rng)
            campaign = None
            if channel == "ad":
                campaign = CAMPAIGNS[0][0]
            elif channel == "phone" and rng.random() < 0.5:
                campaign = CAMPAIGNS[1][0]
            body: dict[str, Any] = {
                "name": f"Demo Customer {n}",
                "phone": f"+8210{rng.randrange(10_000_000, 99_999_999)}",
                "source": source,
                "channel": channel,
                "message": "interested in a membership",
            }
            if channel != "walk_in" or rng.random() < 0.6:
                body["email"] = f"demo{n}.{rng.randrange(10**6)}@example.com"
            if campaign:
                body["campaign"] = campaign
            async with gate:
                response = await intake.call("POST", "/v1/leads", "lead", json=body)
            if response is not None and response.json().get("status") == "received":
                leads.append(_Lead(response.json()["lead_id"], channel))
            arrive()

        await asyncio.gather(*(post_lead(n) for n in range(config.leads)))
        result.leads_posted = len(leads)

        # 3. routed by assignment
        routed = task("routed to reps", len(leads))
        deadline = asyncio.get_running_loop().time() + config.assign_timeout_s

        async def wait_assigned(lead: _Lead) -> None:
            while asyncio.get_running_loop().time() < deadline:
                async with gate:
                    response = await a_c.get(f"/v1/leads/{lead.lead_id}")
                if response.status_code == 200 and response.json().get("rep_id"):
                    lead.rep_id = response.json()["rep_id"]
                    break
                await asyncio.sleep(0.5)
            routed()

        await asyncio.gather(*(wait_assigned(lead) for lead in leads))
        assigned = [lead for lead in leads if lead.rep_id]
        result.leads_assigned = len(assigned)

        # 4. the sales floor works the leads
        work = task("calls, visits, sales, losses", len(assigned))

        async def work_lead(lead: _Lead) -> None:
            async with gate:
                await _work_lead(assignment, lead, rng)
            work()

        await asyncio.gather(*(work_lead(lead) for lead in assigned))
    return result


async def _save_campaign(
    intake: _Api, campaign_id: str, body: dict[str, Any], result: DemoResult
) -> None:
    if intake.has("/v1/campaigns/{campaign_id}"):
        await intake.call("PUT", f"/v1/campaigns/{campaign_id}", "campaign", json=body)
    elif intake.has("/v1/campaigns"):
        await intake.call("POST", "/v1/campaigns", "campaign", json=body, ok=(200, 201, 409))
    elif "campaigns" not in " ".join(result.skipped):
        result.skipped.append(
            "campaigns: intake has no campaign endpoint yet (costs, CPL, ROI empty)"
        )


def _pick_channel(rng: random.Random) -> tuple[str, str]:
    roll, total = rng.random(), 0.0
    for channel, source, share in CHANNELS:
        total += share
        if roll < total:
            return channel, source
    return CHANNELS[0][0], CHANNELS[0][1]


async def _work_lead(api: _Api, lead: _Lead, rng: random.Random) -> None:  # noqa: PLR0912
    """One lead's month: a first call, perhaps a visit (booked or walk-in), a next-day
    satisfaction callback, then a sale or a loss (or still open)."""
    base = f"/v1/leads/{lead.lead_id}"
    roll = rng.random()
    if roll < 0.08:
        return  # never called back: an open, overdue lead
    outcome = "wrong_number" if roll < 0.14 else ("no_answer" if roll < 0.24 else "reached")
    await api.call("POST", f"{base}/activities", "call", json={"kind": "call", "outcome": outcome})
    if outcome == "wrong_number":
        await api.call("POST", f"{base}/lost", "lost", json={"level": 1, "reason": LOSS_REASONS[1]})
        return
    if outcome == "no_answer":
        await api.call("POST", f"{base}/activities", "sms", json={"kind": "sms", "note": "texted"})
        if rng.random() < 0.5:
            await api.call(
                "POST", f"{base}/lost", "lost", json={"level": 3, "reason": LOSS_REASONS[3]}
            )
        return
    visit_id = None
    if lead.channel != "walk_in":
        if rng.random() < 0.35:
            level = rng.choice((2, 3))
            await api.call(
                "POST", f"{base}/lost", "lost", json={"level": level, "reason": LOSS_REASONS[level]}
            )
            return
        when = (datetime.now(UTC) + timedelta(days=1)).isoformat()
        response = await api.call(
            "POST", f"{base}/visits", "visit booked", json={"scheduled_for": when}
        )
        if response is None:
            return
        visits = response.json().get("visits") or []
        visit_id = visits[-1]["visit_id"] if visits else None
        if rng.random() < 0.15:
            return  # booked, not come yet
    checked = await api.call(
        "POST", f"{base}/check-in", "check-in", json={"visit_id": visit_id} if visit_id else {}
    )
    if checked is not None:
        visits = checked.json().get("visits") or []
        if visits:
            score = rng.choice((6, 7, 8, 9, 9, 10, 10, 10))
            await api.call(
                "POST",
                f"{base}/visits/{visits[-1]['visit_id']}/satisfaction",
                "satisfaction",
                json={"score": score},
            )
    if rng.random() < 0.55:
        krw = rng.random() < 0.3
        body: dict[str, Any] = {
            "customer_id": f"M-{rng.randrange(10_000, 99_999)}",
            "revenue": float(rng.choice((590000, 890000)))
            if krw
            else float(rng.choice((399, 699, 990))),
            "currency": "KRW" if krw else "USD",
            "plan": rng.choice(("3m", "6m", "12m")),
        }
        if rng.random() < 0.5:
            body["opportunity"] = {
                "opportunity_id": f"o-{lead.lead_id[-8:]}",
                "amount": body["revenue"],
                "stage": "proposal",
            }
        await api.call("POST", f"{base}/convert", "sale", json=body)
    elif rng.random() < 0.5:
        await api.call("POST", f"{base}/lost", "lost", json={"level": 2, "reason": LOSS_REASONS[2]})


def demo_progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )


async def wait_for_reports(
    analytics_url: str, api_key: str, want_leads: int, *, timeout_s: float = 60.0
) -> dict[str, Any]:
    """The month's summary once analytics has counted the demo's leads (or at the timeout)."""
    async with httpx.AsyncClient(base_url=analytics_url, headers={"X-API-Key": api_key}) as client:
        deadline = asyncio.get_running_loop().time() + timeout_s
        body: dict[str, Any] = {}
        while asyncio.get_running_loop().time() < deadline:
            response = await client.get(
                "/v1/reports/summary", params={"month": datetime.now(UTC).strftime("%Y-%m")}
            )
            if response.status_code == 200:
                body = response.json()
                if body["figures"]["leads_received"] >= want_leads:
                    return body
            await asyncio.sleep(1.0)
        return body
