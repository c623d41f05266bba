"""Intake's use cases: the steps of each flow, between the entrypoints and the store.

Every channel ends in `AcceptSubmissions` (a batch, one transaction) or, for one lead per
HTTP request, in `AcceptLeads` behind the group commit (concurrent requests share one
transaction). See `AcceptSubmissions.__call__` for the entry point other channels use.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Literal
from uuid import uuid4

import structlog
from prometheus_client import Histogram
from pydantic import ValidationError

from leadflow.chassis.config_cache import VersionedCache
from leadflow.chassis.store import Document
from services.intake.models import (
    CampaignDefinition,
    FormDefinition,
    SourceDefinition,
    Submission,
)
from services.intake.rules import (
    Acceptance,
    AcceptancePlan,
    ContactKey,
    ContactKind,
    FieldError,
    IdealCustomerProfile,
    LeadRejected,
    NewLead,
    clean_submission,
    contact_keys,
    plan_acceptance,
    region_for,
)
from services.intake.store import (
    AcceptingBatch,
    ConfigKind,
    ContactKeyTaken,
    IntakeStore,
    StoredResponse,
)
from shared.events import CampaignSavedV1, Event, LeadConvertedV1

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


SourcesSource = Callable[[], Awaitable[Mapping[str, SourceDefinition]]]


async def no_sources() -> Mapping[str, SourceDefinition]:
    return {}


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
        # Accepts on one replica go one at a time: concurrent transactions would conflict
        # on the outbox sequence and one would start over (costly for a batch of 1,000).
        self._one_at_a_time = asyncio.Lock()

    async def __call__(self, leads: Sequence[NewLead]) -> list[Acceptance | LeadRejected]:
        """What became of each lead, in order: received, merged, duplicate, or rejected
        (that lead only)."""
        if not leads:
            return []
        icp = await self._icp()

        external = {lead.external_id for lead in leads if lead.external_id is not None}
        keys = {key for lead in leads for key in contact_keys(lead.contact)}
        found_before: Collection[ContactKey] = ()

        async def accept(batch: AcceptingBatch) -> tuple[AcceptancePlan, Sequence[Event]]:
            # One look-up per collection for the whole batch. Of the contact keys, only
            # those found before the transaction are read again in it (one may have been
            # freed by an erasure meanwhile); one stored meanwhile fails the insert of the
            # batch's new keys, and the batch is accepted again.
            seen = await batch.seen_external_ids(external)
            owners = await batch.key_owners(found_before)
            known = await batch.known(set(owners.values()))
            if dangling := set(owners.values()) - known.keys():
                log.warning("contact keys point at no stored lead", lead_ids=sorted(dangling))
            plan = plan_acceptance(leads, owners, known, seen_external_ids=seen, icp=icp)
            await batch.save(plan)
            return plan, plan.events

        attempt = 1
        while True:
            # Read outside the transaction, its chunks at once: most keys of a batch are
            # new, and a short transaction conflicts less and never nears its time limit.
            found_before = (await self._store.key_owners(keys)).keys()
            try:
                async with self._one_at_a_time:
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
      (a form's); when None, the region of the submission's source if one is configured
      (`PUT /v1/sources/{id}`), else the service's `default_region` setting.
    - returns one `ItemResult` per submission, in order: `created` / `merged` (with
      `matched_on`) / `duplicate` / `rejected` (with `errors`: every bad field and why).
      A rejected item never stops the others.
    - up to `MAX_BATCH` (1,000) submissions go in one transaction: one look-up per
      collection for the whole batch, bulk writes, events in the outbox with the change.
      Longer lists are accepted in consecutive transactions of `MAX_BATCH`.
    - raises only for outages (the database unreachable: nothing of the failing transaction
      was stored; the caller may retry the whole list, external ids make that safe) and,
      rarely, `ContactKeyTaken` when concurrent accepts on other replicas took this batch's
      contacts `MAX_ATTEMPTS` times in a row (nothing stored either; retry later).
    - accepts on one replica run one at a time (an `asyncio.Lock`), so a batch and the
      single-lead group commit never conflict with each other.
    """

    def __init__(
        self,
        accept_leads: AcceptLeads,
        *,
        default_region: str,
        clock: Callable[[], datetime],
        sources: SourcesSource = no_sources,
    ) -> None:
        self._accept_leads = accept_leads
        self._default_region = default_region
        self._clock = clock
        self._sources = sources

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
        sources = await self._sources()
        fallback = default_region or self._default_region
        cleaned: list[NewLead | list[FieldError]] = [
            clean_submission(
                s,
                lead_id=uuid4().hex,
                now=now,
                default_region=region_for(s, sources, fallback),
            )
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


# --- batches of raw documents (JSON batch, imports) -----------------------------------------


async def accept_documents(
    accept: AcceptSubmissions,
    documents: Sequence[object],
    *,
    default_region: str | None = None,
    request_id: str | None = None,
) -> list[ItemResult]:
    """Validate each document as a `Submission` and accept the valid ones as one batch;
    a document that is not a valid submission is `rejected` naming each bad field.

    With a `request_id` (the request's idempotency key), an item without an `external_id`
    gets `<request_id>:<index>`: a retry that finds no stored answer (the first attempt
    committed, then its process died) finds the items as `duplicate` instead of adding them
    again."""
    parsed: list[Submission | tuple[FieldError, ...]] = []
    for index, document in enumerate(documents):
        try:
            submission = Submission.model_validate(document)
        except ValidationError as error:
            parsed.append(field_errors(error))
            continue
        if request_id is not None and submission.external_id is None:
            submission = submission.model_copy(update={"external_id": f"{request_id}:{index}"})
        parsed.append(submission)
    valid = [p for p in parsed if isinstance(p, Submission)]
    accepted = iter(await accept(valid, default_region=default_region))
    results: list[ItemResult] = []
    for index, item in enumerate(parsed):
        if isinstance(item, Submission):
            results.append(replace(next(accepted), index=index))
        else:
            results.append(ItemResult(index, "rejected", errors=item))
    return results


def field_errors(error: ValidationError) -> tuple[FieldError, ...]:
    return tuple(
        FieldError(".".join(str(part) for part in e["loc"]) or "body", e["msg"])
        for e in error.errors()
    )


# --- configuration: forms, campaigns, sources, the ideal-customer profile -------------------


@dataclass(frozen=True, slots=True)
class IntakeConfig:
    forms: dict[str, FormDefinition]
    campaigns: dict[str, CampaignDefinition]
    sources: dict[str, SourceDefinition]
    icp: IdealCustomerProfile


class Configuration:
    """Forms, campaigns, sources and the ICP, cached until their version moves (a change on
    another replica is seen within `max_age_s`, one made here at once)."""

    def __init__(self, store: IntakeStore, *, max_age_s: float) -> None:
        self._store = store
        self._cache: VersionedCache[IntakeConfig] = VersionedCache(
            store.config_version, self._load, max_age_s=max_age_s
        )

    async def get(self) -> IntakeConfig:
        return await self._cache.get()

    async def form(self, form_key: str) -> FormDefinition | None:
        """The form, also when it was registered on another replica a moment ago (a miss
        checks the version again: one small read, a reload only if something changed)."""
        form = (await self._cache.get()).forms.get(form_key)
        if form is None:
            self._cache.invalidate()
            form = (await self._cache.get()).forms.get(form_key)
        return form

    async def icp(self) -> IdealCustomerProfile:
        return (await self._cache.get()).icp

    async def sources(self) -> Mapping[str, SourceDefinition]:
        return (await self._cache.get()).sources

    async def _load(self) -> IntakeConfig:
        store = self._store
        icp = await store.get_config("icp", "default")
        return IntakeConfig(
            forms={
                f.form_key: f
                for f in map(FormDefinition.model_validate, await store.list_config("form"))
            },
            campaigns={
                c.campaign_id: c
                for c in map(CampaignDefinition.model_validate, await store.list_config("campaign"))
            },
            sources={
                s.source_id: s
                for s in map(SourceDefinition.model_validate, await store.list_config("source"))
            },
            icp=IdealCustomerProfile() if icp is None else IdealCustomerProfile.model_validate(icp),
        )

    async def save_form(self, form: FormDefinition) -> None:
        await self._store.put_config("form", form.form_key, form.model_dump(mode="json"))
        self._cache.invalidate()

    async def save_source(self, source: SourceDefinition) -> None:
        await self._store.put_config("source", source.source_id, source.model_dump(mode="json"))
        self._cache.invalidate()

    async def save_icp(self, icp: IdealCustomerProfile) -> None:
        await self._store.put_config("icp", "default", icp.model_dump(mode="json"))
        self._cache.invalidate()

    async def save_campaign(self, campaign: CampaignDefinition, now: datetime) -> None:
        """Store the campaign and publish CampaignSavedV1 with it (one transaction)."""
        event = CampaignSavedV1(
            lead_id=f"campaign:{campaign.campaign_id}",
            occurred_at=now,
            campaign_id=campaign.campaign_id,
            name=campaign.name,
            channel=campaign.channel,
            cost=campaign.cost,
            currency=campaign.currency,
            starts_on=campaign.starts_on,
            ends_on=campaign.ends_on,
        )
        await self._store.put_config(
            "campaign", campaign.campaign_id, campaign.model_dump(mode="json"), [event]
        )
        self._cache.invalidate()

    async def delete(self, kind: ConfigKind, config_id: str) -> bool:
        deleted = await self._store.delete_config(kind, config_id)
        self._cache.invalidate()
        return deleted


# --- idempotent requests ---------------------------------------------------------------------

IDEMPOTENCY_STALE_AFTER = timedelta(seconds=60)
"""A claim older than this belongs to a request whose replica died: a retry takes it over."""
IDEMPOTENCY_WAIT_S = 10.0


class IdempotencyKeyReused(Exception):  # noqa: N818 - names the client's mistake
    """The key was used before for a different request."""


class RequestInProgress(Exception):  # noqa: N818
    """A request with the same key is still being handled."""


@dataclass(frozen=True, slots=True)
class Answer:
    status_code: int
    body: Any
    replayed: bool = False


class IdempotentRequests:
    """Answers a request sent again with the same `Idempotency-Key` (per API key) with the
    first answer, without handling it again. Concurrent requests with one key: one is
    handled, the others wait for its answer."""

    def __init__(
        self,
        store: IntakeStore,
        *,
        clock: Callable[[], datetime],
        wait_s: float = IDEMPOTENCY_WAIT_S,
        poll_s: float = 0.05,
    ) -> None:
        self._store = store
        self._clock = clock
        self._wait_s = wait_s
        self._poll_s = poll_s

    async def run(
        self, key: str, fingerprint: str, handle: Callable[[], Awaitable[Answer]]
    ) -> Answer:
        deadline = time.monotonic() + self._wait_s
        while True:
            claim = await self._store.claim_request(
                key, fingerprint, self._clock(), stale_after=IDEMPOTENCY_STALE_AFTER
            )
            if isinstance(claim, StoredResponse):
                if claim.fingerprint != fingerprint:
                    raise IdempotencyKeyReused(key)
                return Answer(claim.status_code, claim.body, replayed=True)
            if claim == "claimed":
                break
            if time.monotonic() > deadline:
                raise RequestInProgress(key)
            await asyncio.sleep(self._poll_s)
        try:
            answer = await handle()
        except BaseException:
            # Nothing to replay: a retry must be handled afresh.
            await self._store.release_request(key)
            raise
        if answer.status_code >= 500:
            await self._store.release_request(key)
        else:
            await self._store.complete_request(
                key, StoredResponse(fingerprint, answer.status_code, answer.body)
            )
        return answer


# --- the front desk --------------------------------------------------------------------------


async def register_at_desk(
    store: IntakeStore,
    accept: Callable[[NewLead], Awaitable[Acceptance]],
    lead: NewLead,
) -> tuple[Document | None, Acceptance]:
    """Who this caller is (the lead or customer their phone, else email, belongs to), then
    the inquiry accepted: merged into them, or a new lead."""
    known = None
    for kind, value in contact_keys(lead.contact):
        known = await store.find_by_contact(kind, value)
        if known is not None:
            break
    return known, await accept(lead)


# --- conversions learnt from assignment ------------------------------------------------------


class RecordConversions:
    def __init__(self, store: IntakeStore) -> None:
        self._store = store

    async def __call__(self, events: Sequence[Event]) -> None:
        converted = [e for e in events if isinstance(e, LeadConvertedV1)]
        if converted:
            await self._store.record_conversions(converted)
