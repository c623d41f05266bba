"""Intake's use cases: the steps of each flow, between the entrypoints and the store."""

from __future__ import annotations

from collections.abc import Sequence

import structlog
from prometheus_client import Histogram

from services.intake.rules import (
    Acceptance,
    AcceptancePlan,
    LeadRejected,
    NewLead,
    contact_keys,
    plan_acceptance,
)
from services.intake.store import AcceptingBatch, ContactKeyTaken, IntakeStore
from shared.events import Event

log = structlog.get_logger(__name__)

ACCEPT_BATCH_SIZE = Histogram(
    "leadflow_intake_accept_batch_size",
    "Leads accepted per transaction",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500),
)

MAX_ATTEMPTS = 5
"""Accepting a batch again after a concurrent accept took one of its contact keys finds that
key and merges; more than a few such races in a row would mean something else is wrong."""


class AcceptLeads:
    """Store new leads and merge repeat inquiries, a whole batch in one transaction."""

    def __init__(self, store: IntakeStore, *, max_attempts: int = MAX_ATTEMPTS) -> None:
        self._store = store
        self._max_attempts = max_attempts

    async def __call__(self, leads: Sequence[NewLead]) -> list[Acceptance | LeadRejected]:
        """What became of each lead, in order: received, merged, or rejected (that lead only)."""
        if not leads:
            return []

        async def accept(batch: AcceptingBatch) -> tuple[AcceptancePlan, Sequence[Event]]:
            keys = {key for lead in leads for key in contact_keys(lead.contact)}
            owners = await batch.key_owners(keys)
            contacts = await batch.contacts(set(owners.values()))
            if dangling := set(owners.values()) - contacts.keys():
                log.warning("contact keys point at no stored lead", lead_ids=sorted(dangling))
            plan = plan_acceptance(leads, owners, contacts)
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
