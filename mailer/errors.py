"""The MailerError tree: every error raised on purpose, carrying the place it names."""

from __future__ import annotations


class MailerError(Exception):
    """Base of every error `mailer` raises on purpose; `str()` is one line naming the place."""

    exit_code = 1

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        place = ""
        if self.file:
            place = self.file + (f":{self.line}" if self.line else "") + ": "
        if self.field:
            place += f"{self.field}: "
        return place + self.message


class InputError(MailerError):
    """Bad input from the user (a file, an argument, a form): exit code 2."""

    exit_code = 2


class ConfigError(InputError):
    """schedules.yaml or a MAILER_* variable is wrong."""


class ContentError(InputError):
    """An issue file (front matter or body) is wrong."""


class RenderError(MailerError):
    """A template failed to render."""


class TokenError(InputError):
    """A confirm or unsubscribe token is forged, expired or for something else."""


class SubscriberError(InputError):
    """A subscriber address or import row is wrong."""


class DeliveryError(MailerError):
    """An SMTP transaction failed; carries the server's code and reply."""

    def __init__(self, message: str, *, code: int | None = None, reply: str = "",
                 recipient: str | None = None) -> None:
        self.code = code
        self.reply = reply
        self.recipient = recipient
        super().__init__(message)


class TemporaryFailure(DeliveryError, ConnectionError):
    """4xx reply or a lost connection: worth retrying later (RFC 5321 §4.2.1)."""


class RelayUnavailable(TemporaryFailure):
    """The relay, not the recipient, failed: no connection, a 421 or other refusing greeting,
    STARTTLS or the login failed, or the server closed the channel before the body. No
    recipient is charged an attempt for it; the relay is tried again or another one takes
    over (mailer.delivery.relays)."""

    def __init__(self, relay: str, reason: str) -> None:
        self.relay = relay
        self.reason = reason
        super().__init__(f"relay {relay}: {reason}")


class PermanentFailure(DeliveryError):
    """5xx reply: the server will not take this message for this recipient."""


class DeliveryInDoubt(DeliveryError):
    """The connection died after the message data was handed over, before the server's reply:
    the message may have been delivered. A cut on the server's side is resent once (RFC 5321
    §6.1: the client keeps the message until the 250) and counted as a possible duplicate; a
    cut of our own (`by_us`: a stop out of grace) is recorded as unknown."""

    def __init__(self, message: str, *, recipient: str | None = None,
                 by_us: bool = False) -> None:
        self.by_us = by_us
        super().__init__(message, recipient=recipient)


class TransactionWithdrawn(MailerError):
    """The sender hung up before the message body left, on purpose: its row was no longer
    this worker's to send. Nothing was delivered and nothing is recorded."""


class TryLater(MailerError):
    """What came back cannot be taken now but can later (the database is away): the SMTP
    receiver answers 451 and a webhook 503, so the sender keeps it and tries again."""
