"""The public endpoint HTML forms post to: the only unauthenticated route besides health.

`POST /v1/forms/{form_key}/submissions` takes `application/x-www-form-urlencoded` or
`multipart/form-data` (the body guard refuses anything else with 415). CORS is answered for
the form's registered origins only, preflight included; a post from another origin is
refused (403) before anything is counted or stored. A post that fills the honeypot field
gets the same answer as a real one, stores nothing and is counted in
`leadflow_intake_form_spam_total`. Posts per form key and client address are rate limited
(429) with counters shared by every replica.
"""

from __future__ import annotations

from typing import Annotated
from uuid import uuid4

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.responses import JSONResponse, RedirectResponse
from prometheus_client import Counter
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from leadflow.chassis.clock import Clock
from leadflow.chassis.http import unprocessable
from services.intake.api import AcceptorDep, accept_one, cleaned, from_app
from services.intake.models import FormDefinition, Submission
from services.intake.ratelimit import FormRateLimit
from services.intake.rules import clean_submission, form_submission, is_spam, region_for
from services.intake.settings import Settings
from services.intake.usecases import Configuration, field_errors

router = APIRouter(prefix="/v1", tags=["forms"])

FORM_SPAM = Counter(
    "leadflow_intake_form_spam_total",
    "Form posts that filled the honeypot field (answered as usual, nothing stored)",
    ["form_key"],
)
FORM_RATE_LIMITED = Counter(
    "leadflow_intake_form_rate_limited_total",
    "Form posts refused with 429 (per form key and client address)",
    ["form_key"],
)

ConfigurationDep = Annotated[Configuration, Depends(from_app("configuration"))]
RateLimitDep = Annotated[FormRateLimit, Depends(from_app("form_rate_limit"))]
SettingsDep = Annotated[Settings, Depends(from_app("settings"))]
ClockDep = Annotated[Clock, Depends(from_app("clock"))]

PREFLIGHT_MAX_AGE_S = 600


async def form_of(configuration: Configuration, form_key: str) -> FormDefinition:
    form = await configuration.form(form_key)
    if form is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no such form")
    return form


def allowed_origin(request: Request, form: FormDefinition) -> str | None:
    """The request's Origin if the form allows it, None without one; 403 otherwise."""
    origin = request.headers.get("origin")
    if origin is None:
        return None  # not a browser's cross-origin request (a server posting, curl)
    if origin.rstrip("/") not in {o.rstrip("/") for o in form.allowed_origins}:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="origin not allowed for this form")
    return origin


def cors_headers(origin: str | None) -> dict[str, str]:
    if origin is None:
        return {}
    return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}


def client_address(request: Request, settings: Settings) -> str:
    if settings.trust_forwarded_for and (forwarded := request.headers.get("x-forwarded-for")):
        return forwarded.split(",", 1)[0].strip()
    return request.client.host if request.client else "unknown"


@router.options(
    "/forms/{form_key}/submissions",
    summary="CORS preflight: answered for the form's registered origins only",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={403: {"description": "origin not registered for this form"}},
)
async def preflight(form_key: str, request: Request, configuration: ConfigurationDep) -> Response:
    form = await form_of(configuration, form_key)
    origin = allowed_origin(request, form)
    if origin is None:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="a preflight needs an Origin")
    return Response(
        status_code=status.HTTP_204_NO_CONTENT,
        headers={
            **cors_headers(origin),
            "Access-Control-Allow-Methods": "POST",
            "Access-Control-Allow-Headers": "Content-Type",
            "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_S),
        },
    )


@router.post(
    "/forms/{form_key}/submissions",
    summary="An HTML form's post (public: no API key)",
    status_code=status.HTTP_303_SEE_OTHER,
    responses={
        202: {"description": "accepted; the form has no thank-you page"},
        303: {"description": "accepted: to the form's thank-you page"},
        403: {"description": "origin not registered for this form"},
        404: {"description": "no such form"},
        415: {"description": "not a form post"},
        422: {"description": "bad fields, each named"},
        429: {"description": "too many posts from this address; Retry-After says when"},
    },
)
async def post_form(
    form_key: str,
    request: Request,
    configuration: ConfigurationDep,
    rate_limit: RateLimitDep,
    accept: AcceptorDep,
    *,
    settings: SettingsDep,
    clock: ClockDep,
) -> Response:
    form = await form_of(configuration, form_key)
    origin = allowed_origin(request, form)
    posted = await request.form()
    fields = {name: value for name, value in posted.items() if not isinstance(value, UploadFile)}
    if is_spam(form, fields):
        FORM_SPAM.labels(form_key).inc()
        return thank_you(form, origin)
    if not await rate_limit.hit(form_key, client_address(request, settings)):
        FORM_RATE_LIMITED.labels(form_key).inc()
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            detail="too many posts from this address; try again later",
            headers={"Retry-After": "60", **cors_headers(origin)},
        )
    document = form_submission(form, fields, referrer=request.headers.get("referer"))
    try:
        submission = Submission.model_validate(document)
    except ValidationError as error:
        raise unprocessable(
            *((("body", e.field), e.reason) for e in field_errors(error))
        ) from error
    region = region_for(submission, await configuration.sources(), settings.default_region)
    lead = cleaned(
        clean_submission(submission, lead_id=uuid4().hex, now=clock(), default_region=region)
    )
    await accept_one(accept, lead)
    return thank_you(form, origin)


def thank_you(form: FormDefinition, origin: str | None) -> Response:
    """The same answer for every accepted post, spam included: it tells a bot nothing (and
    nobody whether the person was known before)."""
    if form.redirect_url:
        return RedirectResponse(
            form.redirect_url, status_code=status.HTTP_303_SEE_OTHER, headers=cors_headers(origin)
        )
    return JSONResponse(
        {"status": "received"}, status_code=status.HTTP_202_ACCEPTED, headers=cors_headers(origin)
    )
