"""Use cases of subscribers: double opt-in, leaving, CSV import."""

from mailer.subscriptions.csvfile import MAX_IMPORT_ERRORS_SHOWN, read_csv, read_import
from mailer.subscriptions.optin import (
    CONFIRM_RESEND_INTERVAL,
    CONFIRM_UNSENT_LEASE,
    ConfirmationDue,
    add,
    confirm,
    confirm_max_age,
    confirm_url,
    deliver_confirmation,
    find_by_confirm_token,
    find_by_unsubscribe_token,
    resubscribe,
    send_confirmation,
    subscribe,
    unsubscribe,
)
from mailer.subscriptions.ports import SubscriberStore

__all__ = [
    "CONFIRM_RESEND_INTERVAL",
    "CONFIRM_UNSENT_LEASE",
    "ConfirmationDue",
    "MAX_IMPORT_ERRORS_SHOWN",
    "SubscriberStore",
    "add",
    "confirm",
    "confirm_max_age",
    "confirm_url",
    "deliver_confirmation",
    "find_by_confirm_token",
    "find_by_unsubscribe_token",
    "read_csv",
    "read_import",
    "resubscribe",
    "send_confirmation",
    "subscribe",
    "unsubscribe",
]
