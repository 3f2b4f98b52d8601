"""VERP return addresses: round trip, forgery, another key, case folding, the length bound."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailer import tokens
from mailer.errors import ConfigError, InputError, TokenError
from mailer.returns.verp import delivery_of, is_verp_for, max_local_length, verp_sender

KEY = "test-signing-key-one"
OTHER_KEY = "test-signing-key-two"
BOUNCES = "bounces@news.example.org"
LARGEST = 2**63 - 1

ids = st.integers(min_value=0, max_value=LARGEST)


@given(ids)
def test_every_delivery_id_reads_back_from_its_address(delivery_id: int) -> None:
    address = verp_sender(BOUNCES, KEY, delivery_id)
    assert delivery_of(address, BOUNCES, KEY) == delivery_id
    assert is_verp_for(address, BOUNCES)


@given(ids)
def test_a_token_is_lower_case_letters_and_digits_only(delivery_id: int) -> None:
    local, _, domain = verp_sender(BOUNCES, KEY, delivery_id).rpartition("@")
    assert domain == "news.example.org"
    prefix, _, token = local.partition("+")
    assert prefix == "bounces"
    assert re.fullmatch(r"[a-z0-9]+", token)


def test_an_upper_cased_address_is_still_ours() -> None:
    address = verp_sender(BOUNCES, KEY, 123456789)
    assert delivery_of(address.upper(), BOUNCES, KEY) == 123456789
    assert delivery_of(f"<{address.upper()}>", BOUNCES.upper(), KEY) == 123456789


def test_a_30_character_local_part_fits_the_largest_id_within_64() -> None:
    local = "b" * 30
    address = verp_sender(f"{local}@example.org", KEY, LARGEST)
    assert len(address.rpartition("@")[0]) <= 64
    assert delivery_of(address, f"{local}@example.org", KEY) == LARGEST
    assert max_local_length() >= 30


def test_a_local_part_with_no_room_for_the_token_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        verp_sender("b" * (max_local_length() + 1) + "@example.org", KEY, 1)
    assert caught.value.field == "bounce_address"


@pytest.mark.parametrize("bounce_address", ["no-at-sign", "a+b@example.org", '"q u"@example.org',
                                            "a@-bad-.example", "@example.org"])
def test_a_bounce_address_that_cannot_carry_a_token_is_refused(bounce_address: str) -> None:
    with pytest.raises(ConfigError):
        verp_sender(bounce_address, KEY, 1)


@pytest.mark.parametrize("delivery_id", [-1, LARGEST + 1, True])
def test_an_id_outside_bigint_is_refused(delivery_id: int) -> None:
    with pytest.raises(InputError):
        verp_sender(BOUNCES, KEY, delivery_id)


def test_a_token_made_with_another_key_is_refused() -> None:
    address = verp_sender(BOUNCES, OTHER_KEY, 42)
    assert is_verp_for(address, BOUNCES)
    with pytest.raises(TokenError):
        delivery_of(address, BOUNCES, KEY)


@given(ids, st.data())
def test_any_altered_character_of_the_token_is_refused(delivery_id: int, data: st.DataObject,
                                                       ) -> None:
    address = verp_sender(BOUNCES, KEY, delivery_id)
    local, _, domain = address.rpartition("@")
    start = len("bounces+")
    index = data.draw(st.integers(min_value=start, max_value=len(local) - 1))
    replacement = data.draw(st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789")
                            .filter(lambda c: c != local[index]))
    forged = local[:index] + replacement + local[index + 1:] + "@" + domain
    with pytest.raises(TokenError):
        delivery_of(forged, BOUNCES, KEY)


def test_a_forged_token_for_another_id_is_refused() -> None:
    real = verp_sender(BOUNCES, KEY, 7)
    mac = real.rpartition("@")[0][-16:]
    with pytest.raises(TokenError):
        delivery_of(f"bounces+8{mac}@news.example.org", BOUNCES, KEY)


def test_a_leading_zero_spelling_of_the_id_is_refused() -> None:
    real = verp_sender(BOUNCES, KEY, 7)
    with pytest.raises(TokenError):
        delivery_of(real.replace("+7", "+07"), BOUNCES, KEY)


def test_an_unsubscribe_token_key_never_signs_a_verp_token() -> None:
    # Same secret, other purpose: the derivation label keeps the MACs apart.
    unsubscribe = tokens.unsubscribe_token(KEY, 42)
    assert unsubscribe.rpartition(".")[2].lower() not in verp_sender(BOUNCES, KEY, 42)


@pytest.mark.parametrize("address", [
    "other+{token}@news.example.org",
    "bounces+{token}@other.example.org",
    "bounces+{token}@news.example.org.evil.example",
    "bounces@news.example.org",
    "bounces+@news.example.org",
    "bounces+{token}x@news.example.org",
    "bounces+{token}",
    "bounces+{token}!@news.example.org",
    "bounces+1_0{mac}@news.example.org",
    "bounces+ 10{mac}@news.example.org",
    "",
])
def test_addresses_that_are_not_ours_are_refused(address: str) -> None:
    real = verp_sender(BOUNCES, KEY, 10)
    token = real.rpartition("@")[0].partition("+")[2]
    candidate = address.format(token=token, mac=token[-16:])
    with pytest.raises(TokenError):
        delivery_of(candidate, BOUNCES, KEY)


def test_is_verp_for_only_looks_at_the_shape() -> None:
    assert is_verp_for("bounces+1" + "a" * 16 + "@news.example.org", BOUNCES)
    assert not is_verp_for("bounces+1" + "a" * 15 + "@news.example.org", BOUNCES)
    assert not is_verp_for("reader@news.example.org", BOUNCES)
    assert not is_verp_for(verp_sender(BOUNCES, KEY, 1), "not an address")
