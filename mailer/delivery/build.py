"""One recipient's message as it goes on the wire: unsubscribe token, personalise, sign (pure)."""

from __future__ import annotations

from datetime import datetime

from mailer import tokens
from mailer.delivery.message import Letter, prepare_message
from mailer.delivery.signing import DkimSigner
from mailer.returns.verp import verp_sender
from mailer.rows import Recipient


class MessageBuilder:
    """Makes the bytes of one send's message for each recipient.

    The issue is encoded once here (PreparedMessage); per recipient only the unsubscribe
    URL, the To, Date and Message-ID headers and, with a key, the DKIM signature are made.
    """

    def __init__(self, letter: Letter, *, secret_key: str, base_url: str,
                 signer: DkimSigner | None = None, bounce_address: str | None = None) -> None:
        self._prepared = prepare_message(letter)
        # Parsed once: the sender's address and domain are the same for every message.
        self.sender_address, self.sender_domain = letter.sender_address, letter.sender_domain
        self._secret_key = secret_key
        self._unsubscribe_base = f"{base_url.rstrip('/')}/unsubscribe/"
        self._signer = signer
        # A signature covers the plain bytes, so signed messages leave the dot-stuffing to
        # the transport; unsigned ones are built already stuffed and skip that pass.
        self.wire_ready = signer is None
        self._bounce_address = bounce_address

    def envelope_sender(self, recipient: Recipient) -> str:
        """MAIL FROM for `recipient`: with a bounce address, its VERP form naming this one
        delivery (what comes back maps to it, and a forged token maps to nothing); else the
        From address."""
        if self._bounce_address is None:
            return self.sender_address
        return verp_sender(self._bounce_address, self._secret_key, recipient.delivery_id)

    def build(self, recipient: Recipient, *, msg_id: str, date: datetime) -> bytes:
        """The complete message for `recipient`, ready for SmtpTransport.send.

        Dot-stuffed when `wire_ready` (send it with wire_ready=True), plain otherwise.

        Raises:
            InputError: a recipient value no header can carry (see PreparedMessage).
        """
        token = tokens.unsubscribe_token(self._secret_key, recipient.subscription_id or 0)
        data = self._prepared.personalize(
            to_email=recipient.email, to_name=recipient.name,
            unsubscribe_url=self._unsubscribe_base + token, msg_id=msg_id, date=date,
            wire=self.wire_ready)
        if self._signer is not None:
            data = self._signer.sign(data)
        return data
