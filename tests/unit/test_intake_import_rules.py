"""Pure rules of the CSV import: encodings, record splitting, column plans, row mapping."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.intake.imports.rules import (
    ColumnPlan,
    ImportOptions,
    MappingError,
    RecordSplitter,
    RowProblem,
    detect_encoding,
    encoding_named,
    map_row,
    parse_records,
    plan_columns,
)

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
OPTIONS = ImportOptions(import_id="imp1", source="expo", campaign="spring", default_region="KR")

KOREAN = "이름,연락처,메모\n김민준,010-2345-6789,체험 문의\n이서연,010-3456-7890,가격 문의\n"
CHINESE = "姓名,手机,意向程度,企业规模\n王伟,13800138000,很高,50人\n李娜,13900139000,一般,200人\n"


# --- encodings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (KOREAN.encode("cp949"), "cp949"),
        (CHINESE.encode("gb18030"), "gb18030"),
        (CHINESE.encode("gbk"), "gb18030"),
        (KOREAN.encode("utf-8"), "utf-8"),
        (("\ufeff" + CHINESE).encode("utf-8"), "utf-8-sig"),
        (b"name,email\nAnn,ann@example.com\n", "utf-8"),
    ],
)
def test_the_encoding_is_told_from_the_bytes(data: bytes, expected: str) -> None:
    assert detect_encoding(data, complete=True) == expected


def test_a_sample_cut_inside_a_character_is_still_utf8() -> None:
    data = KOREAN.encode("utf-8")
    cut = data[: data.index("김".encode()) + 1]  # one byte of a three-byte character
    assert detect_encoding(cut, complete=False) == "utf-8"


def test_encoding_names_users_type_are_understood() -> None:
    assert encoding_named("EUC-KR") == "cp949"
    assert encoding_named(" GBK ") == "gb18030"
    assert encoding_named("utf-8-bom") == "utf-8-sig"
    with pytest.raises(ValueError, match="unsupported encoding 'latin-1'"):
        encoding_named("latin-1")


# --- records --------------------------------------------------------------------------------

TRICKY = (
    "name,note\r\n"
    'Ann,"two\nlines"\r\n'
    '"Quote ""Q""",x\n'
    "Height,5'11\" tall\n"
    ',"a, b"\n'
    "\n"
    "Last,no newline at the end"
)


@pytest.mark.parametrize("piece", [1, 2, 3, 7, 1000])
def test_records_are_cut_as_the_csv_module_reads_them_however_the_text_arrives(
    piece: int,
) -> None:
    splitter = RecordSplitter()
    records = []
    for start in range(0, len(TRICKY), piece):
        records += splitter.feed(TRICKY[start : start + piece])
    records += splitter.finish()

    assert parse_records(records) == list(csv.reader(io.StringIO(TRICKY)))
    assert [r.line for r in records] == [1, 2, 4, 5, 6, 7, 8]


@given(
    st.lists(
        st.lists(st.text(alphabet='ab,"\n 김', max_size=6), min_size=1, max_size=4),
        min_size=1,
        max_size=8,
    ),
    st.integers(min_value=1, max_value=9),
)
def test_any_written_csv_is_read_back_row_for_row(rows: list[list[str]], piece: int) -> None:
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    text = out.getvalue()
    splitter = RecordSplitter()
    records = []
    for start in range(0, len(text), piece):
        records += splitter.feed(text[start : start + piece])
    records += splitter.finish()
    assert parse_records(records) == list(csv.reader(io.StringIO(text)))


# --- columns --------------------------------------------------------------------------------


def test_known_headers_in_english_korean_and_chinese_need_no_mapping() -> None:
    plan = plan_columns(["Full Name", "E-mail", "휴대폰", "公司名称", "意向程度", "  "], None)
    assert plan.targets == ("name", "email", "phone", "company", "custom:意向程度", None)


def test_a_mapping_file_wins_and_can_ignore_or_name_custom_fields() -> None:
    plan = plan_columns(
        ["Tel", "Name", "Budget", "Internal id"],
        {"tel": "phone", "Budget": "custom:예산", "Internal id": "ignore"},
    )
    assert plan.describe() == {
        "Tel": "phone",
        "Name": "name",
        "Budget": "custom:예산",
        "Internal id": "ignore",
    }


def test_every_wrong_mapping_entry_is_named() -> None:
    with pytest.raises(MappingError) as error:
        plan_columns(["Tel", "Phone"], {"Tel": "telephone", "Fax": "phone", "Phone": "phone"})
    assert sorted(where for where, _ in error.value.problems) == [
        "mapping.Fax",
        "mapping.Tel",
    ]


def test_two_columns_for_one_field_are_refused() -> None:
    with pytest.raises(MappingError) as error:
        plan_columns(["phone", "mobile"], None)
    assert error.value.problems[0][0] == "header.mobile"


# --- rows -----------------------------------------------------------------------------------

PLAN = ColumnPlan(
    headers=("이름", "연락처", "Email", "Company size", "SMS consent", "의향", "utm_source"),
    targets=("name", "phone", "email", "company_size", "consent_sms", "custom:의향", "utm_source"),
)


def test_a_row_becomes_a_lead_with_attribution_consent_and_custom_fields() -> None:
    mapped = map_row(
        PLAN,
        ["김민준", "010-2345-6789", "", "1,200", "예", "높음", "naver"],
        line=7,
        options=OPTIONS,
        received_at=NOW,
    )
    assert not isinstance(mapped, list)
    assert mapped.external_id == "csv:imp1:7"
    assert (mapped.name, mapped.phone, mapped.email) == ("김민준", "010-2345-6789", None)
    assert mapped.default_region == "KR"
    assert mapped.profile.company_size == 1200
    assert mapped.profile.custom == {"의향": "높음"}
    assert mapped.consent == {"sms": True}
    assert mapped.attribution.channel == "import"
    assert mapped.attribution.source == "expo"
    assert mapped.attribution.campaign == "spring"
    assert mapped.attribution.utm_source == "naver"


def test_every_problem_of_a_row_is_named_with_its_line_and_column() -> None:
    problems = map_row(
        PLAN,
        ["Bad", "", "", "many", "maybe", "\ufffd\ufffd", ""],
        line=12,
        options=OPTIONS,
        received_at=NOW,
    )
    assert problems == [
        RowProblem(12, "Company size", "company size must be a whole number"),
        RowProblem(12, "SMS consent", "consent must be yes/no (or 1/0)"),
        RowProblem(12, "의향", "not valid text in the file's encoding"),
    ]


def test_a_row_without_phone_or_email_is_refused() -> None:
    assert map_row(PLAN, ["Only Name"], line=3, options=OPTIONS, received_at=NOW) == [
        RowProblem(3, "phone", "a lead needs a phone number or an email address")
    ]


def test_extra_fields_beyond_the_header_are_a_problem_unless_empty() -> None:
    row = ["A", "010-2345-6789", "", "", "", "", ""]
    assert not isinstance(
        map_row(PLAN, [*row, "", " "], line=2, options=OPTIONS, received_at=NOW), list
    )
    problems = map_row(PLAN, [*row, "surprise"], line=2, options=OPTIONS, received_at=NOW)
    assert problems == [RowProblem(2, "row", "8 fields, the header has 7")]
