"""The generated reference docs match the code, so docs/ stays true as the code changes."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from leadflow.cli import app
from leadflow.config import SERVICES

pytestmark = pytest.mark.unit

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_api_reference_is_current() -> None:
    result = CliRunner().invoke(app, ["api-reference"])
    assert result.exit_code == 0, result.output
    assert result.output == (DOCS / "API.md").read_text(), (
        "docs/API.md is stale: run ./dev api-reference > docs/API.md"
    )


@pytest.mark.parametrize("service", SERVICES)
def test_asyncapi_documents_are_current(service: str, tmp_path: Path) -> None:
    out = tmp_path / f"{service}.json"
    result = CliRunner().invoke(app, ["asyncapi", service, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text() == (DOCS / "asyncapi" / f"{service}.json").read_text(), (
        f"docs/asyncapi/{service}.json is stale: run ./dev asyncapi {service} --out ..."
    )
