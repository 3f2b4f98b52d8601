"""DKIM signatures (RFC 6376) for outgoing messages, made with dkimpy (pure: no I/O)."""

from __future__ import annotations

import re

from mailer.config import Settings
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

    def __init__(self, private_key: str | bytes, *, selector: str, domain: str) -> None:
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
                              "dkim.pem 2048 makes one)", field="MAILER_DKIM_KEY_FILE") from None
        if bits < MIN_KEY_BITS:
            raise ConfigError(f"the RSA key has {bits} bits; receivers ignore signatures made "
                              f"with fewer than {MIN_KEY_BITS} (use 2048)",
                              field="MAILER_DKIM_KEY_FILE")
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


def signer_from_settings(settings: Settings) -> DkimSigner | None:
    """The signer the settings ask for; None when no DKIM key is configured.

    Raises:
        ConfigError: see DkimSigner.
    """
    if settings.dkim_key is None or not settings.dkim_selector or not settings.dkim_domain:
        return None  # Settings refuses a key without selector and domain, and vice versa
    return DkimSigner(settings.dkim_key.get_secret_value(), selector=settings.dkim_selector,
                      domain=settings.dkim_domain)
