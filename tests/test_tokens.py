"""Confirm and unsubscribe tokens: round trip, tampering, purpose binding, expiry, fuzzing."""

from __future__ import annotations

import contextlib
import hashlib
import string
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from itsdangerous import TimestampSigner, URLSafeSerializer, URLSafeTimedSerializer

from mailer import tokens
from mailer.errors import TokenError

KEY = "test-signing-key-one"
OTHER_KEY = "test-signing-key-two"
MAX_AGE = timedelta(days=7)

# Mirrors mailer/tokens.py on purpose: changing a salt or the digest there breaks every
# unsubscribe link already mailed, and these literals make such a change fail loudly here.
CONFIRM_SALT = "mailer.confirm.v1"
UNSUBSCRIBE_SALT = "mailer.unsubscribe.v1"
SIGNER_KWARGS = {"digest_method": hashlib.sha256}

# What a token in a link is made of: URL-safe base64 parts joined by dots.
TOKEN_ALPHABET = string.ascii_letters + string.digits + "-_."

Make = Callable[[str, int], str]
Read = Callable[[str, str], int]


def read_confirm(secret_key: str, token: str) -> int:
    return tokens.read_confirm_token(secret_key, token, max_age=MAX_AGE)


def confirm_token_of_generation_3(secret_key: str, subscription_id: int) -> str:
    return tokens.confirm_token(secret_key, subscription_id, 3)


KINDS: list[tuple[Make, Read]] = [
    (tokens.unsubscribe_token, tokens.read_unsubscribe_token),
    (tokens.confirm_token, read_confirm),
    (confirm_token_of_generation_3, read_confirm),
    (tokens.manage_token, tokens.read_manage_token),
]
KIND_IDS = ["unsubscribe", "confirm", "confirm-generation", "manage"]
kinds = pytest.mark.parametrize(("make", "read"), KINDS, ids=KIND_IDS)


def confirm_token_signed_at(secret_key: str, subscription_id: int, signed_at: datetime) -> str:
    """A confirm token as mailer makes it, but stamped with `signed_at` instead of now."""

    class ClockedSigner(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(signed_at.timestamp())

    serializer = URLSafeTimedSerializer(secret_key, salt=CONFIRM_SALT, signer=ClockedSigner,
                                        signer_kwargs=SIGNER_KWARGS)
    return str(serializer.dumps(subscription_id))


def signature(token: str) -> str:
    return token.rsplit(".", 1)[1]


def accepted(read: Read, candidates: list[str]) -> list[tuple[str, int]]:
    """The candidates that `read` takes for a real token, with the id it reads from each."""
    taken = []
    for candidate in candidates:
        with contextlib.suppress(TokenError):
            taken.append((candidate, read(KEY, candidate)))
    return taken


# -- round trip and keys ----------------------------------------------------------------------


@kinds
@pytest.mark.parametrize("subscription_id", [0, 1, 42, 2**31, 2**63 - 1])
def test_a_token_reads_back_as_the_subscription_it_was_made_for(
    make: Make, read: Read, subscription_id: int,
) -> None:
    assert read(KEY, make(KEY, subscription_id)) == subscription_id


@kinds
def test_tokens_of_different_subscriptions_differ(make: Make, read: Read) -> None:
    made = {make(KEY, subscription_id) for subscription_id in range(200)}
    assert len(made) == 200


@kinds
def test_a_token_made_with_another_key_is_rejected(make: Make, read: Read) -> None:
    with pytest.raises(TokenError):
        read(KEY, make(OTHER_KEY, 42))


def test_unsubscribe_links_already_mailed_keep_working_after_an_upgrade() -> None:
    # Unsubscribe tokens never expire: this exact string may sit in any old inbox.
    mailed = "NDI.SaazCVg3A15xBs8rF_Cyah7MNn47oq1wy8LowuaLPFk"
    assert tokens.unsubscribe_token("pinned-key", 42) == mailed
    assert tokens.read_unsubscribe_token("pinned-key", mailed) == 42


@pytest.mark.parametrize("generation", [0, 1, 7, 2**31 - 1])
def test_a_confirm_token_reads_back_with_the_token_generation_it_was_made_in(
    generation: int,
) -> None:
    link = tokens.read_confirm_link(KEY, tokens.confirm_token(KEY, 42, generation),
                                    max_age=MAX_AGE)

    assert (link.subscription_id, link.generation) == (42, generation)


def test_confirmation_links_mailed_before_generations_existed_read_as_generation_0() -> None:
    # What earlier versions mailed: the bare id, signed. Such links must keep working for
    # subscriptions still in their first generation.
    mailed = confirm_token_signed_at(KEY, 42, datetime.now(UTC))

    link = tokens.read_confirm_link(KEY, mailed, max_age=MAX_AGE)

    assert (link.subscription_id, link.generation) == (42, 0)
    assert tokens.confirm_token(KEY, 42).split(".")[0] == mailed.split(".")[0]


@pytest.mark.parametrize("payload", [[42, 0], [42, -1], [42, True], [42, 1, 2], [42, "1"],
                                     ["42", 1], [None, 1], [42.0, 1]])
def test_a_signed_confirm_payload_that_is_not_an_id_and_a_later_generation_is_rejected(
    payload: list[object],
) -> None:
    forged = URLSafeTimedSerializer(KEY, salt=CONFIRM_SALT,
                                    signer_kwargs=SIGNER_KWARGS).dumps(payload)

    with pytest.raises(TokenError, match="not valid"):
        tokens.read_confirm_link(KEY, str(forged), max_age=MAX_AGE)


# -- tampering ----------------------------------------------------------------------------------


@kinds
def test_every_url_safe_single_character_change_is_rejected(make: Make, read: Read) -> None:
    token = make(KEY, 123456)
    tampered = [token[:position] + char + token[position + 1:]
                for position in range(len(token))
                for char in TOKEN_ALPHABET if char != token[position]]
    assert len(tampered) == len(token) * (len(TOKEN_ALPHABET) - 1)
    assert accepted(read, tampered) == []


@kinds
def test_a_truncated_token_is_rejected(make: Make, read: Read) -> None:
    token = make(KEY, 7)
    for length in range(len(token)):
        with pytest.raises(TokenError):
            read(KEY, token[:length])


@kinds
@pytest.mark.parametrize("suffix", ["A", "x", "AAAA", "0", ".", ".A", "-", "_", " ", "\n", "%20",
                                    "=", "====", "!!!!"])
def test_a_token_with_a_suffix_appended_is_rejected(make: Make, read: Read, suffix: str) -> None:
    with pytest.raises(TokenError):
        read(KEY, make(KEY, 7) + suffix)


@kinds
def test_a_token_has_exactly_one_spelling(make: Make, read: Read) -> None:
    token = make(KEY, 42)
    sig_start = len(token) - len(signature(token))
    variants = [token + "=", token + "====", token + "!!!!"]
    variants += [token[:-1] + char for char in TOKEN_ALPHABET if char != token[-1]]
    variants += [token[:sig_start] + signature(token).replace("-", "+").replace("_", "/")]
    assert accepted(read, [variant for variant in variants if variant != token]) == []


@kinds
def test_a_correctly_signed_token_that_does_not_carry_an_id_is_rejected(
    make: Make, read: Read,
) -> None:
    for payload in (True, "42", 4.2, None, [42], {"id": 42}):
        if read is tokens.read_unsubscribe_token:
            forged = URLSafeSerializer(KEY, salt=UNSUBSCRIBE_SALT,
                                       signer_kwargs=SIGNER_KWARGS).dumps(payload)
        else:
            forged = URLSafeTimedSerializer(KEY, salt=CONFIRM_SALT,
                                            signer_kwargs=SIGNER_KWARGS).dumps(payload)
        with pytest.raises(TokenError):
            read(KEY, str(forged))


# -- purpose binding ----------------------------------------------------------------------------


def test_a_confirm_token_is_not_accepted_as_an_unsubscribe_token() -> None:
    with pytest.raises(TokenError):
        tokens.read_unsubscribe_token(KEY, tokens.confirm_token(KEY, 42))


def test_an_unsubscribe_token_is_not_accepted_as_a_confirm_token() -> None:
    with pytest.raises(TokenError):
        read_confirm(KEY, tokens.unsubscribe_token(KEY, 42))


def test_an_unsubscribe_signature_grafted_onto_a_confirm_payload_is_rejected() -> None:
    unsubscribe = tokens.unsubscribe_token(KEY, 42)
    confirm = tokens.confirm_token(KEY, 42)
    grafted = confirm.rsplit(".", 1)[0] + "." + signature(unsubscribe)
    with pytest.raises(TokenError):
        read_confirm(KEY, grafted)


# -- expiry -------------------------------------------------------------------------------------


def test_a_confirm_token_just_younger_than_max_age_is_accepted() -> None:
    signed_at = datetime.now(UTC) - MAX_AGE + timedelta(minutes=1)
    assert read_confirm(KEY, confirm_token_signed_at(KEY, 42, signed_at)) == 42


def test_a_confirm_token_older_than_max_age_is_rejected_as_expired() -> None:
    signed_at = datetime.now(UTC) - MAX_AGE - timedelta(seconds=2)
    with pytest.raises(TokenError, match="expired"):
        read_confirm(KEY, confirm_token_signed_at(KEY, 42, signed_at))


def test_an_expired_confirm_token_with_another_key_is_not_valid_rather_than_expired() -> None:
    # Expiry is only reported for a genuine token: a forger learns nothing from the message.
    signed_at = datetime.now(UTC) - MAX_AGE - timedelta(days=1)
    with pytest.raises(TokenError, match="not valid"):
        read_confirm(KEY, confirm_token_signed_at(OTHER_KEY, 42, signed_at))


def test_unsubscribe_tokens_do_not_expire() -> None:
    # The unsubscribe serializer carries no timestamp at all: one dot, payload and signature.
    token = tokens.unsubscribe_token(KEY, 42)
    assert token.count(".") == 1
    assert tokens.read_unsubscribe_token(KEY, token) == 42


# -- unguessable --------------------------------------------------------------------------------


@kinds
def test_two_keys_give_unrelated_signatures(make: Make, read: Read) -> None:
    ours, theirs = signature(make(KEY, 42)), signature(make(OTHER_KEY, 42))
    assert len(ours) == len(theirs) == 43  # HMAC-SHA256: 32 bytes of URL-safe base64
    same_places = sum(a == b for a, b in zip(ours, theirs, strict=True))
    assert same_places < 8  # two random strings agree in about 43/64 places


@kinds
def test_neighbouring_subscriptions_get_unrelated_signatures(make: Make, read: Read) -> None:
    first, second = signature(make(KEY, 1000)), signature(make(KEY, 1001))
    assert sum(a == b for a, b in zip(first, second, strict=True)) < 8


@kinds
def test_a_token_does_not_contain_the_secret_key(make: Make, read: Read) -> None:
    key = "a-rather-long-and-recognisable-secret-key"
    token = make(key, 42)
    assert key not in token
    assert key[:12] not in token


# -- fuzzing ------------------------------------------------------------------------------------

REAL_UNSUBSCRIBE = {tokens.unsubscribe_token(KEY, i): i for i in range(5)}
REAL_CONFIRM = {tokens.confirm_token(KEY, i): i for i in range(5)}
token_shaped = st.from_regex(r"[A-Za-z0-9_-]{0,12}(\.[A-Za-z0-9_-]{0,50}){1,2}", fullmatch=True)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=120), token_shaped, st.sampled_from(sorted(REAL_UNSUBSCRIBE))))
def test_reading_any_text_as_an_unsubscribe_token_raises_only_token_error(text: str) -> None:
    try:
        subscription_id = tokens.read_unsubscribe_token(KEY, text)
    except TokenError:
        assert text not in REAL_UNSUBSCRIBE
    else:
        assert REAL_UNSUBSCRIBE.get(text) == subscription_id


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=120), token_shaped, st.sampled_from(sorted(REAL_CONFIRM))))
def test_reading_any_text_as_a_confirm_token_raises_only_token_error(text: str) -> None:
    try:
        subscription_id = read_confirm(KEY, text)
    except TokenError:
        assert text not in REAL_CONFIRM
    else:
        assert REAL_CONFIRM.get(text) == subscription_id


@kinds
def test_text_that_is_not_encodable_is_rejected_as_not_valid(make: Make, read: Read) -> None:
    with pytest.raises(TokenError):
        read(KEY, make(KEY, 42)[:-1] + "\ud800")


@settings(max_examples=300)
@given(key=st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=64),
       subscription_id=st.integers(0, 2**31 - 1))  # an INTEGER column
def test_unsubscribe_tokens_are_exactly_what_itsdangerous_makes(key: str,
                                                                subscription_id: int) -> None:
    # The fast path must never drift from the serializer that reads the tokens back.
    made = tokens.unsubscribe_token(key, subscription_id)
    serializer = URLSafeSerializer(key, salt="mailer.unsubscribe.v1",
                                   signer_kwargs={"digest_method": hashlib.sha256})
    assert made == serializer.dumps(subscription_id)
    assert tokens.read_unsubscribe_token(key, made) == subscription_id


@settings(max_examples=100)
@given(key=st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=64),
       subscription_id=st.integers(0, 2**31 - 1))
def test_manage_tokens_are_exactly_what_itsdangerous_makes(key: str, subscription_id: int
                                                           ) -> None:
    made = tokens.manage_token(key, subscription_id)
    serializer = URLSafeSerializer(key, salt="mailer.manage.v1",
                                   signer_kwargs={"digest_method": hashlib.sha256})
    assert made == serializer.dumps(subscription_id)
    assert tokens.read_manage_token(key, made) == subscription_id


@pytest.mark.parametrize("other", [tokens.unsubscribe_token, tokens.confirm_token])
def test_a_manage_token_and_the_other_purposes_tokens_are_never_taken_for_each_other(
    other: Make,
) -> None:
    with pytest.raises(TokenError):
        tokens.read_manage_token(KEY, other(KEY, 42))
    manage = tokens.manage_token(KEY, 42)
    with pytest.raises(TokenError):
        tokens.read_unsubscribe_token(KEY, manage)
    with pytest.raises(TokenError):
        tokens.read_confirm_token(KEY, manage, max_age=timedelta(days=7))
