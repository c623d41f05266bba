"""Small HTTP pieces every service's `api.py` uses."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from fastapi import HTTPException, Request, status

Location = Sequence[str | int]


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
