"""What every assignment route shares: roles, dependencies, who acts, refusals as HTTP."""

from __future__ import annotations

from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import Depends, HTTPException, status
from pydantic import AfterValidator, Field

from leadflow.chassis.auth import Principal, Role, require
from leadflow.chassis.clock import Clock
from leadflow.chassis.http import from_state, unprocessable
from services.assignment.rules import (
    Actor,
    AssignmentError,
    InvalidValueError,
    NotFoundError,
    NotOwnerError,
    UnknownPoolError,
    UnknownRepsError,
)
from services.assignment.usecases import ConfigurationCache, ManageTeam
from services.assignment.workflow import WorkLeads

Manager = Annotated[Principal, Depends(require(Role.MANAGER))]
SalesStaff = Annotated[Principal, Depends(require(Role.MANAGER, Role.REP))]

TeamDep = Annotated[ManageTeam, Depends(from_state("team"))]
LeadsDep = Annotated[WorkLeads, Depends(from_state("leads"))]
ClockDep = Annotated[Clock, Depends(from_state("clock"))]
ConfigDep = Annotated[ConfigurationCache, Depends(from_state("configuration"))]


def acting_rep(principal: Principal) -> str | None:
    """The rep whose own leads bound what `principal` may see and do; None for managers."""
    if principal.role is not Role.REP:
        return None
    if principal.rep_id is None:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="this rep key names no rep")
    return principal.rep_id


async def actor_of(principal: Principal, configuration: ConfigurationCache) -> Actor:
    """Who acts: a manager key acts on everything; a rep on their own leads and, when other
    reps name them as manager, on their team's."""
    rep_id = acting_rep(principal)
    if rep_id is None:
        return Actor(None)
    config = await configuration.get()
    return Actor(rep_id, config.team_of(rep_id))


def refusal(error: AssignmentError) -> HTTPException:
    """The HTTP answer to a request the domain refused."""
    match error:
        case NotFoundError():
            return HTTPException(status.HTTP_404_NOT_FOUND, detail=str(error))
        case NotOwnerError():
            return HTTPException(status.HTTP_403_FORBIDDEN, detail=str(error))
        case UnknownRepsError():
            return unprocessable((("body", error.field), str(error)))
        case UnknownPoolError() | InvalidValueError():
            return unprocessable((("body", error.field), str(error)))
        case _:  # AlreadyExistsError, TransitionRefusedError, RefusedError: state conflicts
            return HTTPException(status.HTTP_409_CONFLICT, detail=str(error))


def forbidden(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_403_FORBIDDEN, detail=detail)


def _known_timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise ValueError(f"unknown IANA time zone '{value}'") from error
    return value


Id = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]*$")]
Text = Annotated[str, Field(min_length=1, max_length=200)]
Note = Annotated[str, Field(max_length=2000)]
TimeZone = Annotated[str, Field(max_length=64), AfterValidator(_known_timezone)]
Criterion = Annotated[str, Field(min_length=1, max_length=100)]
CompanySize = Annotated[int, Field(ge=0)]


def not_null(value: Any, name: str) -> Any:
    if value is None:
        raise ValueError(f"'{name}' cannot be null; leave it out to keep it")
    return value
