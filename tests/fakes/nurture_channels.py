"""An in-memory `ChannelStore`, held to the same contract tests as the MongoDB one."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import TypeVar

from leadflow.chassis.store import DuplicateKeyError
from services.nurture.channels.bounces import email_key
from services.nurture.channels.rules import (
    Engagement,
    MessageStatusRecord,
    OptOut,
    SmsRecipient,
    lead_opt_out_key,
    phone_key,
)
from services.nurture.channels.store import CHANNELS, ChannelTransaction, Work
from shared.events import Channel, Event
from tests.fakes.ledger import InMemoryLedger

T = TypeVar("T")


@dataclasses.dataclass
class _Tables:
    opt_outs: dict[str, OptOut] = dataclasses.field(default_factory=dict)
    statuses: dict[str, MessageStatusRecord] = dataclasses.field(default_factory=dict)
    engagements: dict[str, Engagement] = dataclasses.field(default_factory=dict)
    recipients: dict[str, SmsRecipient] = dataclasses.field(default_factory=dict)


class InMemoryChannelStore:
    def __init__(self) -> None:
        self.tables = _Tables()
        self.ledger = InMemoryLedger(self.tables)

    async def ensure_indexes(self) -> None:
        return None

    async def commit(self, work: Work[T]) -> T:
        async def unit() -> tuple[T, Sequence[Event]]:
            return await work(_InMemoryTransaction(self.tables))

        return await self.ledger.commit(unit)

    async def opted_out_channels(self, lead_ids: Collection[str]) -> dict[str, frozenset[Channel]]:
        found: dict[str, frozenset[Channel]] = {}
        for lead_id in lead_ids:
            channels = frozenset(
                channel
                for channel in CHANNELS
                if (state := self.tables.opt_outs.get(lead_opt_out_key(lead_id, channel)))
                and state.opted_out
            )
            if channels:
                found[lead_id] = channels
        return found

    async def remember_recipients(self, recipients: Sequence[SmsRecipient]) -> None:
        for recipient in recipients:
            stored = self.tables.recipients.get(recipient.phone)
            if stored is None or stored.at <= recipient.at:
                self.tables.recipients[recipient.phone] = recipient

    async def opted_out_of(
        self, wanted: Collection[tuple[str, Channel]]
    ) -> set[tuple[str, Channel]]:
        return {
            (lead_id, channel)
            for lead_id, channel in wanted
            if (state := self.tables.opt_outs.get(lead_opt_out_key(lead_id, channel)))
            and state.opted_out
        }

    async def opted_out_phones(self, phones: Collection[str]) -> set[str]:
        return {
            phone
            for phone in phones
            if (state := self.tables.opt_outs.get(phone_key(phone))) and state.opted_out
        }

    async def suppressed_emails(self, addresses: Collection[str]) -> set[str]:
        return {
            address
            for address in addresses
            if (state := self.tables.opt_outs.get(email_key(address))) and state.opted_out
        }

    async def engagements(
        self, lead_ids: Collection[str], since: datetime | None = None
    ) -> list[Engagement]:
        wanted = set(lead_ids)
        return sorted(
            (
                e
                for e in self.tables.engagements.values()
                if e.lead_id in wanted and (since is None or e.at >= since)
            ),
            key=lambda e: (e.at, e.key),
        )

    async def message_statuses(
        self, message_ids: Collection[str]
    ) -> dict[str, MessageStatusRecord]:
        return {m: self.tables.statuses[m] for m in message_ids if m in self.tables.statuses}


class _InMemoryTransaction(ChannelTransaction):
    def __init__(self, tables: _Tables) -> None:
        self._tables = tables

    async def opt_outs(self, keys: Collection[str]) -> dict[str, OptOut]:
        return {k: self._tables.opt_outs[k] for k in keys if k in self._tables.opt_outs}

    async def save_opt_outs(self, states: Sequence[OptOut]) -> None:
        self._tables.opt_outs.update({s.key: s for s in states})

    async def statuses(self, message_ids: Collection[str]) -> dict[str, MessageStatusRecord]:
        return {m: self._tables.statuses[m] for m in message_ids if m in self._tables.statuses}

    async def save_statuses(self, records: Sequence[MessageStatusRecord]) -> None:
        self._tables.statuses.update({r.message_id: r for r in records})

    async def known_engagements(self, keys: Collection[str]) -> set[str]:
        return {k for k in keys if k in self._tables.engagements}

    async def add_engagements(self, engagements: Sequence[Engagement]) -> None:
        for engagement in engagements:
            if engagement.key in self._tables.engagements:
                raise DuplicateKeyError(f"engagement {engagement.key} exists")
            self._tables.engagements[engagement.key] = engagement

    async def recipients(self, phones: Collection[str]) -> dict[str, SmsRecipient]:
        return {p: self._tables.recipients[p] for p in phones if p in self._tables.recipients}

    async def save_recipients(self, recipients: Sequence[SmsRecipient]) -> None:
        self._tables.recipients.update({r.phone: r for r in recipients})
