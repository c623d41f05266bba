"""Intake's use cases: the steps of each flow, between the entrypoints and the store.

Every channel ends in `AcceptSubmissions` (a batch, one transaction) or, for one lead per
HTTP request, in `AcceptLeads` behind the group commit (concurrent requests share one
transaction). See `AcceptSubmissions.__call__` for the entry point other channels use.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal
from uuid import uuid4

import structlog
from prometheus_client import Histogram

from services.intake.models import Submission
from services.intake.rules import (
    Acceptance,
    AcceptancePlan,
    ContactKind,
    FieldError,
    IdealCustomerProfile,
    LeadRejected,
    NewLead,
    clean_submission,
    contact_keys,
    plan_acceptance,
)
from services.intake.store import AcceptingBatch, ContactKeyTaken, IntakeStore
from shared.events import Event

log = structlog.get_logger(__name__)

ACCEPT_BATCH_SIZE = Histogram(
    "leadflow_intake_accept_batch_size",
    "Leads accepted per transaction",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)

MAX_ATTEMPTS = 5
"""Accepting a batch again after a concurrent accept took one of its contact keys finds that
key and merges; more than a few such races in a row would mean something else is wrong."""

MAX_BATCH = 1000
"""Most submissions accepted in one transaction; `AcceptSubmissions` splits longer lists."""

IcpSource = Callable[[], Awaitable[IdealCustomerProfile]]


async def no_icp() -> IdealCustomerProfile:
    return IdealCustomerProfile()


class AcceptLeads:
    """Store new leads and merge repeat inquiries, a whole batch in one transaction."""

    def __init__(
        self,
        store: IntakeStore,
        *,
        icp: IcpSource = no_icp,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> None:
        self._store = store
        self._icp = icp
        self._max_attempts = max_attempts

    async def __call__(self, leads: Sequence[NewLead]) -> list[Acceptance | LeadRejected]:
        """What became of each lead, in order: received, merged, duplicate, or rejected
        (that lead only)."""
        if not leads:
            return []
        icp = await self._icp()

        async def accept(batch: AcceptingBatch) -> tuple[AcceptancePlan, Sequence[Event]]:
            # One look-up per collection for the whole batch.
            external = {lead.external_id for lead in leads if lead.external_id is not None}
            seen = await batch.seen_external_ids(external)
            keys = {key for lead in leads for key in contact_keys(lead.contact)}
            owners = await batch.key_owners(keys)
            known = await batch.known(set(owners.values()))
            if dangling := set(owners.values()) - known.keys():
                log.warning("contact keys point at no stored lead", lead_ids=sorted(dangling))
            plan = plan_acceptance(leads, owners, known, seen_external_ids=seen, icp=icp)
            await batch.save(plan)
            return plan, plan.events

        attempt = 1
        while True:
            try:
                plan = await self._store.accept_batch(accept)
            except ContactKeyTaken as taken:
                if attempt >= self._max_attempts:
                    raise
                # Another replica accepted the same contact meanwhile: now it is found.
                log.info(
                    "contact key taken by a concurrent accept; accepting the batch again",
                    attempt=attempt,
                    leads=len(leads),
                    error=str(taken),
                )
                attempt += 1
                continue
            ACCEPT_BATCH_SIZE.observe(len(leads))
            return list(plan.outcomes)


ItemOutcome = Literal["created", "merged", "duplicate", "rejected"]


@dataclass(frozen=True, slots=True)
class ItemResult:
    """What became of one submission of a batch."""

    index: int
    """Its position in the list given."""
    outcome: ItemOutcome
    lead_id: str | None = None
    """The lead created, merged into, or (duplicate) that the same external id went to."""
    matched_on: ContactKind | None = None
    """For a merge: the contact detail it matched on."""
    errors: tuple[FieldError, ...] = ()
    """For a rejection: every bad field (`FieldError.field` names the Submission field,
    e.g. "phone", "email") and why."""


class AcceptSubmissions:
    """The batch entry point every channel uses (JSON batch, forms, desk, Meta, Google, CSV).

    ```python
    accept: AcceptSubmissions = request.app.state.accept_submissions
    results: list[ItemResult] = await accept(submissions, default_region="KR")
    ```

    - `submissions`: `Sequence[Submission]` (services/intake/models.py), already mapped from
      the channel's payload; raw values are fine (phones as typed, emails with capitals).
      Set `channel`, `source`, `form_id`, `ad_platform`, `ad_ids`, `is_test`, `received_at`
      and, for webhooks and imports, `external_id` ("meta:<leadgen_id>", "google:<lead_id>",
      "csv:<import_id>:<line>"): a submission whose `external_id` was accepted before is a
      `duplicate` and changes nothing, so retries and resumed imports are safe.
    - `default_region`: region for phones without +<code> when the submission names none
      (a form's or source's); the service's `default_region` setting when None.
    - returns one `ItemResult` per submission, in order: `created` / `merged` (with
      `matched_on`) / `duplicate` / `rejected` (with `errors`: every bad field and why).
      A rejected item never stops the others.
    - up to `MAX_BATCH` (1,000) submissions go in one transaction: one look-up per
      collection for the whole batch, bulk writes, events in the outbox with the change.
      Longer lists are accepted in consecutive transactions of `MAX_BATCH`.
    - raises only for outages (the database unreachable: nothing of the failing transaction
      was stored; the caller may retry the whole list, external ids make that safe).
    """

    def __init__(
        self,
        accept_leads: AcceptLeads,
        *,
        default_region: str,
        clock: Callable[[], datetime],
    ) -> None:
        self._accept_leads = accept_leads
        self._default_region = default_region
        self._clock = clock

    async def __call__(
        self, submissions: Sequence[Submission], *, default_region: str | None = None
    ) -> list[ItemResult]:
        results: list[ItemResult] = []
        for start in range(0, len(submissions), MAX_BATCH):
            chunk = submissions[start : start + MAX_BATCH]
            results.extend(await self._accept_chunk(chunk, start, default_region))
        return results

    async def _accept_chunk(
        self, submissions: Sequence[Submission], offset: int, default_region: str | None
    ) -> list[ItemResult]:
        now = self._clock()
        region = default_region or self._default_region
        cleaned: list[NewLead | list[FieldError]] = [
            clean_submission(s, lead_id=uuid4().hex, now=now, default_region=region)
            for s in submissions
        ]
        valid = [lead for lead in cleaned if isinstance(lead, NewLead)]
        outcomes = iter(await self._accept_leads(valid))
        results: list[ItemResult] = []
        for index, lead in enumerate(cleaned, start=offset):
            if isinstance(lead, list):
                results.append(ItemResult(index, "rejected", errors=tuple(lead)))
            else:
                results.append(item_result(index, next(outcomes)))
        return results


def item_result(index: int, outcome: Acceptance | LeadRejected) -> ItemResult:
    if isinstance(outcome, LeadRejected):
        return ItemResult(index, "rejected", errors=(FieldError(outcome.field, outcome.reason),))
    kind: ItemOutcome = "created" if outcome.outcome == "received" else outcome.outcome
    return ItemResult(index, kind, outcome.lead_id, outcome.matched_on)
