"""addresses: what an address and a display name may be before anything is stored or sent."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailer.addresses import MAX_LOCAL_PART, clean_name, normalize_email
from mailer.errors import SubscriberError
from tests.conftest import Project
from tests.smtpd import ServerThread
from tests.test_web import LiveServer

BIDI_CONTROLS = ["\u061c", "\u200e", "\u200f", "\u202a", "\u202b", "\u202c", "\u202d", "\u202e",
                 "\u2066", "\u2067", "\u2068", "\u2069"]
# Subdivision flag of Scotland: a black flag, the tags "gbsct", CANCEL TAG.
SCOTLAND = "\U0001F3F4\U000E0067\U000E0062\U000E0073\U000E0063\U000E0074\U000E007F"


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/project/var/mailer.db"


# --- the local part: RFC 5321 §4.5.3.1.1 ---------------------------------------------------------


def test_a_local_part_of_64_octets_is_kept() -> None:
    address = "a" * MAX_LOCAL_PART + "@example.com"

    assert normalize_email(address, where="email") == address


@pytest.mark.parametrize("local", ["a" * 65, "a" * 32 + "." + "b" * 32, "x" * 100])
def test_a_local_part_past_64_octets_is_refused_naming_the_field_and_the_limit(
    local: str,
) -> None:
    with pytest.raises(SubscriberError) as error:
        normalize_email(f"{local}@example.com", where="email")

    assert error.value.field == "email"
    assert f"the part before the @ has {len(local)} characters" in error.value.message
    assert "at most 64" in error.value.message
    assert str(error.value).startswith("email: ")


@pytest.mark.parametrize("address", [
    "=?utf-8?q?x=0D=0ABcc=3A_v=40evil=2Eexample?=@example.com",
    "=?utf-8?b?dkBldmlsLmV4YW1wbGU=?=@example.com",
    "ann=?x?=@example.com",
])
def test_an_address_holding_an_encoded_word_is_refused(address: str) -> None:
    # Python's email package decodes it inside an address (RFC 2047 §5 forbids it there)
    # and writes "To: v@evil.example" or raises on the CR LF.
    with pytest.raises(SubscriberError, match="encoded word") as error:
        normalize_email(address, where="email")

    assert error.value.field == "email"


# --- invisible characters in names ---------------------------------------------------------------


@pytest.mark.parametrize("control", BIDI_CONTROLS,
                         ids=[f"U+{ord(c):04X}" for c in BIDI_CONTROLS])
def test_a_bidirectional_control_in_a_name_is_refused_naming_the_code_point(
    control: str,
) -> None:
    # "Eve\u202egro.live" shows as "Eveevil.org": the text is reordered, not what was typed.
    with pytest.raises(SubscriberError) as error:
        clean_name(f"Eve{control}gro.live", where="name")

    assert error.value.field == "name"
    assert f"U+{ord(control):04X}" in error.value.message
    assert unicodedata.name(control) in error.value.message


@pytest.mark.parametrize("name", [
    "Ann\u200bExample",  # ZERO WIDTH SPACE
    "Ann\u2060Example",  # WORD JOINER
    "\ufeffAnn",  # ZERO WIDTH NO-BREAK SPACE (a BOM)
    "Ann\u00adExample",  # SOFT HYPHEN
    "Ann\U000E0041\U000E0042",  # tag characters outside a flag: hidden ASCII
    "Ann\u200dExample",  # a joiner between Latin letters joins nothing
    "\u200dAnn",
    "Ann\u200c",
])
def test_an_invisible_format_character_in_a_name_is_refused(name: str) -> None:
    with pytest.raises(SubscriberError, match="invisible characters") as error:
        clean_name(name, where="name")

    assert error.value.field == "name"


@pytest.mark.parametrize("name", [
    "Ada 👩\u200d💻",  # ZWJ: an emoji sequence (woman technologist)
    "Eve ❤\ufe0f\u200d🔥",
    "می\u200cخواهم",  # ZWNJ: Persian spelling
    "क्\u200dष",  # ZWJ in a Devanagari conjunct
    f"Morag {SCOTLAND}",  # tag characters in a subdivision flag
])
def test_joiners_in_emoji_and_scripts_and_a_subdivision_flag_are_kept(name: str) -> None:
    assert clean_name(name, where="name") == name


@given(st.text(max_size=60))
def test_a_name_clean_name_accepts_holds_no_invisible_format_character_but_a_needed_one(
    raw: str,
) -> None:
    try:
        name = clean_name(raw)
    except SubscriberError:
        return
    for i, char in enumerate(name):
        if unicodedata.category(char) == "Cf":
            assert char in "\u200c\u200d" and not name[i - 1].isascii(), ascii(name)


def test_a_sign_up_with_a_right_to_left_override_in_the_name_gets_400_and_stores_nothing(
    project: Project,
) -> None:
    with ServerThread() as smtp, LiveServer(project, smtp_url=f"smtp://127.0.0.1:{smtp.port}",
                                            subscribe_rate_per_minute=0) as server:
        answer = httpx.post(f"{server.url}/subscribe/ml-issues", timeout=30,
                            json={"email": "eve@example.com", "name": "Eve\u202egro.live"})
        second = httpx.post(f"{server.url}/subscribe/ml-issues", timeout=30,
                            json={"email": "a" * 65 + "@example.com"})

    assert answer.status_code == 400
    assert answer.json()["error"].startswith("name: a name may not contain U+202E")
    assert second.status_code == 400
    assert second.json()["error"].startswith("email: the part before the @ has 65")
    assert smtp.messages == []
