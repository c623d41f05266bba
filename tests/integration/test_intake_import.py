"""CSV import against the real Kafka-wire broker and MongoDB-wire server: encodings of the
seeds' markets, per-row errors with line numbers, resuming an interrupted import, and a
file of ~13 MB in bounded memory. (Row count, 100,000 rows and more, is measured by
`bench/intake.py --scenario csv`: at the database's pace it is a benchmark, not a test.)"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from leadflow.chassis.auth import Role
from leadflow.cli import app as cli
from leadflow.localinfra import running
from services.intake.app import create_app
from services.intake.settings import Settings
from tests.conftest import Keys
from tests.support.infra import Infra
from tests.support.loopback import serve_on_loopback
from tests.support.services import serve, settings_for

pytestmark = pytest.mark.integration

CHUNK_ROWS = 50


@pytest.fixture(scope="module")
async def importer(infra: Infra, run_id: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = settings_for(
        Settings,
        infra,
        run_id,
        database=f"leadflow_intake_{run_id}_imports",
        import_chunk_rows=CHUNK_ROWS,
    )
    async with serve(create_app(settings)) as client:
        yield client


def tag() -> str:
    return uuid.uuid4().hex[:10]


def korean_mobile(n: int, salt: int) -> str:
    return f"010-{2000 + (salt + n) % 8000:04d}-{n % 10_000:04d}"


def chinese_mobile(n: int, salt: int) -> str:
    return f"139{(salt + n) % 10_000:04d}{n % 10_000:04d}"


def e164(region: str, national: str) -> str:
    digits = national.replace("-", "")
    return f"+82{digits[1:]}" if region == "KR" else f"+86{digits}"


def to_csv(rows: list[list[str]]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    return out.getvalue()


async def upload(
    client: httpx.AsyncClient,
    keys: Keys,
    content: bytes | AsyncIterator[bytes],
    **params: str,
) -> httpx.Response:
    return await client.post(
        "/v1/imports",
        content=content,
        params=params,
        headers={**await keys.headers(Role.MARKETING), "content-type": "text/csv"},
        timeout=600,
    )


async def lookup(client: httpx.AsyncClient, keys: Keys, **query: str) -> dict[str, Any]:
    found = await client.get(
        "/v1/contacts/lookup", params=query, headers=await keys.headers(Role.MANAGER)
    )
    assert found.status_code == 200, found.text
    result: dict[str, Any] = found.json()
    return result


async def error_report(client: httpx.AsyncClient, keys: Keys, import_id: str) -> list[list[str]]:
    response = await client.get(
        f"/v1/imports/{import_id}/errors", headers=await keys.headers(Role.MARKETING)
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    return list(csv.reader(io.StringIO(response.text)))


# --- encodings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "given", "region", "names", "phone_of"),
    [
        ("cp949", "auto", "KR", ["김민준", "이서연", "박지훈"], korean_mobile),
        ("cp949", "euc-kr", "KR", ["최수아", "정우진", "강하은"], korean_mobile),
        ("gb18030", "auto", "CN", ["王伟", "李娜", "张敏"], chinese_mobile),
        ("gb18030", "gbk", "CN", ["刘洋", "陈静", "杨磊"], chinese_mobile),
        ("utf-8-sig", "auto", "KR", ["윤지민", "王芳", "Zoë Ångström"], korean_mobile),
        ("utf-8", "auto", "CN", ["赵敏", "조현우", "José"], chinese_mobile),
    ],
)
async def test_files_in_each_market_encoding_import_with_names_intact(  # noqa: PLR0917
    importer: httpx.AsyncClient,
    keys: Keys,
    encoding: str,
    given: str,
    region: str,
    names: list[str],
    phone_of: Any,
) -> None:
    salt = uuid.uuid4().int % 10_000
    header = (
        ["이름", "연락처", "관심상품", "의향"]
        if region == "KR"
        else ["姓名", "手机", "意向程度", "企业规模"]
    )
    rows = [header] + [[name, phone_of(n, salt), "PT", "높음"] for n, name in enumerate(names)]
    body = to_csv(rows).encode(encoding)

    response = await upload(
        importer, keys, body, encoding=given, default_region=region, source="expo 2026"
    )

    assert response.status_code == 200, response.text
    summary = response.json()
    assert summary["status"] == "done"
    assert summary["encoding"] == {"euc-kr": "cp949", "gbk": "gb18030"}.get(given, encoding)
    assert (summary["created"], summary["rejected"]) == (len(names), 0)
    for n, name in enumerate(names):
        found = await lookup(importer, keys, phone=e164(region, phone_of(n, salt)))
        assert found["contact"]["name"] == name
        assert found["attribution"]["channel"] == "import"
        assert found["attribution"]["source"] == "expo 2026"
        assert found["profile"]["custom"][header[3]] == "높음"


# --- bad rows -------------------------------------------------------------------------------


async def test_bad_rows_are_reported_with_their_line_numbers_while_the_rest_import(
    importer: httpx.AsyncClient, keys: Keys
) -> None:
    t = tag()
    good = [f"good{n}.{t}@example.com" for n in range(4)]
    text = (
        "Name,Email,Phone,Company size,Message\n"  # line 1
        f"Ann,{good[0]},,12,hello\n"  # 2
        "Bad Phone,,12,,\n"  # 3
        "No Contact,,,,\n"  # 4
        f'Multi,{good[1]},,,"first line\nsecond line"\n'  # 5-6
        f"Size,{good[2]},,lots,\n"  # 7
        "\n"  # 8: blank, skipped
        f"Bad Email,not-an-email,,,\n"  # 9
        f"Last,{good[3]},,3,bye\n"  # 10
    )

    response = await upload(importer, keys, text.encode(), import_id=f"bad-rows-{t}")

    assert response.status_code == 200, response.text
    summary = response.json()
    assert (summary["created"], summary["rejected"]) == (3, 4)
    report = await error_report(importer, keys, summary["import_id"])
    assert report[0] == ["line", "field", "reason"]
    by_line = {int(line): (field, reason) for line, field, reason in report[1:]}
    assert sorted(by_line) == [3, 4, 7, 9]
    assert by_line[3][0] == "phone"
    assert "phone number or an email" in by_line[4][1]
    assert by_line[7] == ("Company size", "company size must be a whole number")
    assert by_line[9][0] == "email"
    multi = await lookup(importer, keys, email=good[1])
    assert multi["message"] == "first line\nsecond line"
    assert (await lookup(importer, keys, email=good[3]))["profile"]["company_size"] == 3


async def test_a_mapping_file_names_the_columns_and_a_wrong_one_stores_nothing(
    importer: httpx.AsyncClient, keys: Keys
) -> None:
    t = tag()
    text = f"Tel,Mail,Who,Budget,Skip me\n,m.{t}@example.com,Mapped Person,5000,x\n"
    mapping = {
        "Tel": "phone",
        "Mail": "email",
        "Who": "name",
        "Budget": "custom:예산",
        "Skip me": "ignore",
    }

    wrong = await upload(
        importer,
        keys,
        text.encode(),
        import_id=f"wrong-map-{t}",
        mapping=json.dumps({"Tel": "telephone", "Nope": "email"}),
    )
    assert wrong.status_code == 422
    assert {tuple(e["loc"]) for e in wrong.json()["detail"]} == {
        ("body", "mapping.Tel"),
        ("body", "mapping.Nope"),
    }
    missing = await importer.get(
        f"/v1/imports/wrong-map-{t}", headers=await keys.headers(Role.MARKETING)
    )
    assert missing.status_code == 404

    right = await upload(
        importer, keys, text.encode(), import_id=f"map-{t}", mapping=json.dumps(mapping)
    )
    assert right.status_code == 200, right.text
    assert right.json()["columns"] == {
        "Tel": "phone",
        "Mail": "email",
        "Who": "name",
        "Budget": "custom:예산",
        "Skip me": "ignore",
    }
    found = await lookup(importer, keys, email=f"m.{t}@example.com")
    assert found["contact"]["name"] == "Mapped Person"
    assert found["profile"]["custom"] == {"예산": "5000"}


async def test_a_multipart_upload_imports_too(importer: httpx.AsyncClient, keys: Keys) -> None:
    t = tag()
    response = await importer.post(
        "/v1/imports",
        files={"file": ("leads.csv", f"email,name\nmp.{t}@example.com,Form Upload\n".encode())},
        data={"mapping": json.dumps({"name": "name"})},
        headers=await keys.headers(Role.INGEST),
    )
    assert response.status_code == 200, response.text
    assert response.json()["filename"] == "leads.csv"
    assert (await lookup(importer, keys, email=f"mp.{t}@example.com"))["contact"]["name"] == (
        "Form Upload"
    )


@pytest.mark.parametrize(
    ("headers", "params", "status"),
    [
        ({"content-type": "application/json"}, {}, 415),
        ({"content-type": "text/csv"}, {"encoding": "latin-7"}, 422),
        ({"content-type": "text/csv"}, {"mapping": "{not json"}, 422),
        ({}, {}, 401),
    ],
)
async def test_bad_uploads_are_refused_naming_why(
    importer: httpx.AsyncClient,
    keys: Keys,
    headers: dict[str, str],
    params: dict[str, str],
    status: int,
) -> None:
    auth = await keys.headers(Role.MARKETING) if status != 401 else {}
    response = await importer.post(
        "/v1/imports",
        content=b"email\na@example.com\n",
        params=params,
        headers={**auth, **headers},
    )
    assert response.status_code == status, response.text


async def test_an_empty_file_is_a_422(importer: httpx.AsyncClient, keys: Keys) -> None:
    response = await upload(importer, keys, b"\n\n")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "file"]


# --- resuming -------------------------------------------------------------------------------


class ClientDied(Exception):  # noqa: N818 - what happened
    pass


def numbered_rows(t: str, count: int) -> Iterator[bytes]:
    yield b"name,email,notes\n"
    for n in range(count):
        # Long rows: the interruption comes after the first bytes the encoding is read from.
        yield f"Person {n},r{n}.{t}@example.com,{'x' * 300}\n".encode()


async def interrupted(lines: Iterator[bytes], after_bytes: int) -> AsyncIterator[bytes]:
    sent = 0
    for line in lines:
        if sent + len(line) > after_bytes:
            raise ClientDied
        sent += len(line)
        yield line


async def test_an_interrupted_import_resumes_after_its_last_chunk_without_duplicates(
    importer: httpx.AsyncClient, keys: Keys
) -> None:
    t = tag()
    rows = 9 * CHUNK_ROWS + 13
    import_id = f"resume-{t}"
    whole = b"".join(numbered_rows(t, rows))

    died = False
    try:
        await upload(
            importer,
            keys,
            interrupted(numbered_rows(t, rows), len(whole) * 3 // 4),
            import_id=import_id,
        )
    except* ClientDied:
        died = True
    assert died

    progress = await importer.get(
        f"/v1/imports/{import_id}", headers=await keys.headers(Role.MARKETING)
    )
    assert progress.json()["status"] == "running"
    committed = progress.json()["rows_done"]
    assert 0 < committed < rows
    assert committed % CHUNK_ROWS == 0

    again = await upload(importer, keys, whole, import_id=import_id)

    assert again.status_code == 200, again.text
    summary = again.json()
    assert summary["status"] == "done"
    assert summary["rows_skipped"] == committed
    assert (summary["created"], summary["merged"], summary["rejected"]) == (rows, 0, 0)
    for n in (0, committed - 1, committed, rows - 1):
        assert (await lookup(importer, keys, email=f"r{n}.{t}@example.com"))["inquiries"] == 1
    # The same file once more: already done, nothing sent through again.
    third = await upload(importer, keys, whole, import_id=import_id)
    assert third.json()["created"] == rows
    assert (await lookup(importer, keys, email=f"r0.{t}@example.com"))["inquiries"] == 1


async def test_two_uploads_of_one_import_at_once_do_not_both_run_it(
    importer: httpx.AsyncClient, keys: Keys
) -> None:
    t = tag()
    whole = b"".join(numbered_rows(t, 4 * CHUNK_ROWS))
    import_id = f"twice-{t}"

    first, second = await asyncio.gather(
        upload(importer, keys, whole, import_id=import_id),
        upload(importer, keys, whole, import_id=import_id),
    )

    statuses = sorted([first.status_code, second.status_code])
    assert statuses in ([200, 200], [200, 409]), [first.text, second.text]
    done = first if first.status_code == 200 else second
    assert done.json()["created"] == 4 * CHUNK_ROWS
    for n in (0, 4 * CHUNK_ROWS - 1):
        assert (await lookup(importer, keys, email=f"r{n}.{t}@example.com"))["inquiries"] == 1


# --- size -----------------------------------------------------------------------------------


def rss_bytes() -> int:
    statm = Path(f"/proc/{os.getpid()}/statm").read_text()
    return int(statm.split()[1]) * os.sysconf("SC_PAGE_SIZE")


ROWS = 3_000
NOTE = "상담 메모 " * 300
"""1,800 characters, ~4.2 KB a row in UTF-8 (a message may have 4,000): the file is ~13 MB,
and holding it, or its rows and their events, at once would take more than the limit below."""
BIG_CHUNK_ROWS = 100
"""Memory follows the chunk (its rows, their documents and events, ~35 copies' worth of text
measured), not the file: 100 rows of these are ~0.4 MB, the file is 30 times that."""
RESUMES = 10
RSS_GROWTH_LIMIT = 40 * 1024 * 1024


async def big_file(t: str) -> AsyncIterator[bytes]:
    buffer = io.StringIO()
    buffer.write("name,email,company,industry,메모,意向程度\n")
    for n in range(ROWS):
        buffer.write(f"Person {n},big{n}.{t}@example.com,Company {n % 977},fitness,{NOTE}{n},高\n")
        if buffer.tell() > 64 * 1024:
            yield buffer.getvalue().encode()
            buffer = io.StringIO()
    yield buffer.getvalue().encode()


async def test_a_13_mb_file_imports_in_bounded_memory(tmp_path: Path) -> None:
    # A broker and database of its own: the 3,000 leads it publishes are no work for the
    # session's other services, and its 13 MB of events no read for other tests.
    with running(tmp_path / "infra", persistent=False) as own:
        await import_a_13_mb_file(Infra("local", own.kafka_bootstrap, own.mongo_url))


async def import_a_13_mb_file(infra: Infra) -> None:
    run_id = uuid.uuid4().hex[:8]
    keys = Keys(infra, run_id)
    settings = settings_for(
        Settings,
        infra,
        run_id,
        database=f"leadflow_intake_{run_id}_bigimport",
        import_chunk_rows=BIG_CHUNK_ROWS,
    )
    t = tag()
    async with serve(create_app(settings)) as client:
        baseline = peak = rss_bytes()
        done = asyncio.Event()

        async def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, rss_bytes())
                await asyncio.sleep(0.05)

        sampler = asyncio.create_task(sample())
        try:
            # A database too busy to commit a chunk in time answers 503 (after a few tries);
            # the user runs the same import again and it carries on from its last chunk.
            for _ in range(RESUMES):
                response = await upload(client, keys, big_file(t), import_id=f"big-{t}")
                if response.status_code != 503:
                    break
        finally:
            done.set()
            await sampler

        assert response.status_code == 200, response.text
        assert response.json()["created"] == ROWS
        assert peak - baseline < RSS_GROWTH_LIMIT, f"RSS grew {(peak - baseline) >> 20} MB"
        last = await lookup(client, keys, email=f"big{ROWS - 1}.{t}@example.com")
        assert last["profile"]["custom"] == {"意向程度": "高"}


# --- the command ----------------------------------------------------------------------------


async def test_leadflow_import_streams_a_file_to_the_running_intake_and_writes_the_errors(
    infra: Infra, run_id: str, keys: Keys, tmp_path: Path
) -> None:
    settings = settings_for(
        Settings, infra, run_id, database=f"leadflow_intake_{run_id}_imports", import_chunk_rows=2
    )
    salt = uuid.uuid4().int % 10_000
    rows = [["이름", "연락처", "메모"]]
    rows += [[f"고객{n}", korean_mobile(n, salt), "체험 문의"] for n in range(5)]
    rows.insert(3, ["전화 없음", "", "번호를 안 남김"])  # file line 4
    csv_file = tmp_path / "고객명단.csv"
    csv_file.write_bytes(to_csv(rows).encode("cp949"))
    key = await keys.for_role(Role.MARKETING)
    runner = CliRunner()

    async with serve_on_loopback(create_app(settings)) as url:
        args = ["import", str(csv_file), "--region", "KR", "--url", url, "--api-key", key]
        first = await asyncio.to_thread(runner.invoke, cli, args)
        second = await asyncio.to_thread(runner.invoke, cli, args)

        assert first.exit_code == 0, first.output
        assert "created" in first.output
        assert second.exit_code == 0, second.output
        report = list(csv.reader(io.StringIO((tmp_path / "고객명단.errors.csv").read_text())))
        assert report[0] == ["line", "field", "reason"]
        assert [row[:2] for row in report[1:]] == [["4", "phone"]]
        async with httpx.AsyncClient(base_url=url) as client:
            for n in range(5):
                found = await lookup(client, keys, phone=e164("KR", korean_mobile(n, salt)))
                assert found["contact"]["name"] == f"고객{n}"
                assert found["inquiries"] == 1  # the second run imported nothing again
