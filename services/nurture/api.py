"""Nurture's HTTP routes: sequences and enrollments, for marketing (and managers to read)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, status
from pydantic import BaseModel, ConfigDict, Field

from leadflow.chassis.auth import Principal, Role, require
from leadflow.chassis.http import from_state, unprocessable
from services.nurture.rules import (
    AlreadyEnrolledError,
    Enrollment,
    EnrollmentStatus,
    LeadNotFoundError,
    NurtureSequence,
    SendWindow,
    SequenceExistsError,
    SequenceNotFoundError,
    SequenceRecord,
    Step,
    StopReason,
    sequence_errors,
)
from services.nurture.store import EnrollmentFilter, NurtureStore
from services.nurture.usecases import EnrollByHand, Sequences
from shared.events import Channel, LeadId

router = APIRouter(prefix="/v1")

Marketer = Annotated[Principal, Depends(require(Role.MARKETING))]
Reader = Annotated[Principal, Depends(require(Role.MARKETING, Role.MANAGER))]


StoreDep = Annotated[NurtureStore, Depends(from_state("store"))]
SequencesDep = Annotated[Sequences, Depends(from_state("sequences"))]
EnrollByHandDep = Annotated[EnrollByHand, Depends(from_state("enroll_by_hand"))]

SequenceId = Annotated[
    str,
    Field(
        pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$",
        description="lower-case letters, digits, '-' and '_'; up to 64 characters",
    ),
]
Weekday = Annotated[int, Field(ge=0, le=6, description="0 is Monday, 6 is Sunday")]


class StepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel: Channel
    delay_hours: int = Field(
        ge=0, le=24 * 730, description="hours after enrollment or the previous step"
    )
    subject: Annotated[str, Field(min_length=1, max_length=200)] | None = Field(
        default=None, description="email only"
    )
    body: str = Field(
        min_length=1, max_length=20_000, description="template text, e.g. 'Hi {{name}}'"
    )


class SendWindowSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start_hour: int = Field(ge=0, le=23, description="local hour the window opens")
    end_hour: int = Field(
        ge=1, le=24, description="local hour it closes; earlier than start_hour: overnight"
    )


class SequenceBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    steps: list[StepSpec] = Field(max_length=50)
    send_window: SendWindowSpec | None = Field(
        default=None, description="in the lead's time zone; absent: any hour"
    )
    weekdays: list[Weekday] | None = Field(
        default=None, description="in the lead's time zone; absent: every day"
    )

    def to_sequence(self, sequence_id: str) -> NurtureSequence:
        window = self.send_window
        return NurtureSequence(
            sequence_id=sequence_id,
            name=self.name,
            steps=tuple(Step(**step.model_dump()) for step in self.steps),
            send_window=None if window is None else SendWindow(**window.model_dump()),
            weekdays=None if self.weekdays is None else tuple(sorted(set(self.weekdays))),
        )


class SequenceCreate(SequenceBase):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "sequence_id": "spring-trial-follow-up",
                    "name": "Spring trial follow-up",
                    "steps": [
                        {
                            "channel": "email",
                            "delay_hours": 24,
                            "subject": "Your trial, {{name}}",
                            "body": "Hi {{name}}, how was your first visit?",
                        },
                        {"channel": "sms", "delay_hours": 72, "body": "Book your next visit?"},
                    ],
                    "send_window": {"start_hour": 9, "end_hour": 20},
                    "weekdays": [0, 1, 2, 3, 4, 5],
                }
            ]
        },
    )

    sequence_id: SequenceId


class SequenceReplace(SequenceBase):
    """The whole new content of a sequence (PUT replaces, it does not patch)."""


class SequencePublic(SequenceBase):
    sequence_id: str
    version: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_record(cls, record: SequenceRecord) -> SequencePublic:
        return cls.model_validate(
            {
                **asdict(record.sequence),
                "version": record.version,
                "created_at": record.created_at,
                "updated_at": record.updated_at,
            }
        )


class EnrollmentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lead_id: LeadId
    sequence_id: SequenceId


class EnrollmentPublic(BaseModel):
    enrollment_id: str
    lead_id: str
    sequence_id: str
    sequence_version: int
    reason: str
    status: EnrollmentStatus
    enrolled_at: datetime
    current_step: int
    next_send_at: datetime | None
    channels: list[Channel] = Field(
        description="channels the lead consented to and can be reached on; steps on other "
        "channels are skipped"
    )
    last_sent_at: datetime | None
    stopped_at: datetime | None
    stop_reason: StopReason | None

    @classmethod
    def from_enrollment(cls, enrollment: Enrollment) -> EnrollmentPublic:
        return cls.model_validate(asdict(enrollment))


def valid_sequence(payload: SequenceBase, sequence_id: str) -> NurtureSequence:
    sequence = payload.to_sequence(sequence_id)
    errors = sequence_errors(sequence)
    if errors:
        raise unprocessable(*((("body", *e.loc), e.reason) for e in errors))
    return sequence


NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "no such sequence"}}


@router.post(
    "/sequences",
    response_model=SequencePublic,
    status_code=status.HTTP_201_CREATED,
    tags=["sequences"],
    summary="Create a sequence of email/SMS steps",
    responses={
        409: {"description": "a sequence with this id exists"},
        422: {"description": "a field is missing or invalid; the body names it and why"},
    },
)
async def create_sequence(
    payload: SequenceCreate, _: Marketer, sequences: SequencesDep
) -> SequencePublic:
    sequence = valid_sequence(payload, payload.sequence_id)
    try:
        record = await sequences.create(sequence)
    except SequenceExistsError as error:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(error)) from error
    return SequencePublic.from_record(record)


@router.get(
    "/sequences", response_model=list[SequencePublic], tags=["sequences"], summary="All sequences"
)
async def list_sequences(_: Reader, sequences: SequencesDep) -> list[SequencePublic]:
    return [SequencePublic.from_record(record) for record in await sequences.all()]


@router.get(
    "/sequences/{sequence_id}",
    response_model=SequencePublic,
    tags=["sequences"],
    summary="One sequence",
    responses=NOT_FOUND,
)
async def get_sequence(sequence_id: str, _: Reader, sequences: SequencesDep) -> SequencePublic:
    try:
        record = await sequences.get(sequence_id)
    except SequenceNotFoundError as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(error)) from error
    return SequencePublic.from_record(record)


@router.put(
    "/sequences/{sequence_id}",
    response_model=SequencePublic,
    tags=["sequences"],
    summary="Replace a sequence's name, steps, window and weekdays",
    description="Active enrollments keep their place (step index) and move on with the new "
    "steps; each enrollment records the version it started on.",
    responses={**NOT_FOUND, 422: {"description": "a field is missing or invalid"}},
)
async def replace_sequence(
    sequence_id: str, payload: SequenceReplace, _: Marketer, sequences: SequencesDep
) -> SequencePublic:
    sequence = valid_sequence(payload, sequence_id)
    try:
        record = await sequences.replace(sequence)
    except SequenceNotFoundError as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(error)) from error
    return SequencePublic.from_record(record)


@router.get(
    "/enrollments",
    response_model=list[EnrollmentPublic],
    tags=["enrollments"],
    summary="Enrollments, newest first",
)
async def list_enrollments(
    _: Reader,
    store: StoreDep,
    status_: Annotated[EnrollmentStatus | None, Query(alias="status")] = None,
    sequence_id: Annotated[str | None, Query(max_length=64)] = None,
    lead_id: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[EnrollmentPublic]:
    where = EnrollmentFilter(status=status_, sequence_id=sequence_id, lead_id=lead_id, limit=limit)
    return [EnrollmentPublic.from_enrollment(e) for e in await store.list_enrollments(where)]


@router.get(
    "/enrollments/{lead_id}",
    response_model=EnrollmentPublic,
    tags=["enrollments"],
    summary="A lead's latest enrollment",
    description="Earlier ones: `GET /v1/enrollments?lead_id=...`.",
    responses={404: {"description": "the lead was never enrolled"}},
)
async def get_enrollment(lead_id: str, _: Reader, store: StoreDep) -> EnrollmentPublic:
    enrollment = await store.latest_enrollment(lead_id)
    if enrollment is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, detail=f"lead '{lead_id}' was never enrolled"
        )
    return EnrollmentPublic.from_enrollment(enrollment)


@router.post(
    "/enrollments",
    response_model=EnrollmentPublic,
    status_code=status.HTTP_201_CREATED,
    tags=["enrollments"],
    summary="Enroll a known lead in a sequence",
    responses={
        404: {"description": "unknown lead or sequence"},
        409: {"description": "the lead is already in an active enrollment"},
    },
)
async def enroll_lead(
    payload: EnrollmentCreate, _: Marketer, enroll: EnrollByHandDep
) -> EnrollmentPublic:
    try:
        enrollment = await enroll(payload.lead_id, payload.sequence_id)
    except (LeadNotFoundError, SequenceNotFoundError) as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(error)) from error
    except AlreadyEnrolledError as error:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(error)) from error
    return EnrollmentPublic.from_enrollment(enrollment)
