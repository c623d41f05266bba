"""Message templates: Jinja2 in a sandbox, checked when marketing saves them.

Templates are marketing's text, not code: they run in Jinja2's `SandboxedEnvironment` (no
attribute access to Python internals) with `StrictUndefined`, so a variable a lead does not
have fails loudly instead of sending "Hi ," to thousands of people. Syntax errors and names
that are not template variables are found when the sequence is saved (a 422 naming the step,
the field and the line); a value only a real lead can lack (`custom.x`) fails the preview.

Pure: no I/O and no clock reads. (SMS segment counts: `services.nurture.channels.segments`.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Final, Literal

from jinja2 import StrictUndefined, Template, TemplateError, TemplateSyntaxError, meta, nodes
from jinja2.sandbox import SandboxedEnvironment

from shared.events import Contact

TEMPLATE_VARIABLES: Final[Mapping[str, str]] = {
    "name": "the lead's full name ('' when unknown)",
    "first_name": "the first word of the name ('' when unknown)",
    "email": "the lead's email address",
    "phone": "the lead's phone number (E.164)",
    "locale": "the lead's locale, e.g. 'ko-KR' ('' when unknown)",
    "sequence_name": "the name of the sequence sending the message",
    "custom": "the lead's custom profile fields, e.g. {{ custom.branch }}",
    "unsubscribe_url": "email only: a link that unsubscribes the lead in one click",
}
"""Every name a template may use; anything else is refused when the sequence is saved."""

Part = Literal["subject", "body", "html"]

_TEXT = SandboxedEnvironment(
    undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True
)
# HTML parts escape what they insert: a lead's name is data, never markup.
_HTML = SandboxedEnvironment(undefined=StrictUndefined, autoescape=True, keep_trailing_newline=True)


@dataclass(frozen=True, slots=True)
class TemplateProblem:
    """What is wrong with one part of a template, e.g. `line 2: unexpected '}'`."""

    part: Part
    reason: str
    line: int | None = None

    def __str__(self) -> str:
        return self.reason if self.line is None else f"line {self.line}: {self.reason}"


def _environment(part: Part) -> SandboxedEnvironment:
    return _HTML if part == "html" else _TEXT


@lru_cache(maxsize=4096)
def _compiled(part: Part, source: str) -> Template:
    # Templates are few and re-rendered for every lead: compile each once per process.
    return _environment(part).from_string(source)


def template_problems(part: Part, source: str) -> list[TemplateProblem]:
    """Why `source` cannot be saved as `part`: a syntax error (with its line), or names that
    are not template variables. Empty when it can."""
    environment = _environment(part)
    try:
        tree = environment.parse(source)
    except TemplateSyntaxError as error:
        return [TemplateProblem(part, error.message or "syntax error", error.lineno)]
    unknown = sorted(meta.find_undeclared_variables(tree) - TEMPLATE_VARIABLES.keys())
    if not unknown:
        return []
    first_line: dict[str, int] = {}
    for node in tree.find_all(nodes.Name):
        if node.name in unknown:
            first_line.setdefault(node.name, node.lineno)
    return [
        TemplateProblem(
            part,
            f"'{name}' is not a template variable; use one of "
            + ", ".join(sorted(TEMPLATE_VARIABLES)),
            first_line.get(name),
        )
        for name in unknown
    ]


# --- rendering ------------------------------------------------------------------------------


def template_context(
    contact: Contact | None,
    *,
    sequence_name: str,
    custom: Mapping[str, str] | None = None,
    unsubscribe_url: str | None = None,
) -> dict[str, object]:
    """The variables a lead's message is rendered with. Missing optional facts are '' (a
    template may test them); `custom` holds only the fields the lead has (StrictUndefined
    makes a missing one an error); `unsubscribe_url` exists only for email."""
    name = (contact.name if contact else None) or ""
    context: dict[str, object] = {
        "name": name,
        "first_name": name.split()[0] if name.split() else "",
        "email": (contact.email if contact else None) or "",
        "phone": (contact.phone if contact else None) or "",
        "locale": (contact.locale if contact else None) or "",
        "sequence_name": sequence_name,
        "custom": dict(custom or {}),
    }
    if unsubscribe_url is not None:
        context["unsubscribe_url"] = unsubscribe_url
    return context


class RenderError(Exception):
    """A template could not be rendered for this lead (e.g. a custom field it lacks)."""

    def __init__(self, part: Part, reason: str) -> None:
        super().__init__(f"{part}: {reason}")
        self.part = part
        self.reason = reason


def render(part: Part, source: str, context: Mapping[str, object]) -> str:
    """`source` rendered with `context`. Raises RenderError (never a Jinja2 error)."""
    try:
        return _compiled(part, source).render(context)
    except TemplateError as error:
        raise RenderError(part, error.message or type(error).__name__) from error
    except (TypeError, ValueError, ArithmeticError, LookupError) as error:
        # e.g. `{{ name + 1 }}`: marketing's mistake, reported like any template error.
        raise RenderError(part, f"{type(error).__name__}: {error}") from error
