"""message: one subscriber's newsletter email, parsed back the way a mail client reads it."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import re
from collections.abc import Callable
from datetime import UTC, datetime
from email.header import decode_header, make_header
from email.message import EmailMessage
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailer.addresses import clean_name, normalize_email
from mailer.config import Newsletter, Settings
from mailer.content import load_issue
from mailer.content.render import render_issue
from mailer.content.rendered import UNSUBSCRIBE_SLOT, RenderedIssue
from mailer.delivery.message import Letter, build_message, list_id, message_id, prepare_message
from mailer.errors import InputError, SubscriberError
from mailer.tokens import read_unsubscribe_token, unsubscribe_token

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"
SEED = Path(__file__).resolve().parents[2] / "shared" / "seed" / "ml-issue-02.md"
KEY = "test-secret-key-for-unsubscribe-links"
BASE_URL = "https://news.example.com"
DATE = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)
TOKEN_URL = re.compile(rf"<{re.escape(BASE_URL)}/unsubscribe/([A-Za-z0-9_.-]+)>")
# What content.py refuses in a subject: anything Python or an MTA may read as a line break.
LINE_BREAKS = re.compile(r"[\r\n\v\f\x00\x1c-\x1e\x85\u2028\u2029]")
# Long enough to fold, and one fold falls between "Übermaß" and "🚀": both encoded words.
MIXED_SUBJECT = "Ausgabe #02: Größen, Maße — und Übermaß 🚀 " * 4 + "Ende"

FRONT_MATTER = """\
---
subject: "Machine Learning Issue #02"
status: ready
send_after: 2026-12-07
preheader: "TOGL, fair networks and EasyNMT"
---
"""

SAMPLE = """\
---
subject: "Sample issue #01"
status: ready
send_after: 2026-12-07
preheader: "A link, a chart and some code"
---
# A sample issue

Read the [announcement](https://example.com/news?a=1&b=2) first.

[![Linked chart](https://cdn.example.com/chart.png)](https://example.com/chart)

```python
def hello():
    return "hi"
```
"""


# --- fixtures and helpers -----------------------------------------------------------------------


@pytest.fixture
def issues_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "ml-issues"
    directory.mkdir()
    return directory


@pytest.fixture
def make_newsletter(tmp_path: Path, issues_dir: Path) -> Callable[..., Newsletter]:
    def make(**fields: Any) -> Newsletter:
        raw = {
            "id": "ml-issues",
            "name": "Machine Learning Issues",
            "from": "Machine Learning Issues <newsletter@example.com>",
            "reply_to": "editor@example.com",
            "issues": str(issues_dir),
            "footer_text": "You get this because you subscribed at example.com.",
            **fields,
        }
        return Newsletter.model_validate(raw, context={"root": tmp_path})

    return make


@pytest.fixture
def mailer_settings(tmp_path: Path) -> Settings:
    raw = {"base_url": BASE_URL, "postal_address": "Example Ltd, 1 Main St"}
    return Settings.model_validate(raw, context={"root": tmp_path})


def letter_for(newsletter: Newsletter, mailer_settings: Settings, issue_file: Path) -> Letter:
    """The Letter the sender builds: a real issue file, rendered once (as cli_send does)."""
    issue = load_issue(issue_file, tz=newsletter.tz)
    rendered = render_issue(issue, newsletter, mailer_settings, templates_dir=TEMPLATES)
    return Letter(sender=newsletter.sender, reply_to=newsletter.reply_to,
                  list_id=list_id(newsletter.id, mailer_settings.base_url), rendered=rendered)


@pytest.fixture
def make_letter(
    make_newsletter: Callable[..., Newsletter], mailer_settings: Settings, issues_dir: Path
) -> Callable[..., Letter]:
    def make(**newsletter_fields: Any) -> Letter:
        path = issues_dir / "2026-12-07-sample.md"
        path.write_text(SAMPLE, encoding="utf-8")
        return letter_for(make_newsletter(**newsletter_fields), mailer_settings, path)

    return make


@pytest.fixture
def letter(make_letter: Callable[..., Letter]) -> Letter:
    return make_letter()


def unsubscribe_url(subscription_id: int) -> str:
    return f"{BASE_URL}/unsubscribe/{unsubscribe_token(KEY, subscription_id)}"


def send_to(letter: Letter, *, subscription_id: int = 7, to_email: str = "ann@example.com",
            to_name: str = "Ann Example") -> bytes:
    """The bytes that go over SMTP to one subscriber, built as dispatch builds them."""
    message = build_message(letter, to_email=to_email, to_name=to_name,
                            unsubscribe_url=unsubscribe_url(subscription_id),
                            msg_id=message_id(letter.sender_domain), date=DATE)
    return message.as_bytes()


def parse(data: bytes) -> EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)


def bodies(message: EmailMessage) -> tuple[str, str]:
    """(html, text), transfer-decoded."""
    html_part = message.get_body(("html",))
    text_part = message.get_body(("plain",))
    assert html_part is not None and text_part is not None
    # On the wire every line ends in CRLF (RFC 5322 §2.1); compare with plain newlines.
    html, text = (cast(str, part.get_content()).replace("\r\n", "\n")
                  for part in (html_part, text_part))
    return html, text


def raw_header(data: bytes, name: str) -> list[str]:
    """The physical lines of one header as sent: the first line, then its folded lines."""
    head = data.split(b"\r\n\r\n", 1)[0]
    assert head.isascii(), "headers must be 7-bit: non-ASCII goes into RFC 2047 encoded words"
    lines = head.decode("ascii").split("\r\n")
    start = next(i for i, line in enumerate(lines) if line.lower().startswith(f"{name.lower()}:"))
    end = start + 1
    while end < len(lines) and lines[end][:1] in (" ", "\t"):
        end += 1
    return lines[start:end]


def with_subject(letter: Letter, subject: str) -> Letter:
    return dataclasses.replace(letter, rendered=dataclasses.replace(letter.rendered,
                                                                    subject=subject))


# --- structure and headers ----------------------------------------------------------------------


def test_message_is_multipart_alternative_with_a_utf8_text_part_and_an_html_part(
    letter: Letter,
) -> None:
    message = parse(send_to(letter))

    assert message.get_content_type() == "multipart/alternative"
    parts = list(message.iter_parts())
    assert [part.get_content_type() for part in parts] == ["text/plain", "text/html"]
    assert [part.get_content_charset() for part in parts] == ["utf-8", "utf-8"]
    assert all(not part.is_multipart() for part in parts)
    html, text = bodies(message)
    assert html.lstrip().lower().startswith("<!doctype html>")
    assert re.search(r"</?[a-zA-Z][^>\n]*>", text) is None  # no markup in the text part


def test_message_carries_sender_recipient_subject_date_id_and_list_headers(
    letter: Letter,
) -> None:
    url = unsubscribe_url(7)

    message = parse(send_to(letter, subscription_id=7))

    sender = message["From"].addresses
    assert [(a.display_name, a.addr_spec) for a in sender] == [
        ("Machine Learning Issues", "newsletter@example.com")]
    to = message["To"].addresses
    assert [(a.display_name, a.addr_spec) for a in to] == [("Ann Example", "ann@example.com")]
    assert message["Subject"] == "Sample issue #01"
    assert message["Date"].datetime == DATE
    assert re.fullmatch(r"<[^<>@\s]+@example\.com>", message["Message-ID"])
    assert message["List-Id"] == "<ml-issues.news.example.com>"
    assert message["List-Unsubscribe"] == f"<{url}>"
    assert TOKEN_URL.fullmatch(message["List-Unsubscribe"])
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["Reply-To"].addresses[0].addr_spec == "editor@example.com"
    for name in ("From", "To", "Subject", "Date", "Message-ID", "List-Id", "List-Unsubscribe",
                 "List-Unsubscribe-Post", "Reply-To"):
        assert len(message.get_all(name) or []) == 1, name


def test_unsubscribe_url_is_in_the_html_footer_and_the_text_part(letter: Letter) -> None:
    url = unsubscribe_url(7)

    html, text = bodies(parse(send_to(letter, subscription_id=7)))

    assert re.search(rf'<a href="{re.escape(url)}"[^>]*>Unsubscribe</a>', html)
    assert f"Unsubscribe: {url}" in text
    assert UNSUBSCRIBE_SLOT not in html and UNSUBSCRIBE_SLOT not in text
    web_url = f"{BASE_URL}/issues/ml-issues/2026-12-07-sample"
    assert f'href="{web_url}"' in html and f"View in your browser: {web_url}" in text
    assert "Example Ltd, 1 Main St" in html and "Example Ltd, 1 Main St" in text


def test_reply_to_is_left_out_when_the_newsletter_has_none(
    make_letter: Callable[..., Letter],
) -> None:
    message = parse(send_to(make_letter(reply_to=None)))

    assert "Reply-To" not in message
    assert message["From"].addresses[0].addr_spec == "newsletter@example.com"


def test_the_sample_issue_body_reaches_both_parts(letter: Letter) -> None:
    html, text = bodies(parse(send_to(letter)))

    assert ">A sample issue</h1>" in html
    assert 'href="https://example.com/news?a=1&amp;b=2"' in html
    assert re.search(r'<a href="https://example.com/chart"[^>]*>\s*<img [^>]*alt="Linked chart"'
                     r'[^>]*src="https://cdn.example.com/chart.png"', html)
    assert re.search(r'<pre [^>]*><code>def hello\(\):\n    return &quot;hi&quot;</code></pre>',
                     html)
    assert "A sample issue\n==============" in text
    assert "[1] https://example.com/news?a=1&b=2" in text
    assert "[image: Linked chart] https://cdn.example.com/chart.png [2]" in text
    assert '    def hello():\n        return "hi"' in text


# --- international text -------------------------------------------------------------------------


def test_non_ascii_display_names_and_subject_round_trip_through_rfc_2047(
    make_letter: Callable[..., Letter],
) -> None:
    letter = make_letter(**{"from": "Maschinelles Lernen – Größen & Maße <news@example.com>"})
    letter = with_subject(letter, "Ausgabe #02: Übermaß, naïve Bayes und 机器学习 🚀")

    data = send_to(letter, to_name="Zoë Ångström-Łukasiewicz")
    message = parse(data)

    for name in ("From", "To", "Subject"):
        assert "=?utf-8?" in " ".join(raw_header(data, name)).lower(), name
    assert message["From"].addresses[0].display_name == "Maschinelles Lernen – Größen & Maße"
    assert message["From"].addresses[0].addr_spec == "news@example.com"
    assert message["To"].addresses[0].display_name == "Zoë Ångström-Łukasiewicz"
    assert message["To"].addresses[0].addr_spec == "ann@example.com"
    assert message["Subject"] == "Ausgabe #02: Übermaß, naïve Bayes und 机器学习 🚀"


@pytest.mark.parametrize("subject", [
    "Machine Learning Issue #02: Topological Graph Neural Networks, fair networks, EasyNMT "
    "and physics-informed neural networks with hard constraints for inverse design",
    # The stdlib's own folding would drop a space here (CPython gh-144156).
    MIXED_SUBJECT,
    "机器学习问题第二期：拓扑图神经网络、公平神经网络训练的技术挑战与易用的神经机器翻译工具" * 2,
    "x" * 200,
], ids=["ascii-words", "mixed", "cjk", "one-long-word"])
def test_a_long_subject_is_folded_but_decodes_to_the_original(
    letter: Letter, subject: str
) -> None:
    data = send_to(with_subject(letter, subject))

    lines = raw_header(data, "Subject")
    assert len(lines) > 1
    assert max(len(line) for line in lines) <= 78  # RFC 5322 §2.1.1's "SHOULD" limit
    assert parse(data)["Subject"] == subject


def test_a_long_non_ascii_name_is_folded_into_encoded_words_that_decode_to_it(
    letter: Letter,
) -> None:
    name = "山田太郎（株式会社サンプル・マーケティング部 東京本社 第一営業課 課長代理）"

    data = send_to(letter, to_name=name)

    lines = raw_header(data, "To")
    assert len(lines) > 1 and max(len(line) for line in lines) <= 78
    # RFC 2047 §6.2: the folding whitespace between adjacent encoded words is not part of the
    # name. email.header follows that; the stdlib's structured address parser inserts a space
    # there instead, so it is not the judge of this round trip.
    value = " ".join(line.strip() for line in lines).removeprefix("To:").strip()
    assert str(make_header(decode_header(value))) == f"{name} <ann@example.com>"


@settings(max_examples=150, deadline=None)
@given(st.text(st.characters(codec="utf-8"), min_size=1, max_size=250)
       .map(str.strip).filter(lambda s: bool(s) and not LINE_BREAKS.search(s)))
def test_any_one_line_subject_survives_the_round_trip(subject: str) -> None:
    rendered = RenderedIssue(subject=subject, preheader="", html=f'<a href="{UNSUBSCRIBE_SLOT}">',
                             text=f"Unsubscribe: {UNSUBSCRIBE_SLOT}\n", web_url=BASE_URL)
    letter = Letter(sender="News <news@example.com>", reply_to=None, list_id="<n.example.com>",
                    rendered=rendered)

    data = send_to(letter)

    assert parse(data)["Subject"] == subject
    assert max(len(line) for line in raw_header(data, "Subject")) <= 998  # RFC 5322 §2.1.1


# --- per recipient ------------------------------------------------------------------------------


def test_each_recipient_gets_their_own_message_id_and_token(letter: Letter) -> None:
    ann = parse(send_to(letter, subscription_id=7, to_email="ann@example.com"))
    bob = parse(send_to(letter, subscription_id=8, to_email="bob@example.com", to_name="Bob"))

    assert ann["Message-ID"] != bob["Message-ID"]
    assert ann["List-Unsubscribe"] != bob["List-Unsubscribe"]
    for message, own, other in ((ann, 7, 8), (bob, 8, 7)):
        match = TOKEN_URL.fullmatch(message["List-Unsubscribe"])
        assert match is not None
        assert read_unsubscribe_token(KEY, match[1]) == own
        html, text = bodies(message)
        assert f'href="{unsubscribe_url(own)}"' in html and unsubscribe_url(own) in text
        assert unsubscribe_url(other) not in html and unsubscribe_url(other) not in text
    # The shared Letter keeps its slot: the next recipient starts from a clean copy.
    assert UNSUBSCRIBE_SLOT in letter.rendered.html and UNSUBSCRIBE_SLOT in letter.rendered.text


# --- header injection ---------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "value", "error_field"), [
    ("to_name", "Ann\r\nBcc: victim@example.net", "name"),
    ("to_name", "Ann\nBcc: victim@example.net", "name"),
    ("to_name", "Ann\rBcc: victim@example.net", "name"),
    ("to_email", "ann@example.com\r\nBcc: victim@example.net", "to"),
    ("to_email", "ann@example.com\nBcc: victim@example.net", "to"),
    ("subject", "Issue #02\r\nBcc: victim@example.net", "subject"),
    ("subject", "Issue #02\nBcc: victim@example.net", "subject"),
    ("subject", "Issue #02\rBcc: victim@example.net", "subject"),
    ("unsubscribe_url", f"{BASE_URL}/unsubscribe/x\r\nBcc: victim@example.net",
     "unsubscribe_url"),
    ("sender", "News <news@example.com>\r\nBcc: victim@example.net", "from"),
    ("reply_to", "editor@example.com\nBcc: victim@example.net", "reply_to"),
])
def test_a_line_break_in_a_header_value_raises_input_error_instead_of_injecting_a_header(
    letter: Letter, field: str, value: str, error_field: str
) -> None:
    recipient: dict[str, str] = {"to_email": "ann@example.com", "to_name": "Ann",
                                 "unsubscribe_url": unsubscribe_url(7)}
    if field == "subject":
        letter = with_subject(letter, value)
    elif field == "sender":
        letter = dataclasses.replace(letter, sender=value)
    elif field == "reply_to":
        letter = dataclasses.replace(letter, reply_to=value)
    else:
        recipient[field] = value

    with pytest.raises(InputError) as error:
        build_message(letter, **recipient, msg_id=message_id("example.com"), date=DATE)

    assert error.value.field == error_field
    assert "line break" in error.value.message


@pytest.mark.parametrize("separator", ["\v", "\f", "\x1c", "\x85", "\u2028", "\u2029"])
def test_unicode_line_separators_in_a_subscriber_name_are_refused_not_sent(
    letter: Letter, separator: str
) -> None:
    # The email package breaks header lines at these too: "Ann\u2028Bcc: …" could add a header.
    name = f"Ann{separator}Bcc: victim@example.net"

    with pytest.raises(SubscriberError, match="line break"):
        clean_name(name)
    with pytest.raises(InputError, match="line break"):
        send_to(letter, to_name=name)


@pytest.mark.parametrize("name", [
    "=?utf-8?q?Eve=0D=0ABcc:_v@evil.example?=",  # the finding: CR LF, then a Bcc header
    "=?utf-8?q?Eve=0D=0ABcc=3A_v=40evil=2Eexample?=",  # all atext: it once went out raw
    "=?utf-8?q?Eve=0BBcc:_v@evil.example?=",  # a vertical tab
    "Zoë =?utf-8?b?RXZlDQpCY2M6IHZAZXZpbC5leGFtcGxl?=",
])
def test_an_encoded_word_in_a_subscribers_name_is_sent_as_text_by_both_builders(
    letter: Letter, name: str,
) -> None:
    recipient: dict[str, Any] = {"to_email": "x53@example.com", "to_name": name,
                                 "unsubscribe_url": unsubscribe_url(7), "date": DATE,
                                 "msg_id": message_id("example.com")}

    for data in (build_message(letter, **recipient).as_bytes(),
                 prepare_message(letter).personalize(**recipient)):
        head = data.split(b"\r\n\r\n", 1)[0]
        assert b"evil" not in head and b"Bcc" not in head  # only inside base64
        lines = raw_header(data, "To")
        words = r"(?: (?:=\?utf-8\?b\?[A-Za-z0-9+/=]+\?=|<x53@example\.com>))+"
        assert all(re.fullmatch(rf"(?:To:)?{words}", line) for line in lines), lines
        value = " ".join(line.strip() for line in lines).removeprefix("To:").strip()
        assert str(make_header(decode_header(value))) == f"{name} <x53@example.com>"
        assert [a.addr_spec for a in parse(data)["To"].addresses] == ["x53@example.com"]
        assert "Bcc" not in parse(data)


def test_an_encoded_word_in_the_subject_is_sent_as_text_not_decoded_into_a_line_break(
    letter: Letter,
) -> None:
    # An issue about encodings may well quote one; the email package used to decode it
    # and write "Subject: What is Eve\r\nBcc: v@evil.example".
    subject = "What is =?utf-8?q?Eve=0D=0ABcc:_v@evil.example?= anyway?"

    data = send_to(with_subject(letter, subject))

    assert parse(data)["Subject"] == subject
    assert "Bcc" not in parse(data)
    assert b"\r\nBcc" not in data.split(b"\r\n\r\n", 1)[0]


def test_an_encoded_word_in_the_configured_sender_name_is_sent_as_text(
    make_letter: Callable[..., Letter],
) -> None:
    # The email package raised ValueError on this one, and wrote a raw VT for "=0B".
    name = "=?utf-8?q?News=0D=0ABcc:_v@evil.example?="
    letter = make_letter(**{"from": f'"{name}" <news@example.com>',
                            "reply_to": f'"{name}" <editor@example.com>'})

    message = parse(send_to(letter))

    assert [(a.display_name, a.addr_spec) for a in message["From"].addresses] == [
        (name, "news@example.com")]
    assert [(a.display_name, a.addr_spec) for a in message["Reply-To"].addresses] == [
        (name, "editor@example.com")]
    assert "Bcc" not in message


# --- the seed issue users actually send ---------------------------------------------------------


def test_seed_issue_keeps_headings_links_linked_image_and_code_in_both_parts(
    make_newsletter: Callable[..., Newsletter], mailer_settings: Settings, issues_dir: Path
) -> None:
    if not SEED.exists():
        pytest.skip(f"seed issue {SEED} not present (a user's clone has no ../shared)")
    text = SEED.read_text(encoding="utf-8")
    if not text.startswith("---"):
        text = FRONT_MATTER + text
    path = issues_dir / "ml-issue-02.md"
    path.write_text(text, encoding="utf-8")
    letter = letter_for(make_newsletter(), mailer_settings, path)

    data = send_to(letter, subscription_id=42)
    message = parse(data)
    html, plain = bodies(message)

    assert message["Subject"] == "Machine Learning Issue #02"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]
    assert "TOGL, fair networks and EasyNMT" in html  # the preheader
    headings = {
        "Machine Learning Issue #02": ("h2", "="),
        "Schedule of new articles": ("h2", "="),
        "Why machine learning algorithms are hard to tune?": ("h3", "-"),
        "Topological Graph Neural Networks": ("h3", "-"),
        "EasyNMT - Easy to use, state-of-the-art Neural Machine Translation": ("h3", "-"),
    }
    for heading, (tag, mark) in headings.items():
        assert re.search(rf"<{tag} [^>]*>{re.escape(heading)}</{tag}>", html), heading
        assert f"\n{heading}\n{mark * len(heading)}\n" in plain, heading
    # The subject is the issue's own first heading: shown once, not twice.
    assert len(re.findall(r">Machine Learning Issue #02</h\d>", html)) == 1
    # A heading with an em dash: UTF-8 in both parts, wrapped at 72 in the text.
    assert ">A language learning system that pays attention — more efficiently than ever " \
           "before</h3>" in html
    assert "A language learning system that pays attention — more efficiently than\n" \
           "ever before\n" in plain
    assert "MIT researchers’ new hardware and software system" in plain

    links = ["https://engraved.ghost.io/why-machine-learning-algorithms-are-hard-to-tune",
             "https://arxiv.org/pdf/2102.06764v1.pdf", "https://arxiv.org/pdf/2102.07835v1.pdf",
             "https://www.iamroyakash.com/contact",
             "https://news.mit.edu/2021/language-learning-efficiency-0210",
             "https://github.com/UKPLab/EasyNMT", "https://arxiv.org/pdf/2102.04626v1.pdf"]
    for url in links:
        assert f'href="{url}"' in html, url
        assert re.search(rf"^\[\d+\] {re.escape(url)}$", plain, re.M), url

    image = "https://cdn.hashnode.com/res/hashnode/image/upload/v1613025383277/qT41p1MVB.png"
    target = "https://github.iamroyakash.com/AKDSFramework-docs/"
    assert re.search(rf'<a href="{re.escape(target)}"[^>]*>\s*<img [^>]*alt="image\.png"'
                     rf'[^>]*src="{re.escape(image)}"', html)
    number = re.search(rf"^\[(\d+)\] {re.escape(target)}$", plain, re.M)
    assert number and f"[image: image.png] {image} [{number[1]}]" in plain

    assert re.search(r"<pre [^>]*><code>pip install -U easynmt</code></pre>", html)
    assert "You can get started with this\n\n    pip install -U easynmt\n" in plain
    assert "- Translation between 150+ languages\n" in plain

    url = unsubscribe_url(42)
    assert message["List-Unsubscribe"] == f"<{url}>"
    assert f'href="{url}"' in html and f"Unsubscribe: {url}" in plain
    assert f"View in your browser: {BASE_URL}/issues/ml-issues/ml-issue-02" in plain


# --- known bugs (strict: these start failing, loudly, once the bug is fixed) --------------------


def test_a_recipient_with_an_internationalised_domain_gets_a_valid_to_header(
    letter: Letter,
) -> None:
    address = normalize_email("ann@bücher.example")  # as subscribe/import store it

    data = send_to(letter, to_email=address)

    # RFC 2047 §5: an encoded word must not appear in an addr-spec; the domain goes out in
    # its IDNA form (xn--…) unless the message is sent with SMTPUTF8.
    assert "=?" not in " ".join(raw_header(data, "To"))
    domain = parse(data)["To"].addresses[0].domain
    assert domain.encode("idna").decode("idna") == "bücher.example"


def test_a_sender_name_with_a_comma_stays_one_mailbox(
    make_letter: Callable[..., Letter],
) -> None:
    letter = make_letter(**{"from": '"Lab, Inc." <news@example.com>'})

    message = parse(send_to(letter))

    assert [(a.display_name, a.addr_spec) for a in message["From"].addresses] == [
        ("Lab, Inc.", "news@example.com")]
