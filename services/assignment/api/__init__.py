"""Assignment's HTTP routes: parse, authorise, call a use case, shape the reply."""

from __future__ import annotations

from fastapi import APIRouter

from services.assignment.api import config, leads

router = APIRouter()
router.include_router(config.router)
router.include_router(leads.router)
