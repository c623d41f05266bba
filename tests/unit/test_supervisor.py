"""`leadflow up`: how it builds its settings, refuses taken ports, and supervises children."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from leadflow.cli import app, stack_settings
from leadflow.config import StackSettings
from leadflow.localinfra import ChildProcess
from leadflow.supervisor import Backoff, Stack, StackReady, Step, next_step

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


# --- restarting what died -------------------------------------------------------------------


def test_a_dead_child_is_restarted_only_after_its_backoff() -> None:
    backoff = Backoff()
    assert next_step(alive=True, backoff=backoff, now=100.0) is Step.NOTHING
    assert next_step(alive=False, backoff=backoff, now=100.0) is Step.SCHEDULE
    backoff.next_restart_at = 100.0 + backoff.delay_s()
    assert next_step(alive=False, backoff=backoff, now=100.5) is Step.WAIT
    assert next_step(alive=False, backoff=backoff, now=101.0) is Step.RESTART


def test_tansu_waits_for_its_s3_server_even_when_its_backoff_is_over() -> None:
    backoff = Backoff(next_restart_at=10.0)
    assert next_step(alive=False, backoff=backoff, now=50.0, needs_down=True) is Step.WAIT
    assert next_step(alive=False, backoff=backoff, now=50.0, needs_down=False) is Step.RESTART


def test_the_backoff_doubles_with_each_restart_up_to_thirty_seconds() -> None:
    delays = [Backoff(restarts=n).delay_s() for n in range(7)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def sleeper(name: str, tmp_path: Path) -> ChildProcess:
    """A real child process that just waits: what the supervisor sees of a server."""
    child = ChildProcess(
        name, [sys.executable, "-c", "import time; time.sleep(120)"], tmp_path / f"{name}.log"
    )
    child.start()
    return child


def test_dead_infrastructure_is_restarted_s3_before_kafka_and_the_new_pids_are_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = Stack(
        StackSettings(
            data_dir=tmp_path,
            kafka_bootstrap="127.0.0.1:1",
            mongo_url="mongodb://127.0.0.1:1/",
            startup_timeout_s=5,
        )
    )
    mongo, s3, kafka = (sleeper(name, tmp_path) for name in ("mongo", "s3", "kafka"))
    stack.infra.children = [mongo, s3, kafka]
    stack.infra.mongo, stack.infra.s3, stack.infra.kafka = mongo, s3, kafka
    stack.ready = StackReady({}, "key", "127.0.0.1:1", "mongodb://127.0.0.1:1/", "s3", 0.0)
    topic_runs: list[str] = []

    async def recreate_topics() -> None:
        topic_runs.append("kafka")

    monkeypatch.setattr(stack, "_prepare_kafka", recreate_topics)
    try:
        old = {c.name: c.pid for c in stack.infra.children}
        for child in (mongo, s3, kafka):
            assert child.process is not None
            child.process.kill()
            child.process.wait()

        stack.supervise_once(now=100.0)  # found dead: scheduled, not stopped
        assert [c.alive() for c in (mongo, s3, kafka)] == [False, False, False]
        assert stack.infra_backoff["kafka"].next_restart_at == 101.0

        s3_backoff = stack.infra_backoff["s3"]
        s3_backoff.next_restart_at = 200.0  # the S3 server's back-off is longer this time
        stack.supervise_once(now=101.0)
        assert mongo.alive()
        assert not s3.alive()
        assert not kafka.alive(), "Tansu must not start while its S3 server is down"

        stack.supervise_once(now=200.0)
        assert s3.alive()
        assert kafka.alive()
        assert topic_runs == ["kafka"]
        state = json.loads((tmp_path / "stack.json").read_text())
        assert state["infra"] == {c.name: c.pid for c in (mongo, s3, kafka)}
        assert all(state["infra"][name] != old[name] for name in old)
        assert [stack.infra_backoff[n].restarts for n in ("mongo", "s3", "kafka")] == [1, 1, 1]
    finally:
        for child in (mongo, s3, kafka):
            child.stop(timeout_s=5)
