"""MessageBuilder: one recipient's bytes as the transport gets them (pure: no store, no SMTP).

The unsubscribe token reads back to the recipient's subscription, the per-message headers
are the ones given, unsigned messages come dot-stuffed for SMTP DATA, and signed ones come
plain (the transport stuffs them) with a DKIM signature that verifies.
"""

from __future__ import annotations

import base64
import email
import email.policy
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import dkim
import pytest

from mailer.content.rendered import UNSUBSCRIBE_SLOT, RenderedIssue
from mailer.delivery.build import MessageBuilder
from mailer.delivery.message import Letter, list_id
from mailer.delivery.signing import DkimSigner
from mailer.rows import Recipient
from mailer.tokens import read_unsubscribe_token

BASE_URL = "http://127.0.0.1:8025/"
KEY = "builder-test-key"
DATE = datetime(2026, 12, 8, 9, 0, tzinfo=UTC)
ADA = Recipient(delivery_id=11, subscription_id=42, email="ada@example.com", name="Ada",
                attempts=0)


def letter() -> Letter:
    # A text line that starts with a dot: SMTP DATA needs it doubled (RFC 5321 §4.5.2).
    rendered = RenderedIssue(subject="Issue 1", preheader="",
                             html=f'<p>Hi</p><a href="{UNSUBSCRIBE_SLOT}">leave</a>',
                             text=f"Hi\n.dotted line\n\nleave: {UNSUBSCRIBE_SLOT}\n",
                             web_url=f"{BASE_URL}issues/ml-issues/issue-1")
    return Letter(sender="ML Issues <newsletter@example.com>", reply_to=None,
                  list_id=list_id("ml-issues", BASE_URL), rendered=rendered)


def build(builder: MessageBuilder, recipient: Recipient = ADA) -> bytes:
    return builder.build(recipient, msg_id="<1@example.com>", date=DATE)


def unstuffed(data: bytes) -> bytes:
    return data.replace(b"\r\n..", b"\r\n.")


def test_the_unsubscribe_link_carries_a_token_for_the_recipients_subscription() -> None:
    data = unstuffed(build(MessageBuilder(letter(), secret_key=KEY, base_url=BASE_URL)))
    message = email.message_from_bytes(data, policy=email.policy.default)
    match = re.fullmatch(r"<http://127\.0\.0\.1:8025/unsubscribe/([^>]+)>",
                         str(message["List-Unsubscribe"]))
    assert match is not None  # one slash between the base URL and the path
    assert read_unsubscribe_token(KEY, match.group(1)) == 42
    url = match.group(0)[1:-1]
    for kind in ("plain", "html"):  # and the same link in both bodies
        part = message.get_body((kind,))
        assert part is not None and url in part.get_content()


def test_the_per_message_headers_are_the_ones_given() -> None:
    builder = MessageBuilder(letter(), secret_key=KEY, base_url=BASE_URL)
    message = email.message_from_bytes(unstuffed(build(builder)),
                                       policy=email.policy.default)
    assert (message["To"], message["Message-ID"], message["Date"]) == (
        "Ada <ada@example.com>", "<1@example.com>", "Tue, 08 Dec 2026 09:00:00 +0000")
    assert (builder.sender_address, builder.sender_domain) == (
        "newsletter@example.com", "example.com")


def test_an_unsigned_message_comes_dot_stuffed_for_the_wire() -> None:
    builder = MessageBuilder(letter(), secret_key=KEY, base_url=BASE_URL)
    assert builder.wire_ready
    data = build(builder)
    assert b"\r\n..dotted line" in data
    assert b"\r\n.dotted line" not in unstuffed(data).replace(b"\r\n.dotted", b"", 1)


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> tuple[DkimSigner, bytes]:
    if shutil.which("openssl") is None:
        pytest.fail("this test makes its DKIM key with the openssl CLI: apt-get install openssl")
    path: Path = tmp_path_factory.mktemp("dkim") / "key.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(path), "1024"], check=True,
                   capture_output=True)
    public = subprocess.run(["openssl", "rsa", "-in", str(path), "-pubout", "-outform", "DER"],
                            check=True, capture_output=True).stdout
    return (DkimSigner(path.read_bytes(), selector="mail", domain="example.com"),
            base64.b64encode(public))


def test_a_signed_message_comes_plain_with_a_signature_that_verifies(
    signer: tuple[DkimSigner, bytes],
) -> None:
    dkim_signer, public = signer
    builder = MessageBuilder(letter(), secret_key=KEY, base_url=BASE_URL, signer=dkim_signer)
    assert not builder.wire_ready  # the transport dot-stuffs after signing
    data = build(builder)
    assert data.startswith(b"DKIM-Signature:")
    assert b"\r\n.dotted line" in data and b"\r\n..dotted line" not in data

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        return b"v=DKIM1; k=rsa; p=" + public if name == b"mail._domainkey.example.com." \
            else None

    assert dkim.verify(data, dnsfunc=lookup)
