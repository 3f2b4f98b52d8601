"""The sender's fast path: bytes spliced per recipient equal what the email package builds."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import functools
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailer.config import Newsletter, Settings
from mailer.content import load_issue
from mailer.content.render import render_issue
from mailer.delivery.message import Letter, build_message, list_id, prepare_message
from mailer.delivery.targets import parse_smtp_url
from mailer.delivery.transport import SmtpTransport
from tests.smtpd import RecordingServer

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = REPO / "templates"
SAMPLE_ISSUE = REPO / "content" / "ml-issues" / "2026-12-07-first-issue.md"
SEED = REPO.parent / "shared" / "seed" / "ml-issue-02.md"
DATE = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)
MSG_ID = "<173.42.abc@example.com>"
URL = "https://news.example.com/unsubscribe/NDI.SaazCVg3A15xBs8rF_Cyah7MNn47oq1wy8LowuaLPFk"
# Headers the two builders may legitimately spell differently: the boundary is random.
FREE = {"content-type", "mime-version", "content-transfer-encoding"}


def make_letter(tmp_path: Path, issue_file: Path = SAMPLE_ISSUE, **fields: Any) -> Letter:
    settings_ = Settings.model_validate({"base_url": "https://news.example.com",
                                         "postal_address": "1 Main St"},
                                        context={"root": tmp_path})
    newsletter = Newsletter.model_validate({
        "id": "ml-issues", "name": "Machine Learning Issues",
        "from": "Machine Learning Issues <newsletter@example.com>",
        "reply_to": "editor@example.com", "issues": str(issue_file.parent), **fields,
    }, context={"root": tmp_path})
    rendered = render_issue(load_issue(issue_file, tz=UTC), newsletter, settings_,
                            templates_dir=TEMPLATES)
    return Letter(sender=newsletter.sender, reply_to=newsletter.reply_to,
                  list_id=list_id(newsletter.id, settings_.base_url), rendered=rendered)


def both(letter: Letter, **recipient: str) -> tuple[bytes, bytes]:
    """(what the email package builds, what the sender splices) for one recipient."""
    args: dict[str, Any] = {"to_email": "ann@example.com", "to_name": "Ann Example",
                            "unsubscribe_url": URL, "msg_id": MSG_ID, "date": DATE, **recipient}
    reference = build_message(letter, **args).as_bytes()
    return reference, prepare_message(letter).personalize(**args)


def parse(data: bytes) -> EmailMessage:
    return cast(EmailMessage, email.message_from_bytes(data, policy=email.policy.default))


def assert_same_message(reference: bytes, spliced: bytes) -> None:
    want, got = parse(reference), parse(spliced)
    assert not got.defects and all(not p.defects for p in got.walk())
    assert sorted((k.lower(), str(v)) for k, v in want.items() if k.lower() not in FREE) == \
        sorted((k.lower(), str(v)) for k, v in got.items() if k.lower() not in FREE)
    assert got.get_content_type() == want.get_content_type() == "multipart/alternative"
    want_parts, got_parts = list(want.iter_parts()), list(got.iter_parts())
    assert [p.get_content_type() for p in got_parts] == [p.get_content_type() for p in want_parts]
    for w, g in zip(want_parts, got_parts, strict=True):
        assert g.get_content_charset() == w.get_content_charset() == "utf-8"
        assert g.get_content() == w.get_content()
    assert_wire_form(spliced)


def assert_wire_form(data: bytes) -> None:
    assert data.isascii()
    lines = data.split(b"\r\n")
    assert b"\n" not in b"".join(lines) and b"\r" not in b"".join(lines), "bare CR or LF"
    head, _, body = data.partition(b"\r\n\r\n")
    assert all(len(line) <= 998 for line in lines)  # RFC 5322 §2.1.1
    # Quoted-printable bodies: RFC 2045 §6.7 lines of at most 76 characters.
    assert all(len(line) <= 76 for line in body.split(b"\r\n"))


@pytest.mark.parametrize(("to_email", "to_name"), [
    ("ann@example.com", "Ann Example"),
    ("ann@example.com", ""),
    ("zoe@example.org", "Zoë Ångström-Łukasiewicz"),
    ("ada@example.com", "Lovelace, Ada"),
    ("q@example.com", 'The "Quoted" One'),
    ("long@example.com", "A Remarkably Long Display Name That Cannot Fit On One Header Line"),
    ("cjk@example.com", "机器学习问题第二期的读者" * 3),
    ("ann@xn--bcher-kva.example", "Ann"),
])
def test_spliced_bytes_equal_the_email_package_for_any_recipient(
    tmp_path: Path, to_email: str, to_name: str,
) -> None:
    letter = make_letter(tmp_path)
    assert_same_message(*both(letter, to_email=to_email, to_name=to_name))


@pytest.mark.parametrize("subject", [
    "Short",
    "Machine Learning Issue #02: Topological Graph Neural Networks, fair networks, EasyNMT "
    "and physics-informed neural networks with hard constraints for inverse design",
    "Ausgabe #02: Größen, Maße — und Übermaß 🚀 " * 4 + "Ende",
    "机器学习问题第二期：拓扑图神经网络、公平神经网络训练的技术挑战" * 2,
])
def test_spliced_bytes_equal_the_email_package_for_any_subject(
    tmp_path: Path, subject: str,
) -> None:
    letter = make_letter(tmp_path)
    letter = dataclasses.replace(letter, rendered=dataclasses.replace(letter.rendered,
                                                                      subject=subject))
    assert_same_message(*both(letter))


def test_spliced_bytes_equal_without_reply_to_and_with_an_awkward_url(tmp_path: Path) -> None:
    letter = make_letter(tmp_path, reply_to=None)
    # '=' must be escaped in quoted-printable; a long URL must wrap inside the body.
    url = "https://news.example.com/a/very/long/path/" + "x" * 120 + "/unsubscribe/a=b=c&d"
    assert_same_message(*both(letter, unsubscribe_url=url))


def test_the_seed_issue_splices_to_the_same_message(tmp_path: Path) -> None:
    if not SEED.exists():
        pytest.skip(f"seed issue not found at {SEED} (only in the development workspace)")
    text = SEED.read_text(encoding="utf-8")
    if not text.startswith("---"):
        text = '---\nsubject: "Machine Learning Issue #02"\nstatus: ready\n---\n' + text
    issue = tmp_path / "issues" / "2026-12-07-ml-issue-02.md"
    issue.parent.mkdir()
    issue.write_text(text, encoding="utf-8")
    assert_same_message(*both(make_letter(tmp_path, issue_file=issue)))


def test_one_prepared_message_serves_many_recipients_with_their_own_parts(
    tmp_path: Path,
) -> None:
    prepared = prepare_message(make_letter(tmp_path))
    messages = [parse(prepared.personalize(to_email=f"r{i}@example.com", to_name=f"R {i}",
                                           unsubscribe_url=f"{URL}{i}", msg_id=f"<{i}@x>",
                                           date=DATE)) for i in range(3)]
    for i, message in enumerate(messages):
        assert message["To"] == f"R {i} <r{i}@example.com>"
        assert message["List-Unsubscribe"] == f"<{URL}{i}>"
        html = message.get_body(("html",))
        text = message.get_body(("plain",))
        assert html is not None and text is not None
        assert f'href="{URL}{i}"' in html.get_content()
        assert f"{URL}{i}" in text.get_content()
        for other in range(3):
            if other != i:
                assert f"{URL}{other}\n" not in text.get_content()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=60),
       subject=st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")),
                       min_size=1, max_size=120).filter(str.strip))
def test_any_name_and_subject_splice_to_the_same_message(name: str, subject: str) -> None:
    letter = sample_letter()
    letter = dataclasses.replace(letter, rendered=dataclasses.replace(letter.rendered,
                                                                      subject=subject))
    assert_same_message(*both(letter, to_name=name))



@functools.cache
def sample_letter() -> Letter:
    # Rendered once for all hypothesis examples; the root only anchors relative paths.
    return make_letter(REPO)


async def test_the_wire_form_arrives_at_a_real_server_exactly_as_the_message(
    tmp_path: Path,
) -> None:
    # Lines starting with "." must be dot-stuffed on the wire (RFC 5321 §4.5.2) and
    # un-stuffed by the server; the body and the spliced URL both carry such lines.
    issue = tmp_path / "issues" / "2026-12-07-dots.md"
    issue.parent.mkdir()
    issue.write_text('---\nsubject: "Dots"\nstatus: ready\n---\n'
                     "```\n.hidden\n.\n..two\n```\n\n.leading dot paragraph\n",
                     encoding="utf-8")
    prepared = prepare_message(make_letter(tmp_path, issue_file=issue))
    # The QP line of the spliced URL wraps right before a ".".
    url = "https://news.example.com/unsubscribe/" + "a" * 36 + ".token.with.dots"
    args: dict[str, Any] = {"to_email": "ann@example.com", "to_name": "Ann",
                            "unsubscribe_url": url, "msg_id": MSG_ID, "date": DATE}
    message = prepared.personalize(**args)
    async with RecordingServer() as server:
        transport = SmtpTransport(parse_smtp_url(f"smtp://127.0.0.1:{server.port}"))
        try:
            await transport.send("a@example.com", "ann@example.com",
                                 prepared.personalize(**args, wire=True), wire_ready=True)
        finally:
            await transport.aclose()
    assert server.messages[0].data == message
    assert b"\r\n=2Etoken" in message
    text = parse(message).get_body(("plain",))
    assert text is not None
    content = text.get_content()
    assert ".hidden" in content and "..two" in content and url in content
