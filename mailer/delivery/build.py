"""One recipient's message as it goes on the wire: unsubscribe token, personalise, sign (pure)."""

from __future__ import annotations

from datetime import datetime

from mailer import tokens
from mailer.addresses import LINE_BREAKS
from mailer.content.fields import Field, one_line
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
        # Each field with its marker, worked out once rather than per message.
        self._fields: tuple[tuple[str, Field], ...] = tuple(
            (field.marker, field) for field in letter.rendered.fields)
        # Parsed once: the sender's address and domain are the same for every message.
        self.sender_address, self.sender_domain = letter.sender_address, letter.sender_domain
        self._secret_key = secret_key
        self._unsubscribe_base = f"{base_url.rstrip('/')}/unsubscribe/"
        self._manage_base = f"{base_url.rstrip('/')}/manage/"
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

    def values(self, recipient: Recipient) -> dict[str, str]:
        """`recipient`'s personal field values by marker. A field they lack with no default
        is empty: the send was refused before it opened if any confirmed subscriber lacked
        it (sending.prepare), so only someone who changed since gets the gap."""
        return {marker: field.value(email=recipient.email, name=recipient.name,
                                    attributes=recipient.attributes) or ""
                for marker, field in self._fields}

    def build(self, recipient: Recipient, *, msg_id: str, date: datetime) -> bytes:
        """The complete message for `recipient`, ready for SmtpTransport.send.

        Dot-stuffed when `wire_ready` (send it with wire_ready=True), plain otherwise.

        Raises:
            InputError: a recipient value no header can carry (see PreparedMessage).
        """
        subscription_id = recipient.subscription_id or 0
        token = tokens.unsubscribe_token(self._secret_key, subscription_id)
        manage = tokens.manage_token(self._secret_key, subscription_id)
        data = self._prepared.personalize(
            to_email=recipient.email, to_name=_one_line_name(recipient.name),
            unsubscribe_url=self._unsubscribe_base + token,
            manage_url=self._manage_base + manage, msg_id=msg_id, date=date,
            values=self.values(recipient) if self._fields else None, wire=self.wire_ready)
        if self._signer is not None:
            data = self._signer.sign(data)
        return data


def _one_line_name(name: str) -> str:
    # Every way in refuses a name with a line break (addresses.clean_name); one that got
    # into the database some other way still goes out, as one line of text in To.
    return one_line(name) if LINE_BREAKS.search(name) else name
