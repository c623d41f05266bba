"""Pure decisions of the CSV import: which encoding a file is in, where each record of a
stream of text begins and ends, which column means what, and what each row becomes.
No I/O, no clock reads: the use case feeds text in and takes records out."""

from __future__ import annotations

import codecs
import csv
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from services.intake.webhooks.submissions import MappedLead
from shared.events import Attribution, Profile

# --- encodings ----------------------------------------------------------------------------

Encoding = Literal["utf-8", "utf-8-sig", "cp949", "gb18030"]
"""UTF-8 (with or without BOM) and the encodings of the seeds' markets: CP949 (Korean
Windows / EUC-KR superset) and GB18030 (Chinese; a superset of GBK and GB2312)."""

ENCODING_ALIASES: Mapping[str, Encoding] = {
    "utf-8": "utf-8",
    "utf8": "utf-8",
    "utf-8-sig": "utf-8-sig",
    "utf-8-bom": "utf-8-sig",
    "cp949": "cp949",
    "euc-kr": "cp949",
    "uhc": "cp949",
    "ks_c_5601-1987": "cp949",
    "gb18030": "gb18030",
    "gbk": "gb18030",
    "gb2312": "gb18030",
}

DETECTION_SAMPLE_BYTES = 64 * 1024
"""How much of the file encoding detection looks at."""

_HANGUL_SHARE_FOR_KOREAN = 0.8


def encoding_named(name: str) -> Encoding:
    """The encoding a user asked for; raises ValueError naming the ones supported."""
    try:
        return ENCODING_ALIASES[name.strip().lower()]
    except KeyError:
        known = ", ".join(sorted(ENCODING_ALIASES))
        raise ValueError(f"unsupported encoding '{name}'; use one of: auto, {known}") from None


def detect_encoding(sample: bytes, *, complete: bool) -> Encoding:
    """The encoding of a file from its first bytes.

    A BOM means UTF-8-BOM. Text that decodes as UTF-8 is UTF-8 (legacy double-byte text
    almost never does). Otherwise CP949 and GB18030 both decode most Korean and Chinese
    bytes, so the choice looks at what the text becomes: Korean names and words are
    written in Hangul syllables, which CP949 gives for Korean text; Chinese text read as
    CP949 yields a mix of Hangul and Hanja (or fails), and is GB18030.
    `complete`: the sample is the whole file (else its last character may be cut).
    """
    if sample.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if _decodes(sample, "utf-8", complete=complete):
        return "utf-8"
    korean = _decoded(sample, "cp949", complete=complete)
    if korean is not None:
        wide = [c for c in korean if ord(c) > 0x7F and unicodedata.category(c).startswith("L")]
        hangul = sum(1 for c in wide if 0xAC00 <= ord(c) <= 0xD7A3)
        if wide and hangul / len(wide) >= _HANGUL_SHARE_FOR_KOREAN:
            return "cp949"
    return "gb18030"


def _decoded(sample: bytes, encoding: str, *, complete: bool) -> str | None:
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    try:
        return decoder.decode(sample, final=complete)
    except UnicodeDecodeError:
        return None


def _decodes(sample: bytes, encoding: str, *, complete: bool) -> bool:
    return _decoded(sample, encoding, complete=complete) is not None


# --- records ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RawRecord:
    line: int
    """The file line the record starts on (1 = the header)."""
    text: str


_START, _UNQUOTED, _QUOTED, _QUOTE_IN_QUOTED = range(4)


class RecordSplitter:
    """Cuts a stream of text into CSV records, however the text is chunked.

    A newline ends a record unless it is inside a quoted field. Quoting is followed as
    Python's csv reader follows it: a quote opens a quoted field only at the start of a
    field (`5'11"` is literal), and a doubled quote inside one is a quote. Lines without a
    quote (most of a typical file) are not scanned character by character. Line numbers
    count physical lines, so a record with a multi-line field reports the line it starts on.
    """

    def __init__(self) -> None:
        self._pending: list[str] = []
        self._state = _START
        self._pending_line = 1
        self._next_line = 1

    def feed(self, text: str) -> list[RawRecord]:
        records: list[RawRecord] = []
        start = 0
        while True:
            newline = text.find("\n", start)
            if newline < 0:
                break
            piece = text[start : newline + 1]
            start = newline + 1
            self._append(piece)
            self._next_line += 1
            if self._state != _QUOTED:
                records.append(self._take())
        if start < len(text):
            self._append(text[start:])
        return records

    def finish(self) -> list[RawRecord]:
        """The last record, if the text did not end with a newline."""
        if self._pending:
            return [self._take()]
        return []

    def _append(self, piece: str) -> None:
        if not self._pending:
            self._pending_line = self._next_line
        self._pending.append(piece)
        if '"' in piece:
            self._state = _scan(piece, self._state)
        elif self._state != _QUOTED and (content := piece.rstrip("\r\n")):
            # Only the last character matters: a quote may open a field right after a comma.
            self._state = _START if content.endswith(",") else _UNQUOTED

    def _take(self) -> RawRecord:
        record = RawRecord(self._pending_line, "".join(self._pending))
        self._pending = []
        self._state = _START
        return record


def _scan(piece: str, state: int) -> int:
    """The quoting state after `piece` (see `RecordSplitter`)."""
    for char in piece:
        if state == _QUOTED:
            if char == '"':
                state = _QUOTE_IN_QUOTED
        elif char == ",":
            state = _START
        elif char == '"':
            state = _QUOTED if state in (_START, _QUOTE_IN_QUOTED) else state
        elif char in "\r\n":
            continue
        elif state in (_START, _QUOTE_IN_QUOTED):
            state = _UNQUOTED
    return state


def parse_records(records: Sequence[RawRecord]) -> list[list[str]]:
    """The fields of each record (one csv reader pass over the batch)."""
    return list(csv.reader(r.text for r in records))


def is_blank(fields: Sequence[str]) -> bool:
    return all(not f.strip() for f in fields)


# --- columns ------------------------------------------------------------------------------

Target = Literal[
    "name",
    "first_name",
    "last_name",
    "phone",
    "email",
    "company",
    "industry",
    "region",
    "country",
    "postal_code",
    "product_line",
    "company_size",
    "language",
    "message",
    "campaign",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_term",
    "utm_content",
    "referrer",
    "landing_page",
    "consent_email",
    "consent_sms",
    "consent_phone",
]
TARGETS: frozenset[str] = frozenset(Target.__args__)  # type: ignore[attr-defined]
IGNORE = "ignore"
CUSTOM_PREFIX = "custom:"

HEADER_ALIASES: Mapping[str, str] = {
    # English
    **{a: "name" for a in ("name", "full name", "fullname", "full_name", "contact name")},
    **{a: "first_name" for a in ("first name", "firstname", "first_name", "given name")},
    **{a: "last_name" for a in ("last name", "lastname", "last_name", "surname", "family name")},
    **{
        a: "phone"
        for a in ("phone", "phone number", "phone_number", "mobile", "mobile phone", "tel", "cell")
    },
    **{a: "email" for a in ("email", "e-mail", "email address", "mail")},
    **{a: "company" for a in ("company", "company name", "company_name", "organization")},
    **{a: "industry" for a in ("industry", "sector")},
    **{a: "region" for a in ("region", "state", "province")},
    "country": "country",
    **{a: "postal_code" for a in ("postal code", "postal_code", "zip", "zip code", "postcode")},
    **{a: "product_line" for a in ("product", "product line", "product_line", "interest")},
    **{a: "company_size" for a in ("company size", "company_size", "employees")},
    **{a: "language" for a in ("language", "lang")},
    **{a: "message" for a in ("message", "note", "notes", "comment", "comments")},
    "campaign": "campaign",
    **{t: t for t in ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content")},
    **{a: "referrer" for a in ("referrer", "referer")},
    **{a: "landing_page" for a in ("landing page", "landing_page")},
    **{a: "consent_email" for a in ("consent_email", "email consent", "email opt-in")},
    **{a: "consent_sms" for a in ("consent_sms", "sms consent", "sms opt-in")},
    **{a: "consent_phone" for a in ("consent_phone", "phone consent")},
    # Korean
    **{a: "name" for a in ("이름", "성명", "고객명", "담당자")},
    **{a: "phone" for a in ("전화", "전화번호", "휴대폰", "휴대폰번호", "연락처", "핸드폰")},
    **{a: "email" for a in ("이메일", "메일", "전자우편")},
    **{a: "company" for a in ("회사", "회사명", "기업명", "업체명")},
    **{a: "industry" for a in ("업종", "산업")},
    **{a: "region" for a in ("지역", "시도")},
    "국가": "country",
    "우편번호": "postal_code",
    **{a: "product_line" for a in ("관심상품", "관심 상품", "상품")},
    **{a: "message" for a in ("메모", "문의내용", "상담내용", "비고")},
    # Chinese
    **{a: "name" for a in ("姓名", "名字", "联系人", "客户姓名")},
    **{a: "phone" for a in ("电话", "手机", "手机号", "手机号码", "联系电话", "电话号码")},
    **{a: "email" for a in ("邮箱", "电子邮件", "电子邮箱", "邮件")},
    **{a: "company" for a in ("公司", "公司名称", "企业名称", "单位")},
    **{a: "industry" for a in ("行业", "所属行业")},
    **{a: "region" for a in ("地区", "区域", "省份")},
    "国家": "country",
    "邮编": "postal_code",
    **{a: "product_line" for a in ("产品", "意向产品", "产品线")},
    **{a: "message" for a in ("备注", "留言", "咨询内容")},
}
"""Header names understood without a mapping file (case and spacing ignored). Other
columns become custom fields under their header (seed 002: "意向程度", "企业规模")."""


def header_key(header: str) -> str:
    return " ".join(header.replace("\ufeff", "").split()).lower()


class MappingError(ValueError):
    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{where}: {why}" for where, why in problems))
        self.problems = list(problems)


@dataclass(frozen=True, slots=True)
class ColumnPlan:
    """What each column of the file is: a target field, a custom field, or ignored."""

    headers: tuple[str, ...]
    targets: tuple[str | None, ...]
    """Per column: a `Target`, "custom:<label>", or None (ignored)."""

    def describe(self) -> dict[str, str]:
        return {h: t or IGNORE for h, t in zip(self.headers, self.targets, strict=True)}


def plan_columns(headers: Sequence[str], mapping: Mapping[str, str] | None) -> ColumnPlan:
    """Resolve each header: the mapping file first (header -> field, "custom:<label>" or
    "ignore"), then the known names, else a custom field named after the header.

    Raises MappingError naming every mapping entry that is wrong.
    """
    problems: list[tuple[str, str]] = []
    given = {header_key(k): v for k, v in (mapping or {}).items()}
    keys = [header_key(h) for h in headers]
    for raw, value in (mapping or {}).items():
        if header_key(raw) not in keys:
            problems.append((f"mapping.{raw}", "no column has this header"))
        if not (value in TARGETS or value == IGNORE or value.startswith(CUSTOM_PREFIX)):
            problems.append(
                (
                    f"mapping.{raw}",
                    f"'{value}' is not a field; use one of {sorted(TARGETS)}, "
                    f"'{CUSTOM_PREFIX}<label>' or '{IGNORE}'",
                )
            )
    targets: list[str | None] = []
    seen: dict[str, str] = {}
    for header, key in zip(headers, keys, strict=True):
        if not key:
            targets.append(None)
            continue
        target = given.get(key) or HEADER_ALIASES.get(key) or f"{CUSTOM_PREFIX}{header.strip()}"
        if target == IGNORE:
            targets.append(None)
            continue
        if target in seen and not target.startswith(CUSTOM_PREFIX):
            problems.append(
                (f"header.{header}", f"both '{seen[target]}' and '{header}' map to {target}")
            )
        seen.setdefault(target, header)
        targets.append(target)
    if problems:
        raise MappingError(problems)
    return ColumnPlan(tuple(h.strip() for h in headers), tuple(targets))


# --- rows ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImportOptions:
    """What applies to every row of one import."""

    import_id: str
    source: str = "import"
    campaign: str | None = None
    default_region: str | None = None


@dataclass(frozen=True, slots=True)
class RowProblem:
    line: int
    field: str
    reason: str


_TRUE = frozenset({"1", "true", "yes", "y", "o", "예", "네", "是", "동의", "同意"})
_FALSE = frozenset({"0", "false", "no", "n", "x", "", "아니오", "否", "거부", "不同意"})


@dataclass
class _RowValues:
    contact: dict[str, str] = field(default_factory=dict)
    profile: dict[str, str | int] = field(default_factory=dict)
    custom: dict[str, str] = field(default_factory=dict)
    utm: dict[str, str] = field(default_factory=dict)
    consent: dict[str, bool] = field(default_factory=dict)
    other: dict[str, str] = field(default_factory=dict)

    def take(self, target: str, value: str) -> str | None:
        """File `value` under `target`; what is wrong with it, if anything."""
        if target.startswith(CUSTOM_PREFIX):
            self.custom[target.removeprefix(CUSTOM_PREFIX)] = value
        elif target in _CONTACT_TARGETS:
            self.contact[target] = value
        elif target == "company_size":
            digits = value.replace(",", "")
            if not digits.isdigit():
                return "company size must be a whole number"
            self.profile["company_size"] = int(digits)
        elif target.startswith("consent_"):
            flag = value.lower()
            if flag not in _TRUE and flag not in _FALSE:
                return "consent must be yes/no (or 1/0)"
            self.consent[target.removeprefix("consent_")] = flag in _TRUE
        elif target == "country" and not (len(value) == 2 and value.isascii()):
            # A country written out ("대한민국") is kept; the profile's field takes a code.
            self.custom[target] = value
        elif target.startswith("utm_"):
            self.utm[target] = value
        elif target in _OTHER_TARGETS:
            self.other[target] = value
        else:
            self.profile[target] = value
        return None


_CONTACT_TARGETS = frozenset({"name", "first_name", "last_name", "phone", "email"})
_OTHER_TARGETS = frozenset({"message", "campaign", "referrer", "landing_page"})


def map_row(
    plan: ColumnPlan,
    fields: Sequence[str],
    *,
    line: int,
    options: ImportOptions,
    received_at: datetime,
) -> MappedLead | list[RowProblem]:
    """A data row as a lead, or every problem with it (each naming its column)."""
    problems: list[RowProblem] = []
    if len(fields) > len(plan.headers) and not is_blank(fields[len(plan.headers) :]):
        problems.append(
            RowProblem(line, "row", f"{len(fields)} fields, the header has {len(plan.headers)}")
        )
    values = _RowValues()
    for header, target, raw in zip(plan.headers, plan.targets, fields, strict=False):
        value = raw.strip()
        if target is None or not value:
            continue
        if "\ufffd" in value:
            problems.append(RowProblem(line, header, "not valid text in the file's encoding"))
            continue
        reason = values.take(target, value)
        if reason is not None:
            problems.append(RowProblem(line, header, reason))
    if problems:
        return problems
    name = values.contact.get("name") or (
        " ".join(
            p for p in (values.contact.get("first_name"), values.contact.get("last_name")) if p
        )
        or None
    )
    phone = values.contact.get("phone")
    email = values.contact.get("email")
    if not phone and not email:
        return [RowProblem(line, "phone", "a lead needs a phone number or an email address")]
    campaign = values.other.get("campaign") or options.campaign or values.utm.get("utm_campaign")
    return MappedLead(
        external_id=f"csv:{options.import_id}:{line}",
        name=name,
        phone=phone,
        email=email,
        profile=Profile.model_validate({**values.profile, "custom": values.custom}),
        consent=values.consent,
        attribution=Attribution(
            source=options.source,
            channel="import",
            campaign=campaign,
            referrer=values.other.get("referrer"),
            landing_page=values.other.get("landing_page"),
            **values.utm,
        ),
        message=values.other.get("message"),
        received_at=received_at,
        default_region=options.default_region,
    )


def problems_of_rejection(line: int, reasons: Iterable[tuple[str, str]]) -> list[RowProblem]:
    found = [RowProblem(line, where, why) for where, why in reasons]
    return found or [RowProblem(line, "row", "rejected")]
