"""Templates: refused at save time with the line, rendered safely, SMS segments counted."""

from __future__ import annotations

import pytest

from services.nurture.rules import NurtureSequence, Step, sequence_errors
from services.nurture.templates import (
    RenderError,
    render,
    template_context,
    template_problems,
)
from shared.events import Contact

pytestmark = pytest.mark.unit


def test_a_syntax_error_is_reported_with_its_line() -> None:
    [problem] = template_problems("body", "Hello\n{{ name }\nBye")
    assert problem.line == 2
    assert str(problem).startswith("line 2: ")


def test_an_unknown_variable_is_refused_at_save_time_with_its_line() -> None:
    [problem] = template_problems("body", "Hi {{ name }},\n\n{{ nmae }}")
    assert problem.line == 3
    assert "'nmae' is not a template variable" in str(problem)


def test_known_variables_filters_and_loops_are_accepted() -> None:
    source = "{% if first_name %}Hi {{ first_name|title }}{% else %}Hello{% endif %}"
    assert template_problems("subject", source) == []


def test_a_sequence_names_the_step_and_part_of_each_template_error() -> None:
    sequence = NurtureSequence(
        "s",
        "S",
        (
            Step(channel="email", delay_hours=0, subject="Hi {{ name", body="ok"),
            Step(channel="sms", delay_hours=0, body="{{ coupon }}"),
        ),
    )
    errors = {e.loc: e.reason for e in sequence_errors(sequence)}
    assert set(errors) == {("steps", 0, "subject"), ("steps", 1, "body")}
    assert errors["steps", 1, "body"].startswith("line 1: 'coupon'")


def test_the_sandbox_refuses_reaching_into_python() -> None:
    context = template_context(Contact(name="Dana"), sequence_name="S")
    with pytest.raises(RenderError):
        render("body", "{{ name.__class__.__mro__[1].__subclasses__() }}", context)


def test_a_custom_field_the_lead_lacks_fails_rendering_loudly() -> None:
    context = template_context(Contact(name="Dana"), sequence_name="S", custom={"a": "1"})
    assert render("body", "{{ custom.a }}", context) == "1"
    with pytest.raises(RenderError, match="branch"):
        render("body", "{{ custom.branch }}", context)


def test_html_parts_escape_what_they_insert_and_text_parts_do_not() -> None:
    context = template_context(Contact(name="<b>Kim</b>"), sequence_name="S")
    assert render("html", "<p>{{ name }}</p>", context) == "<p>&lt;b&gt;Kim&lt;/b&gt;</p>"
    assert render("body", "{{ name }}", context) == "<b>Kim</b>"


def test_missing_contact_facts_render_blank_not_none() -> None:
    context = template_context(None, sequence_name="Spring")
    assert render("body", "Hi {{ first_name }}!{{ sequence_name }}", context) == "Hi !Spring"
