"""The ad webhooks' flows: keep what a platform delivered, then (in the background, one
replica per lead) fetch its answers if needed and put it through intake's batch accept."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import structlog
from prometheus_client import Counter

from leadflow.chassis.clock import Clock
from leadflow.chassis.duework import ClaimedWork
from leadflow.chassis.store import Document
from services.intake.webhooks.graph import GraphError
from services.intake.webhooks.rules import (
    GoogleLead,
    MetaLeadNotice,
    PayloadError,
    map_google_lead,
    map_meta_lead,
    retry_delay,
)
from services.intake.webhooks.store import (
    AdDelivery,
    AdLeadSettlement,
    AdLeadStore,
    ad_lead_of,
)
from services.intake.webhooks.submissions import MappedLead, SubmissionResult

log = structlog.get_logger(__name__)

AD_LEADS = Counter(
    "leadflow_intake_ad_leads_total",
    "Ad-platform leads by platform and what became of them",
    ["platform", "outcome"],
)
AD_LEAD_FETCH_FAILURES = Counter(
    "leadflow_intake_ad_lead_fetch_failures_total",
    "Graph API fetches that failed and will be retried",
)


class LeadSource(Protocol):
    """Where a Meta lead's answers come from (the Graph API)."""

    async def lead(self, leadgen_id: str) -> Mapping[str, Any]: ...


Submit = Callable[[Sequence[MappedLead]], Awaitable[list[SubmissionResult]]]


class RecordAdLeads:
    """Keep delivered leads (a retry of a known one changes nothing) and wake the fetcher."""

    def __init__(self, store: AdLeadStore, clock: Clock, wake: Callable[[], None]) -> None:
        self._store = store
        self._clock = clock
        self._wake = wake

    async def __call__(self, deliveries: Sequence[AdDelivery]) -> list[str]:
        new = await self._store.record(deliveries, self._clock())
        if new:
            self._wake()
        return new


def meta_delivery(notice: MetaLeadNotice, received_at: datetime) -> AdDelivery:
    return AdDelivery(
        platform="meta",
        external_id=notice.leadgen_id,
        received_at=received_at,
        delivery={
            "leadgen_id": notice.leadgen_id,
            "page_id": notice.page_id,
            "form_id": notice.form_id,
            "ad_id": notice.ad_id,
            "adgroup_id": notice.adgroup_id,
        },
    )


def google_delivery(lead: GoogleLead, received_at: datetime) -> AdDelivery:
    return AdDelivery(
        platform="google",
        external_id=lead.lead_id,
        received_at=received_at,
        delivery={
            "lead_id": lead.lead_id,
            "form_id": lead.form_id,
            "columns": [list(column) for column in lead.columns],
            "campaign_id": lead.campaign_id,
            "adgroup_id": lead.adgroup_id,
            "creative_id": lead.creative_id,
            "asset_group_id": lead.asset_group_id,
            "gcl_id": lead.gcl_id,
            "lead_submit_time": lead.lead_submit_time,
            "lead_stage": lead.lead_stage,
            "api_version": lead.api_version,
            "is_test": lead.is_test,
        },
        is_test=lead.is_test,
    )


def _google_lead_of(delivery: Mapping[str, Any]) -> GoogleLead:
    return GoogleLead(
        lead_id=delivery["lead_id"],
        form_id=delivery["form_id"],
        google_key=None,
        columns=tuple((c[0], c[1], c[2]) for c in delivery.get("columns", [])),
        campaign_id=delivery.get("campaign_id"),
        adgroup_id=delivery.get("adgroup_id"),
        creative_id=delivery.get("creative_id"),
        asset_group_id=delivery.get("asset_group_id"),
        gcl_id=delivery.get("gcl_id"),
        lead_submit_time=delivery.get("lead_submit_time"),
        lead_stage=delivery.get("lead_stage"),
        api_version=delivery.get("api_version"),
        is_test=bool(delivery.get("is_test", False)),
    )


def _meta_notice_of(delivery: Mapping[str, Any]) -> MetaLeadNotice:
    return MetaLeadNotice(
        leadgen_id=delivery["leadgen_id"],
        page_id=delivery.get("page_id"),
        form_id=delivery.get("form_id"),
        ad_id=delivery.get("ad_id"),
        adgroup_id=delivery.get("adgroup_id"),
    )


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base_s: float
    max_s: float
    max_attempts: int


class SettleAdLeads:
    """The due-work `fire` of pending ad leads: fetch Meta answers (a Graph error puts that
    lead back with exponential back-off; it stays stored), map each lead, accept the batch
    through intake, then record the outcomes and finish the work in one transaction."""

    def __init__(
        self,
        store: AdLeadStore,
        graph: LeadSource,
        submit: Submit,
        clock: Clock,
        retry: RetryPolicy,
        *,
        fetch_concurrency: int = 8,
    ) -> None:
        self._store = store
        self._graph = graph
        self._submit = submit
        self._clock = clock
        self._retry = retry
        self._fetch_limit = asyncio.Semaphore(fetch_concurrency)

    async def __call__(self, batch: list[ClaimedWork]) -> None:
        claimed = {ad_lead_of(item.work.key): item for item in batch}
        pending = await self._store.pending(claimed.keys())
        # Work whose lead is no longer pending was settled already: just finish it.
        done = [item for key, item in claimed.items() if key not in pending]
        mapped: list[tuple[str, MappedLead]] = []
        failed: list[tuple[ClaimedWork, str]] = []
        fetched = await asyncio.gather(*(self._map(doc) for doc in pending.values()))
        for key, fetch in zip(pending, fetched, strict=True):
            if isinstance(fetch, str):
                failed.append((claimed[key], fetch))
                await self._store.note_failure(key, fetch, self._clock())
                log.warning(
                    "ad lead not fetched; retrying later",
                    ad_lead=key,
                    attempts=claimed[key].attempts + 1,
                    error=fetch,
                )
            else:
                mapped.append((key, fetch))
        settlements: list[AdLeadSettlement] = []
        if mapped:
            results = await self._submit([m for _, m in mapped])
            for (key, lead), result in zip(mapped, results, strict=True):
                settlements.append(_settlement(key, result))
                AD_LEADS.labels(lead.attribution.ad_platform or "?", result.outcome).inc()
                done.append(claimed[key])
        if settlements or done:
            await self._store.settle(settlements, done, self._clock())
        await self._retry_failed(failed)

    async def _map(self, doc: Document) -> MappedLead | str:
        delivery = doc["delivery"]
        if doc["platform"] == "google":
            return map_google_lead(_google_lead_of(delivery), received_at=doc["received_at"])
        notice = _meta_notice_of(delivery)
        try:
            async with self._fetch_limit:
                lead = await self._graph.lead(notice.leadgen_id)
            return map_meta_lead(lead, notice, received_at=doc["received_at"])
        except PayloadError as error:
            AD_LEAD_FETCH_FAILURES.inc()
            return f"unexpected Graph answer: {error}"
        except GraphError as error:
            AD_LEAD_FETCH_FAILURES.inc()
            return str(error)

    async def _retry_failed(self, failed: Sequence[tuple[ClaimedWork, str]]) -> None:
        by_attempts: dict[int, list[ClaimedWork]] = defaultdict(list)
        now = self._clock()
        for item, error in failed:
            if item.attempts + 1 >= self._retry.max_attempts:
                log.error("ad lead parked after its last fetch attempt", key=item.work.key)
                await self._store.give_up([item], error, now)
            else:
                by_attempts[item.attempts].append(item)
        for attempts, items in by_attempts.items():
            delay = retry_delay(attempts, base_s=self._retry.base_s, max_s=self._retry.max_s)
            await self._store.retry_later(items, now + delay)


def _settlement(key: str, result: SubmissionResult) -> AdLeadSettlement:
    return AdLeadSettlement(
        key=key,
        # A duplicate: intake took this platform lead before (a retry after a crash).
        status="rejected" if result.outcome == "rejected" else "accepted",
        outcome=result.outcome,
        lead_id=result.lead_id,
        reasons=result.reasons,
    )
