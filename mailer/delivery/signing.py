"""DKIM signatures (RFC 6376) for outgoing messages, made with dkimpy (no I/O but the key file)."""

from __future__ import annotations

import re

from mailer.config import Settings, read_secret_file
from mailer.errors import ConfigError

# What a reader relies on, and RFC 8058 §4: List-Unsubscribe and List-Unsubscribe-Post MUST
# be covered by the signature. Each name is listed twice ("oversigned", RFC 6376 §8.15):
# every one of these occurs once in our messages, so a second copy added on the way (a
# forged From, another unsubscribe URL) breaks the signature instead of riding along on
# it. Reply-To is signed even when absent, so it cannot be added either.
SIGNED_HEADERS = (
    "From", "Reply-To", "To", "Subject", "Date", "Message-ID", "List-Id", "List-Unsubscribe",
    "List-Unsubscribe-Post", "MIME-Version", "Content-Type",
)
# RFC 8301 §3.2: signers MUST use RSA keys of at least 1024 bits (2048 recommended).
MIN_KEY_BITS = 1024
_DNS_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)*")


class DkimSigner:
    """Signs messages for one domain with one RSA key: rsa-sha256, relaxed/relaxed.

    Made once per send: the key is read and checked here, not per message.
    """

    def __init__(self, private_key: str | bytes, *, selector: str, domain: str,
                 key_field: str = "MAILER_DKIM_KEY_FILE") -> None:
        """A signer for `<selector>._domainkey.<domain>`.

        Raises:
            ConfigError: the key is no PEM RSA private key (PKCS#1 or PKCS#8) of at least
                1024 bits, or the selector or domain is no DNS name.
        """
        for field, value in (("dkim_selector", selector), ("dkim_domain", domain)):
            if not _DNS_NAME.fullmatch(value):
                raise ConfigError(f"expected a DNS name in ASCII (an IDN in its xn-- form), "
                                  f"got {value!r}", field=f"settings.{field}")
        # Imported here: dkimpy and its DNS library would slow every start without DKIM.
        import dkim
        from dkim.crypto import UnparsableKeyError, parse_pem_private_key

        pem = private_key.encode() if isinstance(private_key, str) else private_key
        # dkimpy finds the base64 between "--\n" and "\n--": a key saved with CRLF is fine too.
        pem = pem.replace(b"\r\n", b"\n")
        try:
            bits = int(parse_pem_private_key(pem)["modulus"]).bit_length()
        except (UnparsableKeyError, ValueError, IndexError, KeyError, TypeError):
            raise ConfigError("not an RSA private key in PEM form (openssl genrsa -out "
                              "dkim.pem 2048 makes one)", field=key_field) from None
        if bits < MIN_KEY_BITS:
            raise ConfigError(f"the RSA key has {bits} bits; receivers ignore signatures made "
                              f"with fewer than {MIN_KEY_BITS} (use 2048)", field=key_field)
        self.selector = selector
        self.domain = domain.lower()
        self.key_bits = bits
        self._key = pem
        self._selector = selector.encode("ascii")
        self._domain = self.domain.encode("ascii")
        self._headers = [name.lower().encode("ascii") for name in SIGNED_HEADERS * 2]
        self._dkim_sign = dkim.sign

    def __repr__(self) -> str:
        return f"DkimSigner(selector={self.selector!r}, domain={self.domain!r})"  # never the key

    def sign(self, message: bytes, /) -> bytes:
        """`message` (RFC 5322 bytes, CRLF) with its DKIM-Signature header field in front."""
        signature = self._dkim_sign(message, self._selector, self._domain, self._key,
                              canonicalize=(b"relaxed", b"relaxed"),
                              include_headers=self._headers)
        return bytes(signature) + message


def signer_from_settings(settings: Settings, *, file: str | None = None) -> DkimSigner | None:
    """The signer the settings ask for; None when they name no DKIM selector, domain or key.

    Only what sends calls this: the other commands ignore an incomplete DKIM setup (the
    key often lives in the daemon's environment alone). `file` is the config file, named
    in the error.

    Raises:
        ConfigError: part of the DKIM setup is given and part missing (naming what is
            missing), the key file is unsafe or unreadable, or see DkimSigner.
    """
    key_given = settings.dkim_key is not None or settings.dkim_key_file is not None
    parts = {"settings.dkim_selector": bool(settings.dkim_selector),
             "settings.dkim_domain": bool(settings.dkim_domain),
             "settings.dkim_key_file or MAILER_DKIM_KEY_FILE": key_given}
    if not any(parts.values()):
        return None
    missing = [name for name, given in parts.items() if not given]
    if missing:
        raise ConfigError(f"DKIM signing needs dkim_selector, dkim_domain and the key file "
                          f"(dkim_key_file or MAILER_DKIM_KEY_FILE) together; missing: "
                          f"{' and '.join(missing)}", file=file)
    assert settings.dkim_selector and settings.dkim_domain  # for mypy: checked just above
    if settings.dkim_key is not None:  # MAILER_DKIM_KEY[_FILE]: the environment wins
        key, key_field = settings.dkim_key.get_secret_value(), "MAILER_DKIM_KEY_FILE"
    else:
        assert settings.dkim_key_file is not None
        key_field = "settings.dkim_key_file"
        key = read_secret_file(settings.dkim_key_file, field=key_field)
    return DkimSigner(key, selector=settings.dkim_selector, domain=settings.dkim_domain,
                      key_field=key_field)
