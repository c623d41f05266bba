from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from leadflow.chassis.auth import Role
from leadflow.keys import create_key
from tests.support.infra import Infra, container_infra, docker_unavailable_reason, local_infra
from tests.support.services import serve, settings_for


@pytest.fixture(scope="session", params=["local", "containers"])
def infra(request: pytest.FixtureRequest) -> Iterator[Infra]:
    """Real Kafka and MongoDB wire protocols: local processes, or containers with Docker."""
    if request.param == "containers":
        reason = docker_unavailable_reason()
        if reason is not None:
            pytest.skip(reason)
        with container_infra() as containers:
            yield containers
    else:
        with local_infra() as local:
            yield local


@pytest.fixture(scope="session")
def run_id(infra: Infra) -> str:
    return f"{infra.kind}_{uuid.uuid4().hex[:8]}"


class Keys:
    """API keys for the test run's identity database, one per role."""

    def __init__(self, infra: Infra, run_id: str) -> None:
        self.infra = infra
        self.identity_database = f"leadflow_identity_{run_id}"
        self._by_role: dict[Role, str] = {}

    async def for_role(self, role: Role) -> str:
        if role not in self._by_role:
            self._by_role[role] = await self.create(role)
        return self._by_role[role]

    async def create(self, role: Role, rep_id: str | None = None) -> str:
        issued = await create_key(
            self.infra.mongo_url, self.identity_database, role, f"test {role}", rep_id
        )
        return issued.key

    async def headers(self, role: Role, rep_id: str | None = None) -> dict[str, str]:
        key = await self.create(role, rep_id) if rep_id else await self.for_role(role)
        return {"X-API-Key": key}


@pytest.fixture(scope="session")
def keys(infra: Infra, run_id: str) -> Keys:
    return Keys(infra, run_id)


@pytest.fixture(scope="session")
async def intake(infra: Infra, run_id: str) -> AsyncIterator[httpx.AsyncClient]:
    from services.intake.app import create_app  # noqa: PLC0415
    from services.intake.settings import Settings  # noqa: PLC0415

    async with serve(create_app(settings_for(Settings, infra, run_id))) as client:
        yield client


@pytest.fixture(scope="session")
async def assignment(infra: Infra, run_id: str) -> AsyncIterator[httpx.AsyncClient]:
    from services.assignment.app import create_app  # noqa: PLC0415
    from services.assignment.settings import Settings  # noqa: PLC0415

    async with serve(create_app(settings_for(Settings, infra, run_id))) as client:
        yield client


@pytest.fixture(scope="session")
async def nurture(infra: Infra, run_id: str) -> AsyncIterator[httpx.AsyncClient]:
    from services.nurture.app import create_app  # noqa: PLC0415
    from services.nurture.settings import Settings  # noqa: PLC0415

    async with serve(create_app(settings_for(Settings, infra, run_id))) as client:
        yield client


@pytest.fixture(scope="session")
async def analytics(infra: Infra, run_id: str) -> AsyncIterator[httpx.AsyncClient]:
    from services.analytics.app import create_app  # noqa: PLC0415
    from services.analytics.settings import Settings  # noqa: PLC0415

    async with serve(create_app(settings_for(Settings, infra, run_id))) as client:
        yield client


# --- no silent skips ----------------------------------------------------------------------
# Integration and e2e tests on the local processes must really run: a skip there (say,
# because an import failed) fails the session. Only the `containers` kind may skip, and
# only with its reason (no Docker engine).
_skipped_locally: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if (
        report.skipped
        and "[containers" not in report.nodeid
        and ("integration" in report.keywords or "e2e" in report.keywords)
    ):
        _skipped_locally.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _skipped_locally and exitstatus == 0:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(
                "FAILED: these tests must run on the local broker and database but were "
                "skipped: " + ", ".join(_skipped_locally),
                red=True,
            )
        session.exitstatus = 1
