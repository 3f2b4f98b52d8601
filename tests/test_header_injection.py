"""Header injection through names: an RFC 2047 encoded word a subscriber or an author types is
text, sent as text, whatever a mail reader decodes; nothing a name holds adds a header."""

from __future__ import annotations

import base64
import dataclasses
import email
import email.policy
import functools
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.utils import parseaddr
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from mailer.addresses import clean_name, normalize_email
from mailer.config import Newsletter
from mailer.delivery.message import Letter, PreparedMessage, build_message, prepare_message
from mailer.errors import SubscriberError
from tests.conftest import Project
from tests.smtpd import RecordingServer, ServerThread
from tests.test_prepared import SAMPLE_ISSUE, sample_letter
from tests.test_web import LiveServer

KEY = "test-key"  # what Project.configure puts in MAILER_SECRET_KEY
# The reproduction of the finding: "Eve", CR LF, "Bcc: v@evil.example" as a Q encoded word.
EVE = "=?utf-8?q?Eve=0D=0ABcc:_v@evil.example?="
CONFIRM_LINK = re.compile(r"https?://\S+/confirm/[A-Za-z0-9_.-]+")
DATE = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)
URL = "https://news.example.com/unsubscribe/NDI.SaazCVg3A15xBs8rF_Cyah7MNn47oq1wy8LowuaLPFk"
ATOMS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?: [A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    # `mailer send-now` runs as a process on the same file; the store tests cover PostgreSQL.
    return f"sqlite:///{tmp_path}/project/var/mailer.db"


# --- reading a message back the way a reader does ------------------------------------------------


def parse(data: bytes) -> EmailMessage:
    return cast(EmailMessage, email.message_from_bytes(data, policy=email.policy.default))


def head_lines(data: bytes) -> list[str]:
    head = data.split(b"\r\n\r\n", 1)[0]
    assert head.isascii(), "headers are 7-bit: anything else goes into RFC 2047 encoded words"
    return head.decode("ascii").split("\r\n")


def raw_field(data: bytes, name: str) -> list[str]:
    """The physical lines of the one header called `name`: its first line and its folds."""
    lines = head_lines(data)
    starts = [i for i, line in enumerate(lines) if line.lower().startswith(f"{name.lower()}:")]
    assert len(starts) == 1, f"{len(starts)} {name} headers"
    end = starts[0] + 1
    while end < len(lines) and lines[end][:1] in (" ", "\t"):
        end += 1
    return lines[starts[0]:end]


def name_as_read(data: bytes, field: str = "To") -> str:
    """The display name an RFC 5322 + RFC 2047 reader shows, read from the raw lines.

    Not the stdlib's address parser, which changes spaces: it puts one between adjacent
    encoded words (gh-128110), where RFC 2047 §6.2 says the white space between them is not
    part of the text, and it collapses a run of them inside an encoded word's text.
    """
    # RFC 5322 §2.2.3: unfolding removes the CRLF and nothing else.
    value = "".join(raw_field(data, field)).split(":", 1)[1].removeprefix(" ")
    phrase, angle, address = value.rpartition(" <")
    if not angle:
        return ""
    assert address.endswith(">") and "<" not in address and " " not in address
    if phrase.startswith('"'):
        assert re.fullmatch(r'"(?:[^"\\]|\\.)*"', phrase), phrase
        return re.sub(r"\\(.)", r"\1", phrase[1:-1])
    if "=?" in phrase:
        # Only encoded words, nothing left raw between them.
        assert all(ENCODED_WORD.fullmatch(word) for word in phrase.split(" ")), phrase
        return str(make_header(decode_header(phrase)))
    assert ATOMS.fullmatch(phrase), phrase
    return phrase


def assert_one_mailbox_written_as_text(data: bytes, baseline: bytes, *, name: str,
                                       address: str, field: str = "To") -> None:
    """`data` is `baseline` with another recipient (or sender): no header added or lost, the
    one address, the name as typed, short lines, the MIME structure intact."""
    message, expected = parse(data), parse(baseline)
    assert Counter(k.lower() for k in message) == \
        Counter(k.lower() for k in expected)
    assert not message.defects and not message[field].defects
    mailboxes = message[field].addresses
    assert [m.addr_spec for m in mailboxes] == [address]
    assert name_as_read(data, field) == name
    # The stdlib reads the same characters, but for spaces: it adds one between encoded
    # words (gh-128110) and makes one of a run inside one.
    assert "".join(mailboxes[0].display_name.split()) == "".join(name.split())
    lines = head_lines(data)
    assert max(len(line) for line in lines) <= 998  # RFC 5322 §2.1.1: MUST
    # RFC 5322 §2.1.1's SHOULD, but for a line holding nothing but an address that long.
    alone = {address, f"<{address}>", f"{field}: {address}"}
    assert all(len(line) <= 78 or line.strip() in alone for line in raw_field(data, field))
    assert message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]
    assert [p.get_content_type() for p in expected.iter_parts()] == ["text/plain", "text/html"]


# --- the reproduction, over real HTTP, SMTP and the `mailer` command ----------------------------


@pytest.fixture
def live(project: Project) -> Iterator[tuple[RecordingServer, LiveServer, httpx.Client]]:
    with ServerThread() as smtp, LiveServer(project, smtp_url=f"smtp://127.0.0.1:{smtp.port}",
                                            subscribe_rate_per_minute=0) as server, \
            httpx.Client(base_url=server.url, timeout=30) as client:
        yield smtp, server, client


def sign_up_and_confirm(smtp: RecordingServer, client: httpx.Client, address: str,
                        name: str) -> None:
    before = len(smtp.messages)
    answer = client.post("/subscribe/ml-issues", json={"email": address, "name": name})
    assert answer.status_code == 200, answer.text
    confirmation = smtp.wait_for_messages(before + 1)[before]
    assert confirmation.rcpt_tos == [address]
    text = confirmation.parsed().get_body(("plain",))
    assert text is not None
    link = CONFIRM_LINK.findall(text.get_content())[-1]
    answer = client.get(link, headers={"accept": "application/json"})
    if answer.json().get("status") != "confirmed":  # the link opens a page whose form confirms
        answer = client.post(link, headers={"accept": "application/json"})
    assert answer.status_code == 200 and answer.json()["status"] == "confirmed", answer.text


def send_now(project: Project) -> None:
    environment = {**os.environ, "MAILER_SECRET_KEY": KEY}
    environment.pop("MAILER_CONFIG", None)
    result = subprocess.run(
        [sys.executable, "-m", "mailer", "--config", str(project.config_path), "send-now",
         "ml-issues", "--yes"], capture_output=True, text=True, env=environment,
        cwd=project.root, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_encoded_word_name_signed_up_over_http_reaches_the_issue_as_text_not_as_a_bcc(
    project: Project, live: tuple[RecordingServer, LiveServer, httpx.Client],
) -> None:
    smtp, _, client = live
    sign_up_and_confirm(smtp, client, "ada@example.com", "Ada")  # the baseline recipient
    sign_up_and_confirm(smtp, client, "x53@example.com", EVE)
    confirmations = len(smtp.messages)

    send_now(project)

    issues = smtp.wait_for_messages(confirmations + 2)[confirmations:]
    assert sorted(r for m in issues for r in m.rcpt_tos) == ["ada@example.com", "x53@example.com"]
    assert all(len(m.rcpt_tos) == 1 for m in issues)  # one envelope recipient per message
    eve = next(m for m in issues if m.rcpt_tos == ["x53@example.com"])
    ada = next(m for m in issues if m.rcpt_tos == ["ada@example.com"])
    assert not re.search(rb"^(?:bcc|cc|reply-to|content-type):[^\r\n]*evil", eve.data,
                         re.IGNORECASE | re.MULTILINE)
    assert b"evil" not in eve.data.split(b"\r\n\r\n", 1)[0]  # not even as a decoded name
    message = parse(eve.data)
    for injected in ("Bcc", "Cc"):
        assert injected not in message
    assert message["Reply-To"].addresses[0].addr_spec == "editor@example.com"
    assert [(m.display_name, m.addr_spec) for m in message["To"].addresses] == \
        [(EVE, "x53@example.com")]
    assert_one_mailbox_written_as_text(eve.data, ada.data, name=EVE, address="x53@example.com")


@pytest.mark.parametrize("address", [
    "=?utf-8?q?x=0D=0ABcc=3A_v=40evil=2Eexample?=@example.com",  # the stdlib raises on it
    "=?utf-8?q?v=40evil=2Eexample=2C?=@example.com",  # the stdlib writes To: v@evil.example,
])
def test_an_encoded_word_in_a_signed_up_address_gets_400_and_no_confirmation_email(
    live: tuple[RecordingServer, LiveServer, httpx.Client], address: str,
) -> None:
    smtp, _, client = live

    answer = client.post("/subscribe/ml-issues", json={"email": address, "name": "Eve"})

    assert answer.status_code == 400
    assert answer.json()["error"].startswith("email: ") and "=?" in answer.json()["error"]
    assert smtp.messages == []


# --- every name clean_name lets through, in both builders ---------------------------------------

# Encoded words of every kind a reader decodes, carrying line breaks and headers.
q_payload = st.lists(st.sampled_from(["=0D=0A", "=0A", "=0D", "=0B", "=00", "=C2=85",
                                      "=E2=80=A8", "Bcc:_v@evil.example", "Eve", "_", "=3F=3D",
                                      "Content-Type:_text/html"]), max_size=6).map("".join)
b_payload = st.binary(max_size=40).map(
    lambda b: base64.b64encode(b + b"\r\nBcc: v@evil.example").decode("ascii"))
encoded_words = st.one_of(
    st.builds(lambda cs, enc, text: f"=?{cs}?{enc}?{text}?=",
              st.sampled_from(["utf-8", "UTF-8", "iso-8859-1", "us-ascii"]),
              st.sampled_from("qQ"), q_payload),
    st.builds(lambda cs, enc, text: f"=?{cs}?{enc}?{text}?=",
              st.sampled_from(["utf-8", "utf-8*en"]), st.sampled_from("bB"), b_payload),
)
# What clean_name lets through that is not plain text: joiners after non-ASCII, a flag's tags.
allowed_oddities = st.sampled_from([
    "👩\u200d💻", "می\u200cخواهم", "\U0001F3F4\U000E0067\U000E0062\U000E0073\U000E0063"
    "\U000E0074\U000E007F", "\u00a0", "\u3000", "e\u0301", "\ufe0f", "\U0001F600"])
pieces = st.one_of(
    encoded_words, allowed_oddities,
    st.sampled_from(['"', "\\", '\\"', "=?", "?=", " ", "  ", "<", ">", "@", ",", ";", ":",
                     "(", ")", "Ann", "Example", "Lovelace, Ada", "Eve <v@evil.example>"]),
    st.text(st.characters(codec="ascii", exclude_categories=["Cc"]), max_size=20),
    st.text(max_size=20),
    st.text(st.characters(min_codepoint=0x80), min_size=60, max_size=120),  # folds
    st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=80, max_size=150),
)
names = st.one_of(st.text(), st.lists(pieces, max_size=8).map("".join))
local_parts = st.from_regex(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,30}(\.[a-z0-9_-]{1,8}){0,2}",
                            fullmatch=True)
domains = st.sampled_from(["example.com", "news.example.org", "xn--bcher-kva.example",
                           "a-very-long-subdomain-name.of.a.mail.provider.example.net"])
addresses = st.one_of(
    st.builds(lambda local, domain: f"{local}@{domain}", local_parts, domains),
    st.sampled_from(["x53@example.com", "a" * 64 + "@example.com", "ann@bücher.example"]))


def accepted(raw_name: str, raw_address: str = "ann@example.com") -> tuple[str, str]:
    """What subscribe and import store: the cleaned name and the normalised address."""
    try:
        return clean_name(raw_name, where="name"), normalize_email(raw_address, where="email")
    except SubscriberError:
        assume(False)
        raise


def both(letter: Letter, *, name: str, address: str, prepared: PreparedMessage | None = None
         ) -> tuple[bytes, bytes]:
    """(the sender's spliced bytes, the email package's reference message) for one recipient."""
    recipient: dict[str, Any] = {"to_email": address, "to_name": name, "unsubscribe_url": URL,
                                 "msg_id": "<1.2@example.com>", "date": DATE}
    return ((prepared or prepare_message(letter)).personalize(**recipient),
            build_message(letter, **recipient).as_bytes())


@functools.cache
def sample_prepared() -> PreparedMessage:
    return prepare_message(sample_letter())


@functools.cache
def baselines() -> tuple[bytes, bytes]:
    return both(sample_letter(), name="Ann", address="ann@example.com",
                prepared=sample_prepared())


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.filter_too_much])
@given(raw_name=names, raw_address=addresses)
@example(raw_name=EVE, raw_address="x53@example.com")
@example(raw_name="=?utf-8?q?Eve=0D=0ABcc=3A_v=40evil=2Eexample?=", raw_address="x@example.com")
@example(raw_name='Ann "The \\ Quote" ' * 10, raw_address="x@example.com")
@example(raw_name="山田" * 100, raw_address="x@example.com")
def test_any_name_clean_name_accepts_adds_no_header_and_reads_back_as_typed(
    raw_name: str, raw_address: str,
) -> None:
    name, address = accepted(raw_name, raw_address)
    baseline_fast, baseline_reference = baselines()

    fast, reference = both(sample_letter(), name=name, address=address,
                           prepared=sample_prepared())

    assert_one_mailbox_written_as_text(fast, baseline_fast, name=name, address=address)
    assert_one_mailbox_written_as_text(reference, baseline_reference, name=name,
                                       address=address)
    assert raw_field(fast, "To") == raw_field(reference, "To")  # one rule, both builders


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.filter_too_much])
@given(raw_name=names.filter(lambda n: bool(n.strip())))
@example(raw_name=EVE)
@example(raw_name="=?utf-8?q?Eve=0B?=")  # the stdlib wrote a raw VT into From for this
def test_an_authors_from_name_is_sent_as_text_whatever_encoded_words_it_holds(
    raw_name: str,
) -> None:
    name, _ = accepted(raw_name)
    quoted = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    newsletter = Newsletter.model_validate(
        {"id": "ml-issues", "name": "ML", "from": f"{quoted} <news@example.com>",
         "reply_to": f"{quoted} <editor@example.com>", "issues": str(SAMPLE_ISSUE.parent)},
        context={"root": SAMPLE_ISSUE.parent})
    configured = parseaddr(newsletter.sender)[0]  # what schedules.yaml's check kept
    plain = dataclasses.replace(sample_letter(), sender="News <news@example.com>",
                                reply_to="Editor <editor@example.com>")
    letter = dataclasses.replace(plain, sender=newsletter.sender, reply_to=newsletter.reply_to)
    baselines = both(plain, name="Ann", address="ann@example.com")

    for data, baseline in zip(both(letter, name="Ann", address="ann@example.com"), baselines,
                              strict=True):
        assert_one_mailbox_written_as_text(data, baseline, name=configured,
                                           address="news@example.com", field="From")
        assert_one_mailbox_written_as_text(data, baseline, name=configured,
                                           address="editor@example.com", field="Reply-To")
