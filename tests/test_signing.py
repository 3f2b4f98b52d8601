"""DKIM: real sends to a real SMTP server, every message checked by dkimpy's own verifier."""

from __future__ import annotations

import base64
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import dkim
import pytest
from dkim.util import parse_tag_value

from mailer import config as config_mod
from mailer.config import Config, Settings
from mailer.delivery.signing import SIGNED_HEADERS, DkimSigner, signer_from_settings
from mailer.errors import ConfigError
from mailer.sending.prepare import start_or_resume_send
from mailer.sending.sender import Sender
from mailer.states import SubscriptionStatus
from mailer.store import Store
from tests import storehelp
from tests.conftest import Project
from tests.smtpd import RecordingServer

NOW = datetime(2026, 12, 8, 9, 0, tzinfo=UTC)
SELECTOR = "mail2026"
DOMAIN = "example.com"
SmtpUrl = Callable[[RecordingServer], str]


@dataclass(frozen=True)
class Key:
    path: Path  # the private key, PEM, mode 0600
    public: str  # base64 DER SubjectPublicKeyInfo: the p= of the DNS record


def openssl(*args: str) -> bytes:
    if shutil.which("openssl") is None:
        pytest.fail("the DKIM tests make their keys with the openssl CLI: apt-get install openssl")
    return subprocess.run(["openssl", *args], check=True, capture_output=True).stdout


def make_key(folder: Path, bits: int) -> Key:
    path = folder / f"dkim-{bits}.pem"
    openssl("genrsa", "-out", str(path), str(bits))
    path.chmod(0o600)
    public = openssl("rsa", "-in", str(path), "-pubout", "-outform", "DER")
    return Key(path, base64.b64encode(public).decode("ascii"))


@pytest.fixture(scope="session")
def key(tmp_path_factory: pytest.TempPathFactory) -> Key:
    return make_key(tmp_path_factory.mktemp("dkim"), 2048)


def dns_stub(key: Key) -> Callable[..., bytes | None]:
    """dkimpy's dnsfunc: the one TXT record our DNS would publish, and nothing else."""
    record = f"v=DKIM1; k=rsa; p={key.public}".encode("ascii")

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        return record if name == f"{SELECTOR}._domainkey.{DOMAIN}.".encode() else None

    return lookup


def signed_config(project: Project, smtpd: RecordingServer, smtp_url_of: SmtpUrl, key: Key
                  ) -> Config:
    project.configure(smtp_url=smtp_url_of(smtpd))  # writes schedules.yaml
    return config_mod.load(project.config_path, env={
        "MAILER_SECRET_KEY": "test-key", "MAILER_DKIM_KEY_FILE": str(key.path),
        "MAILER_DKIM_SELECTOR": SELECTOR, "MAILER_DKIM_DOMAIN": DOMAIN,
    })


async def send_issue(config: Config, store: Store) -> None:
    newsletter = config.newsletter("ml-issues")
    send = await start_or_resume_send(config, newsletter, store, now=NOW)
    assert send is not None, "the sample issue should be due"
    async with Sender(config, store) as sender:
        await sender.deliver(send, newsletter)


def signature_tags(message: bytes) -> dict[bytes, bytes]:
    head = message.split(b"\r\n\r\n", 1)[0]
    assert head.startswith(b"DKIM-Signature:") and head.count(b"DKIM-Signature:") == 1
    value = head.split(b":", 1)[1].split(b"\r\n", 1)[0]
    for line in head.split(b"\r\n")[1:]:  # the folded rest of the field
        if not line[:1].isspace():
            break
        value += line
    return {k: b"".join(v.split()) for k, v in parse_tag_value(value).items()}


# -- end to end ---------------------------------------------------------------------------------

async def test_every_message_of_a_send_carries_a_dkim_signature_that_verifies(
    project: Project, store: Store, smtpd: RecordingServer, smtp_url_of: SmtpUrl, key: Key,
) -> None:
    config = signed_config(project, smtpd, smtp_url_of, key)
    # A name that is encoded (RFC 2047) and folded: relaxed header canonicalisation must hold.
    await store.add_subscriber("anne@example.com", newsletter="ml-issues", confirmed=True,
                               name="Ännchen von Tharau, die mir gefällt, mein Reichtum, mein Gut")
    for email in ("ada@example.com", "grace@example.org"):
        await store.add_subscriber(email, newsletter="ml-issues", confirmed=True)

    await send_issue(config, store)

    assert len(smtpd.messages) == 3
    for received in smtpd.messages:
        assert dkim.verify(received.data, dnsfunc=dns_stub(key)), received.rcpt_tos
        tags = signature_tags(received.data)
        assert (tags[b"d"], tags[b"s"]) == (DOMAIN.encode(), SELECTOR.encode())
        assert (tags[b"a"], tags[b"c"]) == (b"rsa-sha256", b"relaxed/relaxed")
        signed = tags[b"h"].lower().split(b":")
        for name in SIGNED_HEADERS:  # RFC 8058 §4 among them: both List-Unsubscribe fields
            assert signed.count(name.lower().encode()) == 2, name  # oversigned
        message = received.parsed()
        assert message["To"].addresses[0].addr_spec == received.rcpt_tos[0]


async def test_a_message_changed_on_the_way_fails_verification(
    project: Project, store: Store, smtpd: RecordingServer, smtp_url_of: SmtpUrl, key: Key,
) -> None:
    config = signed_config(project, smtpd, smtp_url_of, key)
    await subscribe_one(store)
    await send_issue(config, store)
    data = smtpd.messages[0].data
    head, body = data.split(b"\r\n\r\n", 1)
    lookup = dns_stub(key)
    assert dkim.verify(data, dnsfunc=lookup)

    # One character of the body.
    assert b"Machine" in body
    assert not dkim.verify(head + b"\r\n\r\n" + body.replace(b"Machine", b"Mach1ne", 1),
                           dnsfunc=lookup)
    # Someone else's unsubscribe link (RFC 8058 needs these fields signed).
    assert b"/unsubscribe/" in head
    assert not dkim.verify(data.replace(b"/unsubscribe/", b"/unsubscribe/x", 1),
                           dnsfunc=lookup)
    # A second Subject put on top, where mail clients look: oversigning refuses it (signed
    # once, the bottom Subject alone would still verify).
    assert not dkim.verify(b"Subject: Your account is locked\r\n" + data, dnsfunc=lookup)
    assert not dkim.verify(b"From: Bank <security@example.net>\r\n" + data, dnsfunc=lookup)
    # The right message under a key that is not the published one.
    other = make_key(key.path.parent, 1024)
    assert not dkim.verify(data, dnsfunc=lambda name, timeout=5: dns_stub(other)(name))


async def subscribe_one(store: Store) -> None:
    await store.add_subscriber("ada@example.com", newsletter="ml-issues", confirmed=True)
    sub = await storehelp.subscription_of(store, "ada@example.com", "ml-issues")
    assert sub is not None and sub.status == SubscriptionStatus.CONFIRMED


async def test_without_a_key_messages_go_out_unsigned(
    project: Project, store: Store, smtpd: RecordingServer, smtp_url_of: SmtpUrl,
) -> None:
    config = project.configure(smtp_url=smtp_url_of(smtpd))
    assert signer_from_settings(config.settings) is None
    await subscribe_one(store)
    await send_issue(config, store)
    assert b"DKIM-Signature" not in smtpd.messages[0].data


# -- the key and the names ----------------------------------------------------------------------

def test_a_pkcs1_key_saved_with_crlf_line_ends_signs_too(key: Key, tmp_path: Path) -> None:
    pkcs1 = openssl("rsa", "-in", str(key.path), "-traditional")
    assert pkcs1.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    signer = DkimSigner(pkcs1.replace(b"\n", b"\r\n"), selector=SELECTOR, domain=DOMAIN)
    message = (b"From: a@example.com\r\nTo: b@example.com\r\nSubject: hi\r\n"
               b"Date: Tue, 08 Dec 2026 09:00:00 +0000\r\n\r\n.a line with a dot\r\n")
    assert dkim.verify(signer.sign(message), dnsfunc=dns_stub(key))
    assert signer.key_bits == 2048
    assert "PRIVATE" not in repr(signer)


@pytest.mark.parametrize("text", ["not a key", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END"])
def test_something_that_is_not_an_rsa_private_key_is_refused_naming_the_variable(
    text: str,
) -> None:
    with pytest.raises(ConfigError, match="MAILER_DKIM_KEY_FILE: not an RSA private key"):
        DkimSigner(text, selector=SELECTOR, domain=DOMAIN)


def test_a_public_key_given_as_the_private_one_is_refused(key: Key) -> None:
    public = openssl("rsa", "-in", str(key.path), "-pubout")
    with pytest.raises(ConfigError, match="not an RSA private key"):
        DkimSigner(public, selector=SELECTOR, domain=DOMAIN)


def test_a_key_shorter_than_1024_bits_is_refused(tmp_path: Path) -> None:
    weak = make_key(tmp_path, 512)
    with pytest.raises(ConfigError, match="512 bits"):
        DkimSigner(weak.path.read_text(), selector=SELECTOR, domain=DOMAIN)


@pytest.mark.parametrize(("selector", "domain", "field"), [
    ("mail 2026", DOMAIN, "settings.dkim_selector"),
    (SELECTOR, "bücher.example", "settings.dkim_domain"),
    (SELECTOR, "example.com; s=evil", "settings.dkim_domain"),
])
def test_a_selector_or_domain_that_is_no_dns_name_is_refused(
    key: Key, selector: str, domain: str, field: str,
) -> None:
    with pytest.raises(ConfigError, match=field):
        DkimSigner(key.path.read_text(), selector=selector, domain=domain)


def test_a_key_file_other_users_may_read_is_refused(key: Key, tmp_path: Path) -> None:
    loose = tmp_path / "loose.pem"
    loose.write_bytes(key.path.read_bytes())
    loose.chmod(0o644)
    config = tmp_path / "schedules.yaml"
    config.write_text(f"settings:\n  dkim_selector: {SELECTOR}\n  dkim_domain: {DOMAIN}\n")
    with pytest.raises(ConfigError, match="chmod 600"):
        config_mod.load(config, env={"MAILER_DKIM_KEY_FILE": str(loose)})


def test_the_settings_build_the_signer_from_the_key_file(key: Key, tmp_path: Path) -> None:
    settings = Settings.model_validate({
        "dkim_key": key.path.read_text(), "dkim_selector": SELECTOR, "dkim_domain": "Example.COM",
    }, context={"root": tmp_path})
    signer = signer_from_settings(settings)
    assert signer is not None
    assert (signer.selector, signer.domain) == (SELECTOR, DOMAIN)
