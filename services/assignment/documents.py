"""Assignment's documents <-> domain values (plain dicts; no driver import).

BSON has no `date` or `time`: days are ISO strings ("2026-05-01"), shift times "HH:MM".
Every field added after the first release is read with a default, so older documents load.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from datetime import date, time
from typing import Any

from services.assignment.rules import (
    Activity,
    AwaitedLead,
    Conversion,
    HistoryEntry,
    KnownLead,
    LastAssignment,
    Lead,
    LeadStatus,
    Notify,
    Pool,
    PoolMatch,
    Rep,
    RoutingSettings,
    Strategy,
    TerritoryRule,
    Visit,
)
from services.assignment.shifts import AwayPeriod, Shift
from shared.events import Attribution, Consent, Contact, Profile, RoutingReason

Document = dict[str, Any]


def _day(value: str | date) -> date:
    return value if isinstance(value, date) else date.fromisoformat(value)


def _clock(value: str) -> time:
    return time.fromisoformat(value)


def rep_document(rep: Rep) -> Document:
    return {
        "name": rep.name,
        "email": rep.email,
        "timezone": rep.timezone,
        "active": rep.active,
        "away": rep.away,
        "manager_id": rep.manager_id,
        "team": rep.team,
        "product_lines": list(rep.product_lines),
        "regions": list(rep.regions),
        "languages": list(rep.languages),
        "skills": list(rep.skills),
        "max_open": rep.max_open,
        "daily_quota": rep.daily_quota,
        "working_hours": [
            {
                "weekday": s.weekday,
                "start": s.start.strftime("%H:%M"),
                "end": s.end.strftime("%H:%M"),
            }
            for s in rep.working_hours
        ],
        "holiday_country": rep.holiday_country,
        "holiday_subdivision": rep.holiday_subdivision,
        "days_off": [d.isoformat() for d in rep.days_off],
        "away_periods": [
            {"starts_at": p.starts_at, "ends_at": p.ends_at, "reason": p.reason}
            for p in rep.away_periods
        ],
        # Read as is by the notifications module: {email, webhook_url, webhook_secret,
        # slack, channels}.
        "notify": {
            "email": rep.notify.email,
            "webhook_url": rep.notify.webhook_url,
            "webhook_secret": rep.notify.webhook_secret,
            "slack": rep.notify.slack,
            "channels": list(rep.notify.channels),
        },
    }


def rep_from_document(doc: Mapping[str, Any]) -> Rep:
    notify = doc.get("notify") or {}
    return Rep(
        rep_id=doc["_id"],
        name=doc["name"],
        email=doc.get("email"),
        timezone=doc.get("timezone"),
        active=doc.get("active", True),
        away=doc.get("away", False),
        manager_id=doc.get("manager_id"),
        team=doc.get("team"),
        product_lines=tuple(doc.get("product_lines", ())),
        regions=tuple(doc.get("regions", ())),
        languages=tuple(doc.get("languages", ())),
        skills=tuple(doc.get("skills", ())),
        max_open=doc.get("max_open"),
        daily_quota=doc.get("daily_quota"),
        working_hours=tuple(
            Shift(s["weekday"], _clock(s["start"]), _clock(s["end"]))
            for s in doc.get("working_hours", ())
        ),
        holiday_country=doc.get("holiday_country"),
        holiday_subdivision=doc.get("holiday_subdivision"),
        days_off=tuple(_day(d) for d in doc.get("days_off", ())),
        away_periods=tuple(
            AwayPeriod(p["starts_at"], p["ends_at"], p.get("reason"))
            for p in doc.get("away_periods", ())
        ),
        notify=Notify(
            email=notify.get("email"),
            webhook_url=notify.get("webhook_url"),
            webhook_secret=notify.get("webhook_secret"),
            slack=notify.get("slack", False),
            channels=tuple(notify.get("channels", ())),
        ),
    )


def pool_document(pool: Pool) -> Document:
    return {
        "name": pool.name,
        "rep_ids": list(pool.rep_ids),
        "match": asdict(pool.match),
        "priority": pool.priority,
        "is_default": pool.is_default,
        "strategy": pool.strategy.value,
        "weights": dict(pool.weights),
        "default_assignee": pool.default_assignee,
        "claimable": pool.claimable,
        "claim_limit": pool.claim_limit,
        "sla_minutes": pool.sla_minutes,
        "sla_reassign": pool.sla_reassign,
        "manager_id": pool.manager_id,
    }


def pool_from_document(doc: Mapping[str, Any]) -> Pool:
    return Pool(
        pool_id=doc["_id"],
        name=doc["name"],
        rep_ids=tuple(doc.get("rep_ids", ())),
        match=PoolMatch(**doc.get("match", {})),
        priority=doc.get("priority", 0),
        is_default=doc.get("is_default", False),
        strategy=Strategy(doc.get("strategy", Strategy.ROUND_ROBIN.value)),
        weights=dict(doc.get("weights", {})),
        default_assignee=doc.get("default_assignee"),
        claimable=doc.get("claimable", False),
        claim_limit=doc.get("claim_limit"),
        sla_minutes=doc.get("sla_minutes"),
        sla_reassign=doc.get("sla_reassign", False),
        manager_id=doc.get("manager_id"),
    )


_RULE_LISTS = (
    "countries",
    "regions",
    "postal_prefixes",
    "industries",
    "product_lines",
    "languages",
    "sources",
    "campaigns",
    "fit_grades",
)


def rule_document(rule: TerritoryRule) -> Document:
    fields = asdict(rule)
    del fields["rule_id"]
    return {key: list(value) if key in _RULE_LISTS else value for key, value in fields.items()}


def rule_from_document(doc: Mapping[str, Any]) -> TerritoryRule:
    values = {
        key: value for key, value in doc.items() if key not in ("_id", "created_at", "updated_at")
    }
    for key in _RULE_LISTS:
        values[key] = tuple(values.get(key, ()))
    return TerritoryRule(rule_id=doc["_id"], **values)


def settings_document(settings: RoutingSettings) -> Document:
    return {
        "nurture_below": settings.nurture_below,
        "fallback_pool_id": settings.fallback_pool_id,
        "company_days_off": [d.isoformat() for d in settings.company_days_off],
        "grades": dict(settings.grades),
        "forgotten_after_days": settings.forgotten_after_days,
        "escalate_after_hours": settings.escalate_after_hours,
        "satisfaction_alert_below": settings.satisfaction_alert_below,
    }


def settings_from_document(doc: Mapping[str, Any] | None) -> RoutingSettings:
    if doc is None:
        return RoutingSettings()
    default = RoutingSettings()
    return RoutingSettings(
        nurture_below=doc.get("nurture_below"),
        fallback_pool_id=doc.get("fallback_pool_id"),
        company_days_off=tuple(_day(d) for d in doc.get("company_days_off", ())),
        grades=dict(doc.get("grades", default.grades)),
        forgotten_after_days=doc.get("forgotten_after_days", default.forgotten_after_days),
        escalate_after_hours=doc.get("escalate_after_hours", default.escalate_after_hours),
        satisfaction_alert_below=doc.get(
            "satisfaction_alert_below", default.satisfaction_alert_below
        ),
    )


def load_document(last: LastAssignment) -> Document:
    return {
        "turn": last.turn,
        "assigned_at": last.assigned_at,
        "pool_id": last.pool_id,
        "open": last.open,
        "day": last.day.isoformat() if last.day else None,
        "day_count": last.day_count,
        "passes": dict(last.passes),
    }


def load_from_document(doc: Mapping[str, Any]) -> LastAssignment:
    day = doc.get("day")
    return LastAssignment(
        rep_id=doc["_id"],
        turn=doc.get("turn", 0),
        assigned_at=doc.get("assigned_at"),
        pool_id=doc.get("pool_id"),
        open=doc.get("open", 0),
        day=_day(day) if day else None,
        day_count=doc.get("day_count", 0),
        passes=dict(doc.get("passes", {})),
    )


def known_lead_document(lead: KnownLead) -> Document:
    """A lead's document; an awaited lead's has no `status` (it is not a lead yet)."""
    if isinstance(lead, AwaitedLead):
        return {
            "contact": lead.contact.model_dump(),
            "inquiries": lead.inquiries,
            "last_inquiry_at": lead.last_inquiry_at,
            "erased_at": lead.erased_at,
            "updated_at": lead.updated_at,
        }
    return {
        "status": lead.status.value,
        "contact": lead.contact.model_dump(),
        "consent": lead.consent.model_dump(mode="python"),
        "attribution": lead.attribution.model_dump(),
        "profile": lead.profile.model_dump(),
        "received_at": lead.received_at,
        "rep_id": lead.rep_id,
        "pool_id": lead.pool_id,
        "assigned_at": lead.assigned_at,
        "fit_score": lead.fit_score,
        "fit_grade": lead.fit_grade,
        "message": lead.message,
        "inquiries": lead.inquiries,
        "last_inquiry_at": lead.last_inquiry_at,
        "lost_level": lead.lost_level,
        "lost_reason": lead.lost_reason,
        "returned_by": list(lead.returned_by),
        "rejected_by": list(lead.rejected_by),
        "erased_at": lead.erased_at,
        "updated_at": lead.updated_at,
        "why": lead.why.model_dump() if lead.why else None,
        "queued_at": lead.queued_at,
        "queue_reason": lead.queue_reason,
        "assignments": lead.assignments,
        "sla_due_at": lead.sla_due_at,
        "first_contact_at": lead.first_contact_at,
        "last_activity_at": lead.last_activity_at,
        "grade": lead.grade,
        "next_follow_up_at": lead.next_follow_up_at,
        "help_requested_at": lead.help_requested_at,
        "help_note": lead.help_note,
        "helpers": list(lead.helpers),
        "activities": [asdict(a) for a in lead.activities],
        "visits": [asdict(v) for v in lead.visits],
        "conversion": asdict(lead.conversion) if lead.conversion else None,
        "history": [asdict(h) for h in lead.history],
    }


def known_lead_from_document(doc: Mapping[str, Any]) -> KnownLead:
    if "status" not in doc:
        return AwaitedLead(
            lead_id=doc["_id"],
            contact=Contact.model_validate(doc.get("contact") or {}),
            inquiries=doc.get("inquiries", 0),
            last_inquiry_at=doc.get("last_inquiry_at"),
            erased_at=doc.get("erased_at"),
            updated_at=doc.get("updated_at"),
        )
    return lead_from_document(doc)


def lead_from_document(doc: Mapping[str, Any]) -> Lead:
    why = doc.get("why")
    conversion = doc.get("conversion")
    return Lead(
        lead_id=doc["_id"],
        status=LeadStatus(doc["status"]),
        contact=Contact.model_validate(doc["contact"]),
        consent=Consent.model_validate(doc["consent"]),
        attribution=Attribution.model_validate(doc["attribution"]),
        profile=Profile.model_validate(doc["profile"]),
        received_at=doc["received_at"],
        rep_id=doc.get("rep_id"),
        pool_id=doc.get("pool_id"),
        assigned_at=doc.get("assigned_at"),
        fit_score=doc.get("fit_score"),
        fit_grade=doc.get("fit_grade"),
        message=doc.get("message"),
        inquiries=doc.get("inquiries", 1),
        last_inquiry_at=doc.get("last_inquiry_at"),
        lost_level=doc.get("lost_level"),
        lost_reason=doc.get("lost_reason"),
        returned_by=tuple(doc.get("returned_by", ())),
        rejected_by=tuple(doc.get("rejected_by", ())),
        erased_at=doc.get("erased_at"),
        updated_at=doc.get("updated_at"),
        why=RoutingReason.model_validate(why) if why else None,
        queued_at=doc.get("queued_at"),
        queue_reason=doc.get("queue_reason"),
        assignments=doc.get("assignments", 1 if doc.get("rep_id") else 0),
        sla_due_at=doc.get("sla_due_at"),
        first_contact_at=doc.get("first_contact_at"),
        last_activity_at=doc.get("last_activity_at"),
        grade=doc.get("grade"),
        next_follow_up_at=doc.get("next_follow_up_at"),
        help_requested_at=doc.get("help_requested_at"),
        help_note=doc.get("help_note"),
        helpers=tuple(doc.get("helpers", ())),
        activities=tuple(Activity(**a) for a in doc.get("activities", ())),
        visits=tuple(Visit(**v) for v in doc.get("visits", ())),
        conversion=Conversion(**conversion) if conversion else None,
        history=tuple(HistoryEntry(**h) for h in doc.get("history", ())),
    )
