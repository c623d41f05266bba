"""Small HTTP pieces every service's `api.py` uses."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import structlog
from fastapi import FastAPI, HTTPException, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pymongo.errors import ConnectionFailure, ExecutionTimeout, WTimeoutError

from leadflow.chassis.batching import StoppingError

log = structlog.get_logger(__name__)

Location = Sequence[str | int]

RETRY_AFTER_S = 5
# The database is unreachable or too slow to answer in time, or this replica is stopping:
# temporary states; the client should send the request again.
_OUTAGES = (ConnectionFailure, ExecutionTimeout, WTimeoutError, StoppingError)


def from_state(attribute: str) -> Callable[[Request], Any]:
    """A dependency giving `app.state.<attribute>` (what `create_app` put there)."""

    def dependency(request: Request) -> Any:
        return getattr(request.app.state, attribute)

    dependency.__name__ = f"app_state_{attribute}"
    return dependency


def unprocessable(*problems: tuple[Location, str]) -> HTTPException:
    """422 in FastAPI's own shape, so clients parse one error format.

    Each problem is `(loc, reason)` with `loc` as FastAPI writes it, e.g. `("body", "phone")`.
    """
    return HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        detail=[
            {"loc": list(loc), "msg": reason, "type": "value_error"} for loc, reason in problems
        ],
    )


def add_outage_handler(app: FastAPI) -> None:
    """Answer 503 with `Retry-After` while the database is unreachable (or the replica is
    stopping), never a bare 500."""

    async def service_unavailable(request: Request, error: Exception) -> JSONResponse:
        log.warning(
            "request refused for now",
            method=request.method,
            path=request.url.path,
            error=repr(error),
        )
        reason = (
            "this replica is stopping"
            if isinstance(error, StoppingError)
            else "the database is unreachable"
        )
        return JSONResponse(
            {"detail": f"{reason}; nothing was stored, try again shortly"},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )

    for outage in _OUTAGES:
        app.add_exception_handler(outage, service_unavailable)


def add_validation_handler(app: FastAPI) -> None:
    """422 in FastAPI's own shape, also for an input JSON cannot carry back: the parser
    takes `Infinity` (or `1e400`) for a number the model then refuses, and FastAPI's own
    answer, echoing it, failed to render (a 500)."""

    async def unprocessable_request(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        detail = _finite(jsonable_encoder(error.errors()))
        return JSONResponse({"detail": detail}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)

    app.add_exception_handler(RequestValidationError, unprocessable_request)


def _finite(value: Any) -> Any:
    """`value` with every float that is not finite written as text ("inf", "nan")."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value
