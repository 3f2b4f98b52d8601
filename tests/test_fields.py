"""Personal fields: the closed `{{ subscriber.… }}` syntax, its refusals, and the markers that
carry each field through Markdown, MJML and the plain-text part to the send path."""

from __future__ import annotations

import dataclasses
import functools
import tempfile
from datetime import UTC
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailer.content import fields, parse_issue
from mailer.content.fields import Field
from mailer.content.render import render_issue, render_web_view
from mailer.content.rendered import personal_subject, personalize
from mailer.delivery.message import Letter, prepare_message
from mailer.errors import ContentError
from tests.test_prepared import DATE, MSG_ID, URL, assert_same_message, both, make_letter

HEAD = "---\nsubject: Hi\nstatus: ready\n---\n"


def issue_text(body: str, *, subject: str = "Hi") -> str:
    return f"---\nsubject: '{subject}'\nstatus: ready\n---\n{body}"


def refusal(text: str) -> ContentError:
    with pytest.raises(ContentError) as caught:
        parse_issue(text, path=Path("content/ml-issues/2026-12-07-x.md"))
    return caught.value


@pytest.mark.parametrize(("source", "field"), [
    ("{{ subscriber.email }}", Field("email")),
    ("{{subscriber.name}}", Field("name")),
    ("{{ subscriber . name | default ( \"there\" ) }}", Field("name", "there")),
    ('{{ subscriber.attributes.city | default("your city") }}',
     Field("attributes.city", "your city")),
    ("{{\tsubscriber.attributes.plan_2|default(\"\")}}", Field("attributes.plan_2", "")),
    (r'{{ subscriber.name | default("the \"best\" \\ reader") }}',
     Field("name", 'the "best" \\ reader')),
    ('{{ subscriber.name | default("Zoë, {{ not a field }}") }}',
     Field("name", "Zoë, {{ not a field }}")),
])
def test_the_closed_syntax_reads_each_field_and_its_default(source: str, field: Field) -> None:
    uses = fields.uses(f"Hello {source}!", file="x.md")
    assert [use.field for use in uses] == [field]
    assert fields.uses(field.source(), file="x.md")[0].field == field


@pytest.mark.parametrize("body", [
    "{{ cycler.__init__.__globals__ }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{% for x in y %}{{ x }}{% endfor %}",
    "{{ config }}",
    "{{ subscriber.name.__class__ }}",
    "{{ subscriber.name | upper }}",
    "{{ subscriber.attributes }}",
    "{{ subscriber.attributes.City }}",
    "{{ subscriber['name'] }}",
    "{{ subscriber.name | default(there) }}",
    "{{ subscriber.name | default('there') }}",
    '{{ subscriber.name | default("a\\nb") }}',
    "{# a comment #}",
    "{{ subscriber.name }",
    "{{",
    "MAILERFIELD6e616d65END",
])
def test_anything_else_is_refused_naming_the_file_and_line_and_nothing_is_evaluated(
    body: str,
) -> None:
    error = refusal(issue_text(f"Line one.\n\nHello {body}\n"))
    assert error.file == "content/ml-issues/2026-12-07-x.md"
    assert error.line == 7  # the front matter is lines 1-4; the body starts at 5
    assert str(error).startswith("content/ml-issues/2026-12-07-x.md:7: ")


def test_the_subject_and_preheader_are_checked_with_their_own_lines() -> None:
    error = refusal("---\nstatus: ready\nsubject: 'Hi {{ config }}'\n---\nBody\n")
    assert error.line == 3
    error = refusal("---\nsubject: Hi\npreheader: '{% include \"x\" %}'\nstatus: ready\n---\n")
    assert error.line == 3


def test_code_blocks_get_no_exception_an_issue_is_never_a_template() -> None:
    error = refusal(issue_text("Intro\n\n```jinja\n{% if x %}\n```\n"))
    assert error.line == 8


@given(st.sampled_from(["email", "name", "attributes.city", "attributes.a_1"]),
       st.none() | st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=40))
def test_a_marker_gives_back_its_field_and_is_letters_and_digits_only(
    path: str, default: str | None,
) -> None:
    field = Field(path, default)
    assert field.marker.isalnum() and field.marker.isascii()
    assert fields.field_of_marker(field.marker) == field
    assert fields.fields_in(f"x{field.marker}y") == (field,)


def test_wrapping_keeps_a_marker_whole_and_counts_it_as_a_value() -> None:
    from mailer.content.plaintext import wrap

    marker = Field("attributes.city", "a rather long default for a city").marker
    lines = wrap(("word " * 10 + marker + " ") * 3)
    assert "".join(lines).count(marker) == 3
    assert all(len(fields.stand_ins(line)[0]) <= 72 for line in lines)


def test_markers_survive_markdown_mjml_and_the_text_part_in_body_and_subject(
    tmp_path: Path,
) -> None:
    issue = tmp_path / "issues" / "2026-12-07-hello.md"
    issue.parent.mkdir()
    issue.write_text(issue_text(
        "# Hello {{ subscriber.name | default(\"there\") }}\n\n"
        "**{{ subscriber.name | default(\"there\") }}** in _{{ subscriber.attributes.city }}_, "
        "[your page](https://example.com/p?c={{ subscriber.attributes.city }}).\n\n"
        "| who | where |\n| --- | --- |\n| {{ subscriber.email }} | here |\n",
        subject='News for {{ subscriber.name | default("there") }}'), encoding="utf-8")
    letter = make_letter(tmp_path, issue_file=issue)
    rendered = letter.rendered
    assert set(rendered.fields) == {Field("name", "there"), Field("attributes.city"),
                                    Field("email")}
    values = {Field("name", "there").marker: "Ann <&>", Field("attributes.city").marker: "Köln",
              Field("email").marker: "ann@example.com"}
    html, text = personalize(rendered, unsubscribe_url="https://x.example/u", values=values)
    assert "MAILERFIELD" not in html + text
    assert "<strong>Ann &lt;&amp;&gt;</strong>" in html and "<em>Köln</em>" in html
    assert "*Ann <&>*" in text and "Köln" in text and "ann@example.com" in text
    assert personal_subject(rendered, values) == "News for Ann <&>"
    # The public web view shows each default, or nothing without one.
    page = render_web_view(rendered)
    assert "MAILERFIELD" not in page and "<strong>there</strong>" in page


def test_an_issue_without_fields_renders_exactly_as_before(tmp_path: Path) -> None:
    rendered = make_letter(tmp_path).rendered
    assert rendered.fields == ()
    assert personal_subject(rendered) == rendered.subject


def test_one_line_keeps_a_value_from_starting_a_header() -> None:
    assert fields.one_line("Eve\r\nBcc: x@evil.example") == "Eve Bcc: x@evil.example"
    assert fields.one_line("a\u2028b\x00c\x85d  e") == "a b c d e"


def test_a_field_reads_the_readers_value_else_its_default() -> None:
    city = Field("attributes.city", "your city")
    assert city.value(email="a@x", name="", attributes={"city": "Oslo"}) == "Oslo"
    assert city.value(email="a@x", name="", attributes={}) == "your city"
    assert dataclasses.replace(city, default=None).value(
        email="a@x", name="", attributes={}) is None
    assert Field("name").value(email="a@x", name="", attributes={}) is None


def test_render_issue_leaves_the_markers_once_for_everyone(tmp_path: Path) -> None:
    letter = make_letter(tmp_path)
    text = HEAD + "Hello {{ subscriber.name }}\n"
    issue = parse_issue(text, path=tmp_path / "2026-12-07-a.md", tz=UTC)
    from mailer.config import Newsletter, Settings

    settings = Settings.model_validate({"base_url": "https://news.example.com"},
                                       context={"root": tmp_path})
    newsletter = Newsletter.model_validate({
        "id": "ml-issues", "name": "ML", "from": letter.sender, "issues": str(tmp_path),
    }, context={"root": tmp_path})
    rendered = render_issue(issue, newsletter, settings,
                            templates_dir=Path(__file__).resolve().parents[1] / "templates")
    assert rendered.fields == (Field("name"),)
    assert Field("name").marker in rendered.html and Field("name").marker in rendered.text


# -- the fast path splices exactly what the email package builds --------------------------------

FIELDS_ISSUE = issue_text(
    "# Hi {{ subscriber.name | default(\"there\") }}\n\n"
    "Dear {{ subscriber.name | default(\"there\") }} of {{ subscriber.attributes.city }},\n"
    "your address is {{ subscriber.email }}.\n\n"
    "```\n{{ subscriber.attributes.city }}\n.{{ subscriber.attributes.city }}\n```\n",
    subject='Hi {{ subscriber.name | default("there") }}: {{ subscriber.attributes.city }}')


@functools.cache
def fields_letter() -> Letter:
    folder = Path(tempfile.mkdtemp(prefix="fields-")) / "issues"
    folder.mkdir()
    path = folder / "2026-12-07-fields.md"
    path.write_text(FIELDS_ISSUE, encoding="utf-8")
    return make_letter(folder.parent, issue_file=path)


def values_for(name: str, city: str) -> dict[str, str]:
    letter = fields_letter()
    return {field.marker: field.value(email="ann@example.com", name=name,
                                      attributes={"city": city}) or ""
            for field in letter.rendered.fields}


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=60),
       city=st.text(st.characters(blacklist_categories=("Cs",)), max_size=90))
def test_any_values_splice_to_the_message_the_email_package_builds(name: str, city: str) -> None:
    reference, spliced = both(fields_letter(), to_name=name, values=values_for(name, city))
    assert_same_message(reference, spliced)
    assert spliced.isascii() and b"MAILERFIELD" not in spliced


@pytest.mark.parametrize("city", [".", ".starts with a dot", "a" * 74 + ".b", "x=3D", " ",
                                  "trailing space ", "é" * 40, "line\r\n.dot", "\r", "tab\there"])
def test_awkward_values_keep_every_line_short_and_dot_free_on_the_wire(city: str) -> None:
    letter = fields_letter()
    reference, spliced = both(letter, values=values_for("Ann", city))
    assert_same_message(reference, spliced)
    prepared = prepare_message(letter)
    args = {"to_email": "ann@example.com", "unsubscribe_url": URL, "msg_id": MSG_ID,
            "date": DATE, "values": values_for("Ann", city)}
    plain, wire = prepared.personalize(**args), prepared.personalize(**args, wire=True)
    # The wire form is the plain one dot-stuffed (RFC 5321 §4.5.2), though the spliced
    # values were never stuffed: none of their lines starts with ".".
    lines = wire.split(b"\r\n")
    assert all(not line.startswith(b".") or line.startswith(b"..") for line in lines)
    assert b"\r\n".join(line[1:] if line.startswith(b"..") else line for line in lines) == plain


@pytest.mark.parametrize("body", ["[your page]({{ subscriber.attributes.site }})",
                                  "![me]({{ subscriber.attributes.photo | default(\"x\") }})"])
def test_a_field_as_a_whole_link_address_is_refused(tmp_path: Path, body: str) -> None:
    issue = tmp_path / "issues" / "2026-12-07-link.md"
    issue.parent.mkdir()
    issue.write_text(issue_text(body + "\n"), encoding="utf-8")
    with pytest.raises(ContentError, match="whole link or image address"):
        make_letter(tmp_path, issue_file=issue)


def test_the_authors_text_never_reaches_jinja_as_a_template(tmp_path: Path) -> None:
    # A default is text all the way: were any of the issue evaluated, 7*7 would be 49.
    issue = tmp_path / "issues" / "2026-12-07-seven.md"
    issue.parent.mkdir()
    issue.write_text(issue_text('Hi {{ subscriber.name | default("{{ 7*7 }} {% x %}") }}\n'),
                     encoding="utf-8")
    rendered = make_letter(tmp_path, issue_file=issue).rendered
    html, text = personalize(rendered, unsubscribe_url="https://x.example/u")
    page = render_web_view(rendered)
    assert "Hi {{ 7*7 }} {% x %}" in page and "49" not in page
    assert "Hi " in text and "49" not in text
