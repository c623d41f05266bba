"""`leadflow up`: how it builds its settings, refuses taken ports, and supervises children."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from leadflow.cli import app, stack_settings
from leadflow.config import StackSettings
from leadflow.supervisor import Stack

pytestmark = pytest.mark.unit


def test_a_taken_port_is_named_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        monkeypatch.setenv("LEADFLOW_NURTURE_PORT", str(port))
        stack = Stack(
            StackSettings(
                data_dir=tmp_path / "data",
                kafka_bootstrap="127.0.0.1:1",  # external: nothing of ours to start
                mongo_url="mongodb://127.0.0.1:1/",
            )
        )
        with pytest.raises(RuntimeError, match=rf"{port} \(LEADFLOW_NURTURE_PORT\)"):
            stack.start()
    assert stack.services == []
    assert stack.infra.children == []
    assert not (tmp_path / "data").exists()


# --- how `up` builds its settings -----------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "flags", "persistent"),
    [
        ({}, [], True),
        ({"LEADFLOW_PERSISTENT": "false"}, [], False),
        ({"LEADFLOW_PERSISTENT": "true"}, [], True),
        ({"LEADFLOW_PERSISTENT": "false"}, ["--persistent"], True),
        ({"LEADFLOW_PERSISTENT": "true"}, ["--no-persistent"], False),
        ({}, ["--no-persistent"], False),
    ],
)
def test_up_reads_leadflow_persistent_and_an_explicit_flag_overrides_it(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    flags: list[str],
    persistent: bool,
) -> None:
    built: list[StackSettings] = []

    class StackThatRecordsItsSettings:
        """Stands in for the real stack: remembers the settings, starts nothing."""

        def __init__(self, settings: StackSettings) -> None:
            built.append(settings)
            self.data_dir = tmp_path / "data"

        def start(self) -> None:
            raise RuntimeError("not starting anything in a unit test")

        def stop(self) -> None:
            pass

    monkeypatch.delenv("LEADFLOW_PERSISTENT", raising=False)
    monkeypatch.setattr("leadflow.supervisor.Stack", StackThatRecordsItsSettings)
    result = CliRunner().invoke(app, ["up", *flags], env=env)
    assert result.exit_code == 1, result.output
    assert "not starting anything" in result.output
    assert [s.persistent for s in built] == [persistent]


def test_stack_settings_keep_the_environment_unless_an_option_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEADFLOW_PERSISTENT", "false")
    monkeypatch.setenv("LEADFLOW_DATA_DIR", str(tmp_path / "from-env"))
    from_env = stack_settings(data_dir=None, persistent=None)
    assert (from_env.persistent, from_env.data_dir) == (False, tmp_path / "from-env")
    explicit = stack_settings(data_dir=tmp_path / "given", persistent=True)
    assert (explicit.persistent, explicit.data_dir) == (True, tmp_path / "given")
