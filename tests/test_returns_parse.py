"""returns: returned mail (DSNs, abuse reports, auto-replies, older bounces) read and classified,
and the copy of it kept as evidence."""

from __future__ import annotations

import base64
import email
import quopri
from email.message import Message
from email.policy import compat32
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailer.errors import InputError
from mailer.returns import parse
from mailer.returns.evidence import evidence
from mailer.returns.kinds import ReturnKind, judge_status, kind_of_status, most_severe
from mailer.returns.parse import MAX_BYTES, read_returned
from mailer.returns.returned import Action

CORPUS = Path(__file__).parent / "data" / "bounces"
EXPECTED: dict[str, dict[str, Any]] = yaml.safe_load((CORPUS / "expected.yaml").read_text())
FALLBACK = sorted(name for name, case in EXPECTED.items() if case.get("fallback"))


def corpus(name: str) -> bytes:
    return (CORPUS / name).read_bytes()


# --- the corpus -----------------------------------------------------------------------------------


def test_every_message_in_the_corpus_has_an_expectation() -> None:
    assert sorted(path.name for path in CORPUS.glob("*.eml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_returned_message_is_classified_as_expected_yaml_says(name: str) -> None:
    case = EXPECTED[name]

    returned = read_returned(corpus(name),
                             envelope_recipients=case.get("envelope_recipients", ()))

    assert returned.kind == ReturnKind(case["kind"]), returned.reason
    assert list(returned.addresses) == case["addresses"]
    deciding = [r for r in returned.recipients if r.kind == returned.kind]
    assert (deciding[0].status if deciding else None) == case["status"]
    for field in ("envelope_to", "original_message_id", "original_return_path"):
        if field in case:
            value = getattr(returned, field)
            assert (list(value) if isinstance(value, tuple) else value) == case[field], field
    assert returned.reason and "\n" not in returned.reason and len(returned.reason) <= 300
    assert all(r.address == r.address.lower() for r in returned.recipients)


@pytest.mark.parametrize("name", FALLBACK)
def test_the_older_formats_are_recognised_only_by_flufl_bounce(
    name: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(parse, "all_failures", lambda msg: (set(), set()))

    # Without it they would be unknown, or (Exim's carries Auto-Submitted) ignored.
    assert read_returned(corpus(name)).kind in (ReturnKind.UNKNOWN, ReturnKind.AUTO_REPLY)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_crlf_line_ends_read_the_same(name: str) -> None:
    lf, crlf = read_returned(corpus(name)), read_returned(corpus(name).replace(b"\n", b"\r\n"))

    assert (crlf.kind, crlf.recipients, crlf.envelope_to, crlf.original_message_id,
            crlf.original_return_path) == (lf.kind, lf.recipients, lf.envelope_to,
                                           lf.original_message_id, lf.original_return_path)


def _reencoded(raw: bytes, content_type: bytes, encoding: str) -> bytes:
    # The report part of a corpus message, sent again with a transfer encoding.
    head, rest = raw.split(b"Content-Type: " + content_type + b"\n\n", 1)
    body, boundary, tail = rest.partition(b"\n--")
    text = base64.encodebytes(body) if encoding == "base64" else quopri.encodestring(body)
    return (head + b"Content-Type: " + content_type + b"\nContent-Transfer-Encoding: " +
            encoding.encode() + b"\n\n" + text + boundary + tail)


@pytest.mark.parametrize("encoding", ["base64", "quoted-printable"])
def test_a_transfer_encoded_report_part_is_read(encoding: str) -> None:
    dsn = read_returned(_reencoded(corpus("postfix-user-unknown.eml"),
                                   b"message/delivery-status", encoding))
    arf = read_returned(_reencoded(corpus("arf-complaint.eml"), b"message/feedback-report",
                                   encoding))

    assert (dsn.kind, dsn.addresses, dsn.recipients[0].status) == (
        ReturnKind.HARD, ("nobody@example.org",), "5.1.1")
    assert (arf.kind, arf.addresses, arf.feedback_type) == (
        ReturnKind.COMPLAINT, ("ivan@mailbox.example",), "abuse")


def test_a_utf8_delivery_report_is_read() -> None:
    # RFC 6533: message/global-delivery-status, with utf-8 address types.
    raw = (corpus("postfix-user-unknown.eml")
           .replace(b"message/delivery-status", b"message/global-delivery-status")
           .replace(b"report-type=delivery-status", b"report-type=global-delivery-status")
           .replace(b"Original-Recipient: rfc822;Nobody@example.org\n", b"")
           .replace(b"Final-Recipient: rfc822; nobody@example.org",
                    "Final-Recipient: utf-8; Jürgen@bücher.example".encode()))

    returned = read_returned(raw)

    assert (returned.kind, returned.addresses) == (ReturnKind.HARD, ("jürgen@bücher.example",))


def test_a_report_with_several_recipients_keeps_each_ones_own_kind() -> None:
    returned = read_returned(corpus("mixed-recipients.eml"))

    assert [(r.address, r.action, r.status, r.kind, r.smtp_code) for r in returned.recipients] == [
        ("oscar@example.coop", Action.FAILED, "4.2.2", ReturnKind.SOFT, 452),
        ("peggy@example.coop", Action.FAILED, "5.7.1", ReturnKind.POLICY, 554),
        ("quentin@example.coop", Action.DELAYED, "4.4.2", ReturnKind.DELAYED, 421),
    ]
    assert returned.original_envelope_id == "d4836.12"
    assert returned.reporting_mta == "smarthost.example.coop"


def test_the_envelope_recipients_come_first_and_each_address_once() -> None:
    returned = read_returned(corpus("gmail-dsn-no-such-user.eml"),
                             envelope_recipients=["relay+x@news.example.com",
                                                  "bounces+3q176uirebtp2srojb3@news.example.com"])

    assert returned.envelope_to == ("relay+x@news.example.com",
                                    "bounces+3q176uirebtp2srojb3@news.example.com")


def test_our_own_addresses_are_kept_as_written_and_the_readers_lower_cased() -> None:
    # A VERP local part is ours to spell; only the reader's address is compared folded.
    raw = corpus("postfix-user-unknown.eml").replace(b"bounces+3px4nmrobfdsx4q2t47",
                                                     b"Bounces+3PX4nmrobfdsx4q2t47")

    returned = read_returned(raw)

    assert returned.envelope_to == ("Bounces+3PX4nmrobfdsx4q2t47@news.example.com",)
    assert returned.original_return_path == "Bounces+3PX4nmrobfdsx4q2t47@news.example.com"
    assert returned.addresses == ("nobody@example.org",)


def test_a_complaint_names_its_feedback_type_and_the_reporting_mta() -> None:
    returned = read_returned(corpus("arf-complaint.eml"))

    assert (returned.feedback_type, returned.reporting_mta) == ("abuse",
                                                                "feedback.mailbox.example")
    assert returned.subject == "Complaint about message from 203.0.113.9"


@pytest.mark.parametrize(("feedback_type", "kind"), [
    ("auth-failure", ReturnKind.POLICY),  # RFC 6591: our authentication failed
    ("not-spam", ReturnKind.UNKNOWN),  # RFC 6430: the opposite of a complaint
    ("fraud", ReturnKind.COMPLAINT),
    ("virus", ReturnKind.COMPLAINT),
])
def test_feedback_types_that_are_not_a_readers_complaint_are_not_complaints(
    feedback_type: str, kind: ReturnKind,
) -> None:
    raw = corpus("arf-complaint.eml").replace(b"Feedback-Type: abuse",
                                              b"Feedback-Type: " + feedback_type.encode())

    assert read_returned(raw).kind is kind


def test_a_dsn_is_a_bounce_although_it_says_it_was_auto_submitted() -> None:
    raw = corpus("postfix-user-unknown.eml")
    assert b"Auto-Submitted: auto-replied" in raw

    assert read_returned(raw.replace(b"To: bounces", b"X-Autoreply: yes\nTo: bounces")).kind \
        is ReturnKind.HARD


@pytest.mark.parametrize(("action", "expected"), [
    (b"Action: error", ReturnKind.HARD),  # OpenSMTPD's spelling of "failed"
    (b"Action: failed (bad mailbox)", ReturnKind.HARD),
    (b"X-Action: none", ReturnKind.HARD),  # no Action field: the 5.x.x class says failed
    (b"Action: delivered", ReturnKind.UNKNOWN),
    (b"Action: relayed", ReturnKind.UNKNOWN),
])
def test_the_action_field_decides_whether_a_recipient_failed(action: bytes,
                                                            expected: ReturnKind) -> None:
    raw = corpus("postfix-user-unknown.eml").replace(b"Action: failed", action)

    assert read_returned(raw).kind is expected


# --- the RFC 3463 table ---------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "smtp_code", "kind"), [
    ("5.1.1", None, ReturnKind.HARD),  # bad destination mailbox
    ("5.1.2", None, ReturnKind.HARD),  # bad destination system
    ("5.1.3", None, ReturnKind.HARD),  # bad destination address syntax
    ("5.1.6", None, ReturnKind.HARD),  # mailbox moved, no forwarding address
    ("5.1.10", None, ReturnKind.HARD),  # RFC 7505 null MX / Microsoft's not found
    ("5.1.7", None, ReturnKind.POLICY),  # our sender address was refused
    ("5.1.8", None, ReturnKind.POLICY),  # our sender domain was refused
    ("5.2.0", None, ReturnKind.SOFT),
    ("5.2.1", None, ReturnKind.HARD),  # mailbox disabled
    ("5.2.2", None, ReturnKind.SOFT),  # mailbox full
    ("5.2.3", None, ReturnKind.POLICY),  # message too long for the mailbox
    ("5.2.4", None, ReturnKind.SOFT),  # list expansion problem
    ("5.3.0", None, ReturnKind.SOFT),
    ("5.3.2", None, ReturnKind.SOFT),  # system not accepting mail
    ("5.3.4", None, ReturnKind.POLICY),  # message too big for the system
    ("5.4.1", None, ReturnKind.HARD),  # Microsoft: recipient not in the directory
    ("5.4.4", None, ReturnKind.HARD),  # unable to route
    ("5.4.6", None, ReturnKind.SOFT),  # routing loop
    ("5.4.7", None, ReturnKind.SOFT),  # delivery time expired
    ("5.5.1", None, ReturnKind.UNKNOWN),  # protocol: invalid command
    ("5.5.3", None, ReturnKind.UNKNOWN),  # protocol: too many recipients
    ("5.6.1", None, ReturnKind.POLICY),  # media not supported
    ("5.7.1", None, ReturnKind.POLICY),  # delivery not authorised / spam
    ("5.7.26", None, ReturnKind.POLICY),  # DMARC
    ("5.7.13", None, ReturnKind.HARD),  # RFC 7372: user account disabled
    ("5.7.17", None, ReturnKind.HARD),  # RFC 7293: mailbox owner has changed
    ("4.2.2", None, ReturnKind.SOFT),  # mailbox full, temporarily
    ("4.4.1", None, ReturnKind.SOFT),  # no answer from host
    ("4.7.1", None, ReturnKind.POLICY),  # greylisting / rate limit outlived the retries
    ("2.0.0", None, ReturnKind.UNKNOWN),  # success: not a failure
    ("5.1.1 (bad destination mailbox)", None, ReturnKind.HARD),  # a comment after the code
    ("5.9.9", None, ReturnKind.UNKNOWN),  # an unregistered subject
    (None, 550, ReturnKind.HARD),
    (None, 551, ReturnKind.HARD),
    (None, 553, ReturnKind.HARD),
    (None, 552, ReturnKind.SOFT),  # RFC 5321 §4.5.3.1.10
    (None, 554, ReturnKind.POLICY),  # "transaction failed": blocklists and filters
    (None, 521, ReturnKind.HARD),  # RFC 7504
    (None, 556, ReturnKind.HARD),  # RFC 7504
    (None, 500, ReturnKind.UNKNOWN),  # syntax error: a program's fault
    (None, 451, ReturnKind.SOFT),
    (None, 421, ReturnKind.SOFT),
    ("5.0.0", 550, ReturnKind.HARD),  # generic status: the reply code decides
    ("5.0.0", None, ReturnKind.UNKNOWN),  # permanent, but nothing says the address is why
    ("4.0.0", None, ReturnKind.SOFT),
    ("not a status", None, ReturnKind.UNKNOWN),
    (None, None, ReturnKind.UNKNOWN),
])
def test_rfc_3463_status_codes_map_to_kinds(status: str | None, smtp_code: int | None,
                                            kind: ReturnKind) -> None:
    assert kind_of_status(status, smtp_code) is kind


@pytest.mark.parametrize(("status", "diagnostic", "kind", "code"), [
    ("5.0.0", "smtp; 550 5.1.1 <a@b.example>: user unknown", ReturnKind.HARD, "5.1.1"),
    ("5.0.0", "smtp; 554 5.7.1 rejected as spam", ReturnKind.POLICY, "5.7.1"),
    (None, "smtp; 550-5.2.1 The account is disabled", ReturnKind.HARD, "5.2.1"),
    (None, "smtp; 550 No such user here", ReturnKind.HARD, None),
    # A finer code of another class never replaces the status's class.
    ("4.0.0", "smtp; 550 5.1.1 user unknown", ReturnKind.SOFT, "4.0.0"),
    # An address in the text is not a status code.
    ("5.0.0", "smtp; 550 mailbox unavailable (host 10.5.1.1)", ReturnKind.HARD, None),
])
def test_a_generic_status_is_refined_by_the_diagnostic(status: str | None, diagnostic: str,
                                                       kind: ReturnKind,
                                                       code: str | None) -> None:
    verdict = judge_status(status, None, diagnostic)

    assert (verdict.kind, verdict.status if code else None) == (kind, code)


_STATUS = st.builds("{}.{}.{}".format, st.sampled_from("245"), st.integers(0, 9),
                    st.integers(0, 30))


@settings(max_examples=200, deadline=None)
@given(_STATUS, st.sampled_from([b"failed", b"delayed"]))
def test_a_one_recipient_report_has_the_kind_of_its_status(status: str, action: bytes) -> None:
    raw = (corpus("stripped-original-5.4.4.eml")
           .replace(b"Status: 5.4.4", b"Status: " + status.encode())
           .replace(b"Action: failed", b"Action: " + action))

    returned = read_returned(raw)

    expected = kind_of_status(status) if action == b"failed" else ReturnKind.DELAYED
    assert (returned.kind, returned.recipients[0].status) == (expected, status)


def test_the_most_severe_kind_wins_hard_then_policy_then_soft() -> None:
    assert most_severe([ReturnKind.SOFT, ReturnKind.HARD, ReturnKind.POLICY]) is ReturnKind.HARD
    assert most_severe([ReturnKind.SOFT, ReturnKind.POLICY]) is ReturnKind.POLICY
    assert most_severe([ReturnKind.UNKNOWN, ReturnKind.SOFT]) is ReturnKind.SOFT
    assert most_severe([]) is ReturnKind.UNKNOWN


# --- bad input ------------------------------------------------------------------------------------


def test_a_message_past_max_bytes_is_refused_naming_the_limit() -> None:
    with pytest.raises(InputError) as error:
        read_returned(b"x" * 101, max_bytes=100)

    assert error.value.field == "returned message"
    assert "101 bytes" in error.value.message and "100" in error.value.message
    assert MAX_BYTES == 10 * 1024 * 1024


@pytest.mark.parametrize("raw", [b"", b"\r\n\r\n", b"\x00\xff" * 50,
                                 b"Content-Type: multipart/report; boundary=x\n\n--x\n",
                                 b"Content-Type: message/delivery-status\n\nAction: failed\n"])
def test_garbage_is_unknown_with_a_reason(raw: bytes) -> None:
    returned = read_returned(raw)

    assert returned.kind is ReturnKind.UNKNOWN
    assert returned.reason


def test_mime_nested_past_any_sense_is_unknown_not_a_crash() -> None:
    depth = 3000
    head = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n" % (i, i)
                    for i in range(depth))

    returned = read_returned(b"To: bounces+t@news.example.com\n" + head + b"\nhello\n")

    assert returned.kind is ReturnKind.UNKNOWN
    assert returned.envelope_to == ("bounces+t@news.example.com",)


_CORPUS_BYTES = [corpus(name) for name in sorted(EXPECTED)]


@st.composite
def damaged_corpus(draw: st.DrawFn) -> bytes:
    raw = bytearray(draw(st.sampled_from(_CORPUS_BYTES)))
    for _ in range(draw(st.integers(0, 8))):
        at = draw(st.integers(0, len(raw) - 1))
        action = draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip":
            raw[at] = draw(st.integers(0, 255))
        elif action == "cut":
            del raw[at: at + draw(st.integers(1, 200))]
        else:
            raw[at:at] = draw(st.sampled_from([b"\n\n", b"--", b";", b"=?utf-8?b?", b"\x00",
                                               b"\xff\xfe", b"Status: 5.", b"<", b"\r"]))
        if not raw:
            break
    return bytes(raw)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=3000), damaged_corpus()))
def test_any_bytes_read_to_a_verdict_and_never_raise(raw: bytes) -> None:
    try:
        returned = read_returned(raw, max_bytes=4000)
    except InputError:
        assert len(raw) > 4000
        return
    assert isinstance(returned.kind, ReturnKind)
    assert returned.reason and "\n" not in returned.reason


# --- evidence -------------------------------------------------------------------------------------


def _delivery_status(raw: bytes) -> bytes:
    msg = email.message_from_bytes(raw, policy=compat32)
    part = next(p for p in msg.walk() if p.get_content_type() == "message/delivery-status")
    return b"".join(group.as_bytes() for group in part.get_payload()
                    if isinstance(group, Message))


def test_a_small_message_is_kept_as_it_came() -> None:
    raw = corpus("postfix-user-unknown.eml")

    assert evidence(raw) == raw


def test_evidence_cuts_the_originals_body_first_and_keeps_the_report_whole() -> None:
    raw = corpus("postfix-user-unknown.eml").replace(
        b"this week we counted 412 starlings over the old quarry.",
        b"starlings! " * 300_000)
    assert len(raw) > 3_000_000  # past what evidence parses: only the head is read

    kept = evidence(raw, limit=64 * 1024)

    assert len(kept) <= 64 * 1024
    assert _delivery_status(kept) == _delivery_status(raw)
    assert b"starlings!" not in kept
    again = read_returned(kept)
    assert (again.kind, again.addresses, again.original_message_id) == (
        ReturnKind.HARD, ("nobody@example.org",), "<173295720000.4821.12@news.example.com>")


def test_evidence_drops_attachments_and_long_text_once_the_original_is_cut() -> None:
    raw = corpus("spam-block-5.7.1.eml").replace(
        b"--3F1E2D0C9B.1732957241/relay.news.example.com\nContent-Description: Delivery report",
        b"--3F1E2D0C9B.1732957241/relay.news.example.com\nContent-Type: image/png\n"
        b"Content-Transfer-Encoding: base64\n\n" + b"iVBORw0KGgo=\n" * 20_000 +
        b"\n--3F1E2D0C9B.1732957241/relay.news.example.com\nContent-Description: Delivery report")

    kept = evidence(raw, limit=16 * 1024)

    assert len(kept) <= 16 * 1024
    assert _delivery_status(kept) == _delivery_status(raw)
    assert read_returned(kept).kind is ReturnKind.POLICY


def test_evidence_of_a_plain_text_bounce_keeps_its_beginning() -> None:
    raw = corpus("qmail-no-mailbox.eml") + b"more of the original\n" * 10_000

    kept = evidence(raw, limit=4096)

    assert len(kept) <= 4096
    assert kept.startswith(corpus("qmail-no-mailbox.eml")[:2000])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=5000), damaged_corpus()), st.integers(0, 3000))
def test_evidence_of_any_bytes_stays_under_the_cap(raw: bytes, limit: int) -> None:
    assert len(evidence(raw, limit)) <= limit
