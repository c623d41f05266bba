"""Intake configuration over HTTP: campaigns, custom sources, the ideal-customer profile and
HTML forms. Changes are seen by every replica within `configuration_max_age_s`."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, status
from pydantic import BaseModel, ConfigDict, Field

from leadflow.chassis.auth import Principal, Role, require
from leadflow.chassis.clock import Clock
from leadflow.chassis.http import unprocessable
from services.intake.api import from_app
from services.intake.models import (
    CampaignDefinition,
    FormDefinition,
    LongText,
    Origin,
    RedirectUrl,
    Region,
    SourceDefinition,
    Text,
)
from services.intake.rules import IdealCustomerProfile
from services.intake.usecases import Configuration

router = APIRouter(prefix="/v1", tags=["configuration"])

Writer = Annotated[Principal, Depends(require(Role.MANAGER, Role.MARKETING))]
Reader = Annotated[
    Principal, Depends(require(Role.MANAGER, Role.MARKETING, Role.ANALYST, Role.INGEST))
]
ConfigurationDep = Annotated[Configuration, Depends(from_app("configuration"))]
ClockDep = Annotated[Clock, Depends(from_app("clock"))]


def not_found(what: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, detail=f"{what} not found")


# --- campaigns ---------------------------------------------------------------------------


@router.put(
    "/campaigns/{campaign_id}",
    response_model=CampaignDefinition,
    summary="Create or change a campaign (publishes campaign-saved)",
)
async def put_campaign(
    campaign_id: str,
    campaign: CampaignDefinition,
    _: Writer,
    configuration: ConfigurationDep,
    clock: ClockDep,
) -> CampaignDefinition:
    if campaign.campaign_id != campaign_id:
        raise unprocessable((("body", "campaign_id"), "must match the campaign id in the path"))
    await configuration.save_campaign(campaign, clock())
    return campaign


@router.get("/campaigns", response_model=list[CampaignDefinition], summary="Every campaign")
async def list_campaigns(_: Reader, configuration: ConfigurationDep) -> list[CampaignDefinition]:
    return list((await configuration.get()).campaigns.values())


# --- custom sources ----------------------------------------------------------------------


@router.put(
    "/sources/{source_id}", response_model=SourceDefinition, summary="Create or change a source"
)
async def put_source(
    source_id: str, source: SourceDefinition, _: Writer, configuration: ConfigurationDep
) -> SourceDefinition:
    if source.source_id != source_id:
        raise unprocessable((("body", "source_id"), "must match the source id in the path"))
    await configuration.save_source(source)
    return source


@router.get("/sources", response_model=list[SourceDefinition], summary="Custom sources")
async def list_sources(_: Reader, configuration: ConfigurationDep) -> list[SourceDefinition]:
    return list((await configuration.get()).sources.values())


@router.delete(
    "/sources/{source_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Remove a source"
)
async def delete_source(source_id: str, _: Writer, configuration: ConfigurationDep) -> None:
    if not await configuration.delete("source", source_id):
        raise not_found(f"source '{source_id}'")


# --- ideal-customer profile ---------------------------------------------------------------


@router.get(
    "/fit-profile",
    response_model=IdealCustomerProfile,
    summary="The ideal-customer profile leads' fit scores are computed against",
)
async def get_fit_profile(_: Reader, configuration: ConfigurationDep) -> IdealCustomerProfile:
    return await configuration.icp()


@router.put(
    "/fit-profile",
    response_model=IdealCustomerProfile,
    summary="Change the ideal-customer profile (applies to leads received from now on)",
)
async def put_fit_profile(
    icp: IdealCustomerProfile, _: Writer, configuration: ConfigurationDep
) -> IdealCustomerProfile:
    await configuration.save_icp(icp)
    return icp


# --- forms -------------------------------------------------------------------------------


class FormIn(BaseModel):
    """A form as registered; intake gives it its public `form_key`."""

    model_config = ConfigDict(extra="forbid")

    name: Text
    allowed_origins: Annotated[list[Origin], Field(max_length=50)]
    redirect_url: RedirectUrl | None = None
    honeypot_field: Annotated[str, Field(max_length=100)] | None = None
    default_region: Region | None = None
    fields: Annotated[
        dict[Annotated[str, Field(max_length=100)], Annotated[str, Field(max_length=120)]],
        Field(max_length=100),
    ] = {}
    source: Text = "website"
    campaign: Text | None = None
    consent_wording: LongText | None = None

    def definition(self, form_key: str) -> FormDefinition:
        return FormDefinition(form_key=form_key, **self.model_dump())


@router.post(
    "/forms",
    response_model=FormDefinition,
    status_code=status.HTTP_201_CREATED,
    summary="Register an HTML form; the answer holds its public form_key",
)
async def create_form(form: FormIn, _: Writer, configuration: ConfigurationDep) -> FormDefinition:
    definition = form.definition(f"f_{secrets.token_urlsafe(12)}")
    await configuration.save_form(definition)
    return definition


@router.put("/forms/{form_key}", response_model=FormDefinition, summary="Change a form")
async def put_form(
    form_key: str, form: FormIn, _: Writer, configuration: ConfigurationDep
) -> FormDefinition:
    if form_key not in (await configuration.get()).forms:
        raise not_found(f"form '{form_key}'")
    definition = form.definition(form_key)
    await configuration.save_form(definition)
    return definition


@router.get("/forms", response_model=list[FormDefinition], summary="Registered forms")
async def list_forms(_: Reader, configuration: ConfigurationDep) -> list[FormDefinition]:
    return list((await configuration.get()).forms.values())


@router.delete("/forms/{form_key}", status_code=status.HTTP_204_NO_CONTENT, summary="Remove a form")
async def delete_form(form_key: str, _: Writer, configuration: ConfigurationDep) -> None:
    if not await configuration.delete("form", form_key):
        raise not_found(f"form '{form_key}'")
