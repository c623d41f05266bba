"""`leadflow keys ...` against the real MongoDB-wire server."""

from __future__ import annotations

import asyncio
import re

import pytest
from typer.testing import CliRunner

from leadflow.cli import app
from leadflow.keys import key_is_valid
from tests.support.infra import Infra

pytestmark = pytest.mark.integration


def test_keys_are_created_listed_and_revoked(infra: Infra, run_id: str) -> None:
    database = f"leadflow_identity_cli_{run_id}"
    env = {"LEADFLOW_MONGO_URL": infra.mongo_url, "LEADFLOW_IDENTITY_DATABASE": database}
    runner = CliRunner()

    created = runner.invoke(app, ["keys", "create", "--role", "rep", "--rep-id", "rita"], env=env)
    assert created.exit_code == 0, created.output
    key = created.output.strip()
    match = re.fullmatch(r"lf_([0-9a-f]{8})_[\w-]+", key)
    assert match is not None
    assert asyncio.run(key_is_valid(infra.mongo_url, database, key))

    listed = runner.invoke(app, ["keys", "list"], env=env)
    assert match.group(1) in listed.output
    assert "rita" in listed.output
    assert key not in listed.output  # the key itself is never shown again

    revoked = runner.invoke(app, ["keys", "revoke", match.group(1)], env=env)
    assert revoked.exit_code == 0, revoked.output
    assert not asyncio.run(key_is_valid(infra.mongo_url, database, key))
    again = runner.invoke(app, ["keys", "revoke", match.group(1)], env=env)
    assert again.exit_code == 2


def test_a_rep_key_without_its_rep_is_refused(infra: Infra, run_id: str) -> None:
    env = {
        "LEADFLOW_MONGO_URL": infra.mongo_url,
        "LEADFLOW_IDENTITY_DATABASE": f"leadflow_identity_cli_{run_id}",
    }
    result = CliRunner().invoke(app, ["keys", "create", "--role", "rep"], env=env)
    assert result.exit_code == 2
    assert "rep-id" in result.output
    unknown_role = CliRunner().invoke(app, ["keys", "create", "--role", "boss"], env=env)
    assert unknown_role.exit_code == 2
